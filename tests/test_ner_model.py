"""The token classifier against `transformers.BertForTokenClassification`: logits both ways on tiny random configs and
on the real MiniLM, its HF folder (labels included), and strict loading."""

import pytest
import torch

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.errors import InputError
from minitransformers.model.token_classifier import TokenClassifier
from conftest import TINY_CONFIGS, random_batch, save_edited

LABELS = ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"]
TEXTS = ["Empire State Building = ESB . Pretty bad storm here last evening .", "@paulwalk It 's the view from where I 'm living"]


def random_token_classifier(config: EncoderConfig) -> TokenClassifier:
    model = TokenClassifier(Encoder(config), len(LABELS), labels=LABELS).eval()
    torch.nn.init.normal_(model.classifier.bias, std=0.1)  # a zero bias would hide a dropped or swapped one
    return model


def hf_token_classifier(config: EncoderConfig, transformers):
    """A random BertForTokenClassification; LayerNorms, biases and the head randomised so they are tested."""
    hf_config = transformers.BertConfig(**config.to_hf(), id2label=dict(enumerate(LABELS)), attn_implementation="eager")
    model = transformers.BertForTokenClassification(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias") or name.startswith("classifier."):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.1)
    return model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "tanh"])
def test_against_hf_bert_for_token_classification(tmp_path, config, impl, transformers):
    hf = hf_token_classifier(config, transformers)
    hf.save_pretrained(tmp_path)
    ours = TokenClassifier.from_pretrained(tmp_path, attn_impl=impl).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        logits = ours(ids, attention_mask=mask, token_type_ids=types)
    assert logits.shape == (4, 11, len(LABELS)) and ours.labels == LABELS
    assert (logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "tanh"])
def test_save_pretrained_loads_in_transformers_with_same_logits(tmp_path, config, transformers):
    ours = random_token_classifier(config)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForTokenClassification.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.id2label == dict(enumerate(LABELS)) and hf.config.label2id == {name: i for i, name in enumerate(LABELS)}
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        logits = ours(ids, attention_mask=mask, token_type_ids=types)
    assert (logits - expected).abs().max() <= 1e-5


def test_minilm_both_ways(tmp_path, minilm_dir, transformers):
    """A new head on the real MiniLM: ours saved and read by transformers, and transformers' saved and read by ours."""
    batch = Tokenizer.from_pretrained(minilm_dir)(TEXTS)
    ours = TokenClassifier.from_encoder(minilm_dir, len(LABELS), labels=LABELS).eval()
    torch.nn.init.normal_(ours.classifier.bias, std=0.1)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.BertForTokenClassification.from_pretrained(minilm_dir, num_labels=len(LABELS), attn_implementation="eager").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        hf_reads_ours = transformers.BertForTokenClassification.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()(**batch).logits
        ours_reads_hf = TokenClassifier.from_pretrained(tmp_path / "theirs").eval()(**batch)
        assert (ours(**batch) - hf_reads_ours).abs().max() <= 1e-5
        assert (ours_reads_hf - theirs(**batch).logits).abs().max() <= 1e-5
    assert ours.encoder.pooler is None  # BertForTokenClassification has no pooler; MiniLM's is left out
    pretrained = Encoder.from_pretrained(minilm_dir).state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in ours.encoder.state_dict().items())


def test_save_load_round_trip_keeps_logits_labels_and_dropout(tmp_path):
    config = TINY_CONFIGS[0]
    model = random_token_classifier(config)
    model.dropout.p = 0.25
    model.save_pretrained(tmp_path)
    loaded = TokenClassifier.from_pretrained(tmp_path).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask, types), model(ids, mask, types))
    assert loaded.labels == LABELS and loaded.dropout.p == 0.25
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_loading_refuses_a_head_of_other_rows_and_a_pooler(tmp_path):
    model = random_token_classifier(TINY_CONFIGS[0])
    save_edited(model, tmp_path / "rows", lambda state: state.update({"classifier.bias": torch.zeros(3)}))
    with pytest.raises(InputError, match="classifier.bias"):
        TokenClassifier.from_pretrained(tmp_path / "rows")
    save_edited(model, tmp_path / "pooler", lambda state: state.update({"bert.pooler.dense.weight": torch.zeros(32, 32), "bert.pooler.dense.bias": torch.zeros(32)}))
    with pytest.raises(InputError, match="unexpected keys.*pooler"):
        TokenClassifier.from_pretrained(tmp_path / "pooler")


def test_label_names_must_match_the_head():
    with pytest.raises(InputError, match="2 label names for 5 labels"):
        TokenClassifier(Encoder(TINY_CONFIGS[0]), 5, labels=["O", "B-x"])
