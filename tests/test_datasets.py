"""Dataset loaders: counts on the real fetched data, and the file formats and their errors on tiny files."""

import pytest

from conftest import DATA, fetched
from minitransformers.text.datasets import Example, Pair, fixed_split, load_classification, load_csv, load_imdb, load_jsonl, load_sentiment, load_stsb, load_texts, load_wikitext2

SENTIMENT_SIZES = {"train": 8454, "validation": 1056, "test": 1058}


@pytest.fixture(scope="module")
def sentiment():
    fetched("sentiment")
    return {split: load_sentiment(split, root=DATA) for split in SENTIMENT_SIZES}


def test_sentiment_keeps_every_nonzero_rating_in_an_80_10_10_split(sentiment):
    assert {split: len(examples) for split, examples in sentiment.items()} == SENTIMENT_SIZES
    assert sum(SENTIMENT_SIZES.values()) == 10_605 - 37  # 37 snippets have a mean rating of exactly 0
    assert {split: sum(e.label for e in examples) for split, examples in sentiment.items()} == {"train": 4193, "validation": 516, "test": 533}
    assert all(e.label in (0, 1) and e.text for examples in sentiment.values() for e in examples)


def test_sentiment_splits_are_disjoint_and_repeatable(sentiment):
    texts = {split: {e.text for e in examples} for split, examples in sentiment.items()}
    # The file itself repeats two snippets with different ids; those are the only texts in two splits.
    overlap = (texts["train"] & texts["validation"]) | (texts["train"] & texts["test"]) | (texts["validation"] & texts["test"])
    assert overlap == {"...a pretentious mess...", "'Stock up on silver bullets for director Neil Marshall's intense freight train of a film.'"}
    assert load_sentiment("validation", root=DATA) == sentiment["validation"]


def test_sentiment_rejects_unknown_split():
    with pytest.raises(ValueError, match=r"unknown split 'dev'; expected one of \['train', 'validation', 'test'\]"):
        load_sentiment("dev", root=DATA)


def test_stsb_counts_and_score_range():
    fetched("stsb")
    pairs = {split: load_stsb(split, root=DATA) for split in ("train", "dev", "test")}
    assert {split: len(p) for split, p in pairs.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    scores = [p.score for split in pairs.values() for p in split]
    assert min(scores) == 0.0 and max(scores) == 5.0
    assert pairs["train"][0] == Pair("A plane is taking off.", "An air plane is taking off.", 5.0)


def test_wikitext2_lines_per_split():
    fetched("wikitext2")
    lines = {split: load_wikitext2(split, root=DATA) for split in ("train", "valid", "test")}
    assert {split: len(x) for split, x in lines.items()} == {"train": 23767, "valid": 2461, "test": 2891}
    assert lines["valid"][0] == " = Homarus gammarus = "
    assert lines["valid"][1].startswith(" Homarus gammarus , known as the European lobster or common lobster")
    assert all(line.strip() for line in lines["test"])
    assert load_wikitext2("validation", root=DATA) == lines["valid"]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_csv_reads_quoted_fields_and_named_labels(tmp_path):
    path = write(tmp_path / "a.csv", b'id,text,label\n1,"good, really",pos\n2,"two\nlines",neg\n\n3,meh,pos\n')
    assert load_csv(path, labels=["neg", "pos"]) == [Example("good, really", 1), Example("two\nlines", 0), Example("meh", 1)]
    ints = write(tmp_path / "b.csv", b"sentence,y\nfine,1\nbad,0\n")
    assert load_csv(ints, text_column="sentence", label_column="y") == [Example("fine", 1), Example("bad", 0)]


def test_csv_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        load_csv(tmp_path / "nope.csv")
    path = write(tmp_path / "cols.csv", b"sentence,label\nx,1\n")
    with pytest.raises(ValueError, match=r"cols.csv:1: missing column\(s\) \['text'\]; found \['sentence', 'label'\]"):
        load_csv(path)
    path = write(tmp_path / "lab.csv", b"text,label\na,pos\nb,maybe\n")
    with pytest.raises(ValueError, match=r"lab.csv:3: unknown label 'maybe'; expected one of \['neg', 'pos'\]"):
        load_csv(path, labels=["neg", "pos"])
    with pytest.raises(ValueError, match="lab.csv:2: label 'pos' is not an integer"):
        load_csv(path)
    path = write(tmp_path / "enc.csv", b"text,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(ValueError, match="enc.csv:3: not valid UTF-8 \\(byte 0xe9 at column 4\\)"):
        load_csv(path)


def test_jsonl_reads_objects_and_skips_blank_lines(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "héllo", "label": 1}\n\n{"text": "bye", "label": "neg", "id": 7}\n'.encode())
    assert load_jsonl(path, labels=["neg", "pos"]) == [Example("héllo", 1), Example("bye", 0)]


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", label: 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:3: bad JSON"):
        load_jsonl(path)
    path = write(tmp_path / "key.jsonl", b'{"text": "a", "label": 0}\n{"sentence": "b", "label": 1}\n')
    with pytest.raises(ValueError, match=r"key.jsonl:2: missing column\(s\) \['text'\]; found \['sentence', 'label'\]"):
        load_jsonl(path)
    path = write(tmp_path / "lab.jsonl", b'{"text": "a", "label": 5}\n')
    with pytest.raises(ValueError, match="lab.jsonl:1: unknown label 5"):
        load_jsonl(path, labels=["neg", "pos"])
    path = write(tmp_path / "enc.jsonl", b'{"text": "a", "label": 0}\n{"text": "\xff", "label": 1}\n')
    with pytest.raises(ValueError, match="enc.jsonl:2: not valid UTF-8"):
        load_jsonl(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_imdb_layout_gives_neg_then_pos_in_sorted_order(tmp_path):
    for split, label, name, text in [("train", "pos", "10_9.txt", "great"), ("train", "pos", "1_10.txt", "superb"), ("train", "neg", "3_1.txt", "awful<br />"), ("test", "pos", "0_8.txt", "nice"), ("test", "neg", "0_2.txt", "dull")]:
        (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / label / name).write_text(text, encoding="utf-8")
    assert load_imdb(tmp_path, "train") == [Example("awful<br />", 0), Example("great", 1), Example("superb", 1)]
    assert load_imdb(tmp_path, "test") == [Example("dull", 0), Example("nice", 1)]
    (tmp_path / "test" / "neg" / "0_2.txt").unlink()
    (tmp_path / "test" / "neg").rmdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'test' / 'neg'}: no such folder"):
        load_imdb(tmp_path, "test")


def test_load_texts_drops_blank_lines_and_reports_bad_bytes(tmp_path):
    path = write(tmp_path / "corpus.txt", b"first line\r\n\n   \nsecond line  \nthird")
    assert load_texts(path) == ["first line", "second line  ", "third"]
    with pytest.raises(ValueError, match="bad.txt:2: not valid UTF-8"):
        load_texts(write(tmp_path / "bad.txt", b"ok\n\xc3\x28\n"))


def test_fixed_split_partitions_in_a_repeatable_order():
    items = list(range(103))
    three = fixed_split(items, 0.8, 0.1)
    assert [len(three[k]) for k in ("train", "validation", "test")] == [82, 10, 11]
    assert sorted(three["train"] + three["validation"] + three["test"]) == items
    assert three == fixed_split(items, 0.8, 0.1) and three["train"] != items[:82]
    two = fixed_split(items, 0.9)
    assert two.keys() == {"train", "validation"} and len(two["train"]) == 92 and len(two["validation"]) == 11


def test_load_classification_selects_the_loader_by_data_spec(tmp_path):
    (tmp_path / "r.csv").write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(20)))
    (tmp_path / "r.jsonl").write_text("".join(f'{{"text": "review {i}", "label": {i % 2}}}\n' for i in range(20)))
    for name in ("r.csv", "r.jsonl"):
        splits = load_classification(str(tmp_path / name))
        assert {k: len(v) for k, v in splits.items()} == {"train": 16, "validation": 2, "test": 2}
    for split, n in (("train", 10), ("test", 3)):
        for label in ("neg", "pos"):
            (tmp_path / "imdb" / split / label).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "imdb" / split / label / f"{i}_1.txt").write_text(f"{label} {i}")
    imdb = load_classification(str(tmp_path / "imdb"))
    assert {k: len(v) for k, v in imdb.items()} == {"train": 18, "validation": 2, "test": 6}
    with pytest.raises(ValueError, match="expected 'sentiment', 'reviews-sentiment', an aclImdb folder, or a .csv / .jsonl file"):
        load_classification(str(tmp_path / "r.txt"))


def test_load_classification_sentiment_is_the_fixed_split(sentiment):
    splits = load_classification("sentiment", root=DATA)
    assert splits == sentiment


def test_numbered_texts_keep_the_files_line_numbers(tmp_path):
    from minitransformers.text.datasets import numbered_texts

    path = write(tmp_path / "c.txt", b"one\n\n  \ntwo\r\nthree")
    assert numbered_texts(path) == [(1, "one"), (4, "two"), (5, "three")]
    assert load_texts(path) == ["one", "two", "three"]


def test_file_labels_are_named_sorted_or_as_given(tmp_path):
    from minitransformers.text.datasets import label_names

    path = write(tmp_path / "a.jsonl", b'{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", "label": 1}\n')
    assert label_names(str(path)) == ["neg", "pos"]
    assert [e.label for e in load_jsonl(path, labels=["pos", "neg"])] == [0, 1, 1]  # an id below 2 stays an id
    ints = write(tmp_path / "b.csv", b"text,label\nx,1\ny,0\n")
    assert label_names(str(ints)) is None and label_names(str(ints), ["no", "yes"]) == ["no", "yes"]
