"""io/manifest.py: what a run writes is verified when read; a write interrupted anywhere leaves a folder that verifies."""

import os
import shutil

import pytest
import torch

from minitransformers.errors import InputError
from minitransformers.io import manifest
from minitransformers.train import checkpoint


def publish_two(folder, a: bytes, b: bytes, derived_from=None):
    with manifest.publish(folder, derived_from=derived_from) as stage:
        (stage / "a.bin").write_bytes(a)
        (stage / "b.bin").write_bytes(b)


def test_published_files_verify_and_any_changed_byte_is_refused(tmp_path):
    a, b = os.urandom(5000), os.urandom(300)
    publish_two(tmp_path, a, b, derived_from={"model_sha256": "ab" * 32})
    assert manifest.verify(tmp_path) == {"model_sha256": "ab" * 32}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or temporary file is left
    damaged = bytearray(a)
    damaged[1234] ^= 0x10
    (tmp_path / "a.bin").write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"a\.bin: its sha256 differs"):
        manifest.verify(tmp_path, "a.bin")
    manifest.verify(tmp_path, "b.bin")  # only the named files are read
    (tmp_path / "b.bin").unlink()
    with pytest.raises(InputError, match=r"b\.bin: missing, though .*manifest\.json lists it"):
        manifest.verify(tmp_path, "b.bin")


def test_a_folder_without_a_manifest_loads_unverified_and_a_bad_manifest_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"anything")
    assert manifest.verify(tmp_path, "model.safetensors") == {}
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="manifest.json: not a minitransformers manifest"):
        manifest.verify(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff{")
    with pytest.raises(InputError, match="manifest.json: unreadable manifest"):
        manifest.verify(tmp_path)


def test_a_kill_at_any_step_of_a_replacement_leaves_files_the_manifest_accepts(tmp_path, monkeypatch):
    """Replace a, b with new contents, stopping (as a kill would) after each os.replace of the publication: the
    manifest's first rewrite lists the coming digests as pending, so old and new files both verify."""
    old_a, old_b, new_a, new_b = (os.urandom(100 + i) for i in range(4))
    real_replace = os.replace
    for stop_after in range(1, 5):  # manifest (pending), a, b, manifest (final)
        folder = tmp_path / f"stop{stop_after}"
        publish_two(folder, old_a, old_b)
        calls = []

        def replace(src, dst):
            real_replace(src, dst)
            calls.append(dst)
            if len(calls) == stop_after:
                raise KeyboardInterrupt("killed")

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            publish_two(folder, new_a, new_b)
        monkeypatch.setattr(os, "replace", real_replace)
        manifest.verify(folder)
        contents = {(folder / "a.bin").read_bytes(), (folder / "b.bin").read_bytes()}
        assert contents <= {old_a, old_b, new_a, new_b}


def test_a_full_disk_is_refused_before_writing_saying_how_much_is_needed(tmp_path, monkeypatch):
    publish_two(tmp_path, b"old a", b"old b")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(InputError, match=r"the disk is full: writing needs about 9\.5 MiB, 0\.0 MiB is free; nothing in .* was changed"):
        with manifest.publish(tmp_path, need=10_000_000) as stage:
            (stage / "a.bin").write_bytes(b"new")
    with pytest.raises(InputError, match=r"checkpoint\.pt: the disk is full: the checkpoint needs about .* MiB"):
        checkpoint.save_atomic({"model": {"w": torch.randn(1000)}}, tmp_path / "checkpoint.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"old a" and not (tmp_path / "checkpoint.pt").exists()
    manifest.verify(tmp_path)


def test_a_disk_that_fills_while_staging_leaves_the_old_files_and_no_staging(tmp_path):
    publish_two(tmp_path, b"old a", b"old b")
    with pytest.raises(InputError, match="the disk is full"):
        with manifest.publish(tmp_path) as stage:
            (stage / "a.bin").write_bytes(b"new a")
            raise OSError(28, "No space left on device")
    assert (tmp_path / "a.bin").read_bytes() == b"old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "manifest.json"]


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".staging-1234").mkdir()
    (tmp_path / ".staging-1234" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("mine")
    manifest.remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_fingerprints_follow_content_not_place(tmp_path):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "m1" / "config.json").write_text("{}")
    shutil.copytree(tmp_path / "m1", tmp_path / "m2")
    assert manifest.fingerprint(tmp_path / "m1") == manifest.fingerprint(tmp_path / "m2")
    (tmp_path / "m2" / "model.safetensors").write_bytes(b"weightz")
    assert manifest.fingerprint(tmp_path / "m1") != manifest.fingerprint(tmp_path / "m2")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1.txt").write_text("a review")
    before = manifest.fingerprint(tmp_path / "data")
    (tmp_path / "data" / "2.txt").write_text("another")
    assert manifest.fingerprint(tmp_path / "data") != before
