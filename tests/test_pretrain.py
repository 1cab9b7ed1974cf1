"""MLM pretraining end to end on the real WikiText-2 (a tiny model, a few steps), the MLM task's loss, and the
fill-mask command. The saved folder is an HF BertForMaskedLM that transformers loads with the same logits."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import cli_error, fetched
from minitransformers.cli import main
from minitransformers.model import MaskedLM
from minitransformers.recipes.pretrain import unigram_entropy
from minitransformers.text.tokenizer import Tokenizer
from minitransformers.train.tasks import MaskedLanguageModeling

transformers = pytest.importorskip("transformers")

ARGV = ["pretrain", "--size", "tiny", "--steps", "40", "--batch-size", "16", "--seq-length", "64", "--vocab-size", "2000",
        "--lr", "2e-3", "--eval-every", "20", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    fetched("wikitext2")
    out = tmp_path_factory.mktemp("mlm")
    main([*ARGV, "--out", str(out)])
    return out


def test_pretraining_learns_beyond_a_uniform_guess_and_reports_its_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["vocab_size"] == 2000
    assert metrics["validation_loss"] < math.log(2000) - 1.0  # a uniform guess scores log V; 40 steps learn frequencies
    assert metrics["validation_perplexity"] == pytest.approx(math.exp(metrics["validation_loss"]))
    assert 0 < metrics["unigram_entropy"] < math.log(2000)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "validation_loss" in r] == [20, 40]


def test_saved_model_loads_in_transformers_with_the_same_logits_and_tied_weights(run):
    ours = MaskedLM.from_pretrained(run).eval()
    theirs = transformers.BertForMaskedLM.from_pretrained(run).eval()
    assert theirs.cls.predictions.decoder.weight.data_ptr() == theirs.bert.embeddings.word_embeddings.weight.data_ptr()
    batch = Tokenizer.from_pretrained(run)(["the game was released in japan", "he played for the club"])
    with torch.no_grad():
        assert (ours(**batch) - theirs(**batch).logits).abs().max() <= 1e-4


def test_mlm_loss_counts_only_selected_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    model = lambda input_ids, attention_mask, token_type_ids, positions: logits[positions]  # noqa: E731
    batch = {"input_ids": torch.randint(0, 11, (2, 5)), "attention_mask": torch.ones(2, 5), "token_type_ids": torch.zeros(2, 5), "labels": labels}
    task = MaskedLanguageModeling()
    expected = -(logits[0, 1].log_softmax(-1)[4] + logits[1, 3].log_softmax(-1)[7])
    assert task.count(batch) == 2
    assert task.loss_sum(model, batch) == pytest.approx(expected.item(), abs=1e-5)


def test_unigram_entropy_of_a_known_distribution():
    """Tokens 5, 5, 6, 6, 6, 6 (the specials 1 and 2 left out): p = (1/3, 2/3)."""
    expected = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert unigram_entropy([[1, 5, 5, 6, 2], [1, 6, 6, 6, 2]], special={1, 2}) == pytest.approx(expected, abs=1e-12)


def test_fill_mask_prints_top_k_tokens_with_probabilities(run, capsys):
    main(["fill-mask", "--model", str(run), "--device", "cpu", "--top-k", "3", "--json", "the [MASK] of the city", "a [MASK] and a [MASK]"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [len(r["masks"]) for r in rows] == [1, 2]
    for fills in (f for r in rows for f in r["masks"]):
        probabilities = [f["probability"] for f in fills]
        assert len(fills) == 3 and probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert "no [MASK] token" in cli_error(["fill-mask", "--model", str(run), "--device", "cpu", "no mask here"], capsys)


def test_pretrain_says_what_it_does_before_the_silent_steps(monkeypatch, tmp_path, capsys):
    from minitransformers.recipes import pretrain

    (tmp_path / "train.raw").write_text("the cat sat on the mat .\nthe dog sat on the log .\n" * 20)
    monkeypatch.setattr(pretrain, "data_dir", lambda name: tmp_path)

    class Stop(Exception):
        pass

    def stop(split):
        raise Stop("stop before packing")

    monkeypatch.setattr(pretrain, "load_wikitext2", stop)
    with pytest.raises(Stop):
        pretrain.run(pretrain.PretrainConfig(steps=1, out=str(tmp_path / "out"), vocab_size=100, device="cpu"))
    err = capsys.readouterr().err
    assert f"training a WordPiece vocabulary of 100 on {tmp_path / 'train.raw'}" in err
    assert "packing the train split" in err


def tiny_pretrain(monkeypatch, tmp_path, out, **options):
    from minitransformers.recipes import pretrain

    g = torch.Generator().manual_seed(0)
    words = "the cat dog sat ran on under a mat log red blue quickly slowly".split()
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g).tolist()) + " ." for _ in range(120)]
    (tmp_path / "train.raw").write_text("\n".join(lines))
    monkeypatch.setattr(pretrain, "data_dir", lambda name: tmp_path)
    monkeypatch.setattr(pretrain, "load_wikitext2", lambda split: lines if split == "train" else lines[:16])
    config = pretrain.PretrainConfig(size="tiny", steps=6, batch_size=4, seq_length=16, vocab_size=60, eval_every=3, device="cpu", out=str(tmp_path / out), **options)
    pretrain.run(config)
    return tmp_path / out


def test_the_same_seed_pretrains_the_same_model_bit_for_bit(monkeypatch, tmp_path):
    a, b = tiny_pretrain(monkeypatch, tmp_path, "a"), tiny_pretrain(monkeypatch, tmp_path, "b")
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    losses = [[json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert losses[0] == losses[1]


def test_max_eval_sequences_validates_on_the_first_packed_sequences_only(monkeypatch, tmp_path):
    from minitransformers.recipes import pretrain

    validated = []

    class Recording(pretrain.Trainer):
        def evaluate(self, examples, model=None, desc="evaluate"):
            validated.append(len(examples))
            return super().evaluate(examples, model, desc)

    monkeypatch.setattr(pretrain, "Trainer", Recording)
    tiny_pretrain(monkeypatch, tmp_path, "all")
    every, validated[:] = validated[:], []
    tiny_pretrain(monkeypatch, tmp_path, "two", max_eval_sequences=2)
    assert min(every) > 2 and validated == [2] * len(every)  # at steps 3 and 6, and the saved model's final score


@pytest.mark.slow
def test_the_same_seed_pretrains_the_same_model_on_wikitext2_in_another_process(run, tmp_path):
    # the report: two identical runs trained different WordPiece vocabularies (7.7721 vs 7.7642)
    subprocess.run([sys.executable, "-m", "minitransformers", *ARGV, "--out", str(tmp_path / "again")], check=True, capture_output=True)
    for name in ("vocab.txt", "model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (run / name).read_bytes(), name
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["validation_loss"] == json.loads((run / "metrics.json").read_text())["validation_loss"]
