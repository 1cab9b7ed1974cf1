"""The models: the BERT-family encoder with its heads (sequence classifier, masked LM), and the Llama-family decoder
with its causal-LM head."""

from .causal_lm import CausalLM
from .decoder import Decoder, DecoderLayer
from .encoder import Encoder, EncoderLayer, Pooler
from .heads import SequenceClassifier, mean_pool, sentence_embedding
from .mlm import MaskedLM, MLMHead

__all__ = ["Encoder", "EncoderLayer", "Pooler", "Decoder", "DecoderLayer", "CausalLM", "SequenceClassifier", "MaskedLM", "MLMHead", "mean_pool", "sentence_embedding"]
