"""Training checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the step, the epoch and how many
batches of it were taken, the best metric so far, and every random number generator (Python, numpy, torch CPU
and CUDA), so that `--resume` continues with the same batches and the same dropout masks.

It is written to a temporary file in the same folder and then renamed over the old one: `os.replace` is atomic
on POSIX, so a crash, even SIGKILL, leaves either the old checkpoint or the new one, never a torn file. The run
folder's manifest.json (io/manifest.py) records its sha256, so a checkpoint damaged later is refused at resume.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import manifest


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def nbytes(obj) -> int:
    """The bytes of the tensors inside nested dicts, lists and tuples: about what torch.save will write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, synced, then moved over it and recorded in the folder's
    manifest (io/manifest.py), so a kill at any moment leaves the old checkpoint or the new one, each verifiable;
    a full disk is refused before writing, saying how much is needed."""
    path = Path(path)
    need = nbytes(obj)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise InputError(f"{path}: the disk is full: the checkpoint needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB is free; the previous checkpoint is intact")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        manifest.publish_file(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What Trainer.checkpoint writes: key -> the kind of value resume needs there.
PARTS = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "state": dict, "rng": dict, "config": dict}
RNG_PARTS = {"python": tuple, "numpy": dict, "torch": torch.Tensor, "cuda": list}  # rng_state's, as set_rng_state reads them


def load(path: str | Path) -> dict:
    """A checkpoint written by save_atomic: tensors, numbers and strings only, so weights_only=True reads it and
    a pickle that would run code is refused. Anything else (empty, torn, foreign, missing a part) is an
    InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; drop --resume to start a new run")
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle's protocol before refusing it: the error says it in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: not a minitransformers checkpoint (unsafe or foreign pickle refused; nothing in it was run)") from None
    except Exception as err:  # noqa: BLE001  # torch's zip reader and unpickler raise a dozen kinds on damaged bytes (EOFError, RuntimeError, AssertionError, …): all mean this
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {' '.join(str(err).split())[:200]}); is it torn or damaged?") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint's dict; is it a minitransformers checkpoint?")
    wrong = misfits(ckpt, PARTS)
    if not wrong:  # one level down: what set_rng_state and load_state_dict would otherwise fail on halfway through a resume
        rng = ckpt["rng"]
        wrong = [f"rng.{part}" for part in misfits(rng, RNG_PARTS)]
        if not wrong and not isinstance(rng["numpy"].get("keys"), torch.Tensor):
            wrong = [f"rng.numpy.keys ({type(rng['numpy'].get('keys')).__name__})"]
        wrong += [f"model.{k} ({type(v).__name__})" for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)][:3]
    if wrong:
        raise InputError(f"{path}: not a whole minitransformers checkpoint: {', '.join(wrong)}; expected {', '.join(PARTS)}, as Trainer.checkpoint writes them")
    return ckpt


def misfits(found: dict, kinds: dict) -> list[str]:
    """'key (missing)' or 'key (the type found)' for each key of `kinds` whose value in `found` is not of its kind."""
    return [f"{key} ({'missing' if key not in found else type(found[key]).__name__})" for key, kind in kinds.items() if not isinstance(found.get(key), kind)]
