"""Label names, from the data to the saved model: the built-in sentiment set says negative / positive, a file's
string labels are sorted (or ordered by --labels), and both reach config.json's id2label, which transformers
reads, and adapter.json. On the tiny model and its synthetic reviews."""

import csv
import json
from dataclasses import replace

import pytest
from conftest import cli_error, finetune_argv, finetune_config

from minitransformers.cli import main
from minitransformers.peft.methods import load_classifier
from minitransformers.recipes import finetune
from minitransformers.text.datasets import label_names, load_classification, load_csv
from minitransformers.text.sources import get_source


def reviews(tiny) -> list[dict]:
    with open(tiny / "reviews.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def named_csv(tiny, tmp_path):
    """The tiny reviews with their labels written as "negative" / "positive"."""
    path = tmp_path / "named.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": ["negative", "positive"][int(r["label"])]} for r in reviews(tiny))
    return path


def test_sentiment_run_names_its_labels_in_config_json_for_transformers(tiny, tmp_path, monkeypatch, capsys, transformers):  # noqa: F811
    root = tmp_path / "data"  # a stand-in for the fetched set: the tiny reviews, rated -1 or +1
    (root / "sentiment").mkdir(parents=True)
    (root / "sentiment" / ".fetched").write_text(get_source("sentiment").sha256 + "\n")
    rows = [f"{i}\t{2 * int(r['label']) - 1}.0\t{r['text']}\n" for i, r in enumerate(reviews(tiny))]
    (root / "sentiment" / "movieReviewSnippets_GroundTruth.txt").write_text("".join(rows))
    monkeypatch.setenv("MINITRANSFORMERS_DATA", str(root))
    out = tmp_path / "run"
    finetune.run(replace(finetune_config(tiny, out, max_steps=2), data="sentiment"))
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert transformers.AutoConfig.from_pretrained(out).id2label == {0: "negative", 1: "positive"}
    main(["predict", "--model", str(out), "--device", "cpu", "--json", "the film was great"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] in ("negative", "positive")


def test_string_labels_train_under_their_sorted_names(tiny, tmp_path, named_csv, transformers):  # noqa: F811
    out = tmp_path / "run"
    main([*finetune_argv(tiny, out, "--max-steps", "2"), "--data", str(named_csv)])
    assert transformers.AutoConfig.from_pretrained(out).id2label == {0: "negative", 1: "positive"}
    ids = [e.label for split in load_classification(str(named_csv)).values() for e in split]
    assert sorted(ids) == sorted(int(r["label"]) for r in reviews(tiny))  # "negative" is 0, as the integer file had it


def test_labels_flag_sets_the_order_and_the_adapter_keeps_it(tiny, tmp_path, named_csv):  # noqa: F811
    out = tmp_path / "run"
    main([*finetune_argv(tiny, out, "--max-steps", "2", "--method", "bitfit"), "--data", str(named_csv), "--labels", "positive", "negative"])
    assert json.loads((out / "adapter.json").read_text())["labels"] == ["positive", "negative"]
    assert load_classifier(out).labels == ["positive", "negative"]
    written = [r["label"] for r in csv.DictReader(open(named_csv, newline=""))]
    assert [e.label for e in load_csv(named_csv, labels=["positive", "negative"])] == [int(name == "negative") for name in written]


def test_a_label_missing_from_labels_fails_naming_the_file_and_line(tiny, tmp_path, named_csv, capsys):  # noqa: F811
    line = 2 + next(i for i, r in enumerate(reviews(tiny)) if r["label"] == "1")  # the header is line 1
    error = cli_error([*finetune_argv(tiny, tmp_path / "run"), "--data", str(named_csv), "--labels", "negative", "neutral"], capsys)
    assert f"named.csv:{line}: unknown label 'positive'; expected one of ['negative', 'neutral']" in error


def test_integer_labels_keep_label_i_and_builtin_sets_check_the_count(tiny):  # noqa: F811
    assert label_names(str(tiny / "reviews.csv")) is None  # the model names them LABEL_0, LABEL_1
    assert label_names("sentiment") == ["negative", "positive"]
    with pytest.raises(ValueError, match="'sentiment' has 2 labels"):
        label_names("sentiment", ["a", "b", "c"])
    with pytest.raises(ValueError, match="a name is repeated"):
        label_names(str(tiny / "reviews.csv"), ["a", "a"])
