"""NER training on CPU: the task's loss falls on a tiny model, the recipe writes an HF token-classification folder and
metrics.json (entity F1 overall and per type) in full and with LoRA (merged into the saved weights, the rest of the
base untouched), and the command line's `ner` (its --help, and a bad BIO file's one-line error naming FILE:LINE)."""

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import cli_error

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.io.safetensors import load_file
from minitransformers.model.token_classifier import TokenClassifier
from minitransformers.recipes.ner import NERConfig, run
from minitransformers.text.ner import collate_tokens, encode_sentences, ner_splits
from minitransformers.text.tokenizer import train_wordpiece
from minitransformers.train.tasks import TokenClassification

PEOPLE = [("alice", "smith"), ("bob", "jones"), ("carol", "white"), ("dave", "brown"), ("erin", "green")]
PLACES = ["paris", "london", "tokyo", "berlin", "madrid"]
FILLER = ["i", "met", "in", "today", "the", "with", "we", "went", "to", "saw", "and", "then"]


@pytest.fixture(scope="module")
def tiny_ner(tmp_path_factory) -> Path:
    """ner.txt: 240 sentences "filler PERSON filler PLACE filler" (B-/I-person, B-geo-loc), and model/: a 2-layer,
    32-wide BERT (dropout 0) with a WordPiece vocabulary learned on them."""
    root = tmp_path_factory.mktemp("tiny_ner")
    rng = random.Random(0)
    lines, texts = [], []
    for _ in range(240):
        first, last = rng.choice(PEOPLE)
        tagged = [(w, "O") for w in rng.sample(FILLER, 2)] + [(first, "B-person"), (last, "I-person")]
        tagged += [(w, "O") for w in rng.sample(FILLER, rng.randint(1, 3))] + [(rng.choice(PLACES), "B-geo-loc"), (rng.choice(FILLER), "O")]
        lines += [f"{w}\t{t}" for w, t in tagged] + [""]
        texts.append(" ".join(w for w, _ in tagged))
    (root / "ner.txt").write_text("\n".join(lines) + "\n")
    (root / "corpus.txt").write_text("\n".join(texts))
    tokenizer = train_wordpiece([root / "corpus.txt"], vocab_size=100, min_frequency=1)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    Encoder(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def config(tiny_ner, out, **fields) -> NERConfig:
    return NERConfig(model=str(tiny_ner / "model"), data=str(tiny_ner / "ner.txt"), out=str(out), **{"epochs": 4, "batch_size": 16, "lr": 3e-3, "device": "cpu", "max_length": 32, **fields})


def test_loss_decreases(tiny_ner):
    labels, splits = ner_splits(str(tiny_ner / "ner.txt"))
    tokenizer = Tokenizer.from_pretrained(tiny_ner / "model")
    model = TokenClassifier.from_encoder(tiny_ner / "model", len(labels), labels=labels)
    task = TokenClassification(labels)
    batch = collate_tokens(encode_sentences(tokenizer, splits["train"][:32], labels, 32), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task.loss_sum(model, batch) / task.count(batch)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert task.count(batch) == sum(len(s.words) for s in splits["train"][:32])  # one label a word, on its first piece
    assert losses[-1] < 0.2 * losses[0], losses


def test_recipe_full_writes_an_hf_folder_and_entity_scores(tiny_ner, tmp_path):
    metrics = run(config(tiny_ner, tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_f1"] == metrics["test_f1"] > 0.9  # the tags follow from the words: the tiny model learns them
    assert set(saved["test_per_type"]) == {"person", "geo-loc"} and saved["test_per_type"]["person"]["support"] > 0
    assert saved["labels"] == ["O", "B-geo-loc", "I-geo-loc", "B-person", "I-person"] and saved["method"] == "full"
    model = TokenClassifier.from_pretrained(tmp_path / "run")
    assert model.labels == saved["labels"] and Tokenizer.from_pretrained(tmp_path / "run").vocab_size == Tokenizer.from_pretrained(tiny_ner / "model").vocab_size


def test_recipe_lora_saves_the_merged_model_and_leaves_the_rest_of_the_base(tiny_ner, tmp_path):
    metrics = run(config(tiny_ner, tmp_path / "lora", method="lora", lr=1e-2))
    assert metrics["method"] == "lora" and metrics["trainable_parameters"] < 0.2 * metrics["total_parameters"]
    base, saved = load_file(tiny_ner / "model" / "model.safetensors"), load_file(tmp_path / "lora" / "model.safetensors")
    for name, tensor in saved.items():
        if name.startswith("bert."):
            changed = not torch.equal(tensor, base[name.removeprefix("bert.")])
            assert changed == (".query.weight" in name or ".value.weight" in name), name  # B A merged into W only
    assert TokenClassifier.from_pretrained(tmp_path / "lora").labels == metrics["labels"]


def test_cli_help_and_bad_bio_file(tiny_ner, tmp_path, capsys):
    from minitransformers.cli import main

    with pytest.raises(SystemExit) as info:
        main(["ner", "--help"])
    assert info.value.code == 0 and "--max-train-examples" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("New\tB-geo-loc\nYork\tI-geo-loc\nis\tO\nbig\tI-geo-loc\n")
    line = cli_error(["ner", "--model", str(tiny_ner / "model"), "--data", str(bad), "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert f"{bad}:4: tag 'I-geo-loc' after 'O' breaks IOB2" in line
    line = cli_error(["ner", "--model", str(tiny_ner / "model"), "--data", str(bad), "--out", str(tmp_path / "out"), "--lora-r", "4"], capsys)
    assert "--lora-r applies to --method lora" in line


def test_cli_lora_run_prints_its_metrics_as_json(tiny_ner, tmp_path, capsys):
    from minitransformers.cli import main

    capsys.readouterr()
    main(["ner", "--model", str(tiny_ner / "model"), "--data", str(tiny_ner / "ner.txt"), "--out", str(tmp_path / "run"), "--device", "cpu",
          "--method", "lora", "--lora-r", "4", "--max-steps", "2", "--batch-size", "8", "--max-length", "32", "--json"])  # fmt: skip
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["steps"] == 2 and metrics["method_options"] == {"r": 4, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}
    assert {"test_f1", "test_precision", "test_recall", "test_accuracy", "test_per_type"} <= metrics.keys()
