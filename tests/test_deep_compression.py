"""Deep Compression (Han, Mao & Dally 2016): the zero-keeping clustering of a pruned weight, the relative-index
stream decoded back to the codes, Huffman lengths against a textbook example and the entropy bounds, and the
`compress` pipeline end to end on a tiny model: zeros stay zero, the saved folder gives the trained logits."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import finetune_argv
from torch import nn

from minitransformers.cli import main
from minitransformers.model import SequenceClassifier
from minitransformers.quant import ClusteredLinear, kmeans_quantize, load_quantized
from minitransformers.quant.deep_compression import cluster_model, compression_report, huffman_bits, layer_storage, relative_index
from minitransformers.quant.prune import magnitude_masks
from minitransformers.quant.qlinear import WeightOnlyLinear
from minitransformers.text.tokenizer import Tokenizer


def pruned_weight(rows=48, cols=40, sparsity=0.6, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return w * (torch.rand(rows, cols, generator=g) >= sparsity)


# --- clustering that keeps the zeros -------------------------------------------------------------------------------


def test_keep_zero_gives_code_0_to_exactly_the_zeros_and_clusters_the_rest():
    w = pruned_weight()
    q = kmeans_quantize(w, bits=3, keep_zero=True)
    assert q.codebook.shape == (8,) and q.codebook[0] == 0
    assert torch.equal(q.codes == 0, w == 0)
    assert torch.equal(q.dequantize() == 0, w == 0)
    nonzero, codes = w[w != 0], q.codes[w != 0].long()
    for k in range(1, 8):  # Lloyd's fixed point on the nonzeros: each centroid is its cluster's mean ...
        assert torch.isclose(q.codebook[k], nonzero[codes == k].mean(), atol=1e-5)
    distances = (nonzero[:, None] - q.codebook[1:][None]).abs()  # ... and each nonzero sits at its nearest centroid
    assert torch.equal(distances.argmin(1) + 1, codes)


def test_keep_zero_refuses_per_channel_one_bit_and_an_all_zero_weight():
    with pytest.raises(ValueError, match="per_channel=False"):
        kmeans_quantize(pruned_weight(), bits=4, per_channel=True, keep_zero=True)
    with pytest.raises(ValueError, match="bits ≥ 2"):
        kmeans_quantize(pruned_weight(), bits=1, keep_zero=True)
    with pytest.raises(ValueError, match="all zeros"):
        kmeans_quantize(torch.zeros(4, 4), bits=2, keep_zero=True)


def test_training_the_centroids_leaves_pruned_weights_exactly_zero():
    base = nn.Linear(40, 48)
    with torch.no_grad():
        base.weight.copy_(pruned_weight())
    layer = ClusteredLinear(base, bits=4, keep_zero=True)
    assert layer.codebook.shape == (15,)  # the 0 is not a parameter
    optimizer = torch.optim.AdamW([layer.codebook], lr=0.05, weight_decay=0.1)
    for step in range(5):
        optimizer.zero_grad()
        x = torch.randn(16, 40, generator=torch.Generator().manual_seed(step))
        F.mse_loss(layer(x), torch.randn(16, 48, generator=torch.Generator().manual_seed(100 + step))).backward()
        optimizer.step()
    assert torch.equal(layer.weight == 0, base.weight == 0)
    assert torch.equal(layer.quantized().dequantize(), layer.weight.detach())


# --- the storage format: relative indices and Huffman coding -------------------------------------------------------


@pytest.mark.parametrize("index_bits", [1, 2, 3, 5])
def test_the_relative_index_stream_decodes_back_to_the_codes(index_bits):
    codes = (torch.rand(37, 29, generator=torch.Generator().manual_seed(index_bits)) < 0.15) * torch.randint(1, 16, (37, 29))
    stored, gaps = relative_index(codes, index_bits)
    assert gaps.min() >= 1 and gaps.max() <= 2**index_bits  # each gap fits in r bits (stored as gap − 1)
    decoded = torch.zeros(codes.numel(), dtype=torch.long)
    decoded[gaps.cumsum(0) - 1] = stored  # the entry positions; fillers write a 0 where the weight is 0 anyway
    assert torch.equal(decoded, codes.flatten())
    assert stored.numel() == int((codes != 0).sum()) + int((stored == 0).sum())  # every code-0 entry is a filler


def test_relative_index_worked_example():
    # 3-bit gaps (span 8), nonzeros at positions 1, 4 and 15: gaps 2 and 3, then 15 − 4 = 11 > 8 needs a filler at 12
    codes = torch.zeros(16, dtype=torch.long)
    codes[[1, 4, 15]] = torch.tensor([3, 4, 7])
    stored, gaps = relative_index(codes, 3)
    assert gaps.tolist() == [2, 3, 8, 3] and stored.tolist() == [3, 4, 0, 7]


def test_huffman_length_of_the_textbook_example():
    # Cormen et al., Introduction to Algorithms (3rd ed.), section 16.3, Figure 16.3: frequencies 45, 13, 12, 16, 9, 5
    # (thousands) need 224,000 bits with the optimal prefix code
    symbols = torch.repeat_interleave(torch.arange(6), torch.tensor([45, 13, 12, 16, 9, 5]) * 1000)
    assert huffman_bits(symbols) == 224_000
    assert huffman_bits(torch.full((10,), 3)) == 10  # one symbol: a bit each


def test_huffman_length_lies_within_one_bit_per_symbol_of_the_entropy():
    symbols = torch.multinomial(torch.tensor([0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02]), 20_000, replacement=True)
    p = torch.bincount(symbols).double() / symbols.numel()
    entropy = -(p * p.log2()).sum().item() * symbols.numel()
    assert entropy <= huffman_bits(symbols) < entropy + symbols.numel()


def test_layer_storage_counts_each_stage_as_the_docstring_says():
    base = nn.Linear(40, 48)
    with torch.no_grad():
        base.weight.copy_(pruned_weight())
    layer = ClusteredLinear(base, bits=4, keep_zero=True)
    stored, gaps = relative_index(layer.codes, 5)
    bits = layer_storage(layer, index_bits=5)
    assert bits["dense"] == 32 * 48 * 40 and bits["nonzero"] == int((base.weight != 0).sum())
    assert bits["entries"] == stored.numel() >= bits["nonzero"]
    assert bits["pruned"] == bits["entries"] * 37 and bits["quantized"] == bits["entries"] * 9 + 16 * 32
    assert bits["huffman"] <= bits["quantized"]  # Huffman never needs more than the fixed-length code


# --- the pipeline --------------------------------------------------------------------------------------------------


def test_cluster_model_freezes_all_but_the_centroids_and_keeps_the_zeros(tiny):  # noqa: F811
    model = SequenceClassifier.from_encoder(tiny / "model", 2, pooling="cls")
    with torch.no_grad():
        for name, mask in magnitude_masks(model, 0.5).items():
            model.get_parameter(name).mul_(mask)
    names = cluster_model(model, bits=3)
    assert len(names) == 2 * 6 + 1 and "classifier" not in names  # q, k, v, out, up, down per layer and the pooler
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{n}.codebook" for n in names}
    report = compression_report(model)
    assert report["density"] == pytest.approx(0.5, abs=1e-3) and report["ratio"]["huffman"] > report["ratio"]["pruned"]


def test_compress_cli_prunes_clusters_retrains_and_saves_what_it_scored(tiny, tmp_path, capsys):  # noqa: F811
    finetuned = tmp_path / "ft"
    main(finetune_argv(tiny, finetuned, "--epochs", "3", "--pooling", "cls"))
    out = tmp_path / "dc"
    main(["compress", "--model", str(finetuned), "--data", str(tiny / "reviews.csv"), "--out", str(out),
          "--lr", "1e-3", "--centroid-lr", "1e-2", "--batch-size", "8", "--device", "cpu", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report["test"]) == ["fine-tuned", "pruned", "pruned, retrained", "clustered", "clustered, centroids retrained"]
    assert report["compression"]["density"] == pytest.approx(0.5, abs=1e-3)
    assert report["test"]["clustered, centroids retrained"]["accuracy"] >= report["test"]["fine-tuned"]["accuracy"] - 0.2
    assert not any(p.is_dir() for p in out.iterdir())  # the retrainings ran in memory: no stage folder, no checkpoint
    for stage in ("prune", "centroids"):  # their logs, one row per step and one per evaluation (the epoch end)
        rows = [json.loads(line) for line in (out / f"train_{stage}.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == list(range(1, len(steps) + 1)) and [r["step"] for r in rows if "validation_accuracy" in r] == [steps[-1]]

    model = load_quantized(out).eval()
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    assert len(layers) == 13 and all(m.layout["format"] == "kmeans" and m.layout["bits"] == 4 for m in layers)
    assert all((m.dequantize() == 0).float().mean() == pytest.approx(0.5, abs=1e-3) for m in layers)  # the pruned weights
    main(["evaluate", "--model", str(out), "--data", str(tiny / "reviews.csv"), "--device", "cpu", "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy"] == report["test"]["clustered, centroids retrained"]["accuracy"]  # saved = scored
    batch = Tokenizer.from_pretrained(out)(["great film", "awful plot"])
    assert model(**batch).shape == (2, 2)
