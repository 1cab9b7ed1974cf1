"""Padding removal (model/unpad.py): the packed path computes what the padded path does, forward and backward,
and what `transformers.BertModel` does, on the real tokens."""

import dataclasses

import pytest
import torch

from minitransformers import Encoder
from minitransformers.model.unpad import Packing
from conftest import TINY_CONFIGS, hf_bert, random_batch


def test_pack_then_unpack_keeps_real_tokens_and_zeros_padding():
    _, mask, _ = random_batch(TINY_CONFIGS[0], B=5, T=9)
    mask[2] = 0  # a fully padded row
    x = torch.randn(5, 9, 3)
    packing = Packing.from_mask(mask)
    packed = packing.pack(x)
    assert packed.shape == (int(mask.sum()), 3)
    assert torch.equal(packed, x[mask.bool()])  # row-major order, as boolean indexing gives
    assert torch.equal(packing.unpack(packed), x * mask[..., None])
    assert torch.equal(packing.pack(packing.unpack(packed)), packed)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_unpadded_encoder_matches_padded_forward_and_gradients(impl):
    config = dataclasses.replace(TINY_CONFIGS[1], attn_impl=impl, hidden_dropout=0.0, attention_dropout=0.0)
    padded = Encoder(config)
    unpadded = Encoder(dataclasses.replace(config, unpad=True))
    unpadded.load_state_dict(padded.state_dict())
    ids, mask, types = random_batch(config, B=6, T=13)
    real = mask.bool()
    weights = torch.randn(6, 13, config.hidden_size)  # a random loss on the real tokens' states
    outputs = []
    for model in (padded, unpadded):
        hidden = model(ids, mask, types)
        (hidden[real] * weights[real]).sum().backward()
        outputs.append(hidden)
    assert (outputs[0] - outputs[1])[real].abs().max() <= 1e-5
    assert torch.equal(outputs[1][~real], torch.zeros_like(outputs[1][~real]))
    for (name, a), (_, b) in zip(padded.named_parameters(), unpadded.named_parameters()):
        if name.startswith("pooler."):  # not on the path to the loss
            continue
        scale = a.grad.abs().max().clamp(min=1.0)
        assert (a.grad - b.grad).abs().max() <= 1e-5 * scale, name


def test_unpadded_encoder_matches_hf_bert_on_real_tokens(tmp_path):
    config = TINY_CONFIGS[0]
    hf = hf_bert(config)
    hf.save_pretrained(tmp_path)
    ours = Encoder.from_pretrained(tmp_path, unpad=True).eval()
    ids, mask, types = random_batch(config)
    mask[2] = 0  # a fully padded row: it packs to nothing and comes back as zeros, not NaN
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        hidden = ours(ids, mask, types)
    real = mask.bool()
    assert (hidden - expected)[real].abs().max() <= 1e-5
    assert torch.isfinite(hidden).all()
