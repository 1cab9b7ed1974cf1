"""kill -9 at random moments of a training run, its checkpoint writes included: resuming always ends with the
weights of an uninterrupted run, bit for bit, or is refused with a one-line message; never a silently damaged run.
Two trials here, twenty in `make test-slow`. Each trial kills `finetune` (a checkpoint every step, so many kills
land inside a save) after a seeded random delay, then resumes until the run completes."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import final_weights, finetune_argv

from minitransformers.io import manifest

STEPS = ["--max-steps", "60", "--eval-every", "1"]


def cli(argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "minitransformers", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli(finetune_argv(tiny, out, *STEPS)).wait() == 0
    return final_weights(out)


def kill_and_resume(tiny, out, seed: int) -> dict:
    """-> what happened: the kill's delay, whether a checkpoint survived, and the resumed run's final weights."""
    delay = random.Random(seed).uniform(1.0, 8.0)
    run = cli(finetune_argv(tiny, out, *STEPS))
    try:
        run.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGKILL)
        run.wait()
    if (out / "checkpoint.pt").is_file():
        manifest.verify(out)  # whatever the kill interrupted, every file the manifest lists is whole
        flag = "--resume"
    else:
        flag = "--overwrite"  # killed before its first checkpoint: start again
    resumed = cli([*finetune_argv(tiny, out, *STEPS), flag])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, f"seed {seed}, killed after {delay:.2f} s: resuming failed: {err[-2000:]}"
    return {"delay": delay, "resumed": flag, "weights": final_weights(out)}


def check_trials(tiny, tmp_path, reference, seeds):
    for seed in seeds:
        result = kill_and_resume(tiny, tmp_path / f"run{seed}", seed)
        assert result["weights"].keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(result["weights"][name], tensor), f"seed {seed}, killed after {result['delay']:.2f} s: {name} differs"


def test_kill_9_then_resume_matches_the_uninterrupted_run(tiny, tmp_path, reference):
    check_trials(tiny, tmp_path, reference, seeds=range(2))


@pytest.mark.slow
def test_kill_9_twenty_times_then_resume_matches_the_uninterrupted_run(tiny, tmp_path, reference):
    check_trials(tiny, tmp_path, reference, seeds=range(100, 120))


def test_a_resume_killed_again_still_resumes(tiny, tmp_path, reference):
    """Kill the run, then kill its resumption too (while it rewrites the log and checkpoints), then finish."""
    out = tmp_path / "run"
    for delay in (4.0, 3.5):
        run = cli([*finetune_argv(tiny, out, *STEPS), *(["--resume"] if (out / "checkpoint.pt").is_file() else ["--overwrite"])])
        time.sleep(delay)
        run.send_signal(signal.SIGKILL)
        run.wait()
    flag = "--resume" if (out / "checkpoint.pt").is_file() else "--overwrite"
    assert cli([*finetune_argv(tiny, out, *STEPS), flag]).wait() == 0
    assert all(torch.equal(final_weights(out)[k], v) for k, v in reference.items())
