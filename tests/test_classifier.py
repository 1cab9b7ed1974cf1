"""The sequence classifier against `transformers.BertForSequenceClassification`, its folder format, and
its strict loading. Tiny random configs, both attention paths, and a new head on the real MiniLM."""

import json

import pytest
import torch

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.model import SequenceClassifier
from conftest import random_batch, save_edited


TINY_CONFIGS = [
    EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24),
    EncoderConfig(vocab_size=61, hidden_size=48, num_layers=3, num_heads=6, intermediate_size=64, max_position_embeddings=16, type_vocab_size=3, hidden_act="gelu_new", layer_norm_eps=1e-5, pad_token_id=3),
]
LABELS = ["negative", "neutral", "positive"]


def hf_classifier(config: EncoderConfig, labels=LABELS):
    """A random BertForSequenceClassification; LayerNorms, biases and the head randomised so they are tested."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")
    hf_config = transformers.BertConfig(**config.to_hf(), id2label=dict(enumerate(labels)), attn_implementation="eager")
    model = transformers.BertForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias") or name.startswith("classifier."):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.1)
    return model


def random_classifier(config: EncoderConfig, **kwargs) -> SequenceClassifier:
    model = SequenceClassifier(Encoder(config), len(LABELS), labels=LABELS, **kwargs).eval()
    torch.nn.init.normal_(model.classifier.bias, std=0.1)  # a zero bias would hide a dropped or swapped one
    return model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new"])
def test_against_hf_bert_for_sequence_classification(tmp_path, config, impl):
    hf = hf_classifier(config)
    hf.save_pretrained(tmp_path)
    ours = SequenceClassifier.from_pretrained(tmp_path, attn_impl=impl).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        logits = ours(ids, attention_mask=mask, token_type_ids=types)
    assert logits.shape == (4, 3) and ours.labels == LABELS and ours.pooling == "pooler"
    assert (logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new"])
def test_save_pretrained_loads_in_transformers_with_same_logits(tmp_path, config, transformers):
    ours = random_classifier(config)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.num_labels == 3 and hf.config.id2label == dict(enumerate(LABELS))
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert (ours(ids, mask, types) - hf.eval()(ids, mask, types).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_save_load_round_trip_keeps_head_pooling_and_labels(tmp_path, pooling):
    config = TINY_CONFIGS[1]
    ours = random_classifier(config, pooling=pooling, dropout=0.3)
    ours.save_pretrained(tmp_path)
    again = SequenceClassifier.from_pretrained(tmp_path).eval()
    assert (again.pooling, again.labels, again.dropout.p) == (pooling, LABELS, 0.3)
    assert ours.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(a, again.state_dict()[k]) for k, a in ours.state_dict().items())
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert torch.equal(ours(ids, mask, types), again(ids, mask, types))


def test_mean_pooling_logits_ignore_padding():
    model = random_classifier(TINY_CONFIGS[0], pooling="mean")
    ids = torch.randint(1, TINY_CONFIGS[0].vocab_size, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)  # (1, 12)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        assert (model(ids) - model(padded, mask)).abs().max() <= 1e-5


def test_missing_classifier_weight_fails_listing_it(tmp_path):
    save_edited(random_classifier(TINY_CONFIGS[0]), tmp_path, lambda s: s.pop("classifier.weight"))
    with pytest.raises(ValueError, match=r"3-label classifier head; missing keys \['classifier.weight'\], unexpected keys \[\]"):
        SequenceClassifier.from_pretrained(tmp_path)


def test_missing_encoder_key_fails_listing_it(tmp_path):
    save_edited(random_classifier(TINY_CONFIGS[0]), tmp_path, lambda s: s.pop("bert.encoder.layer.1.attention.self.value.bias"))
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.1.attention.self.value.bias'\]"):
        SequenceClassifier.from_pretrained(tmp_path)


def test_labels_that_disagree_with_the_head_fail_listing_the_shapes(tmp_path):
    random_classifier(TINY_CONFIGS[0]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "no", "1": "yes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mis-shaped keys \['classifier.weight: checkpoint \(3, 32\), model \(2, 32\)', 'classifier.bias: checkpoint \(3,\), model \(2,\)'\]"):
        SequenceClassifier.from_pretrained(tmp_path)


def test_bert_model_folder_fails_naming_from_encoder(tmp_path):
    Encoder(TINY_CONFIGS[0]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no classifier.\* keys.*SequenceClassifier.from_encoder\(path, num_labels\)"):
        SequenceClassifier.from_pretrained(tmp_path)


def test_unknown_pooling_and_a_missing_pooler_fail():
    with pytest.raises(ValueError, match=r"unknown pooling 'max'; use one of \('cls', 'mean', 'pooler'\)"):
        SequenceClassifier(Encoder(TINY_CONFIGS[0]), 2, pooling="max")
    with pytest.raises(ValueError, match="pooling 'pooler' needs BERT's pooler weights"):
        SequenceClassifier(Encoder(TINY_CONFIGS[0], add_pooler=False), 2)
    with pytest.raises(ValueError, match="2 label names for 3 labels"):
        SequenceClassifier(Encoder(TINY_CONFIGS[0]), 3, labels=["a", "b"])


def test_from_encoder_on_minilm(minilm_dir):
    model = SequenceClassifier.from_encoder(minilm_dir, 2).eval()
    batch = Tokenizer.from_pretrained(minilm_dir)(["A gripping, beautifully acted film.", "Dull."])
    with torch.no_grad():
        logits = model(**batch)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert model.labels == ["LABEL_0", "LABEL_1"] and model.dropout.p == 0.1  # MiniLM's hidden_dropout_prob
    pretrained = Encoder.from_pretrained(minilm_dir).state_dict()
    assert pretrained.keys() == model.encoder.state_dict().keys()
    assert all(torch.equal(v, pretrained[k]) for k, v in model.encoder.state_dict().items())
