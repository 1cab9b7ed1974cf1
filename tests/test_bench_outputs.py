"""experiments/train_bench.py, quant_bench.py and sts_benchmark.py write to runs/ unless told --write-reference:
a run on a loaded machine, or `make experiment`, must not overwrite the committed reports in experiments/results.
Only the option parsing runs; no benchmark does."""

from pathlib import Path

import pytest
from conftest import load_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
RUNS = EXPERIMENTS.parent / "runs"


@pytest.mark.parametrize("name", ["train_bench", "quant_bench", "sts_benchmark"])
def test_a_run_writes_under_runs_and_the_committed_report_only_when_told_to(name, tmp_path):
    module = load_experiment(name)
    args = module.parse_args([])
    assert args.out == RUNS / name and args.out.is_relative_to(RUNS)
    assert args.command == f"python experiments/{name}.py"
    assert module.parse_args(["--write-reference"]).out == module.RESULTS == EXPERIMENTS / "results"
    assert module.parse_args(["--out", str(tmp_path)]).out == tmp_path
    for refused in (["--out", str(module.RESULTS)], ["--write-reference", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit):
            module.parse_args(refused)


def test_each_report_names_the_device_the_command_and_the_profile():
    for name in ("train_bench", "quant_bench", "sts_benchmark"):
        source = (EXPERIMENTS / f"{name}.py").read_text()
        assert "Command: `{args.command}`" in source and "device: {" in source and 'f"Profile: ' in source, name
