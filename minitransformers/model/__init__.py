"""The BERT-family encoder: attention, layers, and pooling heads."""

from .encoder import Encoder, EncoderLayer
from .heads import Pooler, mean_pool, sentence_embedding

__all__ = ["Encoder", "EncoderLayer", "Pooler", "mean_pool", "sentence_embedding"]
