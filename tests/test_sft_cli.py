"""The `sft` command and recipe on a tiny random Llama with SmolLM2's tokenizer: it trains, writes metrics.json and a
model folder that `generate` loads; LoRA and QLoRA training leave the base weights bit-identical; a bad example stops
the command with one line naming its file and line."""

import copy
import json
import math

import pytest
import torch
from conftest import cli_error, quantized_base, random_causal_lm

from minitransformers.cli import main
from minitransformers.config import DecoderConfig
from minitransformers.peft.methods import apply_method
from minitransformers.text.sft import IGNORE, SFTExample, collate
from minitransformers.train.tasks import SupervisedFineTuning
from minitransformers.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer, 32-wide random Llama over SmolLM2's vocabulary, saved with the tokenizer and its chat template, and
    24 prompt/completion pairs."""
    root = tmp_path_factory.mktemp("tiny_lm")
    config = DecoderConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, max_position_embeddings=128)
    random_causal_lm(config).save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": f"Write a {1 + i % 5}-star review of item {i}.", "completion": f"Item {i} is {'great' if i % 5 > 2 else 'poor'}."} for i in range(24)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_sft_trains_and_writes_a_model_that_generate_loads(tiny_lm, tmp_path, capsys):
    out = tmp_path / "run"
    main(["sft", "--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "pairs.jsonl"), "--out", str(out), "--method", "lora", "--lr", "1e-2",
          "--packing", "--max-length", "128", "--batch-size", "4", "--device", "cpu", "--json"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert metrics["train_examples"] == 21 and metrics["train_rows"] < 21  # 24 cut 90/10; packed
    assert math.isfinite(metrics["validation_loss"]) and metrics["validation_perplexity"] == pytest.approx(math.exp(metrics["validation_loss"]))
    assert metrics["validation_tokens"] > 0
    assert metrics["trainable_parameters"] == 2 * (8 * (32 + 32) + 8 * (32 + 16))  # 2 layers, r 8: query 32 -> 32, value 32 -> 16 (GQA)
    main(["generate", "--model", str(out), "--chat", "--temperature", "0", "--max-new-tokens", "3", "--device", "cpu", "--json", "Write a 5-star review."])
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) >= 1


def test_a_conversation_without_an_assistant_turn_stops_sft_naming_its_line(tiny_lm, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text((tiny_lm / "pairs.jsonl").read_text() + json.dumps({"messages": [{"role": "user", "content": "hello?"}]}) + "\n")
    line = cli_error(["sft", "--model", str(tiny_lm / "model"), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert f"{data}:25: no assistant turn to train on" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_and_qlora_sft_leave_the_base_weights_bit_identical(method):
    config = DecoderConfig(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_position_embeddings=64)
    base = random_causal_lm(config)
    expected = (quantized_base(base) if method == "qlora" else copy.deepcopy(base)).state_dict()  # QLoRA's base is the NF4 model
    model = apply_method(copy.deepcopy(base), method, {"r": 4})
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 100, (8, 12)).tolist()
    examples = [[SFTExample(row, [IGNORE] * 6 + row[6:])] for row in ids]
    trainer = Trainer(model, SupervisedFineTuning(), examples, examples[:2], lambda rows: collate(rows, 0), [12] * 8, TrainConfig(out=None, max_steps=3, batch_size=4, lr=1e-2, metric="loss"))
    trainer.fit()
    state = {name.replace(".base.", "."): tensor for name, tensor in model.state_dict().items() if "lora_" not in name}
    assert state.keys() == expected.keys()
    assert [name for name, tensor in expected.items() if not torch.equal(state[name], tensor)] == []
    assert all(not torch.equal(p, trained_before[n]) for n, p in model.named_parameters() if n.endswith("lora_B.weight"))  # B moved off zero
