"""Decode speed: tokens per second of greedy generation, ours in bf16 and 4-bit against `transformers`' generate.

A batch of B rows (1 by default; --batches), each a 64-token prompt, then N new tokens (256 by default), greedy, bf16
activations. Timing does not depend on the weights' values, so random weights of a checkpoint's config serve:
SmolLM2-135M (DecoderConfig's defaults), a Llama-1B shape (Llama 3.2 1B's, untied) and Llama 3 8B's. Six modes a
config and batch, in one process (--modes picks some):

    ours eager                    model/generate.py's loop as it is: a prefill, then one-token steps over the static KV cache
    ours compiled                 the same loop with its one-token step under torch.compile(mode="reduce-overhead"), which
                                  captures it in a CUDA graph; the prefill stays eager, as in transformers' generate
    ours int4 compiled            the same, after quant.quantize_model(model, "int4", group_size=128): every untied
                                  linear layer W4A16, 4-bit codes with an fp32 scale per 128 inputs (4.25 bits a weight;
                                  groups of 64 where a width is no multiple of 128: SmolLM2's 576, 4.5 bits),
                                  through the Triton kernels of kernels/int4_mm.py (a GEMV for B = 1, split-K up to 16
                                  rows, the tiled kernel above), captured in the step's CUDA graph with the rest
    ours nf4 compiled             the same with "nf4", block_size=64, double_quant=True (QLoRA's storage: 4.127 bits)
    transformers eager            LlamaForCausalLM.generate with SDPA and its dynamic cache
    transformers static+compile   generate with cache_implementation="static", which then compiles its decode step itself
                                  (CompileConfig's default, reduce-overhead), on CUDA only

What is quantized: q, k, v, o, gate, up and down of every layer, and lm_head where it has its own weight (Llama-1B,
8B), as quantize_model does by default and as gpt-fast's int4 does. A tied lm_head (SmolLM2) is the embedding's
matrix and stays bf16: quantizing it would quantize the embedding too. The embedding and the norms stay bf16.

Checks, not timings: each mode's tokens against ours eager (how many leading tokens every row shares), and each
4-bit mode against its dequantized twin, the same model with every 4-bit layer replaced by an nn.Linear holding its
dequantized weight in bf16 (Ŵ, what the reference path multiplies by): the relative error of the logits of one
B-token forward (the matmul shape of a decode step), and the leading tokens of 32 greedy ones, eager, that the two
share. On a CPU the 4-bit layers run that reference itself, so both must be exact there (tests/test_decode_bench.py).

A row's time is one whole generate call, prefill included, between CUDA events: the median of --repeats calls after
warm-up (one call; two when compiling, the first of which compiles). Tokens/s counts every row's tokens (B × N over
the time); a step makes B of them. Each mode runs under a budget (--budget-s): a mode that runs past it, compiling
for instance, is stopped and its row says so; a mode that fails says why in one line. Neither stops the bench.

Bytes a step: what a decode step must read at least, every weight it uses at its stored size (a 4-bit layer's codes,
scales and zero points; an untied input embedding is read one row a token, so it is left
out) and the KV cache of the B rows at the mean context, prompt + N/2 tokens (ours reads all prompt + N slots of its
static cache at every step, masked). The implied bandwidth, bytes a step × steps/s, is set against the copy rate
measured in the same run: a device-to-device copy of a 1 GiB tensor (256 MiB on a CPU), read and write counted.
On CUDA the compiled modes also say where the step's time goes (decode_breakdown.py): the GPU kernels a step and
their time, and the linear layers timed alone at the step's shapes. decode_report.py writes the report, the goals first.

    python experiments/decode_bench.py                                       # smollm2 and llama-1b, batch 1, every mode
    python experiments/decode_bench.py --configs llama-8b --batches 1 8 64 --modes "ours compiled" "ours int4 compiled" "ours nf4 compiled"
    python experiments/decode_bench.py --configs tiny --device cpu           # a smoke run (32 new tokens on a CPU)

Writes runs/decode_bench/decode_bench_<device>.{md,json}, the name followed by the configs and the batches where they
are not the defaults (decode_bench_nvidia_h200_llama_8b_batch_1_8_64.md); with --write-reference, experiments/results/
instead, the committed report, which a quick run must never overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from decode_breakdown import kernel_summary, linear_times
from decode_report import report
from torch import nn
from torch._dynamo.utils import counters

from minitransformers.config import DecoderConfig
from minitransformers.io.llama import to_hf
from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.quant.qlinear import WeightOnlyLinear, quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = 64
DTYPE = torch.bfloat16
LLAMA = dict(vocab_size=128256, num_kv_heads=8, num_heads=32, rope_theta=500000.0, tie_word_embeddings=False)
CONFIGS = {  # name -> (what it is, its config)
    "tiny": ("a tiny decoder for smoke runs", DecoderConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)),
    "smollm2": ("SmolLM2-135M", DecoderConfig()),
    "llama-1b": ("Llama 3.2 1B's shape, untied", DecoderConfig(hidden_size=2048, num_layers=16, intermediate_size=8192, **LLAMA)),
    "llama-8b": ("Llama 3 8B's shape", DecoderConfig(hidden_size=4096, num_layers=32, intermediate_size=14336, **LLAMA)),
}
QUANTIZED = {"ours int4 compiled": ("int4", {"group_size": 128}), "ours nf4 compiled": ("nf4", {"block_size": 64, "double_quant": True})}
MODES = ("ours eager", "ours compiled", *QUANTIZED, "transformers eager", "transformers static+compile")
COMPILED = ("ours compiled", *QUANTIZED)
PEERS = {"ours eager": "transformers eager", "ours compiled": "transformers static+compile", **{mode: "ours compiled" for mode in QUANTIZED}}
TWIN_TOKENS = 32  # greedy tokens a 4-bit model and its dequantized twin generate, eagerly, to compare


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


def models(config: DecoderConfig, device: torch.device, transformers) -> tuple[CausalLM, nn.Module | None]:
    """Ours with random weights (Llama's N(0, 0.02)) and, unless `transformers` is None, its LlamaForCausalLM holding
    the same, both bf16 on `device`; transformers' stop token is removed, so that every call generates all the
    tokens asked for, as ours does."""
    torch.manual_seed(0)
    with torch.device(device):
        ours = CausalLM(config).to(DTYPE).eval()
    if transformers is None:
        return ours, None
    with torch.device(device):
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf(), attn_implementation="sdpa")).to(DTYPE).eval()
    missing, unexpected = theirs.load_state_dict(to_hf(ours.state_dict(), config), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"LlamaForCausalLM did not take our weights: missing {missing}, unexpected {unexpected}")
    theirs.generation_config.eos_token_id = None
    return ours, theirs


def quantization(mode: str, config: DecoderConfig) -> tuple[str, dict]:
    """QUANTIZED[mode]'s method and options for `config`: int4's group halved until it divides every layer's input
    width (SmolLM2's 576 = 4.5 × 128 takes groups of 64)."""
    method, options = QUANTIZED[mode]
    if method == "int4":
        group = options["group_size"]
        while config.hidden_size % group or config.intermediate_size % group:
            group //= 2
        options = options | {"group_size": group}
    return method, options


def quantized(model: CausalLM, mode: str) -> CausalLM:
    """A copy of `model` whose untied linear layers are 4-bit as `quantization(mode, …)` says (quant.quantize_model)."""
    method, options = quantization(mode, model.config)
    copied = copy.deepcopy(model)
    quantize_model(copied, method, **options)
    return copied


def dequantized_twin(model: CausalLM) -> CausalLM:
    """`model` with every WeightOnlyLinear replaced, in place, by an nn.Linear holding its dequantized weight Ŵ in
    bf16: the float model that the 4-bit one stands for."""
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)]:
        with torch.device("meta"):
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight = nn.Parameter(layer.dequantize(DTYPE), requires_grad=False)  # (out, in)
        if layer.bias is not None:
            linear.bias = nn.Parameter(layer.bias.detach().to(DTYPE), requires_grad=False)
        model.set_submodule(name, linear)
    return model


def weight_bytes(model: CausalLM) -> int:
    """The weights a decode step reads: every parameter once (a tied one once), each 4-bit layer at its stored size,
    and not an untied input embedding, of which a step reads one row a token."""
    total = sum(p.nbytes for p in model.parameters()) + sum(m.weight_nbytes for m in model.modules() if isinstance(m, WeightOnlyLinear))
    return total - (0 if model.config.tie_word_embeddings else model.decoder.embed.weight.nbytes)


def generator(mode: str, model: CausalLM, theirs: nn.Module | None, ids: torch.Tensor, new_tokens: int):
    """A call that generates `new_tokens` greedily after `ids` (B, T) in `mode` -> the new tokens (B, N). On a CPU the
    compiled step runs dynamo's capture alone (backend "eager"): there are no CUDA graphs to capture into."""
    greedy = GenerationConfig(max_new_tokens=new_tokens, temperature=0)
    if mode == "ours eager":
        return lambda: generate(model, ids, config=greedy)
    if mode in COMPILED:
        compiled = CompiledDecodeStep(model, **(dict(mode="reduce-overhead") if ids.is_cuda else dict(backend="eager")))
        return lambda: generate(compiled, ids, config=greedy)
    hf = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    if mode == "transformers eager":
        return lambda: theirs.generate(**hf)[:, ids.size(1) :]
    return lambda: theirs.generate(**hf, cache_implementation="static")[:, ids.size(1) :]


def leading(tokens: torch.Tensor, reference: torch.Tensor) -> int:
    """How many leading tokens every row of `tokens` (B, N) shares with `reference`: the fewest of any row."""
    return int((tokens == reference).int().cumprod(dim=1).sum(dim=1).min())


@torch.no_grad()
def twin_check(model: CausalLM, ids: torch.Tensor, new_tokens: int) -> dict:
    """Turn the 4-bit `model` into its dequantized twin, in place; -> the logits' relative error of one B-token
    forward (a decode step's matmul shape) and the leading greedy tokens the two share, both eager."""
    greedy = GenerationConfig(max_new_tokens=min(TWIN_TOKENS, new_tokens), temperature=0)
    logits, tokens = model(ids[:, :1]).float(), generate(model, ids, config=greedy)  # (B, 1, V), (B, n)
    dequantized_twin(model)
    twin_logits, twin_tokens = model(ids[:, :1]).float(), generate(model, ids, config=greedy)
    error = float((logits - twin_logits).norm() / twin_logits.norm())
    return {"twin_logits_error": error, "twin_leading_tokens": leading(tokens, twin_tokens), "twin_tokens": greedy.max_new_tokens}


def compile_counts() -> tuple[int, int, int]:
    """dynamo's running counts in this process: graphs compiled, graph breaks, and graphs Inductor ran without CUDA graphs."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), counters["inductor"]["cudagraph_skips"]


def compile_note(mode: str, theirs: nn.Module | None, before: tuple[int, int, int], device: torch.device) -> str:
    graphs, breaks, skips = (now - then for now, then in zip(compile_counts(), before))
    counts = f"{graphs} graph(s) compiled, {breaks} graph break(s), {skips} without CUDA graphs"
    if mode in COMPILED:
        return f"{counts}" if device.type == "cuda" else f"CPU: dynamo's capture alone (backend eager); {counts}"
    if mode == "transformers static+compile":
        return f"generate compiled its decode step: {counts}" if hasattr(theirs, "_compiled_call") else "generate did not compile (it compiles on CUDA only)"
    return ""


def one_line(error: BaseException) -> str:
    """The error's type and first line, and its cause's (a compiler's BackendCompilerFailed wraps what failed)."""
    first = lambda e: f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"  # noqa: E731
    cause = getattr(error, "inner_exception", None) or error.__cause__
    return (first(error) + ("" if cause is None else f" ({first(cause)})"))[:300]


def also(row: dict, what: str, fn) -> None:
    """row |= fn(); a failure becomes part of the row's note instead of failing its timing."""
    try:
        row |= fn()
    except Exception as error:
        row["note"] = "; ".join(filter(None, [row["note"], f"{what} failed: {one_line(error)}"]))


def peers(rows: list[dict]) -> list[dict]:
    """Each row that has its peer (PEERS) among `rows`, both timed, gets its ratio of tokens/s to it, in place."""
    for row in rows:
        peer = next((r for r in rows if r["mode"] == PEERS.get(row["mode"])), {})
        if row["status"] == "ok" and peer.get("status") == "ok":
            row["vs_peer"], row["peer"] = row["tokens_per_s"] / peer["tokens_per_s"], peer["mode"]
    return rows


def bench_config(name: str, batch: int, device: torch.device, args, transformers, copy_gbps: float, save) -> None:
    """Time every mode of args.modes on config `name` at `batch` rows; save(result) after each mode, so that a run
    stopped from outside (a time limit) keeps the modes it finished."""
    label, config = CONFIGS[name]
    ours, theirs = models(config, device, transformers if any(m.startswith("transformers") for m in args.modes) else None)
    params = weight_bytes(ours)
    context = PROMPT + args.new_tokens / 2
    kv = int(batch * 2 * config.num_layers * config.num_kv_heads * config.head_dim * context * DTYPE.itemsize)  # K and V of B rows
    ids = torch.randint(0, config.vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
    rows, linears, eager_tokens = [], {}, None
    result = {"name": name, "label": label, "batch": batch, "config": dataclasses.asdict(config), "parameter_bytes": params, "kv_cache_bytes": kv,
              "rows": rows, "linears": linears}  # fmt: skip
    for mode in args.modes:
        row = {"config": name, "batch": batch, "mode": mode}
        before, model, run = compile_counts(), None, None
        try:
            model = quantized(ours, mode) if mode in QUANTIZED else ours
            step_bytes = weight_bytes(model) + kv
            run = generator(mode, model, theirs, ids, args.new_tokens)
            found = measure(run, 1 if mode.endswith("eager") else 2, args.repeats, args.budget_s, device)
            tokens = found.pop("tokens")
            if tokens.shape != (batch, args.new_tokens):
                raise RuntimeError(f"generated {tuple(tokens.shape)} tokens, expected ({batch}, {args.new_tokens})")
            eager_tokens = tokens if mode == "ours eager" else eager_tokens
            steps_per_s = args.new_tokens / found["seconds"]
            row |= {"status": "ok", **found, "tokens_per_s": batch * steps_per_s, "ms_per_step": 1e3 / steps_per_s, "bytes_per_step": step_bytes,
                    "implied_GBps": step_bytes * steps_per_s / 1e9, "of_copy_rate": step_bytes * steps_per_s / 1e9 / copy_gbps,
                    "leading_tokens_as_ours_eager": None if eager_tokens is None else leading(tokens, eager_tokens),
                    "note": compile_note(mode, theirs, before, device)}  # fmt: skip
            if mode in QUANTIZED:
                method, options = quantization(mode, config)
                row["note"] = f"{method} {options}; {row['note']}"
            if device.type == "cuda" and mode in COMPILED:
                also(row, "the kernel profile", lambda: kernel_summary(run, args.new_tokens))
                also(row, "timing the linear layers", lambda: {"linears": linear_times(model, batch, DTYPE, device)})
                if "linears" in row:
                    linears[mode] = row.pop("linears")
            if mode in QUANTIZED:
                also(row, "the twin check", lambda: twin_check(model, ids, args.new_tokens))
        except OverBudget as stopped:
            row |= {"status": "over budget", "note": f"stopped after {args.budget_s:g} s, in its {stopped.phase}"}
        except Exception as error:  # a mode that fails (to compile, say) is a row of the report, not the end of the bench
            row |= {"status": "failed", "note": one_line(error)}
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
        save(result | {"rows": peers(rows)})
        model = run = None
        torch.compiler.reset()  # each compiled mode starts from nothing, and its graphs' memory is freed
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del ours, theirs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the device's defaults filled in, and `out`: runs/decode_bench unless --out names another
    folder; experiments/results, the committed report, only with --write-reference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: smollm2 llama-1b on a GPU, tiny on a CPU")
    parser.add_argument("--batches", nargs="+", type=int, default=[1], help="rows generated at once (default: 1)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: all, in the order listed above")
    parser.add_argument("--new-tokens", type=int, help=f"tokens generated after the {PROMPT}-token prompt (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls a mode, after warm-up (the median is reported)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds a mode may take, compiling and warm-up included")
    add_output_args(parser, "decode_bench")
    args = parser.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    default_configs = ["smollm2", "llama-1b"] if gpu else ["tiny"]
    args.configs = args.configs or default_configs
    args.profile_name = " ".join([*(args.configs if args.configs != default_configs else []), *(["batch", *map(str, args.batches)] if args.batches != [1] else [])])
    args.modes = [m for m in MODES if m in args.modes]  # ours eager first: the others' tokens are compared with its
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
        "profile": f"configs {', '.join(args.configs)}; batch {', '.join(map(str, args.batches))}; modes {', '.join(args.modes)}; a {PROMPT}-token prompt a row, "
                   f"{args.new_tokens} new tokens, greedy, bf16, random weights; the median of up to {args.repeats} generate calls after warm-up; "
                   f"each mode under a {args.budget_s:g} s budget",
        "prompt_tokens": PROMPT, "new_tokens": args.new_tokens, "batches": args.batches, "modes": args.modes, "repeats": args.repeats,
        "budget_s": args.budget_s, "copy_bytes": copy_bytes, "copy_GBps": copy_gbps,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / re.sub(r"[^a-z0-9]+", "_", f"decode_bench {device_name} {args.profile_name}".lower()).strip("_")
    results = {}

    def save(key: str, result: dict) -> None:
        results[key] = result
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "configs": results}, indent=1) + "\n")
        stem.with_suffix(".md").write_text(report(meta, results))

    for name in args.configs:
        for batch in args.batches:
            key = f"{name}, batch {batch}"
            try:
                bench_config(name, batch, device, args, transformers, copy_gbps, lambda result, key=key: save(key, result))
            except Exception as error:  # building a config (out of memory, say) fails that config alone
                save(key, {"name": name, "label": CONFIGS[name][0], "batch": batch, "error": one_line(error)})
    print(report(meta, results))
    return {"meta": meta, "configs": results, "report": stem.with_suffix(".md")}


if __name__ == "__main__":
    main()
