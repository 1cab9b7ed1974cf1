"""The masked-LM model against `transformers.BertForMaskedLM`, its folder format, strict loading, and the
tie between the decoder and the word embeddings (Press & Wolf 2017) through saving, loading and training."""

import copy

import pytest
import torch
import torch.nn.functional as F

from minitransformers import Encoder
from minitransformers.model import MaskedLM
from conftest import TINY_CONFIGS, random_batch, save_edited

IDS = ["gelu", "gelu_new", "gelu_tanh"]


def hf_masked_lm(config):
    """A random BertForMaskedLM; LayerNorms and biases (the head's `cls.predictions.bias` too) randomised."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")
    model = transformers.BertForMaskedLM(transformers.BertConfig(**config.to_hf(), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.1)
    return model


def random_masked_lm(config, pooler=False) -> MaskedLM:
    model = MaskedLM(Encoder(config, add_pooler=pooler)).eval()
    torch.nn.init.normal_(model.head.bias, std=0.1)  # a zero bias would hide a dropped or swapped one
    return model


def random_positions(mask):
    """A random selection of about half the real tokens, as MLM masking would pick them (B, T)."""
    return (torch.rand(mask.shape) < 0.5) & mask.bool()


def is_tied(model: MaskedLM) -> bool:
    return model.head.decoder.weight is model.encoder.embeddings.word.weight


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=IDS)
def test_against_hf_bert_for_masked_lm(tmp_path, config, impl):
    hf = hf_masked_lm(config)
    hf.save_pretrained(tmp_path)
    ours = MaskedLM.from_pretrained(tmp_path, attn_impl=impl).eval()
    assert is_tied(ours) and ours.encoder.pooler is None
    ids, mask, types = random_batch(config)
    selected = random_positions(mask)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        logits = ours(ids, mask, types)
        at_mask = ours(ids, mask, types, positions=selected)
        at_index = ours(ids, mask, types, positions=selected.nonzero(as_tuple=True))
    assert logits.shape == (4, 11, config.vocab_size) and at_mask.shape == (int(selected.sum()), config.vocab_size)
    assert (logits - expected).abs().max() <= 1e-5
    assert (at_mask - expected[selected]).abs().max() <= 1e-5
    assert torch.equal(at_mask, at_index)


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=IDS)
def test_save_pretrained_loads_in_transformers_tied_with_same_logits(tmp_path, config, transformers):
    ours = random_masked_lm(config)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert (ours(ids, mask, types) - hf.eval()(ids, mask, types).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("pooler", [False, True])
def test_reload_keeps_the_tie_through_an_optimizer_step(tmp_path, pooler):
    config = TINY_CONFIGS[1]
    ours = random_masked_lm(config, pooler)
    ours.save_pretrained(tmp_path)
    again = MaskedLM.from_pretrained(tmp_path)
    assert is_tied(again) and (again.encoder.pooler is not None) == pooler
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())
    before = again.encoder.embeddings.word.weight.detach().clone()
    optimizer = torch.optim.AdamW(again.parameters(), lr=1e-2)
    ids, mask, types = random_batch(config)
    selected = random_positions(mask)
    F.cross_entropy(again(ids, mask, types, positions=selected), ids[selected]).backward()
    optimizer.step()
    assert is_tied(again)
    assert (again.head.decoder.weight - before).abs().max() > 1e-3  # the step moved the one shared tensor


def test_load_state_dict_keeps_the_tie_and_tie_weights_restores_it_after_assign():
    config = TINY_CONFIGS[0]
    source, target = random_masked_lm(config), random_masked_lm(config)
    target.load_state_dict(source.state_dict())
    assert is_tied(target) and torch.equal(target.head.decoder.weight, source.encoder.embeddings.word.weight)
    target.load_state_dict({k: v.clone() for k, v in source.state_dict().items()}, assign=True)
    assert not is_tied(target)  # assign puts a new Parameter in each module
    target.tie_weights()
    assert is_tied(target) and torch.equal(target.head.decoder.weight, source.encoder.embeddings.word.weight)


def test_tied_gradient_is_the_sum_of_the_input_and_output_side_gradients():
    config = TINY_CONFIGS[0]
    tied = random_masked_lm(config)
    untied = copy.deepcopy(tied)
    untied.head.decoder.weight = torch.nn.Parameter(tied.head.decoder.weight.detach().clone())
    ids = torch.randint(config.vocab_size // 2, config.vocab_size, (3, 9))  # the lower half of the vocabulary never occurs
    targets = torch.randint(0, config.vocab_size, (3, 9))
    for model in (tied, untied):
        F.cross_entropy(model(ids).flatten(0, 1), targets.flatten()).backward()
    from_input, from_output = untied.encoder.embeddings.word.weight.grad, untied.head.decoder.weight.grad
    unused = slice(0, config.vocab_size // 2)
    assert from_input[unused].abs().max() == 0 and from_input.abs().max() > 1e-4
    assert from_output[unused].abs().max() > 1e-4
    torch.testing.assert_close(tied.encoder.embeddings.word.weight.grad, from_input + from_output)


def test_saved_decoder_weight_and_bias_are_accepted(tmp_path):
    """Older checkpoints save the tied decoder weight, and `cls.predictions.decoder.bias`, as copies."""
    ours = random_masked_lm(TINY_CONFIGS[0])

    def add_copies(state):
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()

    save_edited(ours, tmp_path, add_copies)
    again = MaskedLM.from_pretrained(tmp_path)
    assert is_tied(again) and torch.equal(again.head.bias, ours.head.bias)


def test_untied_decoder_weight_fails(tmp_path):
    def untie(state):
        state["cls.predictions.decoder.weight"] = torch.randn_like(state["bert.embeddings.word_embeddings.weight"])

    save_edited(random_masked_lm(TINY_CONFIGS[0]), tmp_path, untie)
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight differs from the word embeddings"):
        MaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("key", ["cls.predictions.transform.LayerNorm.weight", "cls.predictions.bias"])
def test_missing_head_key_fails_listing_it(tmp_path, key):
    save_edited(random_masked_lm(TINY_CONFIGS[0]), tmp_path, lambda s: s.pop(key))
    with pytest.raises(ValueError, match=rf"masked-LM head; missing keys \['{key}'\], unexpected keys \[\]"):
        MaskedLM.from_pretrained(tmp_path)


def test_missing_encoder_key_fails_listing_it(tmp_path):
    save_edited(random_masked_lm(TINY_CONFIGS[0]), tmp_path, lambda s: s.pop("bert.encoder.layer.1.output.dense.bias"))
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.1.output.dense.bias'\]"):
        MaskedLM.from_pretrained(tmp_path)


def test_bert_model_folder_fails_naming_from_encoder_which_loads_it(tmp_path):
    encoder = Encoder(TINY_CONFIGS[2])
    encoder.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"missing keys \['cls.predictions.bias', .*MaskedLM.from_encoder\(path\)"):
        MaskedLM.from_pretrained(tmp_path)
    model = MaskedLM.from_encoder(tmp_path)
    assert is_tied(model) and not model.encoder.pooler.dense.weight.requires_grad
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.state_dict().items())
    head = model.head  # BERT's initialisation: zero biases, LayerNorm at identity, N(0, 0.02) dense weight
    assert head.bias.abs().max() == 0 and head.transform.bias.abs().max() == 0
    assert torch.equal(head.norm.weight, torch.ones(64)) and head.norm.bias.abs().max() == 0
    assert 0.015 < head.transform.weight.std() < 0.025
