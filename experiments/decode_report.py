"""The Markdown report of experiments/decode_bench.py: a section for each config and batch (the modes' table, the ratios
to their peers, the linear layers timed alone), and first the goals of issue 21 (goal 2) that the run measured, each
marked met or missed with its ratio. The JSON beside it holds the same numbers."""

from __future__ import annotations


GOALS = [  # issue 21, goal 2: (config, the goal, the mode, what it is set against: a mode, or None for the copy rate, the ratio to reach)
    ("llama-8b", "bf16 at ≥ 80% of the copy rate", "ours compiled", None, 0.8),
    ("llama-8b", "int4 ≥ 2.5× our bf16", "ours int4 compiled", "ours compiled", 2.5),
    ("llama-8b", "NF4 (double-quantized) ≥ 2× our bf16", "ours nf4 compiled", "ours compiled", 2.0),
    ("smollm2", "bf16 ≥ 30× transformers' eager generate", "ours compiled", "transformers eager", 30.0),
    ("smollm2", "bf16 ≥ transformers' static cache + compile", "ours compiled", "transformers static+compile", 1.0),
]


def shape(config: dict) -> str:
    return (f"{config['num_layers']} layers × {config['hidden_size']}, {config['num_heads']} / {config['num_kv_heads']} heads, FFN {config['intermediate_size']}, "
            f"vocab {config['vocab_size']}, {'tied' if config['tie_word_embeddings'] else 'untied'}")  # fmt: skip


def number(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def table(rows: list[dict], new_tokens: int) -> list[str]:
    lines = ["| mode | tokens / s | ms / step | MB read a step | implied GB/s | of copy rate | × peer | leading tokens as ours eager "
             "| vs its dequantized twin: logits error, leading tokens | GPU kernels a step | their ms a step (matmuls) | note |", "|" + "---|" * 12]  # fmt: skip
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['status']} | | | | | | | | | | {r['note']} |")
            continue
        peer = f"{r['vs_peer']:.2f} × {r['peer']}" if "vs_peer" in r else ""
        same = "n/a" if r["leading_tokens_as_ours_eager"] is None else f"{r['leading_tokens_as_ours_eager']}/{new_tokens}"
        twin = f"{r['twin_logits_error']:.1e}, {r['twin_leading_tokens']}/{r['twin_tokens']}" if "twin_tokens" in r else ""
        kernels = f"{r['kernels_per_step']:.0f}" if "kernels_per_step" in r else ""
        kernel_ms = f"{r['kernel_ms_per_step']:.3g} ({r['matmul_ms_per_step']:.3g})" if "kernel_ms_per_step" in r else ""
        lines.append(f"| {r['mode']} | {number(r['tokens_per_s'])} | {number(r['ms_per_step'])} | {number(r['bytes_per_step'] / 1e6)} | {number(r['implied_GBps'])} "
                     f"| {number(100 * r['of_copy_rate'])}% | {peer} | {same} | {twin} | {kernels} | {kernel_ms} | {r['note']} |")  # fmt: skip
    return lines


def linear_table(linears: dict[str, list[dict]], rows: list[dict]) -> list[str]:
    """The linear layers alone at the step's shapes (decode_breakdown.linear_times), a column a compiled mode."""
    modes = list(linears)
    lines = ["| in → out | layers a step | " + " | ".join(f"{m}: µs a call (GB/s)" for m in modes) + " |", "|" + "---|" * (2 + len(modes))]
    by_shape = {(r["in"], r["out"]): {} for found in linears.values() for r in found}
    for mode, found in linears.items():
        for r in found:
            by_shape[r["in"], r["out"]][mode] = r
    for (k, n), found in by_shape.items():
        count = next(iter(found.values()))["layers"]
        cells = [f"{found[m]['us']:.1f} ({found[m]['GBps']:,.0f})" if m in found else "" for m in modes]
        lines.append(f"| {k} → {n} | {count} | " + " | ".join(cells) + " |")
    measured = {r["mode"]: r["ms_per_step"] for r in rows if r["status"] == "ok"}
    sums = [f"{m} {sum(r['us'] * r['layers'] for r in found) / 1e3:.3g} ms of {number(measured[m]) if m in measured else 'n/a'}" for m, found in linears.items()]
    return lines + ["", "The linear layers alone, summed over a step, against the measured step: " + "; ".join(sums) + "."]


def ratios(rows: list[dict]) -> str:
    found = [f"{r['mode']} / {r['peer']} {r['vs_peer']:.2f}" for r in rows if "vs_peer" in r]
    return "Ratios of tokens/s: " + ("; ".join(found) if found else "n/a") + "."


def goal_lines(results: dict) -> list[str]:
    lines = []
    for result in results.values():
        rows = {r["mode"]: r for r in result.get("rows", []) if r["status"] == "ok"}
        for config, goal, mode, reference, target in GOALS:
            if result["name"] != config or mode not in rows or (reference is not None and reference not in rows):
                continue
            ratio = rows[mode]["of_copy_rate"] if reference is None else rows[mode]["tokens_per_s"] / rows[reference]["tokens_per_s"]
            measured = f"{100 * ratio:.1f}% of the copy rate" if reference is None else f"{ratio:.2f}×"
            lines.append(f"- {config}, batch {result['batch']}: {goal}: **{'met' if ratio >= target else 'missed'}**, {measured}")
    return lines


def report(meta: dict, results: dict) -> str:
    lines = [
        f"# Decode speed: {meta['device']}",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}, transformers {meta['transformers']}; {meta['device']}.",
        f"Profile: {meta['profile']}.",
        f"Copy rate: {meta['copy_GBps']:,.0f} GB/s, a device-to-device copy of {meta['copy_bytes'] / 2**20:.0f} MiB, read and write counted.",
        "Written by experiments/decode_bench.py, whose docstring says what each mode and column means.",
    ]
    if goals := goal_lines(results):
        lines += ["", "## Goals (issue 21, goal 2)", "", *goals]
    for key, result in results.items():
        lines += ["", f"## {key}: {result['label']}", ""]
        if "error" in result:
            lines.append(f"Not run: {result['error']}")
            continue
        params, kv = result["parameter_bytes"], result["kv_cache_bytes"]
        lines += [f"{shape(result['config'])}. Bytes a step in bf16: {params / 1e6:,.1f} MB of weights + {kv / 1e6:,.2f} MB of KV cache "
                  f"({result['batch']} row(s)).", ""]  # fmt: skip
        lines += table(result["rows"], meta["new_tokens"]) + ["", ratios(result["rows"])]
        if result["linears"]:
            lines += ["", *linear_table(result["linears"], result["rows"])]
    return "\n".join(lines) + "\n"
