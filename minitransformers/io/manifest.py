"""Integrity manifests: every folder a run writes lists its files' sha256 and what they were derived from.

    manifest.json = {"format": "minitransformers manifest", "version": 1,
                     "files": {"model.safetensors": {"sha256": "9f2c…", "bytes": 90868376}, …},
                     "derived_from": {"model": "sha256 of the base weights", "data": "…", …}}

Writing goes through `publish` (a folder of new files, staged beside the destination) or `publish_file` (one
file): the new file is complete on disk before it replaces the old one, and manifest.json is rewritten
atomically before and after each replacement, listing the coming digest as `pending` beside the current one.
So at any moment, a kill -9 included, each file is the old one or the new one and the manifest accepts it; a
full disk fails while staging, before anything the folder held is touched.

`verify(folder, *names)` re-hashes the named files that the manifest lists: a file changed, damaged, truncated or
missing since it was written is an InputError naming it. A folder without manifest.json (one that
`transformers` wrote, or copied in by hand) loads unverified. `fingerprint(path)` is the identity of an input
(a file's sha256; for a folder, the hash of its weights file, or of its file names and sizes) that runs record
in `derived_from` and compare on resume.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from ..errors import InputError

MANIFEST = "manifest.json"
FORMAT = "minitransformers manifest"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "quantized.safetensors", "adapter.safetensors")
STAGING_PREFIX = ".staging-"


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: str | Path) -> str:
    """What a run was derived from, as one string: a file's sha256; a model folder's weights file's sha256; any
    other folder (an aclImdb tree) a sha256 over its files' relative names and sizes, cheap for 100,000 files."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return sha256(path / name)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def read(folder: str | Path) -> dict | None:
    """The folder's manifest, or None if it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable manifest ({err}); the folder was damaged after it was written") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT or not all(map(well_formed, files.values())):
        raise InputError(f"{path}: not a {FORMAT} (expected format, version, files and derived_from)")
    return manifest


def well_formed(entry) -> bool:
    """A file's entry: {"sha256": hex, "bytes": n}, and during a replacement "pending" and "pending_bytes" too."""
    kinds = {"sha256": str, "bytes": int, "pending": str, "pending_bytes": int}
    return isinstance(entry, dict) and entry.keys() <= kinds.keys() and all(type(v) is kinds[k] for k, v in entry.items())


def verify(folder: str | Path, *names: str) -> dict:
    """Check the named files (all that the manifest lists, if none are named) against the manifest; return its
    derived_from ({} without a manifest)."""
    folder = Path(folder)
    manifest = read(folder)
    if manifest is None:
        return {}
    for name in names or tuple(manifest["files"]):
        entry = manifest["files"].get(name)
        if entry is None:
            continue
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: missing, though {folder / MANIFEST} lists it; the folder is incomplete: write it again")
        accepted = {entry.get("sha256"), entry.get("pending")}
        if path.stat().st_size not in {entry.get("bytes"), entry.get("pending_bytes")} or sha256(path) not in accepted:
            raise InputError(f"{path}: its sha256 differs from the one {folder / MANIFEST} recorded when it was written; "
                             "the file was changed or damaged since: write it again (or restore it)")  # fmt: skip
    derived = manifest.get("derived_from", {})
    return derived if isinstance(derived, dict) else {}


def _write(folder: Path, manifest: dict) -> None:
    tmp = folder / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def _replace(folder: Path, moves: dict[str, Path], derived_from: dict | None) -> None:
    """Move each new file (name -> its complete temporary path) into `folder`, keeping the manifest true throughout."""
    manifest = read(folder) or {"format": FORMAT, "version": 1, "files": {}, "derived_from": {}}
    coming = {name: (sha256(tmp), tmp.stat().st_size) for name, tmp in moves.items()}
    for name, (digest, size) in coming.items():
        manifest["files"].setdefault(name, {}).update(pending=digest, pending_bytes=size)
    _write(folder, manifest)  # 1. both the old and the coming digests are accepted
    for name, tmp in moves.items():
        os.replace(tmp, folder / name)  # 2. each file, atomically
    for name, (digest, size) in coming.items():
        manifest["files"][name] = {"sha256": digest, "bytes": size}
    if derived_from is not None:
        manifest["derived_from"] = derived_from
    _write(folder, manifest)  # 3. only the new digests


def _disk_full(err: OSError, where: Path, need: int | None) -> InputError:
    free = shutil.disk_usage(where).free
    needs = f"about {need / 2**20:.1f} MiB" if need else "more"
    return InputError(f"{where}: the disk is full: writing needs {needs}, {free / 2**20:.1f} MiB is free; nothing in {where} was changed")


@contextlib.contextmanager
def publish(folder: str | Path, derived_from: dict | None = None, need: int | None = None):
    """`with publish(out, derived_from) as stage: model.save_pretrained(stage)`: the files written into `stage`
    (a hidden folder inside `out`) replace their namesakes in `out`, which keeps any other file it has, and
    manifest.json records them. `need`: the bytes the files will take, checked against the free space first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if need is not None and shutil.disk_usage(folder).free < need:
        raise _disk_full(OSError(errno.ENOSPC, "precheck"), folder, need)
    stage = folder / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        try:
            yield stage
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise _disk_full(err, folder, need) from None
            raise
        _replace(folder, {p.name: p for p in sorted(stage.iterdir()) if p.is_file()}, derived_from)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish_file(tmp: Path, path: Path) -> None:
    """Move the complete file `tmp` over `path` (same folder), recording it in that folder's manifest."""
    _replace(path.parent, {path.name: tmp}, derived_from=None)


def remove_leftovers(folder: str | Path) -> None:
    """Delete what a killed writer left in `folder`: staging folders and `.NAME.*.tmp` files."""
    folder = Path(folder)
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)
