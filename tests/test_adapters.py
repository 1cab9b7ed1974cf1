"""Bottleneck adapters (Houlsby, Pfeiffer): identity at init, the equation and its placement, what trains,
the parameter count, save/load of the trainable part, and the packed (unpadded) path."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import SequenceClassifier
from minitransformers.peft.adapters import Adapter, add_adapters
from minitransformers.peft.common import count_parameters, load_trainable_state_dict, trainable_state_dict
from conftest import random_batch

CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24)
KINDS = ["houlsby", "pfeiffer"]


def classifier(config=CONFIG, pooling="pooler") -> SequenceClassifier:
    """A random 3-label classifier; LayerNorms and biases randomised so that a dropped one would show."""
    model = SequenceClassifier(Encoder(config), 3, pooling=pooling).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(mean=1.0 if "norm.weight" in name else 0.0, std=0.1)
    return model


def randomise_adapters(model):
    """Nonzero adapter weights, so Δ(h) ≠ 0 and the tests see the adapters act."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name:
                p.normal_(std=0.2)
    return model


def adapters_of(model) -> dict[str, Adapter]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_model_equals_base_at_init(kind):
    """W_up = 0 and b_up = 0 make Δ = 0 exactly: the adapted model starts as the base model, bit for bit."""
    base = classifier()
    adapted = add_adapters(copy.deepcopy(base), kind)
    ids, mask, types = random_batch(CONFIG)
    with torch.no_grad():
        assert torch.equal(adapted(ids, mask, types), base(ids, mask, types))


@pytest.mark.parametrize("non_linearity", ["relu", "gelu", "gelu_new", "swish"])
def test_adapter_computes_h_plus_up_f_down_h(non_linearity):
    """Houlsby's wrapped `attention.out`: y = W x + b, then y + W_up f(W_down y + b_down) + b_up, by hand."""
    model = randomise_adapters(add_adapters(classifier(), "houlsby", non_linearity=non_linearity))
    out = model.encoder.layers[0].attention.out
    a = out.adapter
    f = {
        "relu": lambda t: t.clamp(min=0),
        "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
        "gelu_new": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
        "swish": lambda t: t * torch.sigmoid(t),
    }[non_linearity]
    x = torch.randn(5, 7, CONFIG.hidden_size)
    with torch.no_grad():
        h = x @ out.weight.T + out.bias  # (5, 7, H)
        expected = h + f(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
        assert (out(x) - expected).abs().max() <= 1e-5


def reference_layer(base_layer, adapters: list[Adapter], kind: str, x):
    """The layer with adapters where the papers put them, composed from the unpatched layer's modules."""
    attn = base_layer.attention(x)
    if kind == "houlsby":  # Houlsby, Figure 2: after each output projection, before the add and LayerNorm
        a = base_layer.attention_norm(x + attn + adapters[0](attn))
        h = base_layer.ffn(a)
        return base_layer.ffn_norm(a + h + adapters[1](h))
    a = base_layer.attention_norm(x + attn)  # Pfeiffer: after the FFN's Add & Norm, then the same LayerNorm again
    z = a + base_layer.ffn(a)
    return base_layer.ffn_norm(z + adapters[0](base_layer.ffn_norm(z)))


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_sit_where_the_papers_put_them(kind):
    base = classifier()
    adapted = randomise_adapters(add_adapters(copy.deepcopy(base), kind))
    x = torch.randn(2, 9, CONFIG.hidden_size)
    with torch.no_grad():
        for i, layer in enumerate(adapted.encoder.layers):
            adapters = [m for name, m in adapters_of(adapted).items() if name.startswith(f"encoder.layers.{i}.")]
            expected = reference_layer(base.encoder.layers[i], adapters, kind, x)
            assert (layer(x, None) - expected).abs().max() <= 1e-5


def test_houlsby_puts_two_adapters_per_layer_and_pfeiffer_one():
    houlsby = adapters_of(add_adapters(classifier(), "houlsby"))
    pfeiffer = adapters_of(add_adapters(classifier(), "pfeiffer"))
    layers = range(CONFIG.num_layers)
    assert sorted(houlsby) == sorted(f"encoder.layers.{i}.{m}.adapter" for i in layers for m in ("attention.out", "ffn.down"))
    assert sorted(pfeiffer) == [f"encoder.layers.{i}.ffn_norm.adapter" for i in layers]
    m = CONFIG.hidden_size // 16
    assert all(a.down.weight.shape == (m, CONFIG.hidden_size) and a.up.weight.shape == (CONFIG.hidden_size, m) for a in houlsby.values())


def test_base_parameter_names_are_unchanged():
    """The wrappers keep the wrapped module's weight and bias under its name: a base checkpoint still loads."""
    base = classifier()
    for kind in KINDS:
        adapted = add_adapters(copy.deepcopy(base), kind)
        base_keys = {k for k in adapted.state_dict() if "adapter" not in k}
        assert base_keys == set(base.state_dict())
        assert not adapted.load_state_dict(base.state_dict(), strict=False).unexpected_keys


@pytest.mark.parametrize("kind, train_layernorm", [("houlsby", True), ("houlsby", False), ("pfeiffer", False), ("pfeiffer", True)])
@pytest.mark.parametrize("reduction_factor", [16, 3])
def test_trainable_count_is_adapters_plus_layernorms_plus_head(kind, train_layernorm, reduction_factor):
    model = add_adapters(classifier(pooling="cls"), kind, reduction_factor, train_layernorm=train_layernorm)
    H, L, K = CONFIG.hidden_size, CONFIG.num_layers, 3
    m = H // reduction_factor
    per_adapter = 2 * H * m + m + H
    n_adapters = {"houlsby": 2 * L, "pfeiffer": L}[kind]
    layernorms = (2 * L + 1) * 2 * H if train_layernorm else 0  # embeddings' and two per layer, γ and β
    assert count_parameters(model) == n_adapters * per_adapter + layernorms + K * H + K


def test_layernorm_defaults_follow_the_papers():
    """Houlsby trains the LayerNorms (Figure 2 caption); Pfeiffer's adapters train alone."""
    houlsby, pfeiffer = add_adapters(classifier(), "houlsby"), add_adapters(classifier(), "pfeiffer")
    assert all(p.requires_grad for n, p in houlsby.named_parameters() if "norm" in n)
    assert not any(p.requires_grad for n, p in pfeiffer.named_parameters() if "norm" in n and "adapter" not in n)


@pytest.mark.parametrize("kind", KINDS)
def test_only_adapters_layernorms_and_head_train_and_the_base_stays_bit_identical(kind):
    model = add_adapters(classifier(), kind).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = ("classifier.", "encoder.pooler.")  # this classifier pools with BERT's pooler, part of the head
    assert all("adapter" in n or "norm" in n or n.startswith(head) for n in trainable)
    assert {n for n in trainable if "adapter" in n} == {n for n in before if "adapter" in n}

    ids, mask, types = random_batch(CONFIG)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(model(ids, mask, types), torch.tensor([0, 1, 2, 0])).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)
    assert all(not torch.equal(after[n], before[n]) for n in trainable if n.endswith("adapter.up.weight"))


@pytest.mark.parametrize("kind", KINDS)
def test_trainable_state_dict_round_trip_onto_a_fresh_base_gives_the_same_logits(kind):
    base = classifier()
    trained = randomise_adapters(add_adapters(copy.deepcopy(base), kind, reduction_factor=4))
    with torch.no_grad():
        trained.classifier.weight.normal_()
    saved = trainable_state_dict(trained)
    assert all("adapter" in k or "norm" in k or k.startswith(("classifier.", "encoder.pooler.")) for k in saved)
    fresh = load_trainable_state_dict(add_adapters(copy.deepcopy(base), kind, reduction_factor=4), saved)
    ids, mask, types = random_batch(CONFIG)
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask, types), trained(ids, mask, types))
        assert not torch.equal(fresh(ids, mask, types), base(ids, mask, types))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_tokens_give_the_same_logits_as_padded(kind):
    """With config.unpad the adapters see (N, H) real tokens instead of (B, T, H); the function is the same."""
    padded = randomise_adapters(add_adapters(classifier(pooling="mean"), kind))
    packed = add_adapters(classifier(dataclasses.replace(CONFIG, unpad=True), pooling="mean"), kind)
    packed.load_state_dict(padded.state_dict())
    ids, mask, types = random_batch(CONFIG, B=5, T=13)
    with torch.no_grad():
        assert (packed(ids, mask, types) - padded(ids, mask, types)).abs().max() <= 1e-5


def test_bad_options_fail_saying_what_to_use():
    with pytest.raises(ValueError, match=r"unknown adapter kind 'lora'; use 'houlsby' \(two adapters per layer\) or 'pfeiffer'"):
        add_adapters(classifier(), "lora")
    with pytest.raises(ValueError, match=r"reduction_factor 64 leaves no bottleneck for hidden size 32 .*use a reduction_factor between 1 and 32"):
        add_adapters(classifier(), reduction_factor=64)
    with pytest.raises(ValueError, match="reduction_factor 0 leaves no bottleneck"):
        add_adapters(classifier(), reduction_factor=0)
    with pytest.raises(ValueError, match=r"unknown non_linearity 'tanh'; use one of \['gelu', 'gelu_new', 'relu', 'swish'\]"):
        add_adapters(classifier(), non_linearity="tanh")
    model = add_adapters(classifier())
    with pytest.raises(ValueError, match=r"cannot add adapters: expected a base model without a parameter-efficient method, found SequenceClassifier prepared with adapters \(AdaptedLinear\).*remove_adapters\(model\)"):
        add_adapters(model, "pfeiffer")
    with pytest.raises(ValueError, match="Linear has no EncoderLayer"):
        add_adapters(torch.nn.Linear(4, 4))
