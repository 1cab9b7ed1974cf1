"""The training loop: AdamW, warmup + decay, clipping, accumulation, mixed precision, evaluation,
atomic checkpoints with exact resume, and data parallelism. In the spirit of minGPT's trainer.

One optimizer step:

    for each of `grad_accum` global batches:          (a global batch is split across processes)
        loss_sum = Σ loss over my share of the batch
        backward(loss_sum · world_size / N_step)      N_step = number of loss terms in the step, all processes
    (DDP averages gradients over processes, so the gradient is that of the mean loss over the whole step)
    clip ‖g‖ to max_grad_norm; AdamW step; scheduler step

Outputs in `out/`: `metrics.jsonl` (a line per step and per evaluation), `checkpoint.pt` (the latest state,
for --resume) and the best model so far (`save`; by default an HF folder, `save_pretrained`); the recipes add
`metrics.json` at the end. Every file but the log is written whole before it replaces the old one and recorded in
`manifest.json` with its sha256 and the run's identity (io/manifest.py), so a kill -9 at any moment leaves a run
that resumes exactly, and a checkpoint damaged afterwards is refused instead of trained from. With `out=None` the trainer writes no file: the log rows are in `trainer.history` (as
they always are), each new best model goes to the `save` callback only, and `fit(resume=True)` is refused.

With `fsdp=True` (`--fsdp`, fsdp.py) the model is sharded over the processes instead of replicated: every rank
takes part in evaluation (a sharded forward gathers parameters from all of them) and in gathering the best model,
which rank 0 saves as usual; the resume checkpoint is sharded (sharded_checkpoint.py: `checkpoint.json` naming a
`checkpoint-STEP.dcp` folder instead of `checkpoint.pt`); each micro-batch's gradients are reduce-scattered as
they come (so no full gradient is ever held), and the clipping norm is the global one (fsdp.clip_grad_norm_).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import Error, InputError
from ..io import manifest
from ..text.collate import BatchSampler
from . import checkpoint, fsdp, sharded_checkpoint
from .distributed import World, all_reduce_sum, barrier, unwrap, wrap
from .optim import adamw, schedule


class TrainingDiverged(Error, RuntimeError):
    """The loss became NaN or inf; the message says which checkpoint is the last good one."""


# TrainConfig fields that a resumed run may change: the run folder is where the checkpoint is found, the
# evaluation batch size only groups the validation examples, and offloading moves the shards, not the arithmetic;
# none changes a training step.
RESUME_IGNORES = {"out", "eval_batch_size", "fsdp_offload"}


@dataclass
class TrainConfig:
    out: str | None  # the run folder; None: write no file (see the module docstring)
    epochs: int = 3
    max_steps: int = 0  # 0: epochs decide
    batch_size: int = 32  # global: examples per micro-step, summed over all processes
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    eval_every: int = 0  # steps; 0: at each epoch end only
    eval_batch_size: int = 128
    metric: str = "accuracy"  # the one that picks the best checkpoint; "loss" is minimised, others maximised
    precision: str = "fp32"  # fp32 | bf16 | fp16 (the last two on CUDA)
    seed: int = 0
    bucket: bool = True
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the processes (fsdp.py)
    fsdp_offload: bool = False  # with fsdp: keep the shards in CPU memory, AdamW stepping there (fsdp.py)


class Trainer:
    def __init__(
        self, model: nn.Module, task, train_set: Sequence, eval_set: Sequence, collate: Callable, lengths: Sequence[int], config: TrainConfig,
        world: World = World(), eval_collate: Callable | None = None, save: Callable[[nn.Module, Path | None], None] | None = None,
        identity: dict | None = None, length: Callable[[object], int] | None = None,
    ):  # fmt: skip
        """collate: a list of train_set items -> a batch of tensors; eval_collate (default: collate) does it for
        the evaluation items, e.g. when they were prepared once, such as fixed MLM masks. save(model, folder)
        keeps the best model (default: model.save_pretrained(folder), or nothing when out is None; an adapter
        method saves only its part); folder is None when out is. identity: what else makes the run this run
        (numbers and strings, such as the model and data paths); `resume` refuses a checkpoint whose identity
        or TrainConfig differs (see RESUME_IGNORES). length: an item's length in tokens, to evaluate in batches of
        similar lengths, each padded only to its own longest (every task's scores are sums over examples, so the
        order changes none of them); None: in the order given."""
        if config.fsdp_offload and not config.fsdp:
            raise InputError("--fsdp-offload offloads FSDP's shards: add --fsdp, or drop --fsdp-offload")
        if config.precision != "fp32" and world.device.type != "cuda":
            raise InputError(f"precision {config.precision!r} needs CUDA; on {world.device.type} use fp32")
        self.model, self.task, self.config, self.world = model.to(world.device), task, config, world
        self.train_set, self.eval_set, self.collate, self.eval_collate = train_set, eval_set, collate, eval_collate or collate
        self.out = None if config.out is None else Path(config.out)
        self.identity = dict(identity or {})
        self.save = save or (None if self.out is None else lambda model, folder: model.save_pretrained(folder))
        self.length = length
        self.history: list[dict] = []  # every row this process logged (the main process only), as in metrics.jsonl
        self.sampler = BatchSampler(lengths, config.batch_size, bucket=config.bucket, seed=config.seed)
        self.steps_per_epoch = len(self.batches(0)) // config.grad_accum
        if self.steps_per_epoch == 0:
            raise InputError(f"{len(train_set)} training examples make no full step of {config.grad_accum} × {config.batch_size}")
        self.total = config.max_steps or config.epochs * self.steps_per_epoch
        self.template = fsdp.meta_copy(self.model) if config.fsdp else None  # the plain model that full_model fills
        self.ddp = wrap(self.model, world, config.fsdp, config.precision, config.fsdp_offload)
        self.optimizer = adamw(self.model, config.lr, config.weight_decay, fused=world.device.type == "cuda" and not config.fsdp_offload)  # offloaded: CPU shards
        self.scheduler = schedule(self.optimizer, int(config.warmup * self.total), self.total, config.schedule)
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=config.precision == "fp16")
        self.state = {"step": 0, "epoch": 0, "position": 0, "best": None, "train_seconds": 0.0}

    # ---- data -------------------------------------------------------------------------------------------
    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches, without any too small to give every process an example."""
        return [b for b in self.sampler.batches(epoch) if len(b) >= self.world.size]

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.world.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.world.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    # ---- one optimizer step -----------------------------------------------------------------------------
    def train_step(self, group: list[list[int]]) -> tuple[float, float, int]:
        """-> (mean loss over the step, gradient norm, real tokens in my share)."""
        self.ddp.train()
        w = self.world
        micro = [self.to_device(self.collate([self.train_set[i] for i in b[w.rank :: w.size]])) for b in group]
        n_step = all_reduce_sum(torch.tensor(float(sum(self.task.count(m) for m in micro)), device=w.device), w)
        total = torch.zeros((), device=w.device)
        for k, batch in enumerate(micro):
            sync = k == len(micro) - 1 or w.size == 1 or self.config.fsdp  # DDP all-reduces on the last micro-batch only; FSDP reduce-scatters each
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self.autocast():
                loss_sum = self.task.loss_sum(self.ddp, batch)
            self.scaler.scale(loss_sum * w.size / n_step).backward()
            total += loss_sum.detach()
        self.scaler.unscale_(self.optimizer)
        clip = fsdp.clip_grad_norm_ if self.config.fsdp else nn.utils.clip_grad_norm_
        grad_norm = clip(self.model.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        loss = (all_reduce_sum(total, w) / n_step).item()
        return loss, grad_norm.item(), sum(int((m["attention_mask"] != 0).sum()) for m in micro)  # packed masks number examples

    # ---- evaluation, logging, checkpoints ---------------------------------------------------------------
    def evaluate(self, examples: Sequence, model: nn.Module | None = None, desc: str = "evaluate") -> dict[str, float]:
        """The task's metrics on `examples`, for the model being trained or another one (e.g. the best saved);
        a tqdm bar named `desc` (on stderr, main process only) counts the batches."""
        model = (model or unwrap(self.ddp)).eval()
        if self.length is not None:
            examples = sorted(examples, key=self.length)
        size = self.config.eval_batch_size
        starts = tqdm(range(0, len(examples), size), desc=desc, unit="batch", leave=False, disable=not self.world.is_main)
        batches = (self.to_device(self.eval_collate(examples[i : i + size])) for i in starts)
        with self.autocast():
            return self.task.evaluate(model, batches)

    def log(self, row: dict) -> None:
        if not self.world.is_main:
            return
        self.history.append(row)
        if self.out is not None:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def is_better(self, value: float) -> bool:
        best = self.state["best"]
        return best is None or (value < best if self.config.metric == "loss" else value > best)

    def evaluate_and_save(self, busy: float) -> int:
        """Evaluate on the validation set, keep the best model, and write the resume checkpoint (rank 0).
        `busy`: training seconds of this process so far, added to the checkpoint's total. -> the step.
        Under fsdp every rank evaluates (the same examples, so the same metrics and decisions) and saves."""
        if self.world.is_main or self.config.fsdp:
            metrics = self.evaluate(self.eval_set, desc="validation")
            self.log({"step": self.state["step"], "epoch": self.state["epoch"], **{f"validation_{k}": v for k, v in metrics.items()}})
            if self.is_better(metrics[self.config.metric]):
                self.state["best"] = metrics[self.config.metric]
                best = fsdp.full_model(self.ddp, self.template, self.world.is_main) if self.config.fsdp else unwrap(self.ddp)
                if self.out is None and self.save is not None and self.world.is_main:
                    self.save(best, None)
                elif self.save is not None and self.world.is_main:
                    self.save_best(best)
            if self.out is not None and self.config.fsdp:
                trainer_state = {k: v for k, v in self.checkpoint(busy, model=False).items() if k != "rng"}
                sharded_checkpoint.save(self.out, self.state["step"], self.ddp, self.optimizer, trainer_state, self.world)
            elif self.out is not None:
                checkpoint.save_atomic(self.checkpoint(busy), self.out / "checkpoint.pt")
        barrier(self.world)
        return self.state["step"]

    def save_best(self, model: nn.Module) -> None:
        """`save` into a staging folder, then published into `out` with the run's identity (io/manifest.py)."""
        need = 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values())  # the files, and room to spare
        with manifest.publish(self.out, derived_from=self.identity, need=need) as stage:
            self.save(model, stage)

    @property
    def checkpoint_name(self) -> str:
        """The file that resume reads first: checkpoint.pt, or under fsdp checkpoint.json (naming the sharded folder)."""
        return sharded_checkpoint.POINTER if self.config.fsdp else "checkpoint.pt"

    def checkpoint(self, busy: float, model: bool = True) -> dict:
        """Everything resume reads; model=False: without the model and optimizer (a sharded checkpoint's DCP part)."""
        return {
            **({"model": unwrap(self.ddp).state_dict(), "optimizer": self.optimizer.state_dict()} if model else {}),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": {**self.state, "train_seconds": self.state["train_seconds"] + busy},
            "rng": checkpoint.rng_state(),
            "config": asdict(self.config),
            "identity": self.identity,
        }

    def check_same_run(self, ckpt: dict, anyway: bool = False) -> None:
        """Refuse to continue a checkpoint under other options: a new --steps builds a new learning-rate
        schedule, a new --lr or --batch-size another optimisation, a new --data another run, all without a word.
        `anyway` (--resume-anyway) continues, listing the changes on stderr."""
        saved = {**{f"identity {k}": v for k, v in ckpt.get("identity", {}).items()}, **ckpt.get("config", {})}
        now = {**{f"identity {k}": v for k, v in self.identity.items()}, **asdict(self.config)}
        changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(saved.keys() | now.keys())
                   if k not in RESUME_IGNORES and saved.get(k) != now.get(k)]  # fmt: skip
        if changed and anyway:
            print(f"resuming anyway, with changed options: {', '.join(changed)}", file=sys.stderr)
        elif changed:
            raise InputError(f"{self.out / self.checkpoint_name} was written by a run with other options: {', '.join(changed)}; "
                             "rerun with the same options, start a new --out, or pass --resume-anyway")  # fmt: skip

    def resume(self, anyway: bool = False) -> None:
        if self.config.fsdp:
            return self.resume_sharded(anyway)
        if not (self.out / "checkpoint.pt").is_file() and (self.out / sharded_checkpoint.POINTER).is_file():
            raise InputError(f"{self.out}: holds a sharded checkpoint ({sharded_checkpoint.POINTER}), written with --fsdp: resume with --fsdp")
        if not (self.out / "checkpoint.pt").is_file():
            raise InputError(f"{self.out}: no checkpoint.pt to resume from (a run writes it at its first evaluation); "
                             "start the run again, with --overwrite if the folder holds its log")  # fmt: skip
        manifest.verify(self.out, "checkpoint.pt")
        ckpt = checkpoint.load(self.out / "checkpoint.pt")
        self.check_same_run(ckpt, anyway)
        try:
            unwrap(self.ddp).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            checkpoint.set_rng_state(ckpt["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            raise InputError(f"{self.out / 'checkpoint.pt'}: does not fit this run ({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
        if set(ckpt["state"]) != set(self.state) or not all(isinstance(ckpt["state"][k], int) for k in ("step", "epoch", "position")):
            raise InputError(f"{self.out / 'checkpoint.pt'}: its state {ckpt['state']!r} is not a trainer's ({', '.join(self.state)})")
        self.state = ckpt["state"]
        if self.world.is_main and (self.out / "metrics.jsonl").is_file():
            self.truncate_log(self.out / "metrics.jsonl")

    def resume_sharded(self, anyway: bool) -> None:
        """resume, from the sharded checkpoint that checkpoint.json names (sharded_checkpoint.py), on every rank."""
        folder = sharded_checkpoint.published(self.out)
        if folder is None:
            kind = "checkpoint.pt (written without --fsdp: resume without --fsdp)" if (self.out / "checkpoint.pt").is_file() else "no checkpoint"
            raise InputError(f"{self.out}: no {sharded_checkpoint.POINTER} to resume from under --fsdp, {kind}; start the run again, with --overwrite if the folder holds its log")
        ckpt = sharded_checkpoint.read_trainer_state(folder)
        self.check_same_run(ckpt, anyway)
        try:
            sharded_checkpoint.load(folder, self.ddp, self.optimizer, self.world)
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            raise InputError(f"{folder}: does not fit this run ({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
        self.state = ckpt["state"]
        if self.world.is_main and (self.out / "metrics.jsonl").is_file():
            self.truncate_log(self.out / "metrics.jsonl")

    def truncate_log(self, path: Path) -> None:
        """Drop the log lines that the killed run wrote after its checkpoint, and a last line a kill tore."""
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # torn by the kill mid-write
                raise InputError(f"{path}:{number}: not a JSON line; the log was edited or damaged: repair or delete that line") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise InputError(f"{path}:{number}: expected a JSON object with an integer step, found {line[:80]!r}")
            if row["step"] <= self.state["step"]:
                kept.append(line)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    # ---- the loop ---------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, anyway: bool = False) -> dict:
        """Train to the end; `resume` continues from out/checkpoint.pt, `anyway` even under changed options."""
        if resume and self.out is None:
            raise InputError("resume=True needs the run folder of a checkpoint.pt, but TrainConfig.out is None; set out to that folder")
        if self.out is not None and self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            manifest.remove_leftovers(self.out)  # what a killed save left behind
            sharded_checkpoint.remove_unpublished(self.out)
        barrier(self.world)
        if resume:
            self.resume(anyway)
        elif self.world.is_main and self.out is not None:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        s, cfg = self.state, self.config
        bar = tqdm(total=self.total, initial=s["step"], desc="train", unit="step", disable=not self.world.is_main)
        busy, examples, tokens, evaluated_at = 0.0, 0, 0, s["step"] if resume else None
        while s["step"] < self.total:
            batches = self.batches(s["epoch"])
            usable = self.steps_per_epoch * cfg.grad_accum
            while s["position"] < usable and s["step"] < self.total:
                group = batches[s["position"] : s["position"] + cfg.grad_accum]
                t0 = time.perf_counter()
                loss, grad_norm, my_tokens = self.train_step(group)
                busy += time.perf_counter() - t0
                if not math.isfinite(loss):
                    kept = "No checkpoint was written (out=None)" if self.out is None else f"The last good checkpoint is {self.out / self.checkpoint_name} (step {evaluated_at or 0})"
                    raise TrainingDiverged(f"loss is {loss} at step {s['step'] + 1}; stopped. {kept}. Lower --lr, or use --precision fp32 or bf16.")
                s["step"], s["position"] = s["step"] + 1, s["position"] + cfg.grad_accum
                examples, tokens = examples + sum(len(b) for b in group), tokens + my_tokens * self.world.size
                rates = {"examples_per_s": examples / busy, "tokens_per_s": tokens / busy}
                self.log({"step": s["step"], "epoch": s["epoch"], "loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, **rates})
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rates['examples_per_s']:.0f}", tok_s=f"{rates['tokens_per_s']:.0f}")
                if cfg.eval_every and s["step"] % cfg.eval_every == 0:
                    evaluated_at = self.evaluate_and_save(busy)
            if s["position"] >= usable:
                s["epoch"], s["position"] = s["epoch"] + 1, 0
                if evaluated_at != s["step"]:
                    evaluated_at = self.evaluate_and_save(busy)
        if evaluated_at != s["step"]:
            self.evaluate_and_save(busy)
        bar.close()
        return {
            "steps": s["step"],
            "epochs": round(s["step"] / self.steps_per_epoch, 3),
            f"best_validation_{cfg.metric}": s["best"],
            "train_seconds": s["train_seconds"] + busy,
            "train_examples_per_s": examples / busy if busy else None,
            "train_tokens_per_s": tokens / busy if busy else None,
        }
