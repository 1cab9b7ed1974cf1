"""The training loop as a specification: determinism, exact resume (also after SIGKILL), NaN handling, a run
that writes no file (out=None), gradient accumulation, and 2-process gloo DDP equal to one process. All on a
tiny model and synthetic data."""

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_error, final_weights, finetune_argv, finetune_config

from minitransformers.cli import main
from minitransformers.model import SequenceClassifier
from minitransformers.recipes import finetune
from minitransformers.text.collate import collate, encode_examples
from minitransformers.text.datasets import load_classification
from minitransformers.text.tokenizer import Tokenizer
from minitransformers.train import checkpoint
from minitransformers.train.tasks import Classification
from minitransformers.train.trainer import TrainConfig, Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parent.parent


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def losses(out) -> list[float]:
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_finetune_learns_and_writes_metrics_and_a_loadable_model(tiny, tmp_path, capsys):
    main([*finetune_argv(tiny, tmp_path / "run", "--epochs", "4", "--pooling", "cls"), "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["test_accuracy"] >= 0.9  # the label is one word of the text: a learnable task
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert losses(tmp_path / "run")[-1] < losses(tmp_path / "run")[0]
    main(["predict", "--model", str(tmp_path / "run"), "--json", "--device", "cpu", "the film was great", "awful plot"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["label"] for r in rows] == ["LABEL_1", "LABEL_0"] and all(r["probability"] > 0.5 for r in rows)


def test_same_seed_gives_bit_identical_weights(tiny, tmp_path):
    main(finetune_argv(tiny, tmp_path / "a", "--max-steps", "30", "--seed", "3"))
    main(finetune_argv(tiny, tmp_path / "b", "--max-steps", "30", "--seed", "3"))
    main(finetune_argv(tiny, tmp_path / "c", "--max-steps", "30", "--seed", "4"))
    assert_identical(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    assert not torch.equal(final_weights(tmp_path / "a")["classifier.weight"], final_weights(tmp_path / "c")["classifier.weight"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """N steps straight, against N/2 steps, a crash, and --resume for the rest (across an epoch end)."""
    run = finetune_argv(tiny, tmp_path / "straight", "--max-steps", "40", "--eval-every", "20")
    main(run)
    original = Trainer.train_step

    def crash_after_20(self, group):
        if self.state["step"] == 21:
            raise KeyboardInterrupt("simulated crash")
        return original(self, group)

    monkeypatch.setattr(Trainer, "train_step", crash_after_20)
    interrupted = finetune_argv(tiny, tmp_path / "resumed", "--max-steps", "40", "--eval-every", "20")
    with pytest.raises(SystemExit, match="130"):  # Ctrl-C: the CLI prints "interrupted" and exits 130, as a shell does
        main(interrupted)
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")["state"]["step"] == 20
    monkeypatch.setattr(Trainer, "train_step", original)
    main([*interrupted, "--resume"])
    assert_identical(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def cli(log: Path, *argv) -> subprocess.Popen:
    """The CLI in a child process, its stderr (the progress bar, any traceback) in the file `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "minitransformers", *argv], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def test_sigkill_mid_run_then_resume_finishes_with_the_same_weights(tiny, tmp_path):
    run = finetune_argv(tiny, tmp_path / "killed", "--max-steps", "600", "--eval-every", "25")[1:]
    straight = cli(tmp_path / "straight.log", "finetune", *finetune_argv(tiny, tmp_path / "straight", "--max-steps", "600", "--eval-every", "25")[1:])
    victim = cli(tmp_path / "victim.log", "finetune", *run)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    step = checkpoint.load(ckpt)["state"]["step"]  # the checkpoint on disk is whole: it loads
    assert 0 < step < 600
    resumed = cli(tmp_path / "resumed.log", "finetune", *run, "--resume")
    assert resumed.wait() == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    assert straight.wait() == 0, (tmp_path / "straight.log").read_text()[-2000:]
    assert_identical(final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    original = Classification.loss_sum

    def nan_at_step_13(self, model, batch, calls=[0]):
        calls[0] += 1
        loss = original(self, model, batch)
        return loss * float("nan") if calls[0] == 13 else loss

    monkeypatch.setattr(Classification, "loss_sum", nan_at_step_13)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 13; stopped\. The last good checkpoint is .*checkpoint\.pt \(step 10\)"):
        finetune.run(finetune_config(tiny, tmp_path / "nan", max_steps=30, eval_every=10))
    ckpt = checkpoint.load(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["state"]["step"] == 10 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def tiny_trainer(tiny, out, save=None) -> Trainer:
    """A Trainer on the tiny reviews as `finetune` builds it (cls pooling, 6 steps, evaluated at steps 3 and 6)."""
    checkpoint.seed_everything(0)
    tokenizer = Tokenizer.from_pretrained(tiny / "model")
    data = {name: encode_examples(tokenizer, examples, 32) for name, examples in load_classification(str(tiny / "reviews.csv")).items()}
    model = SequenceClassifier.from_encoder(tiny / "model", 2, pooling="cls")
    config = TrainConfig(out=out, max_steps=6, eval_every=3, batch_size=8, lr=1e-3)
    return Trainer(model, Classification(2), data["train"], data["validation"], lambda items: collate(items, tokenizer.pad_id),
                   [len(e.input_ids) for e in data["train"]], config, save=save)  # fmt: skip


def test_evaluation_by_length_gives_the_scores_of_evaluation_in_order(tiny):
    """Trainer(length=...) batches similar lengths together, each batch padded to its own longest: fewer padded
    tokens, the same predictions (accuracy and macro-F1 exactly, the mean loss to rounding)."""
    trainer = tiny_trainer(tiny, None)
    examples = trainer.eval_set
    assert len({len(e.input_ids) for e in examples}) > 3  # lengths that differ, so sorting changes the batches
    trainer.config.eval_batch_size = 7
    in_order = trainer.evaluate(examples)
    trainer.length = lambda e: len(e.input_ids)
    by_length = trainer.evaluate(examples)
    assert by_length["accuracy"] == in_order["accuracy"] and by_length["macro_f1"] == in_order["macro_f1"]
    assert by_length["loss"] == pytest.approx(in_order["loss"], rel=1e-6)
    padded = lambda order: sum(7 * max(len(e.input_ids) for e in order[i : i + 7]) for i in range(0, len(order), 7))  # noqa: E731
    assert padded(sorted(examples, key=trainer.length)) < padded(examples)


def test_out_none_writes_no_file_and_keeps_the_log_and_the_best_model_in_memory(tiny, tmp_path, monkeypatch):
    written = tiny_trainer(tiny, str(tmp_path / "written"))
    written.fit()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tiny_files = sorted(tiny.rglob("*"))
    best = []
    trainer = tiny_trainer(tiny, None, save=lambda model, folder: best.append((folder, copy.deepcopy(model.state_dict()))))
    result = trainer.fit()
    assert list(cwd.iterdir()) == [] and sorted(tiny.rglob("*")) == tiny_files  # no file, no folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "written"]
    assert result["steps"] == 6 and result["best_validation_accuracy"] == written.state["best"]
    assert [r["step"] for r in trainer.history if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in trainer.history if "validation_loss" in r] == [3, 6]
    assert written.history == [json.loads(line) for line in (tmp_path / "written" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in trainer.history if "loss" in r] == losses(tmp_path / "written")  # the same run, bit for bit
    assert best and all(folder is None for folder, _ in best)
    assert_identical(best[-1][1], SequenceClassifier.from_pretrained(tmp_path / "written").state_dict())  # the best model that out= saves
    with pytest.raises(ValueError, match="TrainConfig.out is None"):
        tiny_trainer(tiny, None).fit(resume=True)


def test_gradient_accumulation_equals_the_larger_batch(tiny, tmp_path):
    main(finetune_argv(tiny, tmp_path / "big", "--max-steps", "10", "--no-bucket", "--batch-size", "8"))
    main(finetune_argv(tiny, tmp_path / "accum", "--max-steps", "10", "--no-bucket", "--batch-size", "4", "--grad-accum", "2"))
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "accum")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert losses(tmp_path / "big") == pytest.approx(losses(tmp_path / "accum"), abs=1e-6)


def test_two_gloo_processes_give_the_loss_curve_of_one_process(tiny, tmp_path):
    """Same global batch (8): 2 CPU processes of 4 examples each, gradients averaged by DDP over gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "minitransformers"]
    two = subprocess.run([*cmd, *finetune_argv(tiny, tmp_path / "ddp", "--max-steps", "20")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    main(finetune_argv(tiny, tmp_path / "single", "--max-steps", "20"))
    assert len(losses(tmp_path / "ddp")) == 20
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("unpad", [False, True])
def test_mixed_precision_on_cuda_learns_and_keeps_fp32_weights(tiny, tmp_path, capsys, precision, unpad):
    """Autocast on CUDA (fp16 with a GradScaler), with and without padding removal: master weights stay fp32."""
    argv = finetune_argv(tiny, tmp_path / "run", "--epochs", "4", "--pooling", "cls", "--precision", precision, *(["--unpad"] if unpad else []))
    main([*[a if a != "cpu" else "cuda" for a in argv], "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["test_accuracy"] >= 0.9 and metrics["device"].startswith("cuda")
    assert all(v.dtype == torch.float32 for v in final_weights(tmp_path / "run").values() if v.is_floating_point())


def test_resume_with_other_options_is_refused_naming_each_change(tiny, tmp_path, capsys):
    """A resumed run must be the run it continues: a new --lr, --max-steps or --data would change it silently.
    The data is compared by its sha256, so a copy elsewhere is the same data and an edited file is not."""
    run = finetune_config(tiny, tmp_path / "run", max_steps=10)
    finetune.run(run)
    with pytest.raises(ValueError, match=r"lr 0\.001 -> 0\.002; rerun with the same options, start a new --out, or pass --resume-anyway"):
        finetune.run(dataclasses.replace(run, lr=2e-3, resume=True))
    (tmp_path / "copy.csv").write_bytes((tiny / "reviews.csv").read_bytes())
    (tmp_path / "other.csv").write_bytes((tiny / "reviews.csv").read_bytes() + b"one more review good,1\n")
    with pytest.raises(ValueError, match=r"identity data_sha256 '[0-9a-f]{64}' -> '[0-9a-f]{64}', max_steps 10 -> 20"):
        finetune.run(dataclasses.replace(run, data=str(tmp_path / "other.csv"), max_steps=20, resume=True))
    assert "lr 0.001 -> 0.002" in cli_error([*finetune_argv(tiny, tmp_path / "run", "--max-steps", "10", "--resume"), "--lr", "2e-3"], capsys)
    finetune.run(dataclasses.replace(run, data=str(tmp_path / "copy.csv"), resume=True))  # the same bytes elsewhere: the same run
    finetune.run(dataclasses.replace(run, resume=True))  # the same options: allowed
