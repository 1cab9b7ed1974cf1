"""Argument types for the command line: each flag's range is checked where it is parsed, once; and the flags every
training command shares (`add_run_args`).

An argparse `type=` that raises ArgumentTypeError makes argparse print `usage: ...` and
`error: argument --grad-accum: 0 is not a positive integer` and exit with status 2, before any work starts.
"""

from __future__ import annotations

import argparse

import torch


def _number(kind, text: str, ok, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value) or value != value:  # NaN fails every range
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v > 0, "a positive integer")


def count(text: str) -> int:
    """0 or more; 0 usually means 'all' or 'off', as each flag's help says."""
    return _number(int, text, lambda v: v >= 0, "an integer of 0 or more")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: 0 < v < float("inf"), "a positive number")


def nonnegative_float(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a number of 0 or more")


def fraction(text: str) -> float:
    """In [0, 1): a share of the steps (warmup), a dropout probability, a sparsity."""
    return _number(float, text, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def probability(text: str) -> float:
    """In (0, 1]: top-p, a masking probability."""
    return _number(float, text, lambda v: 0 < v <= 1, "a probability in (0, 1]")


def device(text: str) -> str:
    """A torch device that this machine has: `cuda` without a GPU is refused here, not deep inside a run."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device here (torch {torch.__version__}, CUDA {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: device type {dev.type!r} is not supported; use cpu or cuda")
    return text


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags of a training run's folder: resume it, replace it, print its result as JSON."""
    p.add_argument("--resume", action="store_true", help="continue exactly from --out/checkpoint.pt (refused if the options or the inputs' sha256 changed)")
    p.add_argument("--resume-anyway", action="store_true", help="--resume, even though options or inputs changed; the changes are listed on stderr")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its log, checkpoint and metrics are deleted first)")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
