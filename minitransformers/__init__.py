"""minitransformers: how transformers are pretrained, fine-tuned, adapted, quantized and made to generate, from scratch."""

from .config import DecoderConfig, EncoderConfig
from .model import CausalLM, Encoder
from .text.tokenizer import Tokenizer

__all__ = ["EncoderConfig", "Encoder", "Tokenizer", "DecoderConfig", "CausalLM"]
__version__ = "0.1.0"
