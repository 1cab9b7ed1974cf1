"""Sharded checkpoints for --fsdp runs, with torch.distributed.checkpoint (DCP): each rank writes its own shards.

    out/checkpoint.json               {"folder": "checkpoint-40.dcp", "step": 40, "world_size": 2, "files": {name: sha256}}
    out/checkpoint-40.dcp/
        .metadata, __0_0.distcp, …    DCP: the model and AdamW state, each DTensor shard by the rank that holds it
        trainer.pt                    rank 0: scheduler, grad scaler, step/epoch/position, best metric, config, identity
        rng-0.pt, rng-1.pt, …         each rank's random number generators (checkpoint.rng_state)

`get_state_dict(model, optimizer)` (torch.distributed.checkpoint.state_dict) gives both as DTensor shards keyed by
parameter name, `dcp.save` writes them in parallel, and `dcp.load` into the shards of the resuming run reads each
rank's slice of every tensor, whatever the world size that wrote them: DCP reshards, so a run of 2 resumes on 1.
The generators of a rank the new world lacks are dropped, and a rank the old world lacked starts from rank
`rank % old world`'s: the data order is the same (the sampler is seeded per epoch), only dropout masks differ.

Atomic in the sense of checkpoint.save_atomic: every rank writes into a staging folder (`.staging-…`, removed as a
leftover by a later run); when all are done, rank 0 renames it to `checkpoint-STEP.dcp` and then replaces
`checkpoint.json`, which names it, atomically and recorded in the run's manifest (io/manifest.py); only then is the
previous folder deleted. A directory cannot be renamed over a non-empty one, hence the pointer file: a kill at any
moment leaves checkpoint.json naming a whole folder, and its sha256 list refuses one damaged afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import InputError
from ..io import manifest
from . import checkpoint
from .distributed import World, barrier

POINTER = "checkpoint.json"


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict, world: World) -> None:
    """Every rank calls it: the model's and optimizer's shards, rank 0's `trainer_state`, every rank's RNG."""
    stage = out / f"{manifest.STAGING_PREFIX}checkpoint-{step}"
    if world.is_main:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    barrier(world)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=stage)
    files = [stage / f"rng-{world.rank}.pt"] + ([stage / "trainer.pt"] if world.is_main else [])
    torch.save(checkpoint.rng_state(), files[0])
    if world.is_main:
        torch.save(trainer_state, files[1])
    for path in files:
        fsync(path)
    barrier(world)  # every shard is on disk
    if world.is_main:
        name = f"checkpoint-{step}.dcp"
        shutil.rmtree(out / name, ignore_errors=True)  # one a killed run wrote at this step but never published
        os.replace(stage, out / name)
        fsync(out)
        pointer = {"folder": name, "step": step, "world_size": world.size,
                   "files": {p.name: manifest.sha256(p) for p in sorted((out / name).iterdir())}}  # fmt: skip
        tmp = out / f".{POINTER}.tmp"
        tmp.write_text(json.dumps(pointer, indent=2) + "\n")
        manifest.publish_file(tmp, out / POINTER)
        remove_unpublished(out)
    barrier(world)


def published(out: Path) -> Path | None:
    """The folder that checkpoint.json names (verified against the manifest and its own sha256 list), or None."""
    if not (out / POINTER).is_file():
        return None
    manifest.verify(out, POINTER)
    pointer = json.loads((out / POINTER).read_text())
    folder = out / pointer["folder"]
    found = {p.name: p for p in folder.iterdir()} if folder.is_dir() else {}
    wrong = [name for name, digest in pointer["files"].items() if name not in found or manifest.sha256(found[name]) != digest]
    if wrong or len(found) != len(pointer["files"]):
        raise InputError(f"{folder}: the sharded checkpoint that {out / POINTER} names is damaged or incomplete ({', '.join(wrong) or 'extra files'}); start a new run")
    return folder


def remove_unpublished(out: Path) -> None:
    """Delete every checkpoint-*.dcp folder but the published one: an older one, or one a kill left unnamed."""
    keep = json.loads((out / POINTER).read_text())["folder"] if (out / POINTER).is_file() else None
    for folder in out.glob("checkpoint-*.dcp"):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def read_trainer_state(folder: Path) -> dict:
    """trainer.pt: tensors, numbers and strings only (weights_only)."""
    return torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> None:
    """Every rank calls it: its shards of the model and optimizer from `folder`, resharded to this world, and its RNG."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    saved_world = len(list(folder.glob("rng-*.pt")))
    checkpoint.set_rng_state(torch.load(folder / f"rng-{world.rank % saved_world}.pt", map_location="cpu", weights_only=True))
