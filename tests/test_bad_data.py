"""Bad datasets (issue 18): each is refused with an InputError naming the file and its line (or the folder, or the
split), or, for a train split that lacks a class, warned about on stderr. At the loader level, and for the empty
folder, the empty split and the label gap also through `finetune.run`, which must refuse before it loads a model."""

import csv
import json
import re
from dataclasses import replace

import pytest
from conftest import finetune_config

from minitransformers.errors import InputError
from minitransformers.recipes import finetune
from minitransformers.text.datasets import (
    MAX_CLASSES, Example, label_names, labelled_splits, load_classification, load_csv, load_imdb, load_jsonl, load_stsb, load_texts, numbered_texts,
)  # fmt: skip
from minitransformers.text.sources import get_source


def csv_file(tmp_path, rows: list[str], header: str = "text,label", name: str = "data.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def jsonl_file(tmp_path, lines: list[str], name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reviews(n: int, labels=(0, 1)) -> list[str]:
    """N CSV rows "review i,LABEL", the labels in turn: line 2 + i of the file."""
    return [f"review {i},{labels[i % len(labels)]}" for i in range(n)]


def imdb(tmp_path, empty: str = "", per_folder: int = 6):
    """An aclImdb folder with PER_FOLDER reviews in each of train/neg, train/pos, test/neg, test/pos but EMPTY."""
    for split in ("train", "test"):
        for name in ("neg", "pos"):
            folder = tmp_path / "aclImdb" / split / name
            folder.mkdir(parents=True)
            if f"{split}/{name}" != empty:
                for i in range(per_folder):
                    (folder / f"{i}_5.txt").write_text(f"a {name} review {i}")
    return tmp_path / "aclImdb"


@pytest.fixture
def refuses_before_the_model(tiny, tmp_path, monkeypatch):
    """finetune.run(config) on the tiny model with DATA, which must raise InputError matching MATCH before the model
    or its tokenizer is even loaded (so before any training) and without creating --out."""

    def check(data, match: str):
        monkeypatch.setattr(finetune.Tokenizer, "from_pretrained", lambda *_: pytest.fail("the model was loaded before the data was checked"))
        out = tmp_path / "run"
        with pytest.raises(InputError, match=match):
            finetune.run(replace(finetune_config(tiny, out), data=str(data)))
        assert not out.exists()

    return check


# ---- empty folders, files and splits --------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["train/neg", "train/pos", "test/neg", "test/pos"])
def test_an_empty_imdb_folder_is_refused_naming_it(tmp_path, empty):
    root = imdb(tmp_path, empty)
    split, name = empty.split("/")
    with pytest.raises(InputError, match=rf"aclImdb/{split}/{name}: no reviews \(\*\.txt files\); {split}/neg and {split}/pos each need some"):
        load_imdb(root, split)
    with pytest.raises(InputError, match=rf"aclImdb/{empty}: no reviews"):
        load_classification(str(root))


def test_an_empty_imdb_folder_stops_finetune_before_the_model(tmp_path, refuses_before_the_model):
    refuses_before_the_model(imdb(tmp_path, "train/neg"), r"aclImdb/train/neg: no reviews")


def test_an_empty_review_file_is_refused_naming_it(tmp_path):
    root = imdb(tmp_path)
    (root / "test" / "pos" / "3_5.txt").write_text(" \n")
    with pytest.raises(InputError, match=r"aclImdb/test/pos/3_5.txt: the review is empty"):
        load_imdb(root, "test")


@pytest.mark.parametrize("rows, sizes", [(4, "train 3, validation 0, test 1"), (9, "train 7, validation 0, test 2")])
def test_a_split_left_empty_is_refused_with_each_splits_count(tmp_path, rows, sizes):
    path = csv_file(tmp_path, reviews(rows))
    with pytest.raises(InputError, match=rf"data.csv: the validation split is empty \(examples: {sizes}\); .* give it 10 examples or more"):
        load_classification(str(path))
    assert {k: len(v) for k, v in load_classification(str(csv_file(tmp_path, reviews(10)))).items()} == {"train": 8, "validation": 1, "test": 1}


def test_an_empty_split_stops_finetune_before_the_model(tmp_path, refuses_before_the_model):
    refuses_before_the_model(csv_file(tmp_path, reviews(4)), r"data.csv: the validation split is empty \(examples: train 3, validation 0, test 1\)")


def test_a_file_without_examples_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"only_header.csv: no examples; expected a text and a label in each row"):
        load_csv(csv_file(tmp_path, ["", ""], name="only_header.csv"))
    with pytest.raises(InputError, match=r"blank.jsonl: no examples"):
        load_jsonl(jsonl_file(tmp_path, ["", "  "], name="blank.jsonl"))
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"zero.csv: empty file; expected a header row naming 'text' and 'label'"):
        load_csv(tmp_path / "zero.csv")


def test_a_text_file_with_no_text_is_refused(tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    (tmp_path / "zero.txt").write_bytes(b"")
    for name in ("blank.txt", "zero.txt"):
        with pytest.raises(InputError, match=rf"{name}: no text, every line is blank; expected one text per line"):
            load_texts(tmp_path / name)
        with pytest.raises(InputError, match=rf"{name}: no text"):
            numbered_texts(tmp_path / name)


def test_stsb_refuses_a_bad_score_and_an_empty_file_naming_the_line(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    (folder / ".fetched").write_text(get_source("stsb").sha256 + "\n")
    row = "main-captions\tMSRvid\t2012test\t0001\t{}\tA plane is taking off.\tAn air plane is taking off.\n"
    (folder / "sts-train.csv").write_text(row.format("5.000") + row.format("high"))
    with pytest.raises(InputError, match=r"sts-train.csv:2: score 'high' is not a number"):
        load_stsb("train", root=tmp_path)
    (folder / "sts-dev.csv").write_text("")
    with pytest.raises(InputError, match=r"sts-dev.csv: no sentence pairs"):
        load_stsb("dev", root=tmp_path)


# ---- label sets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, unused, summary, largest", [
    ((0, 1, 7), "2, 3, 4, 5, 6 are unused", "0 ×14, 1 ×13, 7 ×13", "7, first at .*data.csv:4"),
    ((1, 2), "0 is unused", "1 ×20, 2 ×20", "2, first at .*data.csv:3"),
])  # fmt: skip
def test_label_ids_with_a_gap_are_refused_summarising_the_label_set(tmp_path, labels, unused, summary, largest):
    path = csv_file(tmp_path, reviews(40, labels))
    with pytest.raises(InputError, match=rf"data.csv: label ids must be 0..K-1, but {unused} \(labels in data.csv: {summary}; the largest, {largest}\); fix the labels, or name the classes with --labels"):
        load_csv(path)
    assert {e.label for e in load_csv(path, labels=["a", "b", "c", "d", "e", "f", "g", "h"])} == set(labels)  # named classes may go unused


def test_a_label_gap_stops_finetune_before_the_model(tmp_path, refuses_before_the_model):
    refuses_before_the_model(csv_file(tmp_path, [*reviews(40), "one more,7"]), r"data.csv: label ids must be 0..K-1, but 2, 3, 4, 5, 6 are unused \(labels in data.csv: 0 ×20, 1 ×20, 7 ×1; the largest, 7, first at .*data.csv:42\)")


@pytest.mark.parametrize("label, problem", [
    ("-1", "label '-1' is negative; label ids are 0, 1, 2, ..."),
    (str(MAX_CLASSES), "label '1000' would make a head of 1,001 classes, more than the 1,000 accepted without --labels"),
    ("100000", "label '100000' would make a head of 100,001 classes"),
    ("1000000000000", "label '1000000000000' would make a head of 1,000,000,000,001 classes"),
])  # fmt: skip
def test_a_negative_or_absurd_label_id_is_refused_at_its_line(tmp_path, label, problem):
    path = csv_file(tmp_path, [*reviews(40), f"one more,{label}"])
    for refused in (lambda: load_csv(path), lambda: load_classification(str(path))):
        with pytest.raises(InputError, match=rf"data.csv:42: {problem}"):
            refused()


def test_the_class_cap_admits_exactly_max_classes_and_names_lift_it(tmp_path):
    assert MAX_CLASSES == 1000
    path = csv_file(tmp_path, reviews(MAX_CLASSES, range(MAX_CLASSES)))
    assert len({e.label for e in load_csv(path)}) == 1000
    names = [f"class {i}" for i in range(1500)]
    assert load_csv(csv_file(tmp_path, ["x,1499", "y,0"], name="named.csv"), labels=names) == [Example("x", 1499), Example("y", 0)]
    many = csv_file(tmp_path, [f"text {i},name {i}" for i in range(MAX_CLASSES + 1)], name="many.csv")
    with pytest.raises(InputError, match=r"many.csv: 1,001 different labels, more than the 1,000 accepted without --labels \(labels in many.csv: name 0 ×1, name 1 ×1, .*, and 991 more\); is the label column the right one\?"):
        label_names(str(many))


@pytest.mark.parametrize("value", ["1.5", "1e12", "+2", "2.0"])
def test_a_number_that_is_not_an_integer_id_is_refused_at_its_line(tmp_path, value):
    path = csv_file(tmp_path, [*reviews(40), f"one more,{value}"])
    for refused in (lambda: label_names(str(path)), lambda: load_csv(path)):
        with pytest.raises(InputError, match=rf"data.csv:42: label '{re.escape(value)}' is a number but not an integer id"):
            refused()
    assert load_csv(path, labels=["0", "1", value])[-1] == Example("one more", 2)  # named, it is a name


@pytest.mark.parametrize("value", ["1.5", "2.0", "1e12"])
def test_a_json_number_that_is_not_an_integer_is_refused_at_its_line(tmp_path, value):
    path = jsonl_file(tmp_path, ['{"text": "a", "label": 0}', "", f'{{"text": "b", "label": {value}}}'])
    with pytest.raises(InputError, match=rf"data.jsonl:3: label {float(value)!r} is a number but not an integer id"):
        load_jsonl(path)


def test_labels_that_mix_ids_and_names_are_refused_at_the_rarer_kinds_first_line(tmp_path):
    path = csv_file(tmp_path, [*reviews(40), "one more,pos", "and another,neg"])
    with pytest.raises(InputError, match=r"data.csv:42: label 'pos' mixes ids and names \(labels in data.csv: 0 ×20, 1 ×20, neg ×1, pos ×1\); use one kind"):
        label_names(str(path))
    names = csv_file(tmp_path, ["a,pos", "b,neg", "c,pos", "d,1"], name="names.csv")
    with pytest.raises(InputError, match=r"names.csv:5: label '1' mixes ids and names"):
        label_names(str(names))
    assert label_names(str(names), ["neg", "pos"]) == ["neg", "pos"]  # named, "1" is the id of "pos"
    assert [e.label for e in load_csv(names, labels=["neg", "pos"])] == [1, 0, 1, 1]


def test_a_missing_label_is_refused_at_its_line(tmp_path):
    path = csv_file(tmp_path, [*reviews(3), "no label,", "  spaces, "])
    for refused in (lambda: label_names(str(path)), lambda: load_csv(path), lambda: load_csv(path, labels=["a", "b"])):
        with pytest.raises(InputError, match=r"data.csv:5: the label is missing; every example needs one"):
            refused()
    path = jsonl_file(tmp_path, ['{"text": "a", "label": 0}', '{"text": "b", "label": null}'])
    with pytest.raises(InputError, match=r"data.jsonl:2: the label is missing"):
        load_jsonl(path)
    path = jsonl_file(tmp_path, ['{"text": "a", "label": 0}', '{"text": "b"}'])
    with pytest.raises(InputError, match=r"data.jsonl:2: missing column\(s\) \['label'\]"):
        load_jsonl(path)


def test_a_train_split_without_a_class_is_warned_about_on_stderr(tmp_path, capsys):
    names, splits, num_labels = labelled_splits(str(csv_file(tmp_path, reviews(20, labels=(0,)))))
    assert (names, num_labels, len(splits["train"])) == (None, 2, 16)
    out, err = capsys.readouterr()
    assert out == "" and err == "warning: no train example has label 1, so the classifier cannot learn it (labels in the train split of data.csv: 0 ×16)\n"
    labelled_splits(str(csv_file(tmp_path, reviews(20), name="named.csv")), ["no", "yes", "maybe"])
    assert capsys.readouterr().err == "warning: no train example has label maybe, so the classifier cannot learn it (labels in the train split of named.csv: no ×8, yes ×8)\n"
    labelled_splits(str(csv_file(tmp_path, reviews(20), name="both.csv")))
    assert capsys.readouterr().err == ""


def test_max_examples_cut_the_splits_after_the_class_count_is_taken(tmp_path, capsys):
    path = str(csv_file(tmp_path, reviews(100, labels=(0, 1, 2))))
    _, full, num_labels = labelled_splits(path)
    assert num_labels == 3 and {k: len(v) for k, v in full.items()} == {"train": 80, "validation": 10, "test": 10}
    _, cut, num_labels = labelled_splits(path, max_train=1, max_eval=4)  # 0 means all; the CLI refuses negatives
    assert num_labels == 3 and cut == {"train": full["train"][:1], "validation": full["validation"][:4], "test": full["test"][:4]}
    assert "no train example has label" in capsys.readouterr().err


# ---- rows and fields ------------------------------------------------------------------------------------------------


def test_an_empty_text_is_refused_at_its_line_and_a_blank_line_is_skipped(tmp_path):
    path = csv_file(tmp_path, ["a,0", "", "b,1", ",1"])
    with pytest.raises(InputError, match=r"data.csv:5: the text is empty; every example needs one \(remove the row\)"):
        load_csv(path)
    with pytest.raises(InputError, match=r"data.csv:3: the text is empty"):
        load_csv(csv_file(tmp_path, ["a,0", " \t ,1"]))
    with pytest.raises(InputError, match=r"data.jsonl:2: the text is empty"):
        load_jsonl(jsonl_file(tmp_path, ['{"text": "a", "label": 0}', '{"text": "  ", "label": 1}']))
    assert load_csv(csv_file(tmp_path, ["a,0", "", "b,1"])) == [Example("a", 0), Example("b", 1)]


def test_a_csv_field_may_be_as_long_as_the_file(tmp_path):
    long = "good " * 40_000  # 200,000 characters; csv's own limit is 131,072
    path = csv_file(tmp_path, [*reviews(4), f'"{long}",1'])
    assert load_csv(path)[-1] == Example(long, 1)
    assert csv.field_size_limit() == 131_072  # lifted only while reading


@pytest.mark.parametrize("header, column", [("text,label,text", "text"), ("label,text,label", "label")])
def test_a_header_naming_a_column_twice_is_refused(tmp_path, header, column):
    path = csv_file(tmp_path, ["a,0,b", "c,1,d"], header=header)
    for refused in (lambda: load_csv(path), lambda: label_names(str(path))):
        with pytest.raises(InputError, match=rf"data.csv:1: the header names column '{column}' 2 times; rename or drop all but one"):
            refused()
    assert load_csv(csv_file(tmp_path, ["a,0,x,y"], header="text,label,id,id"), labels=None) == [Example("a", 0)]  # other columns may repeat


def test_a_json_key_given_twice_is_refused_at_its_line(tmp_path):
    path = jsonl_file(tmp_path, ['{"text": "a", "label": 0}', '{"text": "b", "label": 1, "text": "c"}'])
    with pytest.raises(InputError, match=r"data.jsonl:2: key 'text' appears more than once in the object; keep one"):
        load_jsonl(path)


def test_a_json_text_that_is_not_a_string_is_refused_at_its_line(tmp_path):
    for text in ("null", "3", '["a"]'):
        path = jsonl_file(tmp_path, ['{"text": "a", "label": 0}', f'{{"text": {text}, "label": 1}}'])
        with pytest.raises(InputError, match=rf"data.jsonl:2: 'text' should be a string, found {json.loads(text)!r}".replace("[", r"\[")):
            load_jsonl(path)


def test_a_csv_quote_left_open_is_reported_where_the_row_starts(tmp_path):
    path = csv_file(tmp_path, ["a,0", '"b,1', "c,0", "d,1"])
    with pytest.raises(InputError, match=r"data.csv:3: expected 2 fields like the header, found 1 \(the row runs on to line 5: is a quote left open\?\)"):
        load_csv(path)


def test_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\na,0\n".encode("utf-8-sig"))
    assert load_csv(path) == [Example("a", 0)]
    (tmp_path / "corpus.txt").write_bytes("\ufeffone\ntwo\n".encode())
    assert load_texts(tmp_path / "corpus.txt") == ["one", "two"]
