"""`quantize` then `evaluate` through the CLI: a finetune folder becomes a packed quantized folder that
`evaluate` and `predict` load, whose logits are the in-memory quantized model's, with an honest size report."""

import json

import pytest
import torch
from conftest import cli_error, finetune_argv

from minitransformers.cli import main
from minitransformers.model import SequenceClassifier
from minitransformers.quant import quantize_model
from minitransformers.recipes.evaluate import load_model
from minitransformers.text.tokenizer import Tokenizer

METHODS = [("int8", []), ("w8a8", []), ("int4", ["--group-size", "16"]), ("nf4", ["--double-quant"]), ("kmeans4", []), ("prune2:4", [])]


@pytest.fixture(scope="module")
def finetuned(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ft") / "full"
    main(finetune_argv(tiny, out, "--epochs", "3", "--pooling", "cls"))
    return out


@pytest.mark.parametrize("method, extra", METHODS)
def test_quantize_writes_a_folder_that_evaluate_and_load_model_read_back(tiny, finetuned, tmp_path, capsys, method, extra):  # noqa: F811
    out = tmp_path / method
    main(["quantize", "--model", str(finetuned), "--method", method, "--out", str(out), "--json", *extra])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["layers"] == 2 * 6 + 1  # q, k, v, out, up, down per layer, and the pooler; the classifier stays fp32
    assert report["linear_bytes"] < report["linear_bytes_fp32"] or method == "prune2:4"  # 2:4 at 17 bits: half of 32
    assert report["folder_bytes"] == sum(f.stat().st_size for f in out.glob("*.safetensors"))

    reference = SequenceClassifier.from_pretrained(finetuned).eval()
    quantize_model(reference, method, **({"group_size": 16} if method == "int4" else {"double_quant": True} if method == "nf4" else {}))
    batch = Tokenizer.from_pretrained(finetuned)(["the film was great", "awful plot and a really poor story"])
    with torch.no_grad():
        assert torch.equal(load_model(out).eval()(**batch), reference(**batch))  # the saved model is the quantized one

    main(["evaluate", "--model", str(out), "--data", str(tiny / "reviews.csv"), "--device", "cpu", "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fp32 = json.loads((finetuned / "metrics.json").read_text())["test_accuracy"]
    assert abs(metrics["accuracy"] - fp32) <= 0.2  # 25 test reviews: a budget of 5, for 4-bit and unretrained pruning


def test_quantize_refuses_an_adapter_folder_naming_it(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "lora"
    main(finetune_argv(tiny, out, "--max-steps", "2", "--method", "lora"))
    assert "holds an adapter" in cli_error(["quantize", "--model", str(out), "--method", "int8", "--out", str(tmp_path / "q")], capsys)
