"""`finetune --method`: every method runs end to end through the CLI, trains only its own parameters, and its
saved folder (a whole model, or adapter.json + adapter.safetensors over the base) rebuilds the trained model.
On test_trainer's tiny model and synthetic reviews."""

import json

import pytest
import torch
from conftest import cli_error, final_weights, finetune_argv, review_batch

from minitransformers.cli import main
from minitransformers.model import SequenceClassifier
from minitransformers.peft import load_peft
from minitransformers.peft.methods import METHODS, apply_method, load_classifier
from minitransformers.text.tokenizer import Tokenizer

OPTIONS = {  # small sizes for a 32-wide model
    "full": [], "head": [], "bitfit": [], "lora": ["--lora-r", "4", "--lora-targets", "query", "value", "up"], "qlora": ["--lora-r", "4"],
    "houlsby": ["--reduction-factor", "8"], "pfeiffer": ["--reduction-factor", "8"],
    "prompt": ["--num-virtual-tokens", "4", "--max-length", "24"], "prefix": ["--num-virtual-tokens", "4"],
}  # fmt: skip


def trained_model(tiny, out, method: str, ckpt_options: dict) -> SequenceClassifier:  # noqa: F811
    """The model as it was at the end of training, rebuilt from checkpoint.pt (every tensor, frozen ones too)."""
    model = SequenceClassifier.from_encoder(tiny / "model", 2, "cls")
    apply_method(model, method, ckpt_options)
    model.load_state_dict(final_weights(out))
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_only_its_parameters_and_its_folder_rebuilds_the_model(tiny, tmp_path, capsys, method):  # noqa: F811
    out = tmp_path / method
    main([*finetune_argv(tiny, out, "--epochs", "1", "--pooling", "cls", "--method", method, *OPTIONS[method]), "--json"])  # one epoch: one save, at the end
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["method"] == method
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    unused_pooler = 32 * 32 + 32  # H² + H: with CLS pooling the pooler gets no gradient and stays frozen
    assert (trainable == total - unused_pooler) if method == "full" else (0 < trainable < total / 2)
    assert metrics["train_seconds"] > 0 and metrics["peak_memory_mb"] > 0

    trained = trained_model(tiny, out, method, {**metrics["method_options"], "init": "random"} if method == "prompt" else metrics["method_options"])
    loaded = load_classifier(out).eval()
    b = review_batch(tiny)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b), trained(**b), rtol=0, atol=1e-6)  # the prefix MLP, merged, rounds
    if method != "full":  # every frozen tensor at the end equals the base it started from, bit for bit
        fresh = apply_method(SequenceClassifier.from_encoder(tiny / "model", 2, "cls"), method, {**metrics["method_options"], "init": "random"} if method == "prompt" else metrics["method_options"])
        end = final_weights(out)
        frozen = [name for name, p in fresh.named_parameters() if not p.requires_grad]
        assert frozen and all(torch.equal(end[name], fresh.state_dict()[name]) for name in frozen)
        assert (out / "adapter.safetensors").stat().st_size < (tiny / "model" / "model.safetensors").stat().st_size


def test_lora_with_the_pooler_also_writes_peft_format_that_loads_to_the_same_logits(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "lora"
    main(finetune_argv(tiny, out, "--epochs", "1", "--method", "lora", "--pooling", "pooler"))
    ours = load_classifier(out).eval()
    via_peft = load_peft(SequenceClassifier.from_encoder(tiny / "model", 2, "pooler"), out / "peft").eval()
    b = review_batch(tiny)
    with torch.no_grad():
        torch.testing.assert_close(via_peft(**b), ours(**b), rtol=0, atol=1e-6)


def test_predict_reads_an_adapter_folder(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "houlsby"
    main(finetune_argv(tiny, out, "--epochs", "1", "--pooling", "cls", "--method", "houlsby", "--reduction-factor", "8"))
    capsys.readouterr()
    texts = ["the film was great", "awful plot"]
    main(["predict", "--model", str(out), "--json", "--device", "cpu", *texts])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    with torch.no_grad():  # the trained model, rebuilt from its checkpoint: predict must give its probabilities
        probs = trained_model(tiny, out, "houlsby", {"reduction_factor": 8, "train_layernorm": None})(**Tokenizer.from_pretrained(out)(texts)).softmax(-1)
    assert [r["label"] for r in rows] == [f"LABEL_{i}" for i in probs.argmax(-1).tolist()]
    assert [r["probability"] for r in rows] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-4)


def test_prompt_longer_than_the_positions_fails_naming_the_fix(tiny, tmp_path, capsys):  # noqa: F811
    assert "lower --max-length" in cli_error(finetune_argv(tiny, tmp_path / "p", "--method", "prompt", "--num-virtual-tokens", "8", "--max-length", "30"), capsys)


def test_an_adapter_folder_without_its_base_fails_naming_both(tiny, tmp_path):  # noqa: F811
    import shutil

    out = tmp_path / "bitfit"
    shutil.copytree(tiny / "model", tmp_path / "gone")
    main([*finetune_argv(tiny, out, "--max-steps", "2", "--method", "bitfit"), "--model", str(tmp_path / "gone")])
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="adapter.json.*gone"):
        load_classifier(out)


def test_a_copied_adapter_folder_keeps_its_relative_base_and_loads_with_base(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny / "model", "base")
    main([*finetune_argv(tiny, "run", "--max-steps", "2", "--method", "bitfit"), "--model", "base"])
    assert json.loads((tmp_path / "run" / "adapter.json").read_text())["base_model"] == "base"  # as given, not resolved
    texts = ["the film was great", "awful plot"]
    capsys.readouterr()
    main(["predict", "--model", "run", "--json", "--device", "cpu", *texts])
    here = capsys.readouterr().out
    shutil.copytree("run", tmp_path / "elsewhere" / "run")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="base model base is missing.*pass --base"):
        load_classifier("run")
    main(["predict", "--model", "run", "--base", str(tmp_path / "base"), "--json", "--device", "cpu", *texts])
    assert capsys.readouterr().out == here
    main(["evaluate", "--model", "run", "--base", "../base", "--data", str(tiny / "reviews.csv"), "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["examples"] == 25
    with pytest.raises(ValueError, match="--base applies to adapter folders only"):
        load_classifier(tiny / "model", base=tiny / "model")


def test_transformers_reads_the_pad_token_from_an_adapter_run_folder(tiny, tmp_path, transformers):  # noqa: F811
    out = tmp_path / "lora"
    main(finetune_argv(tiny, out, "--max-steps", "2", "--method", "lora"))
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_pretrained(out)
    assert (hf.pad_token, hf.pad_token_id) == ("[PAD]", ours.pad_id)
    texts = ["the film was great", "awful plot and a really poor story"]
    assert hf(texts, padding=True, return_tensors="pt")["input_ids"].tolist() == ours(texts)["input_ids"].tolist()
