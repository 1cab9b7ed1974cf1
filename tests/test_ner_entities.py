"""Entity grouping against `transformers.pipeline("token-classification", aggregation_strategy=...)` on the same saved
folder, entity by entity: a random encoder over MiniLM's WordPiece vocabulary, with a head scaled up so that its
argmax labels vary from token to token (B-, I- and O of several types), on texts with split words, [UNK], accents and
punctuation."""

import warnings

import pytest
import torch
from conftest import fetched

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.errors import InputError
from minitransformers.model.token_classifier import TokenClassifier
from minitransformers.text.entities import STRATEGIES, predict_entities
from minitransformers.text.ner import WNUT16_LABELS

TEXTS = [
    "Empire State Building = ESB. Pretty bad storm here last evening.",
    "I'm flying to Saint-Étienne with Kanye West 😀 tomorrow!!",
    "unbelievably huggingface tokenization's subwords, e.g. Jürgen's café @paulwalk #nyc",
    "",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, model, tokenizer): a random token classifier with MiniLM's tokenizer, saved as one HF folder."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_pretrained(fetched("minilm"))
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = TokenClassifier(Encoder(config), len(WNUT16_LABELS), labels=WNUT16_LABELS).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)
        model.classifier.bias[0] += 1.5  # O wins about half the tokens
    folder = tmp_path_factory.mktemp("ner_entities")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_equal_the_pipeline(saved, strategy, transformers):
    folder, model, tokenizer = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy=strategy, device="cpu")
    found = 0
    for text in TEXTS:
        expected, ours = pipe(text), predict_entities(model, tokenizer, text, strategy)
        assert len(ours) == len(expected), (text, ours, expected)
        for theirs, mine in zip(expected, ours):
            assert list(mine) == list(theirs)  # the same keys, in the same order
            assert {k: v for k, v in mine.items() if k != "score"} == {k: (int(v) if k in ("start", "end", "index") else v) for k, v in theirs.items() if k != "score"}
            assert abs(mine["score"] - float(theirs["score"])) <= 1e-5
        found += len(ours)
    assert found > 20


def test_words_are_merged_by_first_average_max_but_not_by_simple(saved):
    """"unbelievably" is three WordPiece tokens: the word strategies give it one entity, or none, never a piece of it."""
    _, model, tokenizer = saved
    for strategy in ("first", "average", "max"):
        words = {e["word"] for e in predict_entities(model, tokenizer, TEXTS[2], strategy)}
        assert not any(w.startswith("##") for w in words)
    pieces = [e["word"] for e in predict_entities(model, tokenizer, TEXTS[2], "none")]
    assert any(w.startswith("##") for w in pieces)


def test_unknown_strategy_is_refused(saved):
    _, model, tokenizer = saved
    with pytest.raises(InputError, match="unknown aggregation strategy 'longest'"):
        predict_entities(model, tokenizer, "hi", "longest")
