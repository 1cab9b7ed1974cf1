"""Decode speed: tokens per second of greedy generation, ours against `transformers`' generate on the same weights.

Batch 1, a 64-token prompt, then N new tokens (256 by default), greedy, bf16. Timing does not depend on the weights'
values, so random weights of a checkpoint's config serve: SmolLM2-135M (DecoderConfig's defaults), a Llama-1B shape
(Llama 3.2 1B's, untied) and Llama 3 8B's. Four modes a config, in one process:

    ours eager                    model/generate.py's loop as it is: a prefill, then one-token steps over the static KV cache
    ours compiled                 the same loop with its one-token step under torch.compile(mode="reduce-overhead"), which
                                  captures it in a CUDA graph; the prefill stays eager, as in transformers' generate
    transformers eager            LlamaForCausalLM.generate with SDPA and its dynamic cache
    transformers static+compile   generate with cache_implementation="static", which then compiles its decode step itself
                                  (CompileConfig's default, reduce-overhead), on CUDA only

A row's time is one whole generate call, prefill included, between CUDA events: the median of --repeats calls after
warm-up (one call; two when compiling, the first of which compiles). Each mode runs under a budget (--budget-s): a mode
that runs past it, compiling for instance, is stopped and its row says so; a mode that fails says why in one line.
Neither stops the bench.

Bytes a token: what a decode step must read at least, every parameter it uses (an untied input embedding is read one
row a token, so it is left out) and the KV cache at the mean context, prompt + N/2 tokens (ours reads all prompt + N
slots of its static cache at every step, masked). The implied bandwidth, bytes a token × tokens/s, is set against the
copy rate measured in the same run: a device-to-device copy of a 1 GiB tensor (256 MiB on a CPU), read and write counted.

    python experiments/decode_bench.py                                       # smollm2 and llama-1b: about 4 minutes on an H200
    python experiments/decode_bench.py --configs smollm2 llama-1b llama-8b   # and the 8B shape
    python experiments/decode_bench.py --configs tiny --device cpu           # a smoke run (32 new tokens on a CPU)

Writes runs/decode_bench/decode_bench_<device>.{md,json}; with --write-reference, experiments/results/ instead, the
committed report, which a quick run must never overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import re
import signal
import statistics
import time
from pathlib import Path

import torch
from common import add_output_args, resolve_output
from torch import nn
from torch._dynamo.utils import counters

from minitransformers.config import DecoderConfig
from minitransformers.io.llama import to_hf
from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = 64
DTYPE = torch.bfloat16
LLAMA = dict(vocab_size=128256, num_kv_heads=8, num_heads=32, rope_theta=500000.0, tie_word_embeddings=False)
CONFIGS = {  # name -> (what it is, its config)
    "tiny": ("a tiny decoder for smoke runs", DecoderConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)),
    "smollm2": ("SmolLM2-135M", DecoderConfig()),
    "llama-1b": ("Llama 3.2 1B's shape, untied", DecoderConfig(hidden_size=2048, num_layers=16, intermediate_size=8192, **LLAMA)),
    "llama-8b": ("Llama 3 8B's shape", DecoderConfig(hidden_size=4096, num_layers=32, intermediate_size=14336, **LLAMA)),
}
PEERS = {"ours eager": "transformers eager", "ours compiled": "transformers static+compile"}


class CompiledDecodeStep(nn.Module):
    """`model` as generate.py's loop sees it, with the one-token step compiled and the prefill (T > 1) left eager, so
    that one graph serves every step."""

    def __init__(self, model: CausalLM, **compile_options):
        super().__init__()
        self.model, self.config = model, model.config
        self.step = torch.compile(model, **compile_options)

    def forward(self, input_ids, *args, **kwargs):
        if input_ids.size(1) > 1:
            return self.model(input_ids, *args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()  # the last step's logits are read before this replay overwrites them
        return self.step(input_ids, *args, **kwargs)


# --- timing under a budget -----------------------------------------------------------------------------------------


class OverBudget(BaseException):
    """Raised by the alarm in the middle of a mode: a BaseException, so that no `except Exception` on its way out (in
    a compiler, say) swallows it."""


@contextlib.contextmanager
def budget(seconds: float):
    """Raise OverBudget in the main thread once `seconds` have passed, and again every 5 s until the block ends."""

    def alarm(signum, frame):
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """fn()'s time in seconds, between CUDA events on a GPU (by the wall clock on a CPU), and its result."""
    if device.type != "cuda":
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, out


def measure(run, warmup: int, repeats: int, budget_s: float, device: torch.device) -> dict:
    """Warm up, then time `run` (which returns the new tokens (1, N)) up to `repeats` times, as many as the budget
    allows (at least once); OverBudget escapes with the phase it stopped in."""
    started, phase, times = time.perf_counter(), "warm-up", []
    try:
        with budget(budget_s):
            for _ in range(warmup):
                _, tokens = timed(run, device)
            warmup_s, phase = time.perf_counter() - started, "timing"
            while len(times) < repeats and (not times or time.perf_counter() - started + max(times) < 0.9 * budget_s):
                seconds, tokens = timed(run, device)
                times.append(seconds)
    except OverBudget as stopped:
        stopped.phase = phase
        raise
    return {"seconds": statistics.median(times), "repeats": len(times), "warmup_s": warmup_s, "tokens": tokens}


def copy_rate(device: torch.device) -> tuple[int, float]:
    """(bytes, GB/s): the median of 10 device-to-device copies of one tensor after 2 more, read and write counted."""
    size = 2**30 if device.type == "cuda" else 2**28
    source = torch.ones(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = [timed(lambda: target.copy_(source), device)[0] for _ in range(12)][2:]
    return size, 2 * size / statistics.median(times) / 1e9


# --- the models and the modes --------------------------------------------------------------------------------------


def models(config: DecoderConfig, device: torch.device, transformers) -> tuple[CausalLM, nn.Module]:
    """Ours with random weights (Llama's N(0, 0.02)) and transformers' LlamaForCausalLM holding the same, both bf16 on
    `device`; transformers' stop token is removed, so that every call generates all the tokens asked for, as ours does."""
    torch.manual_seed(0)
    with torch.device(device):
        ours = CausalLM(config).to(DTYPE).eval()
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf(), attn_implementation="sdpa")).to(DTYPE).eval()
    missing, unexpected = theirs.load_state_dict(to_hf(ours.state_dict(), config), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"LlamaForCausalLM did not take our weights: missing {missing}, unexpected {unexpected}")
    theirs.generation_config.eos_token_id = None
    return ours, theirs


def modes(ours: CausalLM, theirs: nn.Module, ids: torch.Tensor, new_tokens: int) -> dict:
    """Mode name -> a call that generates `new_tokens` greedily after `ids` (1, T) -> the new tokens (1, N). On a CPU
    the compiled step runs dynamo's capture alone (backend "eager"): there are no CUDA graphs to capture into."""
    greedy = GenerationConfig(max_new_tokens=new_tokens, temperature=0)
    compiled = CompiledDecodeStep(ours, **(dict(mode="reduce-overhead") if ids.is_cuda else dict(backend="eager")))
    hf = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    return {
        "ours eager": lambda: generate(ours, ids, config=greedy),
        "ours compiled": lambda: generate(compiled, ids, config=greedy),
        "transformers eager": lambda: theirs.generate(**hf)[:, ids.size(1) :],
        "transformers static+compile": lambda: theirs.generate(**hf, cache_implementation="static")[:, ids.size(1) :],
    }


def compile_counts() -> tuple[int, int, int]:
    """dynamo's running counts in this process: graphs compiled, graph breaks, and graphs Inductor ran without CUDA graphs."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), counters["inductor"]["cudagraph_skips"]


def compile_note(mode: str, theirs: nn.Module, before: tuple[int, int, int], device: torch.device) -> str:
    graphs, breaks, skips = (now - then for now, then in zip(compile_counts(), before))
    counts = f"{graphs} graph(s) compiled, {breaks} graph break(s), {skips} without CUDA graphs"
    if mode == "ours compiled":
        return f"{counts}" if device.type == "cuda" else f"CPU: dynamo's capture alone (backend eager); {counts}"
    if mode == "transformers static+compile":
        return f"generate compiled its decode step: {counts}" if hasattr(theirs, "_compiled_call") else "generate did not compile (it compiles on CUDA only)"
    return ""


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:240]


def bench_config(name: str, device: torch.device, args, transformers, copy_gbps: float) -> dict:
    label, config = CONFIGS[name]
    ours, theirs = models(config, device, transformers)
    params = sum(p.nbytes for p in ours.parameters())  # a tied weight once
    if not config.tie_word_embeddings:
        params -= ours.decoder.embed.weight.nbytes  # a step reads one row of it
    context = PROMPT + args.new_tokens / 2
    kv = int(2 * config.num_layers * config.num_kv_heads * config.head_dim * context * DTYPE.itemsize)  # K and V
    ids = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
    rows, eager_tokens = [], None
    for mode, run in modes(ours, theirs, ids, args.new_tokens).items():
        row = {"config": name, "mode": mode}
        before = compile_counts()
        try:
            found = measure(run, 1 if mode.endswith("eager") else 2, args.repeats, args.budget_s, device)
            tokens = found.pop("tokens")
            if tokens.shape != (1, args.new_tokens):
                raise RuntimeError(f"generated {tuple(tokens.shape)} tokens, expected (1, {args.new_tokens})")
            eager_tokens = tokens if mode == "ours eager" else eager_tokens
            same = None if eager_tokens is None else int((tokens == eager_tokens).int().cumprod(dim=1).sum())
            tokens_per_s = args.new_tokens / found["seconds"]
            row |= {"status": "ok", **found, "tokens_per_s": tokens_per_s, "ms_per_token": 1e3 / tokens_per_s, "implied_GBps": (params + kv) * tokens_per_s / 1e9,
                    "of_copy_rate": (params + kv) * tokens_per_s / 1e9 / copy_gbps, "leading_tokens_as_ours_eager": same,
                    "note": compile_note(mode, theirs, before, device)}  # fmt: skip
        except OverBudget as stopped:
            row |= {"status": "over budget", "note": f"stopped after {args.budget_s:g} s, in its {stopped.phase}"}
        except Exception as error:  # a mode that fails (to compile, say) is a row of the report, not the end of the bench
            row |= {"status": "failed", "note": one_line(error)}
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
        torch.compiler.reset()  # each compiled mode starts from nothing, and its graphs' memory is freed
    for row in rows:
        peer = next((r for r in rows if r["mode"] == PEERS.get(row["mode"])), {})
        if row["status"] == "ok" and peer.get("status") == "ok":
            row["vs_peer"] = row["tokens_per_s"] / peer["tokens_per_s"]
    del ours, theirs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"label": label, "config": dataclasses.asdict(config), "parameter_bytes": params, "kv_cache_bytes": kv, "rows": rows}


# --- the report ----------------------------------------------------------------------------------------------------


def shape(config: dict) -> str:
    return (f"{config['num_layers']} layers × {config['hidden_size']}, {config['num_heads']} / {config['num_kv_heads']} heads, FFN {config['intermediate_size']}, "
            f"vocab {config['vocab_size']}, {'tied' if config['tie_word_embeddings'] else 'untied'}")  # fmt: skip


def table(rows: list[dict], new_tokens: int) -> list[str]:
    lines = ["| mode | tokens / s | ms / token | implied GB/s | of copy rate | × peer | leading tokens as ours eager | note |", "|" + "---|" * 8]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['status']} | | | | | | {r['note']} |")
            continue
        peer = f"{r['vs_peer']:.2f} × {PEERS[r['mode']]}" if "vs_peer" in r else ""
        same = "n/a" if r["leading_tokens_as_ours_eager"] is None else f"{r['leading_tokens_as_ours_eager']}/{new_tokens}"
        lines.append(f"| {r['mode']} | {number(r['tokens_per_s'])} | {number(r['ms_per_token'])} | {number(r['implied_GBps'])} | {number(100 * r['of_copy_rate'])}% "
                     f"| {peer} | {same} | {r['note']} |")  # fmt: skip
    return lines


def number(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def ratios(rows: list[dict]) -> str:
    found = {r["mode"]: r["vs_peer"] for r in rows if "vs_peer" in r}
    eager, compiled = (f"{found[m]:.2f}" if m in found else "n/a" for m in PEERS)
    return f"Ours / transformers, tokens/s: eager {eager}; compiled (ours compiled / transformers static+compile) {compiled}."


def report(meta: dict, results: dict) -> str:
    lines = [
        f"# Decode speed: {meta['device']}",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}, transformers {meta['transformers']}; {meta['device']}.",
        f"Profile: {meta['profile']}.",
        f"Copy rate: {meta['copy_GBps']:,.0f} GB/s, a device-to-device copy of {meta['copy_bytes'] / 2**20:.0f} MiB, read and write counted.",
        "Written by experiments/decode_bench.py, whose docstring says what each mode and column means.",
    ]
    for name, result in results.items():
        lines += ["", f"## {name}: {result['label']}", ""]
        if "error" in result:
            lines.append(f"Not run: {result['error']}")
            continue
        params, kv = result["parameter_bytes"], result["kv_cache_bytes"]
        lines += [f"{shape(result['config'])}. Bytes a token: {params / 1e6:,.1f} MB of parameters + {kv / 1e6:,.2f} MB of KV cache.", ""]
        lines += table(result["rows"], meta["new_tokens"]) + ["", ratios(result["rows"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the device's defaults filled in, and `out`: runs/decode_bench unless --out names another
    folder; experiments/results, the committed report, only with --write-reference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: smollm2 llama-1b on a GPU, tiny on a CPU")
    parser.add_argument("--new-tokens", type=int, help=f"tokens generated after the {PROMPT}-token prompt (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls a mode, after warm-up (the median is reported)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds a mode may take, compiling and warm-up included")
    add_output_args(parser, "decode_bench")
    args = parser.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    args.configs = args.configs or (["smollm2", "llama-1b"] if gpu else ["tiny"])
    args.new_tokens = args.new_tokens or (256 if gpu else 32)
    return resolve_output(parser, args, "decode_bench", argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the bench, write its report (Markdown and JSON) into args.out, print it; -> the JSON's content and the
    report's path."""
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    import transformers

    device_name = torch.cuda.get_device_name(device) if gpu else "CPU"
    copy_bytes, copy_gbps = copy_rate(device)
    print(f"{device_name}: copy rate {copy_gbps:,.0f} GB/s", flush=True)
    meta = {
        "device": device_name, "torch": torch.__version__, "transformers": transformers.__version__, "command": args.command,
        "profile": f"configs {', '.join(args.configs)}; batch 1, a {PROMPT}-token prompt, {args.new_tokens} new tokens, greedy, bf16, random weights; "
                   f"the median of up to {args.repeats} generate calls after warm-up; each mode under a {args.budget_s:g} s budget",
        "prompt_tokens": PROMPT, "new_tokens": args.new_tokens, "repeats": args.repeats, "budget_s": args.budget_s,
        "copy_bytes": copy_bytes, "copy_GBps": copy_gbps,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"decode_bench_{re.sub(r'[^a-z0-9]+', '_', device_name.lower()).strip('_')}"
    results = {}
    for name in args.configs:
        try:
            results[name] = bench_config(name, device, args, transformers, copy_gbps)
        except Exception as error:  # building a config (out of memory, say) fails that config alone
            results[name] = {"label": CONFIGS[name][0], "error": one_line(error)}
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "configs": results}, indent=1) + "\n")
        stem.with_suffix(".md").write_text(report(meta, results))  # after each config, so that a run cut short keeps what it did
    print(report(meta, results))
    return {"meta": meta, "configs": results, "report": stem.with_suffix(".md")}


if __name__ == "__main__":
    main()
