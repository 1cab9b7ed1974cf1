"""Dataset loaders: each returns a plain list of strings, `Example`s or `Pair`s.

Fetched sources (`python -m minitransformers fetch NAME`; see sources.py and data/README.md):
    load_sentiment(split)   Rotten Tomatoes snippets (Hutto & Gilbert 2014), rating > 0 -> 1 "positive", < 0 -> 0
                            "negative", 0 dropped.
                            Split rule: the kept examples' indices (file order) are shuffled with
                            `random.Random(0).shuffle`, then the first 80% are "train", the next 10% "validation",
                            the rest "test".
    load_stsb(split)        STS-B sentence pairs with a similarity score in [0, 5]; its own train/dev/test split.
    load_wikitext2(split)   WikiText-2 raw lines; its own train/valid/test split.
    load_reviews(split)     Women's clothing reviews (title, text, rating 1-5, department, class); the split fixed at
                            fetch time by a seeded hash of each review (sources.review_split).
    load_review_sentiment(split)  the same reviews for classification (`--data reviews-sentiment`): the review text,
                            rating 4-5 -> 1 "positive", 1-2 -> 0 "negative", 3 dropped; load_reviews' splits.
Your own files:
    load_csv, load_jsonl    a text and an integer label per row or object (string labels via `labels=[names]`).
    load_imdb(root, split)  the aclImdb/{train,test}/{pos,neg}/*.txt layout, 0 "negative", 1 "positive".
    load_texts(path)        the non-empty lines of a text file (`numbered_texts`: with their line numbers).

`label_names(spec, labels)` names the label ids of a `--data SPEC`: the built-in sets' "negative", "positive", a
file's string labels sorted (or in the order LABELS gives), or None for a file of integer labels.
`labelled_splits` is what finetune trains on: the names, the splits cut to size, and the number of classes.

What is refused, as an InputError naming the file and its 1-based line (or the folder, or the split):
- a file, folder or split with no examples: an empty CSV or JSONL file, an aclImdb `train/neg` without reviews, a
  corpus of blank lines, a file so small that the 80/10/10 cut leaves a split empty (10 examples are enough);
- an example without a text: an empty or blank text field, or an empty review file. A blank line is no row and is
  skipped; a row of empty fields is refused;
- a label that is missing (empty, JSON null) or a number that is not an integer id ("1.5", "1e12", 2.0);
- without `labels=` (`--labels`): a negative id, an id of MAX_CLASSES (1,000) or more, a file's ids that are not
  0..K-1 (0, 1 and a stray 7; or 1 and 2, leaving 0 unused), more than MAX_CLASSES string labels, and string
  labels that mix ids and names ("0", "1", "pos"). The message summarises the label set, as in
  "labels in a.csv: 0 ×4,012, 1 ×3,990". With `labels=[...]` the names set the classes: a label must be one of
  them or an id below their count, and a name may go unused;
- a CSV header naming the text or label column twice; a JSON object with a key twice.
A CSV field may be as long as the file (csv's own limit of 131,072 characters is lifted while reading), and a UTF-8
byte-order mark at the start of a file is dropped. `labelled_splits` warns on stderr when the train split lacks
a class (a file of one class, or a --labels name no example uses).
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .sources import data_dir

SENTIMENT_SPLITS = ("train", "validation", "test")
SENTIMENT_LABELS = ("negative", "positive")  # label ids 0 and 1 of load_sentiment and load_imdb
MAX_CLASSES = 1000  # without --labels; more classes than this is a mistake (a column of ids or texts read as labels)
INTEGER = re.compile(r"\s*-?[0-9]+\s*")  # a label id as written: "3", " -1"
NUMBER = re.compile(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*")  # "1.5", "1e12", "+2": numbers, not ids


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Review:
    title: str | None
    text: str
    rating: int  # 1-5 stars
    department: str | None
    class_name: str | None  # "Dresses", "Knits", ...


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    score: float


def decoded_lines(path: str | Path) -> list[str]:
    """Each line of PATH decoded as UTF-8 (a leading byte-order mark dropped), line end kept; a bad byte is
    reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a UTF-8 text file there")
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        try:
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as err:
            raise InputError(f"{path}:{number}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); re-save the file as UTF-8") from None
    return lines


def parse_float(text: str, where: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not a number") from None


def check_split(split: str, allowed: Sequence[str], what: str) -> None:
    if split not in allowed:
        raise InputError(f"{what}: unknown split {split!r}; expected one of {list(allowed)}")


def load_sentiment(split: str, root: str | Path | None = None) -> list[Example]:
    """Movie review snippets, 0 = negative, 1 = positive (SENTIMENT_LABELS); the 80/10/10 split is the module docstring's rule."""
    check_split(split, SENTIMENT_SPLITS, "load_sentiment")
    path = data_dir("sentiment", root) / "movieReviewSnippets_GroundTruth.txt"
    examples = []
    for number, line in enumerate(decoded_lines(path), 1):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 3:
            raise InputError(f"{path}:{number}: expected 3 tab-separated fields (id, rating, text), found {len(fields)}")
        rating = parse_float(fields[1], f"{path}:{number}", "rating")
        if rating != 0:
            examples.append(Example(fields[2], int(rating > 0)))
    return fixed_split(examples, 0.8, 0.1)[split]


def load_review_sentiment(split: str, root: str | Path | None = None) -> list[Example]:
    """The reviews of `load_reviews(split)` as sentiment examples: the review text, 1 = positive (4-5 stars), 0 =
    negative (1-2 stars), 3 stars dropped (issue 22's reward model for DPO and SFT's rating agreement)."""
    return [Example(r.text, int(r.rating >= 4)) for r in load_reviews(split, root) if r.rating != 3]


BUILT_IN = {"sentiment": load_sentiment, "reviews-sentiment": load_review_sentiment}  # --data NAME -> its loader, labels SENTIMENT_LABELS


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
    """train / validation / test splits for `--data SPEC`, none of them empty:
    - "sentiment", "reviews-sentiment" (BUILT_IN): the Rotten Tomatoes set, the clothing reviews; their fixed splits;
    - a folder with train/ and test/ (the aclImdb layout): its test set, and its train set cut 90/10;
    - a .csv or .jsonl file with `text` and `label` columns: cut 80/10/10 by the rule above, its labels mapped
      to ids by `label_names(spec, labels)`."""
    if spec in BUILT_IN:
        return {split: BUILT_IN[spec](split, root) for split in SENTIMENT_SPLITS}
    path = Path(spec)
    if path.is_dir():
        splits = {**fixed_split(load_imdb(path, "train"), 0.9), "test": load_imdb(path, "test")}
    else:
        load, _ = file_format(spec)
        splits = fixed_split(load(path, labels=label_names(spec, labels)), 0.8, 0.1)
    for name, examples in splits.items():
        if not examples:
            sizes = ", ".join(f"{split} {len(e):,}" for split, e in splits.items())
            raise InputError(f"{spec}: the {name} split is empty (examples: {sizes}); a file is cut 80/10/10, so give it 10 examples or more")
    return splits


def labelled_splits(spec: str, labels: Sequence[str] | None = None, max_train: int = 0, max_eval: int = 0) -> tuple[list[str] | None, dict[str, list[Example]], int]:
    """What finetune trains on: the label names (`label_names`: None for a file of integer ids), the splits of
    `load_classification` with train cut to its first MAX_TRAIN examples and validation and test to MAX_EVAL
    (0: all), and the number of classes: the names', else the largest id's + 1 over the whole data (2 at least).
    Warns on stderr when the train split lacks a class, which the head then never sees."""
    names = label_names(spec, labels)
    splits = load_classification(spec, labels=names)
    num_labels = len(names) if names else max(2, 1 + max(e.label for split in splits.values() for e in split))
    cut = {"train": max_train, "validation": max_eval, "test": max_eval}
    splits = {split: examples[: cut[split] or None] for split, examples in splits.items()}
    counts = Counter(e.label for e in splits["train"])
    unused = [names[i] if names else i for i in range(num_labels) if i not in counts]
    if unused:
        summary = label_summary(f"the train split of {Path(spec).name}", {(names[i] if names else i): n for i, n in counts.items()})
        print(f"warning: no train example has label {', '.join(map(str, unused))}, so the classifier cannot learn it ({summary})", file=sys.stderr)
    return names, splits, num_labels


def file_format(spec: str):
    """(loader, row reader) of a .csv or .jsonl `--data` file."""
    formats = {".csv": (load_csv, csv_rows), ".jsonl": (load_jsonl, jsonl_rows)}
    if Path(spec).suffix not in formats:
        raise InputError(f"--data {spec!r}: expected 'sentiment', 'reviews-sentiment', an aclImdb folder, or a .csv / .jsonl file")
    return formats[Path(spec).suffix]


def label_names(spec: str, labels: Sequence[str] | None = None) -> list[str] | None:
    """The names of label ids 0, 1, ... for `--data SPEC`, or None where the model is to call them LABEL_0, ...:
    - LABELS if given (`--labels`): a file's labels must be among them (or be ids below their count), and a
      built-in set's two labels are renamed;
    - else "negative", "positive" for the built-in sets;
    - else a file's string labels, sorted; None if every label of the file is an integer. String labels that mix
      ids and names, or more than MAX_CLASSES of them, are refused (module docstring)."""
    if spec in BUILT_IN or Path(spec).is_dir():
        if labels is not None and len(labels) != len(SENTIMENT_LABELS):
            raise InputError(f"--data {spec!r} has {len(SENTIMENT_LABELS)} labels {list(SENTIMENT_LABELS)}; --labels gave {len(labels)}: {list(labels)}")
        return list(labels or SENTIMENT_LABELS)
    if labels is not None:
        if len(set(labels)) != len(labels):
            raise InputError(f"--labels {list(labels)}: a name is repeated; give each label one name")
        return list(labels)
    _, rows = file_format(spec)
    first, counts = {}, Counter()  # each string label -> where it first appears, and how often
    for where, _, value in rows(spec):
        if isinstance(value, str):
            check_written(value, where)
            first.setdefault(value, where)
            counts[value] += 1
    names = [v for v in first if not is_integer(v)]
    ids = [v for v in first if is_integer(v)]
    if names and ids:
        odd = min(names, ids, key=lambda kind: sum(counts[v] for v in kind))[0]  # the rarer kind's first label
        raise InputError(f"{first[odd]}: label {odd!r} mixes ids and names ({label_summary(Path(spec).name, counts)}); use one kind, or name the classes with --labels")
    if len(names) > MAX_CLASSES:
        raise InputError(f"{spec}: {len(names):,} different labels, more than the {MAX_CLASSES:,} accepted without --labels ({label_summary(Path(spec).name, counts)}); is the label column the right one?")
    return sorted(names) or None


def label_summary(where: str, counts: dict) -> str:
    """'labels in WHERE: 0 ×4,012, 1 ×3,990', by label, the first ten."""
    items = [f"{label} ×{n:,}" for label, n in sorted(counts.items())]
    more = f", and {len(items) - 10:,} more" if len(items) > 10 else ""
    return f"labels in {where}: {', '.join(items[:10])}{more}"


def load_stsb(split: str, root: str | Path | None = None) -> list[Pair]:
    """STS-B pairs: tab-separated, score in column 4 and sentences in 5 and 6 (0-based); later columns ignored."""
    check_split(split, ("train", "dev", "test"), "load_stsb")
    path = data_dir("stsb", root) / f"sts-{split}.csv"
    pairs = []
    for number, line in enumerate(decoded_lines(path), 1):
        fields = line.rstrip("\r\n").split("\t")  # no csv quoting: sentences contain bare quote marks
        if len(fields) < 7:
            raise InputError(f"{path}:{number}: expected at least 7 tab-separated fields, found {len(fields)}")
        pairs.append(Pair(fields[5], fields[6], parse_float(fields[4], f"{path}:{number}", "score")))
    if not pairs:
        raise InputError(f"{path}: no sentence pairs; expected tab-separated lines with a score and two sentences")
    return pairs


def load_wikitext2(split: str, root: str | Path | None = None) -> list[str]:
    """WikiText-2 raw lines as they are (leading space and ` = Heading = ` lines kept); blank lines dropped."""
    split = "valid" if split == "validation" else split
    check_split(split, ("train", "valid", "test"), "load_wikitext2")
    return load_texts(data_dir("wikitext2", root) / f"{split}.raw")


def load_reviews(split: str, root: str | Path | None = None) -> list[Review]:
    """The clothing reviews of a split, from the JSONL files `fetch reviews` wrote (sources.reviews_to_jsonl)."""
    check_split(split, SENTIMENT_SPLITS, "load_reviews")
    path = data_dir("reviews", root) / f"{split}.jsonl"
    reviews = []
    for number, line in enumerate(decoded_lines(path), 1):
        r = json.loads(line)
        if not (isinstance(r.get("text"), str) and r.get("rating") in (1, 2, 3, 4, 5)):
            raise InputError(f"{path}:{number}: expected a review with a text and a rating 1-5, found {line[:80]!r}; fetch reviews again")
        reviews.append(Review(r["title"], r["text"], r["rating"], r["department"], r["class"]))
    return reviews


def load_texts(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file without their line ends, whitespace-only lines dropped; refused if none is left."""
    return [text for _, text in numbered_texts(path)]


def numbered_texts(path: str | Path) -> list[tuple[int, str]]:
    """`load_texts` with each line's 1-based line number in the file (blank lines counted)."""
    numbered = [(number, line.rstrip("\r\n")) for number, line in enumerate(decoded_lines(path), 1) if line.strip()]
    if not numbered:
        raise InputError(f"{path}: no text, every line is blank; expected one text per line")
    return numbered


def is_integer(value) -> bool:
    """An int (not a bool) or a string that reads as one in decimal digits, such as "1" or " -2"."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and INTEGER.fullmatch(value) is not None)


def check_written(value, where: str) -> None:
    """Refuse a label that is missing (empty, JSON null) or a number that is not an integer id (1.5, "1e12", 2.0)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: the label is missing; every example needs one")
    if not is_integer(value) and (isinstance(value, float) or (isinstance(value, str) and NUMBER.fullmatch(value))):
        raise InputError(f"{where}: label {value!r} is a number but not an integer id; label ids are written 0, 1, 2, ... (or name the classes with --labels)")


def parse_label(value, labels: Sequence[str] | None, where: str) -> int:
    """Without LABELS, an integer or an int-like string is the id: at least 0 and below MAX_CLASSES. With LABELS,
    a name maps to its index, and an integer below len(LABELS) is the id."""
    if labels is not None and value in labels:
        return list(labels).index(value)
    check_written(value, where)
    if labels is not None:
        if is_integer(value) and 0 <= int(value) < len(labels):
            return int(value)
        raise InputError(f"{where}: unknown label {value!r}; expected one of {list(labels)} or an index below {len(labels)} (--labels NAME ... sets them)")
    if not is_integer(value):
        raise InputError(f"{where}: label {value!r} is not an integer; pass labels=[name, ...] (--labels on the command line) to map label names to ids")
    label = int(value)
    if label < 0:
        raise InputError(f"{where}: label {value!r} is negative; label ids are 0, 1, 2, ... (or name the classes with --labels)")
    if label >= MAX_CLASSES:
        raise InputError(f"{where}: label {value!r} would make a head of {label + 1:,} classes, more than the {MAX_CLASSES:,} accepted without --labels; renumber the labels 0, 1, 2, ..., or name the classes with --labels")
    return label


def labelled_examples(path: Path, rows, labels: Sequence[str] | None) -> list[Example]:
    """The Examples of a file's (where, text, label) ROWS, each with a text; without LABELS, its ids must be 0..K-1."""
    examples, first = [], {}  # each id -> where it first appears
    for where, text, value in rows:
        if not text.strip():
            raise InputError(f"{where}: the text is empty; every example needs one (remove the row)")
        examples.append(Example(text, parse_label(value, labels, where)))
        first.setdefault(examples[-1].label, where)
    if not examples:
        raise InputError(f"{path}: no examples; expected a text and a label in each row")
    top = max(first)
    if labels is None and len(first) != top + 1:
        counts = Counter(e.label for e in examples)
        unused = [i for i in range(top) if i not in counts]
        raise InputError(f"{path}: label ids must be 0..K-1, but {', '.join(map(str, unused[:10]))}{' ...' if len(unused) > 10 else ''} "
                         f"{'is' if len(unused) == 1 else 'are'} unused ({label_summary(path.name, counts)}; the largest, {top}, first at {first[top]}); fix the labels, or name the classes with --labels")  # fmt: skip
    return examples


def missing_columns(where: str, found: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing}; found {list(found)}; pass text_column= and label_column=")


def load_csv(path: str | Path, text_column: str = "text", label_column: str = "label", labels: Sequence[str] | None = None) -> list[Example]:
    """Rows of a CSV file with a header row; see `parse_label` for the labels and the module docstring for what is refused."""
    return labelled_examples(Path(path), csv_rows(path, text_column, label_column), labels)


def csv_rows(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[tuple[str, str, str]]:
    """(where: the row's first line, text, label as written) for each non-empty row of a CSV file with a header row."""
    lines = decoded_lines(path)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), sum(map(len, lines))))  # no field is longer than the file
    try:
        reader = csv.reader(lines)
        records, start = [], 1
        for row in reader:
            records.append((start, reader.line_num, row))
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(old_limit)
    if not records:
        raise InputError(f"{path}: empty file; expected a header row naming {text_column!r} and {label_column!r}")
    _, _, header = records[0]
    missing_columns(f"{path}:1", header, (text_column, label_column))
    for column in (text_column, label_column):
        if header.count(column) > 1:
            raise InputError(f"{path}:1: the header names column {column!r} {header.count(column)} times; rename or drop all but one")
    text_at, label_at = header.index(text_column), header.index(label_column)
    rows = []
    for start, end, row in records[1:]:
        where = f"{path}:{start}"
        if row and len(row) != len(header):
            runs_on = f" (the row runs on to line {end}: is a quote left open?)" if end > start else ""
            raise InputError(f"{where}: expected {len(header)} fields like the header, found {len(row)}{runs_on}")
        if row:
            rows.append((where, row[text_at], row[label_at]))
    return rows


def load_jsonl(path: str | Path, text_column: str = "text", label_column: str = "label", labels: Sequence[str] | None = None) -> list[Example]:
    """One JSON object per line (blank lines skipped); see `parse_label` for the labels and the module docstring for what is refused."""
    return labelled_examples(Path(path), jsonl_rows(path, text_column, label_column), labels)


def jsonl_rows(path: str | Path, text_column: str = "text", label_column: str = "label"):
    """(where, text, label as written) for each object of a JSON-lines file."""
    for number, line in enumerate(decoded_lines(path), 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=lambda pairs: unique_keys(pairs, where))
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: bad JSON ({err.msg} at column {err.colno}); expected one object per line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        missing_columns(where, list(obj), (text_column, label_column))
        if not isinstance(obj[text_column], str):
            raise InputError(f"{where}: {text_column!r} should be a string, found {obj[text_column]!r}")
        yield where, obj[text_column], obj[label_column]


def unique_keys(pairs: list[tuple[str, object]], where: str) -> dict:
    """A JSON object's (key, value) pairs as a dict, refused if a key repeats (json.loads would keep the last)."""
    repeated = [key for key, n in Counter(key for key, _ in pairs).items() if n > 1]
    if repeated:
        raise InputError(f"{where}: key {repeated[0]!r} appears more than once in the object; keep one")
    return dict(pairs)


def load_imdb(root: str | Path, split: str) -> list[Example]:
    """IMDB reviews (Maas et al. 2011) from ROOT = the `aclImdb` folder: neg (0, "negative") then pos (1, "positive"),
    files sorted by name. A folder without reviews, or an empty review, is refused."""
    check_split(split, ("train", "test"), "load_imdb")
    examples = []
    for label, name in enumerate(("neg", "pos")):
        folder = Path(root) / split / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; expected ROOT to be the `aclImdb` folder with {split}/{name}/*.txt")
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise InputError(f"{folder}: no reviews (*.txt files); {split}/neg and {split}/pos each need some, or the classifier sees one class only")
        for file in files:
            text = "".join(decoded_lines(file))
            if not text.strip():
                raise InputError(f"{file}: the review is empty; give it a text or remove the file")
            examples.append(Example(text, label))
    return examples
