"""Pruning (quant/prune.py): magnitude masks keep exactly round(s·n) zeros per layer or under one global threshold
(Han et al. 2015); 2:4 keeps the two largest of every four (Mishra et al. 2021); removing heads and FFN neurons
equals zeroing their output columns and removes the closed-form parameter count (Michel et al. 2019); masks hold
under AdamW with weight decay; the cubic schedule is Zhu & Gupta's eq. 1; the report counts what we count here."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import SequenceClassifier
from minitransformers.quant.prune import (
    GradualPruner,
    apply_masks,
    cubic_sparsity,
    head_importance,
    magnitude_masks,
    neuron_importance,
    nm_mask,
    nm_masks,
    prune_ffn_neurons,
    prune_heads,
    prune_structured,
    remove_masks,
    sparsity_report,
    sparsity_table,
)

CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24)
H, HD, I = CONFIG.hidden_size, CONFIG.head_dim, CONFIG.intermediate_size


def classifier(**overrides) -> SequenceClassifier:
    """A random classifier whose biases are nonzero, so a dropped or misplaced bias shows."""
    config = EncoderConfig(**{**CONFIG.__dict__, **overrides})
    model = SequenceClassifier(Encoder(config), 3, pooling="pooler").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return model


def random_batch(B=4, T=11):
    """Random ids, token types, labels, and padding of different lengths per row (one row unpadded)."""
    ids = torch.randint(0, CONFIG.vocab_size, (B, T))
    types = torch.randint(0, CONFIG.type_vocab_size, (B, T))
    lengths = torch.tensor([T] + torch.randint(1, T, (B - 1,)).tolist())
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    return ids, mask, types, torch.randint(0, 3, (B,))


def logits(model, batch):
    ids, mask, types, _ = batch
    with torch.no_grad():
        return model(ids, mask, types)


def loss_fn(model, batch):
    ids, mask, types, labels = batch
    return F.cross_entropy(model(ids, mask, types), labels)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weight(model, name):
    return model.get_submodule(name.rpartition(".")[0]).weight


# --- unstructured magnitude pruning ------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_layer_scope_zeros_exactly_round_s_n_smallest_of_every_matrix(sparsity):
    model = classifier()
    masks = magnitude_masks(model, sparsity)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(masks) == linear - {"classifier.weight"}  # the head is skipped by default
    for name, keep in masks.items():
        w = weight(model, name).detach().abs()
        assert keep.shape == w.shape and keep.dtype == torch.bool
        assert int((~keep).sum()) == round(sparsity * w.numel())
        if 0 < sparsity < 1:
            assert w[~keep].max() <= w[keep].min()  # the smallest fall


def test_ties_still_give_the_exact_count_and_rounding_is_half_to_even():
    """Magnitudes drawn from {0, …, 3}: every threshold sits inside a run of equal values."""
    w = torch.randint(-3, 4, (8, 10)).float()
    keep = magnitude_masks({"a.weight": w}, 0.3)["a.weight"]
    assert int((~keep).sum()) == 24
    assert w.abs()[~keep].max() <= w.abs()[keep].min()
    w = torch.randn(4, 5)  # 0.125 · 20 = 2.5 rounds to 2, as Python's round does
    assert int((~magnitude_masks({"b.weight": w}, 0.125)["b.weight"]).sum()) == 2


def test_global_threshold_is_the_kth_smallest_magnitude_over_all_weights():
    model = classifier()
    with torch.no_grad():
        model.encoder.layers[0].ffn.up.weight.mul_(10)  # one loud matrix: a global threshold spares it
    masks = magnitude_masks(model, 0.6, scope="global")
    every = torch.cat([weight(model, n).detach().abs().flatten() for n in masks])  # (N,)
    k = round(0.6 * every.numel())
    threshold = every.kthvalue(k).values
    pruned = torch.cat([weight(model, n).detach().abs()[~m] for n, m in masks.items()])
    kept = torch.cat([weight(model, n).detach().abs()[m] for n, m in masks.items()])
    assert pruned.numel() == k
    assert pruned.max() == threshold and kept.min() >= threshold
    sparsity = {n: (~m).float().mean().item() for n, m in masks.items()}
    assert sparsity.pop("encoder.layers.0.ffn.up.weight") < 0.15  # one threshold for all: the loud layer keeps most
    assert min(sparsity.values()) > 0.6


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_keeps_exactly_the_n_largest_of_every_m_consecutive_inputs(n, m):
    w = torch.randn(16, 32)
    keep = nm_mask(w, n, m)
    groups, kept = w.abs().view(16, 32 // m, m), keep.view(16, 32 // m, m)  # (out, in/m, m)
    assert (kept.sum(-1) == n).all()
    largest = groups.topk(n, dim=-1).values.min(-1).values  # (out, in/m): the n-th largest
    smallest_kept = torch.where(kept, groups, torch.inf).min(-1).values
    assert torch.equal(smallest_kept, largest)


def test_two_four_masks_on_a_model_leave_every_masked_matrix_exactly_half_zero():
    model, batch = classifier(), random_batch()
    masks = nm_masks(model, skip=("classifier", "down"))  # ffn.down has 37 inputs, not a multiple of 4
    apply_masks(model, masks)
    rows = {r.name: r for r in sparsity_report(model)}
    assert all(rows[name].zeros * 2 == rows[name].total for name in masks)
    assert torch.isfinite(logits(model, batch)).all()


def test_n_m_refuses_in_features_not_a_multiple_of_m():
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        nm_mask(torch.randn(8, 10))


# --- structured: heads and FFN neurons ---------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(attn_impl="sdpa"), dict(attn_impl="eager"), dict(unpad=True)], ids=["sdpa", "eager", "unpad"])
def test_pruning_heads_equals_zeroing_their_out_projection_columns(overrides):
    model, batch = classifier(**overrides), random_batch()
    heads = {0: [1, 3], 1: [2]}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, hs in heads.items():
            for h in hs:
                zeroed.encoder.layers[layer].attention.out.weight[:, h * HD : (h + 1) * HD] = 0  # ξ_h = 0
    prune_heads(model, heads)
    assert [l.attention.num_heads for l in model.encoder.layers] == [2, 3]
    assert model.encoder.layers[0].attention.query.weight.shape == (2 * HD, H)
    assert (logits(model, batch) - logits(zeroed, batch)).abs().max() <= 1e-5


def test_pruning_heads_removes_the_closed_form_number_of_parameters():
    """h heads of size d from width H: 3(H·h·d + h·d) rows of Q, K, V with biases, H·h·d columns of W_O."""
    model = classifier()
    before = n_params(model)
    prune_heads(model, {0: [0], 1: [0, 1, 3]})
    removed = sum(3 * (H * h * HD + h * HD) + H * h * HD for h in (1, 3))
    assert before - n_params(model) == removed == 4192


def test_pruning_ffn_neurons_equals_zeroing_their_down_columns_and_removes_2H_plus_1_each():
    model, batch = classifier(), random_batch()
    neurons = {0: [0, 5, 36], 1: list(range(0, 37, 2))}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, ns in neurons.items():
            zeroed.encoder.layers[layer].ffn.down.weight[:, ns] = 0
    before = n_params(model)
    prune_ffn_neurons(model, neurons)
    assert (logits(model, batch) - logits(zeroed, batch)).abs().max() <= 1e-5
    assert before - n_params(model) == (3 + 19) * (2 * H + 1)
    assert model.encoder.layers[1].ffn.up.weight.shape == (18, H) and model.encoder.layers[1].ffn.down.weight.shape == (H, 18)


def test_a_structurally_pruned_model_saves_smaller_and_reloads_to_the_same_logits(tmp_path):
    model, batch = classifier(), random_batch()
    prune_heads(model, {0: [1], 1: [0, 2, 3]})
    prune_ffn_neurons(model, {0: [4, 9], 1: list(range(20))})
    model.save_pretrained(tmp_path)
    loaded = SequenceClassifier.from_pretrained(tmp_path).eval()
    assert [layer.attention.num_heads for layer in loaded.encoder.layers] == [3, 1]
    assert [layer.ffn.up.out_features for layer in loaded.encoder.layers] == [35, 17]
    assert n_params(loaded) == n_params(model) and torch.equal(logits(loaded, batch), logits(model, batch))
    encoder = Encoder.from_pretrained(tmp_path).eval()  # the encoder alone, from the same folder
    ids, mask, types, _ = batch
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask, types), model.encoder(ids, mask, types))


def test_pruning_every_head_or_a_missing_one_is_refused():
    model = classifier()
    with pytest.raises(ValueError, match="keep at least one"):
        prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(IndexError, match="out of range"):
        prune_heads(model, {1: [4]})
    with pytest.raises(IndexError, match="layer 2 does not exist"):
        prune_ffn_neurons(model, {2: [0]})


def gate_loss(model, batches, linear_of, columns, eps):
    """Mean over batches of |(L(ξ = 1 + ε) − L(ξ = 1 − ε)) / 2ε|, the gate realised by scaling `columns` of W."""
    slopes = []
    for batch in batches:
        values = []
        for sign in (1, -1):
            scaled = copy.deepcopy(model)
            with torch.no_grad():
                linear_of(scaled).weight[:, columns] *= 1 + sign * eps
                values.append(loss_fn(scaled, batch))
        slopes.append(abs((values[0] - values[1]) / (2 * eps)))
    return sum(slopes) / len(slopes)


def test_gradient_scores_are_the_derivatives_of_the_loss_in_the_gates():
    """Reference: central differences in float64 of the loss in ξ_h (a head) and ξ_i (a neuron), E over 2 batches."""
    model, batches = classifier().double(), [random_batch(), random_batch()]
    heads, neurons = head_importance(model, loss_fn, batches), neuron_importance(model, loss_fn, batches)
    assert [s.shape for s in heads] == [(4,), (4,)] and [s.shape for s in neurons] == [(I,), (I,)]
    for layer, h in [(0, 2), (1, 0)]:
        out = lambda m: m.encoder.layers[layer].attention.out  # noqa: E731
        expected = gate_loss(model, batches, out, slice(h * HD, (h + 1) * HD), 1e-3)
        assert abs(heads[layer][h] - expected) <= 1e-6 * expected
    down = lambda m: m.encoder.layers[1].ffn.down  # noqa: E731
    expected = gate_loss(model, batches, down, [7], 1e-3)
    assert abs(neurons[1][7] - expected) <= 1e-6 * expected
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def test_weight_scores_are_the_out_columns_norm_and_up_row_times_down_column_norms():
    model = classifier()
    a, ffn = model.encoder.layers[1].attention, model.encoder.layers[1].ffn
    expected_heads = torch.stack([a.out.weight[:, h * HD : (h + 1) * HD].norm() for h in range(4)])
    expected_neurons = torch.stack([ffn.up.weight[i].norm() * ffn.down.weight[:, i].norm() for i in range(I)])
    torch.testing.assert_close(head_importance(model)[1], expected_heads.detach())
    torch.testing.assert_close(neuron_importance(model)[1], expected_neurons.detach())


@pytest.mark.parametrize("gradients", [False, True], ids=["weight-norm", "gradient"])
def test_prune_structured_removes_the_lowest_scored_fraction_of_every_layer(gradients):
    model, batches = classifier(), [random_batch()]
    scoring = dict(loss_fn=loss_fn, batches=batches) if gradients else {}
    head_scores, neuron_scores = head_importance(model, **scoring), neuron_importance(model, **scoring)
    before = n_params(model)
    heads, neurons = prune_structured(model, head_fraction=0.5, neuron_fraction=0.25, **scoring)
    for layer in range(2):
        assert heads[layer] == sorted(head_scores[layer].argsort()[:2].tolist())  # round(0.5 · 4) = 2
        assert neurons[layer] == sorted(neuron_scores[layer].argsort()[:9].tolist())  # round(0.25 · 37) = 9
    removed = 2 * (3 * (H * 2 * HD + 2 * HD) + H * 2 * HD) + 2 * 9 * (2 * H + 1)
    assert before - n_params(model) == removed
    assert logits(model, random_batch()).shape == (4, 3)


# --- masks during fine-tuning ------------------------------------------------------------------------------------


def test_masked_weights_stay_exactly_zero_under_adamw_with_weight_decay():
    model = classifier().train()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    before = {n: weight(model, n).detach().clone() for n in masks}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        loss_fn(model, random_batch()).backward()
        optimizer.step()
    for name, keep in masks.items():
        w = weight(model, name).detach()
        assert (w[~keep] == 0).all()
        assert not torch.equal(w[keep], before[name][keep])  # the rest trained
    model.eval()
    batch = random_batch()
    masked_logits = logits(model, batch)
    remove_masks(model)
    assert all(type(model.get_submodule(n.rpartition(".")[0])) is nn.Linear for n in masks)
    for name, keep in masks.items():
        assert isinstance(weight(model, name), nn.Parameter) and (weight(model, name)[~keep] == 0).all()
    torch.testing.assert_close(logits(model, batch), masked_logits, rtol=0, atol=0)


def test_cubic_schedule_is_zhu_gupta_eq_1():
    s_i, s_f, t0, end = 0.1, 0.9, 100, 500
    s = lambda t: cubic_sparsity(t, s_i, s_f, t0, end)  # noqa: E731
    assert s(0) == s(t0) == pytest.approx(s_i) and s(end) == s(10_000) == s_f
    assert s(300) == pytest.approx(s_f + (s_i - s_f) / 8)  # halfway: (1 − 1/2)³ = 1/8 of the gap left
    assert s(200) == pytest.approx(s_f + (s_i - s_f) * 0.75**3)
    values = [s(t) for t in range(0, 600, 10)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert s(200) - s(100) > s(500) - s(400)  # fast at first, slowly at the end


def test_gradual_pruner_sets_each_scheduled_sparsity_and_zeros_stay_between_updates():
    """Masks change while AdamW's moments are nonzero: w ⊙ m must still hold the newly pruned weights at zero."""
    model = classifier().train()
    pruner = GradualPruner(model, final=0.8, start=2, end=8, every=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    names, target = None, 0.0
    for t in range(10):
        optimizer.zero_grad()
        loss_fn(model, random_batch()).backward()
        optimizer.step()
        if (set_to := pruner.step(t)) is not None:
            target = set_to
            assert target == cubic_sparsity(t, 0.0, 0.8, 2, 8)
        names = names or list(magnitude_masks(model, 0.0))
        for name in names:
            w = weight(model, name)
            assert int((w == 0).sum()) == round(target * w.numel())
    assert target == 0.8


def test_sparsity_report_counts_the_zeros_counted_here():
    model = classifier()
    apply_masks(model, magnitude_masks(model, 0.7, scope="global"))
    rows = sparsity_report(model)
    linear = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert [r.name for r in rows] == list(linear)
    for row in rows:
        w = linear[row.name]
        zeros = sum(1 for v in w.detach().flatten().tolist() if v == 0.0)
        assert (row.shape, row.zeros, row.total, row.sparsity) == (tuple(w.shape), zeros, w.numel(), zeros / w.numel())
    assert sparsity_report(model)[-1].zeros == 0  # the classifier was skipped
    zeros, total = sum(r.zeros for r in rows), sum(r.total for r in rows)
    assert sparsity_table(model).splitlines()[-1] == f"| total | | {zeros} | {total} | {100 * zeros / total:.2f}% |"
