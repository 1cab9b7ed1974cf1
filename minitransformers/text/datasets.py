"""Dataset loaders: each returns a plain list of strings, `Example`s or `Pair`s.

Fetched sources (`python -m minitransformers fetch NAME`; see sources.py and data/README.md):
    load_sentiment(split)   Rotten Tomatoes snippets (Hutto & Gilbert 2014), rating > 0 -> 1 "positive", < 0 -> 0
                            "negative", 0 dropped.
                            Split rule: the kept examples' indices (file order) are shuffled with
                            `random.Random(0).shuffle`, then the first 80% are "train", the next 10% "validation",
                            the rest "test".
    load_stsb(split)        STS-B sentence pairs with a similarity score in [0, 5]; its own train/dev/test split.
    load_wikitext2(split)   WikiText-2 raw lines; its own train/valid/test split.
Your own files:
    load_csv, load_jsonl    a text and an integer label per row or object (string labels via `labels=[names]`).
    load_imdb(root, split)  the aclImdb/{train,test}/{pos,neg}/*.txt layout, 0 "negative", 1 "positive".
    load_texts(path)        the non-empty lines of a text file (`numbered_texts`: with their line numbers).

`label_names(spec, labels)` names the label ids of a `--data SPEC`: the built-in sets' "negative", "positive", a
file's string labels sorted (or in the order LABELS gives), or None for a file of integer labels.

Errors name the file and, where one applies, its 1-based line.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .sources import data_dir

SENTIMENT_SPLITS = ("train", "validation", "test")
SENTIMENT_LABELS = ("negative", "positive")  # label ids 0 and 1 of load_sentiment and load_imdb


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    score: float


def decoded_lines(path: str | Path) -> list[str]:
    """Each line of PATH decoded as UTF-8, line end kept; a bad byte is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a UTF-8 text file there")
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); re-save the file as UTF-8") from None
    return lines


def check_split(split: str, allowed: Sequence[str], what: str) -> None:
    if split not in allowed:
        raise ValueError(f"{what}: unknown split {split!r}; expected one of {list(allowed)}")


def load_sentiment(split: str, root: str | Path | None = None) -> list[Example]:
    """Movie review snippets, 0 = negative, 1 = positive (SENTIMENT_LABELS); the 80/10/10 split is the module docstring's rule."""
    check_split(split, SENTIMENT_SPLITS, "load_sentiment")
    path = data_dir("sentiment", root) / "movieReviewSnippets_GroundTruth.txt"
    examples = []
    for number, line in enumerate(decoded_lines(path), 1):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields (id, rating, text), found {len(fields)}")
        rating = float(fields[1])
        if rating != 0:
            examples.append(Example(fields[2], int(rating > 0)))
    return fixed_split(examples, 0.8, 0.1)[split]


def fixed_split(examples: Sequence, train: float, validation: float | None = None) -> dict[str, list]:
    """The module's split rule: shuffle indices with random.Random(0), then cut train / validation / test, the
    test split taking the rest. With validation=None, validation takes the rest and there is no test split."""
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    n_train = int(len(order) * train)
    n_val = len(order) - n_train if validation is None else int(len(order) * validation)
    cuts = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    return {name: [examples[i] for i in order[a:b]] for name, (a, b) in cuts.items() if validation is not None or name != "test"}


def load_classification(spec: str, root: str | Path | None = None, labels: Sequence[str] | None = None) -> dict[str, list[Example]]:
    """train / validation / test splits for `--data SPEC`:
    - "sentiment": the built-in Rotten Tomatoes set and its fixed split;
    - a folder with train/ and test/ (the aclImdb layout): its test set, and its train set cut 90/10;
    - a .csv or .jsonl file with `text` and `label` columns: cut 80/10/10 by the rule above, its labels mapped
      to ids by `label_names(spec, labels)`."""
    if spec == "sentiment":
        return {split: load_sentiment(split, root) for split in SENTIMENT_SPLITS}
    path = Path(spec)
    if path.is_dir():
        return {**fixed_split(load_imdb(path, "train"), 0.9), "test": load_imdb(path, "test")}
    load, _ = file_format(spec)
    return fixed_split(load(path, labels=label_names(spec, labels)), 0.8, 0.1)


def file_format(spec: str):
    """(loader, row reader) of a .csv or .jsonl `--data` file."""
    formats = {".csv": (load_csv, csv_rows), ".jsonl": (load_jsonl, jsonl_rows)}
    if Path(spec).suffix not in formats:
        raise ValueError(f"--data {spec!r}: expected 'sentiment', an aclImdb folder, or a .csv / .jsonl file")
    return formats[Path(spec).suffix]


def label_names(spec: str, labels: Sequence[str] | None = None) -> list[str] | None:
    """The names of label ids 0, 1, ... for `--data SPEC`, or None where the model is to call them LABEL_0, ...:
    - LABELS if given (`--labels`): a file's labels must be among them (or be ids below their count), and a
      built-in set's two labels are renamed;
    - else "negative", "positive" for the built-in sets;
    - else a file's string labels, sorted; None if every label of the file is an integer."""
    if spec == "sentiment" or Path(spec).is_dir():
        if labels is not None and len(labels) != len(SENTIMENT_LABELS):
            raise ValueError(f"--data {spec!r} has {len(SENTIMENT_LABELS)} labels {list(SENTIMENT_LABELS)}; --labels gave {len(labels)}: {list(labels)}")
        return list(labels or SENTIMENT_LABELS)
    if labels is not None:
        if len(set(labels)) != len(labels):
            raise ValueError(f"--labels {list(labels)}: a name is repeated; give each label one name")
        return list(labels)
    _, rows = file_format(spec)
    names = {label for _, _, label in rows(spec) if isinstance(label, str)}
    return sorted(names) if any(not is_integer(v) for v in names) else None


def load_stsb(split: str, root: str | Path | None = None) -> list[Pair]:
    """STS-B pairs: tab-separated, score in column 4 and sentences in 5 and 6 (0-based); later columns ignored."""
    check_split(split, ("train", "dev", "test"), "load_stsb")
    path = data_dir("stsb", root) / f"sts-{split}.csv"
    pairs = []
    for number, line in enumerate(decoded_lines(path), 1):
        fields = line.rstrip("\r\n").split("\t")  # no csv quoting: sentences contain bare quote marks
        if len(fields) < 7:
            raise ValueError(f"{path}:{number}: expected at least 7 tab-separated fields, found {len(fields)}")
        pairs.append(Pair(fields[5], fields[6], float(fields[4])))
    return pairs


def load_wikitext2(split: str, root: str | Path | None = None) -> list[str]:
    """WikiText-2 raw lines as they are (leading space and ` = Heading = ` lines kept); blank lines dropped."""
    split = "valid" if split == "validation" else split
    check_split(split, ("train", "valid", "test"), "load_wikitext2")
    return load_texts(data_dir("wikitext2", root) / f"{split}.raw")


def load_texts(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file without their line ends, whitespace-only lines dropped."""
    return [text for _, text in numbered_texts(path)]


def numbered_texts(path: str | Path) -> list[tuple[int, str]]:
    """`load_texts` with each line's 1-based line number in the file (blank lines counted)."""
    return [(number, line.rstrip("\r\n")) for number, line in enumerate(decoded_lines(path), 1) if line.strip()]


def is_integer(value) -> bool:
    """An int (not a bool) or a string that reads as one, such as "1" or " -2"."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())


def parse_label(value, labels: Sequence[str] | None, where: str) -> int:
    """Without LABELS, an integer or an int-like string is the id. With LABELS, a name maps to its index, and an
    integer below len(LABELS) is the id."""
    if labels is not None:
        if value in labels:
            return list(labels).index(value)
        if is_integer(value) and 0 <= int(value) < len(labels):
            return int(value)
        raise ValueError(f"{where}: unknown label {value!r}; expected one of {list(labels)} or an index below {len(labels)} (--labels NAME ... sets them)")
    if is_integer(value):
        return int(value)
    raise ValueError(f"{where}: label {value!r} is not an integer; pass labels=[name, ...] (--labels on the command line) to map label names to ids")


def missing_columns(where: str, found: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {list(found)}; pass text_column= and label_column=")


def load_csv(path: str | Path, text_column: str = "text", label_column: str = "label", labels: Sequence[str] | None = None) -> list[Example]:
    """Rows of a CSV file with a header row; see `parse_label` for the labels."""
    return [Example(text, parse_label(label, labels, where)) for where, text, label in csv_rows(path, text_column, label_column)]


def csv_rows(path: str | Path, text_column: str = "text", label_column: str = "label"):
    """(where, text, label as written) for each non-empty row of a CSV file with a header row."""
    reader = csv.reader(decoded_lines(path))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: empty file; expected a header row naming {text_column!r} and {label_column!r}")
    missing_columns(f"{path}:1", header, (text_column, label_column))
    text_at, label_at = header.index(text_column), header.index(label_column)
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if row and len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} fields like the header, found {len(row)}")
        if row:
            yield where, row[text_at], row[label_at]


def load_jsonl(path: str | Path, text_column: str = "text", label_column: str = "label", labels: Sequence[str] | None = None) -> list[Example]:
    """One JSON object per line (blank lines skipped); see `parse_label` for the labels."""
    return [Example(text, parse_label(label, labels, where)) for where, text, label in jsonl_rows(path, text_column, label_column)]


def jsonl_rows(path: str | Path, text_column: str = "text", label_column: str = "label"):
    """(where, text, label as written) for each object of a JSON-lines file."""
    for number, line in enumerate(decoded_lines(path), 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: bad JSON ({err.msg} at column {err.colno}); expected one object per line") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        missing_columns(where, list(obj), (text_column, label_column))
        if not isinstance(obj[text_column], str):
            raise ValueError(f"{where}: {text_column!r} should be a string, found {obj[text_column]!r}")
        yield where, obj[text_column], obj[label_column]


def load_imdb(root: str | Path, split: str) -> list[Example]:
    """IMDB reviews (Maas et al. 2011) from ROOT = the `aclImdb` folder: neg (0, "negative") then pos (1, "positive"),
    files sorted by name."""
    check_split(split, ("train", "test"), "load_imdb")
    examples = []
    for label, name in enumerate(("neg", "pos")):
        folder = Path(root) / split / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; expected ROOT to be the `aclImdb` folder with {split}/{name}/*.txt")
        for file in sorted(folder.glob("*.txt")):
            examples.append(Example("".join(decoded_lines(file)), label))
    return examples
