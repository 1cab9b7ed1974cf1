"""The BERT-family encoder: attention, layers, pooling and the sequence classifier head."""

from .encoder import Encoder, EncoderLayer, Pooler
from .heads import SequenceClassifier, mean_pool, sentence_embedding

__all__ = ["Encoder", "EncoderLayer", "Pooler", "SequenceClassifier", "mean_pool", "sentence_embedding"]
