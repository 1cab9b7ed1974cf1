"""Argument types for the command line: each flag's range is checked where it is parsed, once; and the flags every
training command shares (`add_training_args`, `add_run_args`).

An argparse `type=` that raises ArgumentTypeError makes argparse print `usage: ...` and
`error: argument --grad-accum: 0 is not a positive integer` and exit with status 2, before any work starts.
"""

from __future__ import annotations

import argparse

import torch

from .recipes import default_device


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


def add_training_args(
    p: argparse.ArgumentParser, *, epochs: int, lr: float, lr_note: str, batch_size: int, batch_help: str, warmup: float,
    schedule: str, weight_decay: float, weight_decay_note: str, seed_help: str, layer: str, epochs_note: str = "",
) -> None:  # fmt: skip
    """The optimisation flags of finetune, sft and dpo (TrainConfig's fields), each command at its own defaults: those
    of its paper or of the library users compare it with, which each note names."""
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"passes over the training set (default: {epochs}{epochs_note})")
    p.add_argument("--max-steps", type=count, default=0, help="stop after this many optimizer steps (default: 0, the epochs decide)")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate (default: {lr:g}{lr_note})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"{batch_help} (default: {batch_size})")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-steps per optimizer step (default: 1)")
    p.add_argument("--warmup", type=fraction, default=warmup, help=f"fraction of the steps for linear warmup (default: {warmup:g})")
    p.add_argument("--schedule", choices=("linear", "cosine"), default=schedule, help=f"decay after warmup (default: {schedule})")
    p.add_argument("--weight-decay", type=nonnegative_float, default=weight_decay, help=f"AdamW decay{weight_decay_note} (default: {weight_decay:g})")
    p.add_argument("--max-grad-norm", type=positive_float, default=1.0, help="clip the gradient norm to this (default: 1.0)")
    p.add_argument("--eval-every", type=count, default=0, help="evaluate, keep the best model and checkpoint every N steps (default: 0, each epoch end)")
    p.add_argument("--seed", type=count, default=0, help=f"{seed_help} (default: 0)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast dtype on CUDA; CPU runs fp32 (default: fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true", help=f"recompute each {layer} layer in the backward pass instead of keeping its activations: less memory, about one more forward")
    p.add_argument("--fsdp", action="store_true", help=f"shard parameters, gradients and optimizer state over the processes (FSDP2, each {layer} layer a unit): "
                   "launch with torchrun --nproc_per_node=N; checkpoints are sharded (checkpoint.json + checkpoint-STEP.dcp/)")
    p.add_argument("--fsdp-offload", action="store_true", help="with --fsdp: keep the parameter, gradient and optimizer shards in CPU memory, copied to the GPU layer by layer "
                   "for compute, and step AdamW on the CPU (FSDP2's CPUOffloadPolicy): far less GPU memory, slower steps")
