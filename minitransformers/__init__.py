"""minitransformers: how transformers are pretrained, fine-tuned, adapted and quantized, from scratch."""

from .config import EncoderConfig
from .model import Encoder
from .text.tokenizer import Tokenizer

__all__ = ["EncoderConfig", "Encoder", "Tokenizer"]
__version__ = "0.1.0"
