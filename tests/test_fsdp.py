"""--fsdp as a specification: 2 gloo processes sharding the tiny model (FSDP2) train as one process does, for full
fine-tuning and LoRA; the sharded checkpoint survives SIGKILL and resumes to the uninterrupted run's weights, on 2
processes or on 1; QLoRA is refused. The reference is always a plain single-process run."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import final_weights, finetune_argv, finetune_config

from minitransformers.cli import main
from minitransformers.errors import InputError
from minitransformers.io.safetensors import load_file
from minitransformers.model import Encoder
from minitransformers.peft.methods import load_classifier
from minitransformers.recipes import finetune
from minitransformers.train.consolidate import consolidate, model_state

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(log: Path, argv: list[str], nproc: int = 2) -> subprocess.Popen:
    """`torchrun --nproc_per_node=NPROC -m minitransformers ARGV`, its output in the file `log`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "minitransformers", *argv]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def descendants(pid: int) -> list[int]:
    """The process ids below `pid`, from /proc (torchrun starts its workers in sessions of their own)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [d for c in map(int, children) for d in (c, *descendants(c))]


def sigkill_all(process: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers and then torchrun itself, each by its id."""
    for pid in descendants(process.pid):
        os.kill(pid, signal.SIGKILL)
    process.send_signal(signal.SIGKILL)


def finish(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]


def log_column(out, name: str) -> list[float]:
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r[name] for r in rows if "loss" in r]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_fsdp_processes_give_the_loss_curve_and_weights_of_one_process(tiny, tmp_path, method):
    """The same global batch (8): 2 CPU processes of 4 examples each, every parameter sharded in two. Gradient
    accumulation (2 micro-steps) and clipping (max norm 0.1, below most steps' norm) included: the logged norm is the
    global one. The best model is saved as the single process saves it, and the sharded checkpoint consolidates to
    the single process's final weights; under LoRA (with gradient checkpointing) the base stays as loaded."""
    argv = ["--max-steps", "20", "--method", method, "--grad-accum", "2", "--batch-size", "4", "--max-grad-norm", "0.1"]
    argv += ["--gradient-checkpointing"] if method == "lora" else []
    sharded = torchrun(tmp_path / "fsdp.log", finetune_argv(tiny, tmp_path / "fsdp", *argv, "--fsdp"))
    main(finetune_argv(tiny, tmp_path / "single", *argv))
    finish(sharded, tmp_path / "fsdp.log")
    losses, single_losses = log_column(tmp_path / "fsdp", "loss"), log_column(tmp_path / "single", "loss")
    assert len(losses) == 20 and max(abs(a - b) for a, b in zip(losses, single_losses)) < 1e-5
    norms, single_norms = log_column(tmp_path / "fsdp", "grad_norm"), log_column(tmp_path / "single", "grad_norm")
    assert sum(n > 0.1 for n in single_norms) >= 5  # clipping acts
    assert max(abs(a - b) for a, b in zip(norms, single_norms)) < 1e-5
    weights = model_state(tmp_path / "fsdp")  # the sharded checkpoint, gathered in this process
    assert max_difference(weights, final_weights(tmp_path / "single")) < 1e-5
    best, single_best = load_classifier(tmp_path / "fsdp").state_dict(), load_classifier(tmp_path / "single").state_dict()
    assert max_difference(best, single_best) < 1e-5
    consolidated = load_classifier(consolidate(tmp_path / "fsdp", tmp_path / "plain")).state_dict()  # the latest step, as a folder
    assert max_difference(consolidated, final_weights(tmp_path / "single")) < 1e-5
    if method == "lora":
        base = {k: v for k, v in Encoder.from_pretrained(tiny / "model").state_dict().items() if not k.startswith("pooler")}
        assert all(torch.equal(weights[f"encoder.{k}".replace(".query.", ".query.base.").replace(".value.", ".value.base.")], v) for k, v in base.items())
        assert sorted(load_file(tmp_path / "fsdp" / "adapter.safetensors")) == sorted(load_file(tmp_path / "single" / "adapter.safetensors"))


def test_a_consolidated_checkpoint_loads_in_transformers_with_the_run_weights(tiny, tmp_path, transformers):
    """A one-process --fsdp run (a process group of one) checkpoints at step 6 and keeps training to 10; its step-6
    checkpoint, consolidated, is BertForSequenceClassification in transformers with the weights of a plain 6-step run."""
    finetune.run(finetune_config(tiny, tmp_path / "six", max_steps=6))
    finetune.run(finetune_config(tiny, tmp_path / "fsdp", max_steps=6, fsdp=True))
    hf = transformers.BertForSequenceClassification.from_pretrained(consolidate(tmp_path / "fsdp", tmp_path / "plain"))
    expected = load_file(tmp_path / "six" / "model.safetensors")  # the plain run's saved best (its one evaluation, at step 6), in HF names
    loaded = hf.state_dict()
    assert expected.keys() <= loaded.keys() and max_difference({k: loaded[k] for k in expected}, expected) < 1e-6


def test_a_damaged_sharded_checkpoint_or_a_resume_without_fsdp_is_refused(tiny, tmp_path):
    run = finetune_config(tiny, tmp_path / "run", max_steps=4, fsdp=True)
    finetune.run(run)
    with pytest.raises(InputError, match=r"holds a sharded checkpoint \(checkpoint.json\), written with --fsdp: resume with --fsdp"):
        finetune.run(dataclasses.replace(run, fsdp=False, resume=True))
    shard = next((tmp_path / "run" / "checkpoint-4.dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1] + bytes([shard.read_bytes()[-1] ^ 1]))  # one bit flipped
    try:
        with pytest.raises(InputError, match=rf"checkpoint-4.dcp: the sharded checkpoint that .* names is damaged or incomplete \({shard.name}\)"):
            finetune.run(dataclasses.replace(run, max_steps=8, resume=True, resume_anyway=True))
    finally:
        if dist.is_initialized():  # the run refused after joining its process group of one
            dist.destroy_process_group()


def test_offloaded_shards_train_as_shards_on_the_device_do_and_offload_needs_fsdp(tiny, tmp_path):
    """--fsdp-offload moves where the shards live, not the arithmetic: a one-process run gives the --fsdp run's losses
    and weights (on a CPU the shards are in CPU memory either way; tests marked gpu check the placement on CUDA)."""
    try:
        finetune.run(finetune_config(tiny, tmp_path / "device", max_steps=6, fsdp=True))
        finetune.run(finetune_config(tiny, tmp_path / "offload", max_steps=6, fsdp=True, fsdp_offload=True))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert log_column(tmp_path / "offload", "loss") == log_column(tmp_path / "device", "loss")
    assert max_difference(model_state(tmp_path / "offload"), model_state(tmp_path / "device")) == 0
    with pytest.raises(InputError, match="--fsdp-offload offloads FSDP's shards: add --fsdp"):
        finetune.run(finetune_config(tiny, tmp_path / "plain", max_steps=2, fsdp_offload=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_shards_live_in_cpu_memory_while_the_model_computes_on_cuda():
    from minitransformers.config import EncoderConfig
    from minitransformers.train import fsdp

    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = Encoder(EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=16)).cuda()
        fsdp.shard(model, torch.device("cuda"), 1, "fp32", offload=True)
        assert all(p.to_local().device.type == "cpu" for p in model.parameters())
        hidden = model(torch.randint(0, 64, (2, 8), device="cuda"))  # (2, 8, 32), computed on the GPU
        assert hidden.device.type == "cuda" and torch.isfinite(hidden).all()
    finally:
        dist.destroy_process_group()


def test_qlora_under_fsdp_is_refused_saying_why(tiny, tmp_path):
    try:
        with pytest.raises(InputError, match=r"--fsdp does not shard quantized layers .*NF4.*use --method lora"):
            finetune.run(finetune_config(tiny, tmp_path / "q", max_steps=2, method="qlora", fsdp=True))
    finally:
        if dist.is_initialized():  # the run refused after joining its process group of one
            dist.destroy_process_group()


def test_sigkill_mid_run_then_resume_on_two_or_one_process_gives_the_uninterrupted_weights(tiny, tmp_path):
    """Kill every process of a 2-process --fsdp run with SIGKILL once it has checkpointed; --resume on 2 processes
    ends with the uninterrupted run's weights bit for bit, and on 1 process (DCP reshards 2 -> 1) within 1e-5."""
    run = ["--max-steps", "60", "--eval-every", "10", "--fsdp"]
    straight = torchrun(tmp_path / "straight.log", finetune_argv(tiny, tmp_path / "straight", *run))
    victim = torchrun(tmp_path / "victim.log", finetune_argv(tiny, tmp_path / "killed", *run))
    pointer = tmp_path / "killed" / "checkpoint.json"
    deadline = time.time() + 120
    while not pointer.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    sigkill_all(victim)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    step = json.loads(pointer.read_text())["step"]
    assert 0 < step < 60
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-one")
    finish(torchrun(tmp_path / "resumed.log", finetune_argv(tiny, tmp_path / "killed", *run, "--resume")), tmp_path / "resumed.log")
    finish(straight, tmp_path / "straight.log")
    one = subprocess.run([sys.executable, "-m", "minitransformers", *finetune_argv(tiny, tmp_path / "killed-one", *run, "--resume")],
                         env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    expected = model_state(tmp_path / "straight")
    resumed = model_state(tmp_path / "killed")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert log_column(tmp_path / "killed", "loss") == log_column(tmp_path / "straight", "loss")
    assert max_difference(model_state(tmp_path / "killed-one"), expected) < 1e-5  # measured: 4.7e-7
    assert log_column(tmp_path / "killed-one", "loss") == pytest.approx(log_column(tmp_path / "straight", "loss"), abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-60.dcp"]  # the older ones removed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_fsdp_on_cuda_learns_and_keeps_fp32_weights(tiny, tmp_path, capsys):
    """--precision bf16 --fsdp on one GPU (NCCL, a group of one): the MixedPrecisionPolicy computes in bf16 and
    reduces in fp32, while the sharded master weights, the saved model and the checkpoint stay fp32."""
    argv = finetune_argv(tiny, tmp_path / "run", "--epochs", "4", "--pooling", "cls", "--precision", "bf16", "--fsdp")
    main([*[a if a != "cpu" else "cuda" for a in argv], "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["test_accuracy"] >= 0.9 and metrics["device"].startswith("cuda")
    assert all(v.dtype == torch.float32 for v in model_state(tmp_path / "run").values())
    assert all(v.dtype == torch.float32 for v in load_classifier(tmp_path / "run").state_dict().values() if v.is_floating_point())
