"""`sft --fsdp` and `dpo --fsdp` on a tiny random Llama with tied embeddings: 2 gloo processes give the single
process's loss curve and weights, the best model is saved with its tie, and the sharded checkpoint consolidates into
a folder that loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_causal_lm

from minitransformers.cli import main
from minitransformers.config import DecoderConfig
from minitransformers.model.causal_lm import CausalLM
from minitransformers.train import checkpoint
from minitransformers.train.consolidate import consolidate, model_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer, 32-wide random Llama (input and output embeddings tied) with SmolLM2's tokenizer, and 24 pairs."""
    root = tmp_path_factory.mktemp("tiny_lm")
    config = DecoderConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, max_position_embeddings=128)
    random_causal_lm(config).save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": f"Write a {1 + i % 5}-star review of item {i}.", "completion": f"Item {i} is {'great' if i % 5 > 2 else 'poor'}."} for i in range(24)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefs = [{"prompt": f"Rate item {i}.", "chosen": f"Item {i} is great.", "rejected": f"Item {i} is poor."} for i in range(40)]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    return root


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def run_both(argv: list[str], tmp_path: Path) -> None:
    """ARGV into tmp_path/fsdp on 2 processes with --fsdp, and into tmp_path/single on this one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "minitransformers"]
    sharded = subprocess.Popen([*cmd, *argv, "--out", str(tmp_path / "fsdp"), "--fsdp"], env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "fsdp.log", "w"))
    main([*argv, "--out", str(tmp_path / "single")])
    assert sharded.wait(timeout=300) == 0, (tmp_path / "fsdp.log").read_text()[-3000:]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_fsdp_processes_fine_tune_a_tied_decoder_as_one_process(tiny_lm, tmp_path):
    # batch 3: the 21 training examples make 7 full batches, so one process and two see the same batches (a batch
    # smaller than the world is dropped by data parallelism, DDP and FSDP alike)
    argv = ["sft", "--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "pairs.jsonl"), "--max-length", "128", "--batch-size", "3",
            "--device", "cpu", "--max-steps", "10", "--lr", "1e-3", "--method", "full"]  # fmt: skip
    run_both(argv, tmp_path)
    assert len(losses(tmp_path / "fsdp")) == 10
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)  # measured: 9.5e-7
    single = checkpoint.load(tmp_path / "single" / "checkpoint.pt")["model"]
    weights = model_state(tmp_path / "fsdp")
    assert max_difference(weights, single) < 1e-5
    for folder in (tmp_path / "fsdp", consolidate(tmp_path / "fsdp", tmp_path / "plain")):  # the best (step 10) as saved, and the checkpoint
        model = CausalLM.from_pretrained(folder)
        assert model.lm_head.weight is model.decoder.embed.weight
        assert max_difference(model.state_dict(), single) < 1e-5


def test_two_fsdp_processes_train_dpo_lora_as_one_process(tiny_lm, tmp_path):
    """DPO with LoRA: the reference is the base with the adapters off, a forward of the same sharded model."""
    argv = ["dpo", "--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "prefs.jsonl"), "--batch-size", "4", "--device", "cpu",
            "--max-steps", "6", "--lr", "1e-3", "--method", "lora"]  # fmt: skip
    run_both(argv, tmp_path)
    assert len(losses(tmp_path / "fsdp")) == 6 and losses(tmp_path / "fsdp")[-1] < losses(tmp_path / "fsdp")[0]
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    assert max_difference(model_state(tmp_path / "fsdp"), checkpoint.load(tmp_path / "single" / "checkpoint.pt")["model"]) < 1e-5
