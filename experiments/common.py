"""What the experiments share: their options, naming the device, running many `finetune` jobs at once, writing a
config's fields as the flags that set them (and reading back how much a run scored), picking the learning rate and
averaging over seeds, their tables' accuracy deltas, and how a wall time reads."""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from minitransformers.recipes import finetune


RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(__file__).resolve().parent.parent / "runs"


def add_output_args(parser: argparse.ArgumentParser, name: str) -> None:
    """--out and --write-reference, for a script whose report is committed under experiments/results."""
    parser.add_argument("--out", type=Path, help=f"the report's folder (default: runs/{name})")
    parser.add_argument("--write-reference", action="store_true", help="write the committed report, in experiments/results")


def resolve_output(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, argv: list[str] | None) -> argparse.Namespace:
    """args.out: runs/NAME unless --out names another folder; experiments/results, the committed report, only with
    --write-reference (a quick run must never overwrite a reference). args.command: the command as typed."""
    if args.write_reference and args.out is not None:
        parser.error("--write-reference writes to experiments/results; leave out --out")
    if args.out is not None and args.out.resolve() == RESULTS.resolve():
        parser.error("experiments/results holds the committed reference report; pass --write-reference (and no --out) to replace it")
    args.out = RESULTS if args.write_reference else args.out or RUNS / name
    args.command = shlex.join(["python", f"experiments/{name}.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def wall_time(seconds: float) -> str:
    """A duration as the reports give it: "47 s", "4 min 12 s", "1 h 03 min"."""
    s = round(seconds)
    if s < 3600:
        return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min"


def reference_name(path: Path) -> str:
    """'all-MiniLM-L6-v2', plus what the fetch stamp says after the checksum: a copy of the weights that was
    rounded to fp16 to travel to a GPU machine says so there, and the tables say so too."""
    note = " ".join((path / ".fetched").read_text().split()[1:])
    return f"all-MiniLM-L6-v2 ({note})" if note else "all-MiniLM-L6-v2"


def experiment_parser(doc: str, profiles: dict, workers: int) -> argparse.ArgumentParser:
    """The options every fine-tuning comparison takes: --profile, --device, --precision, --workers."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=profiles, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--workers", type=int, default=workers, help=f"parallel runs on CUDA (default: {workers}); on CPU one at a time")
    return parser


def run_all(configs: list[finetune.FinetuneConfig], workers: int) -> list[dict]:
    """Every `finetune` config, `workers` processes at a time (the `spawn` start method, as CUDA requires); the
    metrics in the order given. A small model leaves a GPU mostly idle, each run being bound by its Python loop,
    so several share it well. Each run gets a fresh process, so that its peak memory (the process's peak RSS on
    a CPU) is its own."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        return list(pool.map(finetune.run, configs))


def flags(fields: dict) -> list[str]:
    """Config fields (numbers and strings) as the command-line flags that set them, for the reports: {"max_length": 64, "lr": 1e-4} ->
    ["--max-length", "64", "--lr", "1e-4"]; a float is written in scientific notation, as learning rates are."""
    def value(v) -> str:
        if not isinstance(v, float):
            return str(v)
        mantissa, exponent = f"{v:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"

    return [s for k, v in fields.items() for s in (f"--{k.replace('_', '-')}", value(v))]


def scored_on(finetune_args: list[str]) -> str:
    """Which validation and test sentences the runs of a report scored, from its finetune flags (a quick profile
    scores a sample, --max-eval-examples N): "the first N validation and test sentences", or "all of validation and test"."""
    n = dict(zip(finetune_args[::2], finetune_args[1::2])).get("--max-eval-examples", "0")
    return f"the first {n} validation and test sentences" if n != "0" else "all of validation and test"


def points_vs(row: dict, acc: dict[str, float], baseline: str) -> str:
    """A row's test accuracy against the baseline's (`acc`: name -> test accuracy), in points; n/a without one."""
    return f"{100 * (row['test_accuracy'] - acc[baseline]):+.1f}" if baseline in acc else "n/a"


def best_on_validation(runs: list[dict], key: str) -> dict[str, dict]:
    """run[key] (the method or variant) -> its run with the best validation accuracy (over the learning rates)."""
    chosen = {}
    for run in runs:
        if run[key] not in chosen or run["validation_accuracy"] > chosen[run[key]]["validation_accuracy"]:
            chosen[run[key]] = run
    return chosen


def over_seeds(runs: list[dict], chosen: dict, key: str) -> dict:
    """The chosen run's row, its test accuracy and train time the mean over every seed at its learning rate."""
    seeded = [run for run in runs if run[key] == chosen[key] and run["lr"] == chosen["lr"]]
    test = torch.tensor([run["test_accuracy"] for run in seeded], dtype=torch.float64)
    return {**chosen, "test_accuracy": test.mean().item(), "test_accuracy_std": test.std().item() if len(seeded) > 1 else 0.0,
            "test_accuracy_per_seed": test.tolist(), "train_seconds": sum(run["train_seconds"] for run in seeded) / len(seeded)}  # fmt: skip
