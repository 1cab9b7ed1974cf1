"""`evaluate` scores a finetune folder (whole model or adapter) as finetune itself scored it, and times it."""

import json

import pytest
from conftest import finetune_argv

from minitransformers.cli import main


@pytest.mark.parametrize("method", ["full", "lora"])
def test_evaluate_gives_the_test_scores_finetune_wrote(tiny, tmp_path, capsys, method):  # noqa: F811
    out = tmp_path / method
    main(finetune_argv(tiny, out, "--epochs", "2", "--pooling", "cls", "--method", method))
    written = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    main(["evaluate", "--model", str(out), "--data", str(tiny / "reviews.csv"), "--batch-size", "7", "--device", "cpu", "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy"] == written["test_accuracy"] and metrics["examples"] == 25  # 10% of 250 reviews
    assert metrics["loss"] == pytest.approx(written["test_loss"], rel=1e-5)  # other batches: other padding, same loss
    assert metrics["latency_ms_per_batch"] > 0
    assert json.loads((out / "eval_test.json").read_text()) == metrics


def test_evaluate_max_examples_scores_only_the_first_n_and_shows_a_bar(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "full"
    main(finetune_argv(tiny, out, "--epochs", "1", "--max-eval-examples", "6"))
    written = json.loads((out / "metrics.json").read_text())
    assert "test_accuracy" in written
    capsys.readouterr()
    main(["evaluate", "--model", str(out), "--data", str(tiny / "reviews.csv"), "--max-examples", "5", "--batch-size", "2", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    metrics = json.loads(captured.out.strip().splitlines()[-1])  # the bar stays off stdout
    assert metrics["examples"] == 5
    assert "test" in captured.err and "batch" in captured.err  # tqdm's bar: "test: ... 3/3 ... batch"
