"""The models: the BERT-family encoder with its heads (sequence classifier, masked LM, token classifier, question answering), and the Llama-family decoder
with its causal-LM head."""

from .causal_lm import CausalLM
from .decoder import Decoder, DecoderLayer
from .encoder import Encoder, EncoderLayer, Pooler
from .heads import SequenceClassifier, mean_pool, sentence_embedding
from .mlm import MaskedLM, MLMHead
from .question_answering import QuestionAnswering
from .token_classifier import TokenClassifier

__all__ = ["Encoder", "EncoderLayer", "Pooler", "Decoder", "DecoderLayer", "CausalLM", "SequenceClassifier", "TokenClassifier", "QuestionAnswering", "MaskedLM", "MLMHead", "mean_pool", "sentence_embedding"]
