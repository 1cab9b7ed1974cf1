"""Every way to store the fine-tuned sentiment classifier's Linear weights, against fp32: size, accuracy, speed.

Takes the classifier that `finetune_sentiment.py` trains (all-MiniLM-L6-v2, fine-tuned in full; trained here
first if its folder is missing), runs `quantize` with each method and `evaluate` on the test split:

    python experiments/quant_compare.py --profile quick   # the quick fine-tune's classifier, 500 test sentences: about 2.5 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/quant_compare.py --profile full    # the full fine-tune's classifier (train it on a GPU first)

Reports bits per weight of the quantized layers, the folder's size on disk, test accuracy and its change
against fp32, and the CPU latency of a batch of 32. The classifier head stays fp32, and so do the
embeddings, which hold most of MiniLM's bytes (30,522 × 384 word vectors): the size column says so. Also
the weight error of int4 (per group of 128), NF4 and 4-bit k-means on one real layer, as a histogram
(a PNG when matplotlib is installed, counts in the JSON).

Then Deep Compression's pipeline (`compress`, Han et al. 2016): prune 50% per layer, retrain one epoch
with the masks, cluster the survivors into 15 centroids + 0 (4-bit codes), retrain the centroids one epoch;
the test accuracy after each stage and the paper's storage of the compressed layers (relative indices,
Huffman) with the compression ratios. The quick profile retrains on 500 sentences, the full one on all. The quick
profile's table scores the first 500 test sentences (Deep Compression's stages score them all), the full one all.

Writes runs/quant_compare_<profile>/ and experiments/results/quant_compare.{json,md}; the last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minitransformers.model import SequenceClassifier
from minitransformers.quant import METHODS, kmeans_quantize, quantize_nf4, quantize_uniform
from minitransformers.recipes import compress, evaluate, finetune, quantize
from minitransformers.text.sources import data_dir

from common import device_name, wall_time
from finetune_sentiment import PROFILES as FINETUNE_PROFILES

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "encoder.layers.0.ffn.up.weight"  # (1536, 384): the histogram's real layer
WEIGHT_ERRORS = {  # the 4-bit formats at about the same bits per weight (4.25, 4.5, 4 + 512 / numel)
    "int4 (group 128)": lambda w: quantize_uniform(w, 4, block_size=(1, 128)),
    "nf4 (block 64)": quantize_nf4,
    "kmeans4 (per layer)": lambda w: kmeans_quantize(w, 4),
}

DEEP_COMPRESSION = {"quick": {"max_train_examples": 500}, "full": {}}  # CompressConfig fields; its defaults otherwise
TEST_EXAMPLES = {"quick": 500, "full": 0}  # the test sentences each row scores (EvaluateConfig.max_examples; 0: all)


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=FINETUNE_PROFILES, default="quick")
    parser.add_argument("--model", type=Path, help="the fine-tuned classifier (default: runs/finetune_sentiment_<profile>, trained if missing)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--no-deep-compression", action="store_true", help="skip the prune -> retrain -> cluster -> retrain pipeline")
    args = parser.parse_args()
    root = Path("runs") / f"quant_compare_{args.profile}"
    model = args.model or Path("runs") / f"finetune_sentiment_{args.profile}"
    if not (model / "model.safetensors").is_file():
        finetune.run(finetune.FinetuneConfig(model=str(data_dir("minilm")), data="sentiment", out=str(model), device="cpu", **FINETUNE_PROFILES[args.profile]))

    def score(folder: Path) -> dict:
        return evaluate.run(evaluate.EvaluateConfig(model=str(folder), data="sentiment", device="cpu", max_examples=TEST_EXAMPLES[args.profile]))

    fp32 = score(model)
    rows = [{"method": "fp32", "bits_per_weight": 32.0, "folder_bytes": (model / "model.safetensors").stat().st_size, **pick(fp32)}]
    for method in args.methods:
        out = root / method.replace(":", "_")
        report = quantize.run(quantize.QuantizeConfig(model=str(model), method=method, out=str(out)))
        rows.append({"method": method, "bits_per_weight": report["bits_per_weight"], "folder_bytes": report["folder_bytes"], **pick(score(out))})
        print(f"{method}: accuracy {rows[-1]['accuracy']:.4f}, {report['bits_per_weight']:.2f} bits per weight")

    deep = None
    if not args.no_deep_compression:
        out = root / "deep_compression"
        deep = compress.run(compress.CompressConfig(model=str(model), data="sentiment", out=str(out), device="cpu", **DEEP_COMPRESSION[args.profile]))
        bits = deep["compression"]["total"]
        rows.append({"method": "deep compression", "bits_per_weight": bits["huffman"] / bits["weights"],
                     "folder_bytes": (out / "quantized.safetensors").stat().st_size, **pick(score(out))})  # fmt: skip

    weight = SequenceClassifier.from_pretrained(model).state_dict()[LAYER]
    report = {"profile": args.profile, "model": str(model), "test_sample": TEST_EXAMPLES[args.profile], "rows": rows, "weight_errors": weight_errors(weight), "deep_compression": deep,
              "device_name": device_name("cpu"), "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["png"] = plot(report, RESULTS / f"quant_compare_{args.profile}.png")
    report["wall_seconds"] = time.perf_counter() - start
    path = RESULTS / "quant_compare.json"  # one entry per profile; the markdown is rendered from it
    reports = {**(json.loads(path.read_text()) if path.exists() else {}), args.profile: report}
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS / "quant_compare.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(json.dumps(rows))


def pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "latency_ms_per_batch")}


def weight_errors(w: torch.Tensor, bins: int = 60) -> dict:
    """Each 4-bit format's error on one real weight matrix: MSE, the largest error, and a histogram of
    (dequantized − w) over the range that holds 99.99% of every format's errors (the rest are counted apart)."""
    errors = {name: (quantize_weight(w).dequantize().float() - w).flatten() for name, quantize_weight in WEIGHT_ERRORS.items()}
    edge = max(e.abs().quantile(0.9999).item() for e in errors.values())
    return {
        "layer": LAYER, "shape": list(w.shape), "range": [-edge, edge],
        "mse": {name: e.pow(2).mean().item() for name, e in errors.items()},
        "max_error": {name: e.abs().max().item() for name, e in errors.items()},
        "outside_range": {name: int((e.abs() > edge).sum()) for name, e in errors.items()},
        "histogram": {name: torch.histc(e, bins, -edge, edge).tolist() for name, e in errors.items()},
    }  # fmt: skip


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (size, hist) = plt.subplots(1, 2, figsize=(12, 5))
    points = [(row["folder_bytes"] / 1e6, row["accuracy"], row["method"]) for row in report["rows"]]
    for x, y, _ in points:
        size.scatter(x, y)
    size.margins(x=0.6, y=0.1)
    size.set(xlabel="folder size (MB)", ylabel="test accuracy", title="Accuracy against size")
    label_points(size, points)
    e = report["weight_errors"]
    for name, counts in e["histogram"].items():
        edges = torch.linspace(*e["range"], len(counts) + 1)
        hist.stairs(counts, edges.tolist(), label=f"{name}, MSE {e['mse'][name]:.2e}")
    hist.set(yscale="log", xlabel="dequantized − original weight", ylabel="count", title=f"Weight error on {e['layer']}")
    hist.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def label_points(ax, points: list[tuple[float, float, str]], step: float = 10.0) -> None:
    """Label each (x, y, label) point of a scatter plot without overlaps, the methods of one folder size (int8,
    kmeans8 and w8a8 differ by a few kB) sitting on top of each other: points within 3% of the x axis of each other
    share a column of labels beside them (right of them; left in the axes' right half or where the next group is near), in the order of their y,
    `step` points apart at least and centred on them, with a thin line to each point, so that no two lines cross."""
    ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())  # freeze the limits, so that data -> display is final
    scale = ax.figure.dpi / 72  # display pixels a point
    (x0, _), (x1, _) = ax.transData.transform([(ax.get_xlim()[0], 0), (ax.get_xlim()[1], 0)])
    at = {i: ax.transData.transform(p[:2]) / scale for i, p in enumerate(points)}  # display, in points
    groups: list[list[int]] = []
    for i in sorted(at, key=lambda i: at[i][0]):
        if groups and at[i][0] - at[groups[-1][-1]][0] <= 0.03 * (x1 - x0) / scale:
            groups[-1].append(i)
        else:
            groups.append([i])
    middle = (x0 + x1) / 2 / scale
    for g, group in enumerate(groups):
        group.sort(key=lambda i: at[i][1])
        near = lambda a, b: a >= 0 and b < len(groups) and min(at[i][0] for i in groups[b]) - max(at[i][0] for i in groups[a]) < 100
        crowded = near(g, g + 1) and not near(g - 1, g)  # a column right of it would run into the next group, and the left is free
        heights = []
        for i in group:
            heights.append(at[i][1] if not heights else max(at[i][1], heights[-1] + step))
        centre = sum(at[i][1] for i in group) / len(group) - sum(heights) / len(heights)
        left = at[group[0]][0] > middle or crowded
        column = min(at[i][0] for i in group) - 8 if left else max(at[i][0] for i in group) + 8
        if len(group) > 1:
            column += -12 if left else 12
        for i, height in zip(group, heights):
            x, y, label = points[i]
            offset = (column - at[i][0], height + (centre if len(group) > 1 else 0) - at[i][1])
            line = dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=1, shrinkB=4) if len(group) > 1 else None
            ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, ha="right" if left else "left", va="center",
                        fontsize=8, arrowprops=line)  # fmt: skip


def render(r: dict) -> str:
    base = r["rows"][0]
    e = r["weight_errors"]
    lines = [
        f"# Quantizing the fine-tuned sentiment classifier, {r['profile']} profile",
        "",
        f"Command: `python experiments/quant_compare.py --profile {r['profile']}`; {r['device_name']}, torch {r['torch']}; model `{r['model']}`"
        + (f"; wall time {wall_time(r['wall_seconds'])}." if "wall_seconds" in r else "."),
        "Each method replaces every Linear layer of the encoder and the pooler; the classifier head and the embeddings stay fp32, so the",
        "folder's size falls less than the bits per weight (MiniLM's word vectors alone are 47 MB). Latency: the median forward pass over",
        "a batch of 32 test sentences on the CPU, in the same run for every row."
        + (f" Quick profile: every row scores the first {r['test_sample']} test sentences (Deep Compression's stages below score them all)." if r.get("test_sample") else ""),
        "",
        "| method | bits per weight (quantized layers) | folder size MB | test accuracy | Δ vs fp32 (points) | macro-F1 | CPU ms per batch |",
        "|---|---|---|---|---|---|---|",
        *[f"| {row['method']} | {row['bits_per_weight']:.2f} | {row['folder_bytes'] / 1e6:.1f} | {row['accuracy']:.4f} | "
          f"{100 * (row['accuracy'] - base['accuracy']):+.1f} | {row['macro_f1']:.4f} | {row['latency_ms_per_batch']:.0f} |" for row in r["rows"]],
        "",
        f"Weight error of the 4-bit formats on `{e['layer']}` {tuple(e['shape'])} (the QLoRA paper's claim: NF4 beats uniform 4-bit on normal-like weights):",
        "",
        "| format | MSE | vs int4 | largest error | errors outside the histogram |",
        "|---|---|---|---|---|",
        *[f"| {name} | {mse:.3e} | {mse / next(iter(e['mse'].values())):.2f}× | {e['max_error'][name]:.3f} | {e['outside_range'][name]} |" for name, mse in e["mse"].items()],
        "",
        "k-means with one codebook per layer spends its 16 centroids where most weights are, so the few outlier weights get",
        "far-off centroids (the largest errors); NF4's absmax per block of 64 keeps every outlier exact at its block's scale.",
        "",
        *render_deep_compression(r.get("deep_compression")),
        f"![accuracy against size, and the weight-error histograms](quant_compare_{r['profile']}.png)" if r["png"] else "Install matplotlib for the plots; the histogram counts are in quant_compare.json.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def render_deep_compression(d: dict | None) -> list[str]:
    if d is None:
        return []
    o, c = d["options"], d["compression"]
    base = d["test"]["fine-tuned"]["accuracy"]
    subset = f" --max-train-examples {o['max_train_examples']}" if o["max_train_examples"] else ""
    return [
        f"## Deep Compression (Han et al. 2016): prune {o['sparsity']:.0%} → retrain → cluster ({o['bits']}-bit codes) → retrain the centroids",
        "",
        f"`python -m minitransformers compress --sparsity {o['sparsity']} --bits {o['bits']} --epochs {o['epochs']} --lr {o['lr']} --centroid-lr {o['centroid_lr']}"
        f"{subset}`; each retraining keeps its best epoch on validation.",
        "The pipeline's row in the table above reports the Huffman-coded bits per weight; its folder keeps dense 4-bit codes so that it runs as is.",
        "",
        "| stage | test accuracy | Δ vs fine-tuned (points) |",
        "|---|---|---|",
        *[f"| {stage} | {m['accuracy']:.4f} | {100 * (m['accuracy'] - base):+.1f} |" for stage, m in d["test"].items()],
        "",
        f"Storage of the {len(c['layers'])} compressed layers ({c['total']['weights']:,} weights, density {c['density']:.2f}; {c['index_bits']}-bit relative indices, "
        f"{c['total']['entries'] - c['total']['nonzero']:,} filler entries):",
        "",
        "| stage | MB | bits per weight | compression ratio |",
        "|---|---|---|---|",
        f"| fp32 | {c['total']['dense'] / 8e6:.2f} | 32.00 | 1.0× |",
        *[f"| {label} | {c['total'][key] / 8e6:.2f} | {c['total'][key] / c['total']['weights']:.2f} | {c['ratio'][key]:.1f}× |"
          for key, label in (("pruned", "pruned (fp32 values + indices)"), ("quantized", "+ clustered (codes + indices + codebooks)"), ("huffman", "+ Huffman-coded codes and indices"))],
        "",
        "The paper reaches 35× on AlexNet and 49× on VGG-16 (Table 1), after pruning leaves 11% and 7.5% of their weights. At 50% density",
        "the relative index of an entry costs more bits than its code, and pruning alone saves little: the ratio comes from clustering.",
        "",
    ]  # fmt: skip


if __name__ == "__main__":
    main()
