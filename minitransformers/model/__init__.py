"""The BERT-family encoder: attention, layers, pooling, the sequence classifier and the masked-LM head."""

from .encoder import Encoder, EncoderLayer, Pooler
from .heads import SequenceClassifier, mean_pool, sentence_embedding
from .mlm import MaskedLM, MLMHead

__all__ = ["Encoder", "EncoderLayer", "Pooler", "SequenceClassifier", "MaskedLM", "MLMHead", "mean_pool", "sentence_embedding"]
