"""Where a run writes, and what it was derived from: the rules every recipe with an `--out` follows.

- `check_out(out, inputs)`: `--out` is a folder path (not empty, not an existing file), and it neither is, nor
  lies inside, nor contains any input folder or file: a run never writes into the model or data it reads.
- `check_new_run(out, inputs, resume, overwrite)` (the CLI's): a folder that already holds a run is continued with
  --resume or replaced with --overwrite, never silently overwritten (its metrics.jsonl would be lost).
- `identity(...)`: the fingerprints (io/manifest.py) of the model and data a run reads; the trainer stores
  them in checkpoint.pt and manifest.json, and `--resume` refuses a run whose inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..io.manifest import MANIFEST, fingerprint, publish
from ..text.sources import data_dir

# Files that mark a folder as a run's (or an artifact's) output.
RUN_FILES = ("metrics.jsonl", "checkpoint.pt", "metrics.json", MANIFEST)


SOURCE_OF = {"sentiment": "sentiment", "wikitext2": "wikitext2", "reviews": "reviews", "reviews-sentiment": "reviews"}  # --data NAME -> the fetched source it reads


def data_path(spec: str) -> Path | None:
    """The file or folder a `--data` spec reads: a fetched source's folder for its name, else the path itself."""
    if spec in SOURCE_OF:
        return data_dir(SOURCE_OF[spec])
    return Path(spec)


def check_out(out: str, inputs: dict[str, str | Path | None], flag: str = "--out") -> Path:
    """`out` as a Path, after refusing an empty path, an existing file, and any overlap with `inputs`
    ({flag: path}, None entries ignored)."""
    if not str(out).strip():
        raise InputError(f"{flag} is empty; give the folder to write into")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {out}: is an existing file, not a folder; choose a folder path")
    here = path.resolve()
    for name, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if here == source or source in here.parents:
            raise InputError(f"{flag} {out} is inside {name} {given}: a run must not write into what it reads; choose another folder")
        if here in source.parents:
            raise InputError(f"{flag} {out} contains {name} {given}: writing there could replace it; choose another folder")
    return path


def check_new_run(out: str, inputs: dict[str, str | Path | None], resume: bool, overwrite: bool) -> None:
    """`check_out`, then refuse to start a run in a folder that holds one, unless resuming it or replacing it;
    with `overwrite`, delete the old run's files first, so nothing of it is mistaken for the new one's."""
    path = check_out(out, inputs)
    found = [name for name in RUN_FILES if (path / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        raise InputError(f"--out {out} already holds a run ({', '.join(found)}): --resume continues it, --overwrite replaces it, or choose another folder")
    for name in found:
        (path / name).unlink()


def identity(model: str | Path, data: str | None = None) -> dict:
    """The sha256 fingerprints of what a run reads, for its checkpoint and manifest."""
    ids = {"model_sha256": fingerprint(model)}
    if data is not None:
        ids["data_sha256"] = fingerprint(data_path(data))
    return ids


def write_json(out: str | Path, name: str, obj) -> None:
    """Write `obj` as OUT/NAME (indented JSON), whole before it replaces the old file, recorded in the manifest."""
    with publish(out) as stage:
        (stage / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
