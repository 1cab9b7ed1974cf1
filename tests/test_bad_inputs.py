"""Every class of bad input from issue 18, through the command line: a non-zero exit (2), one line `error: ...`
naming the file or flag, no traceback, and no file changed outside --out. The cases are tests/bad_input_cases.py;
scripts/bad_inputs_report.py runs the same ones in subprocesses against any checkout, for the before/after table."""

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from bad_input_cases import all_cases, make_artifacts, train_args
from conftest import DATA, cli_error

from minitransformers.cli import main

CASES = all_cases()


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    return make_artifacts(tmp_path_factory.mktemp("artifacts"), tiny)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under the roots -> its sha256."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_naming_it_and_changes_no_input(name, artifacts, tmp_path, capsys, monkeypatch):
    case = CASES[name](artifacts, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(case.stdin))
    monkeypatch.setenv("MINITRANSFORMERS_DATA", str(DATA))  # fetched data stays found from tmp_path
    monkeypatch.chdir(tmp_path)  # a relative or empty --out lands here, never in the repository
    kept = [artifacts.root, artifacts.full, artifacts.adapter, artifacts.quantized, *case.keep]
    before = snapshot(*kept)
    if case.ok:
        main(case.argv)
    else:
        line = cli_error(case.argv, capsys)
        assert case.expect in line, f"{name}: the error should name {case.expect!r}: {line}"
    assert snapshot(*kept) == before, f"{name}: a file outside --out changed"
    assert not Path("/tmp/minitransformers_pwned").exists()


def test_json_prints_exactly_one_json_line(artifacts, tmp_path, capsys):
    main([*train_args(artifacts, tmp_path / "run"), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["steps"] == 2


def test_a_run_cleans_what_a_killed_save_left_and_overwrite_replaces_the_old_run(artifacts, tmp_path):
    run = tmp_path / "run"
    main(train_args(artifacts, run))
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(os.urandom(1000))  # as a kill -9 mid-save leaves them
    (run / ".staging-ab12").mkdir()
    main(train_args(artifacts, run, "--resume", "--max-steps", "2"))
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    log = (run / "metrics.jsonl").read_text()
    main(train_args(artifacts, run, "--overwrite", "--max-steps", "2"))
    assert (run / "metrics.jsonl").read_text().count("\n") == log.count("\n")  # the old log was replaced, not appended to


def test_debug_shows_the_traceback(artifacts, tmp_path):
    with pytest.raises(Exception, match="inside --model"):
        main([*train_args(artifacts, artifacts.model), "--debug"])


def test_a_read_only_folder_is_one_line_naming_it(artifacts, tmp_path, capsys, monkeypatch):
    """As root, chmod cannot make a folder read-only, so the operating system's refusal is simulated."""

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    line = cli_error(train_args(artifacts, tmp_path / "run"), capsys)
    assert "Permission denied" in line and str(tmp_path / "run") in line


def test_a_full_disk_stops_the_run_saying_how_much_was_needed_and_keeps_the_last_checkpoint(artifacts, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(artifacts.full, run)
    before = snapshot(run)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    line = cli_error(train_args(artifacts, run, "--resume-anyway", "--max-steps", "4"), capsys)  # two more steps, then a save
    assert "the disk is full" in line and "MiB" in line
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.endswith("metrics.jsonl")} == {k: v for k, v in before.items() if not k.endswith("metrics.jsonl")}
