"""Named-entity data: a BIO (CoNLL-style) reader, the WNUT-16 tweets, and word tags aligned to sub-word tokens.

A BIO file holds one token a line, `word<TAB>tag`, and a blank line (or one of whitespace only, as WNUT-16's lone
tab) between sentences; CoNLL-2003's space-separated columns also read, the word first and the tag last. Tags follow
IOB2 (Tjong Kim Sang & Veenstra 1999; WNUT-16's file follows it without exception): `B-TYPE` begins an entity,
`I-TYPE` continues one, `O` is outside any (CoNLL-2003's original IOB1, where an I- may open an entity, is refused):

    New     B-geo-loc
    York    I-geo-loc      I-X only after B-X or I-X of the same type
    is      O

What is refused, as an InputError naming FILE:LINE: a line without both a word and a tag; a tag not in the label set
(given, or `O`, `B-TYPE`, `I-TYPE` when read from the file); an `I-X` after `O`, after another type, or first in a
sentence (an IOB2 violation; fix it to `B-X`); an empty sentence (two blank lines in a row); a file of no sentences.
Blank lines at the start and end of a file are no sentences and are skipped.

Labels for sub-words (Devlin et al. 2019, section 5.3: "we use the representation of the first sub-token as the
input to the token-level classifier"; `transformers`' run_ner.py with label_all_tokens=False): each word's tag goes
on its first sub-word, and -100, which cross-entropy ignores, on its other sub-words and on [CLS] and [SEP]:

    words     [CLS]  Empire     State      Building   =   ESB
    pieces    [CLS]  empire     state      building   =   es   ##b   [SEP]
    labels    -100   B-facility I-facility I-facility O   B-.. -100  -100

The tokens' words come from the `tokenizers` encoding of the pre-tokenized words (`word_ids`). A word that gives no
sub-word at all (a lone control character, which BERT's normaliser deletes) has no label position, and a word cut off
by max_length has none either; `encode_sentences` counts both and says so on stderr.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError
from .datasets import decoded_lines
from .sources import data_dir, hash_split
from .tokenizer import Tokenizer

IGNORE = -100  # the label of positions that carry no word tag: cross-entropy's ignore_index
WNUT16_TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow")
WNUT16_SPLIT_SEED = "wnut16-split-0"  # the salt of the split hash: change it and every tweet may move
SPLITS = ("train", "validation", "test")
TAG = re.compile(r"(?:[BI]-(\S+)|O)")


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str  # FILE:LINE of its first word


@dataclass(frozen=True)
class EncodedSentence:
    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]  # a label id on each word's first sub-word, IGNORE elsewhere


def bio_labels(types: Sequence[str]) -> list[str]:
    """The label set of entity TYPES, in a fixed order: O, then B- and I- of each type, types sorted."""
    return ["O"] + [f"{prefix}-{t}" for t in sorted(types) for prefix in ("B", "I")]


WNUT16_LABELS = bio_labels(WNUT16_TYPES)


def read_bio(path: str | Path, labels: Sequence[str] | None = None) -> list[Sentence]:
    """The sentences of a BIO file; each tag must be in LABELS (default: any O, B-TYPE or I-TYPE). See the module
    docstring for the format and what is refused."""
    path = Path(path)
    allowed = set(labels) if labels is not None else None
    sentences, words, tags, start, blank_from = [], [], [], None, None  # blank_from: the first of the blank lines just read
    for number, line in enumerate(decoded_lines(path), 1):
        where = f"{path}:{number}"
        if not line.strip():
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags), start))
                words, tags = [], []
            blank_from = blank_from or number
            continue
        if sentences and blank_from is not None and number - blank_from > 1:
            raise InputError(f"{path}:{blank_from + 1}: an empty sentence (blank lines {blank_from} to {number - 1}); separate sentences by one blank line")
        blank_from = None
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        word, tag = fields[0].strip(), fields[-1].strip()
        if len(fields) < 2 or not word or not tag:
            raise InputError(f"{where}: expected a word and a tag separated by a tab, found {line.rstrip()!r}")
        match = TAG.fullmatch(tag)
        if allowed is not None and tag not in allowed:
            raise InputError(f"{where}: tag {tag!r} is not in the label set ({', '.join(sorted(allowed)[:12])}{' ...' if len(allowed) > 12 else ''})")
        if match is None:
            raise InputError(f"{where}: tag {tag!r} is not a BIO tag; expected O, B-TYPE or I-TYPE")
        if tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:]):
            before = f"after {tags[-1]!r}" if tags else "at the start of a sentence"
            raise InputError(f"{where}: tag {tag!r} {before} breaks IOB2 (an I- tag continues an entity of its type); write B-{tag[2:]}")
        if not words:
            start = where
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags), start))
    if not sentences:
        raise InputError(f"{path}: no sentences; expected `word<TAB>tag` lines with a blank line between sentences")
    return sentences


def file_labels(sentences: Sequence[Sentence]) -> list[str]:
    """The label set of sentences read from a file: `bio_labels` of the entity types they use."""
    return bio_labels({tag[2:] for s in sentences for tag in s.tags if tag != "O"})


def sentence_split(sentence: Sentence) -> str:
    """A sentence's split: `sources.hash_split` of its words and tags, salted with WNUT16_SPLIT_SEED. The same
    tweet twice lands in the same split."""
    return hash_split(WNUT16_SPLIT_SEED, "\t".join(sentence.words) + "\n" + "\t".join(sentence.tags))


def split_sentences(sentences: Sequence[Sentence]) -> dict[str, list[Sentence]]:
    splits = {name: [] for name in SPLITS}
    for sentence in sentences:
        splits[sentence_split(sentence)].append(sentence)
    return splits


def load_wnut16(split: str, root: str | Path | None = None) -> list[Sentence]:
    """WNUT-16's 2,394 training tweets (`fetch wnut16`), cut into our own seeded train / validation / test split."""
    if split not in SPLITS:
        raise InputError(f"load_wnut16: unknown split {split!r}; expected one of {list(SPLITS)}")
    return split_sentences(read_bio(data_dir("wnut16", root) / "ner.txt", WNUT16_LABELS))[split]


def ner_splits(spec: str, root: str | Path | None = None) -> tuple[list[str], dict[str, list[Sentence]]]:
    """(label names, train / validation / test sentences) for `ner --data SPEC`: "wnut16", or a BIO file cut by the
    same seeded hash. No split may be empty."""
    if spec == "wnut16":
        labels, sentences = WNUT16_LABELS, read_bio(data_dir("wnut16", root) / "ner.txt", WNUT16_LABELS)
    else:
        sentences = read_bio(spec)
        labels = file_labels(sentences)
    splits = split_sentences(sentences)
    for name, part in splits.items():
        if not part:
            sizes = ", ".join(f"{k} {len(v):,}" for k, v in splits.items())
            raise InputError(f"{spec}: the {name} split is empty (sentences: {sizes}); a file is cut about 80/10/10 by a hash of each sentence, so give it 50 sentences or more")
    return labels, splits


def encode_sentences(tokenizer: Tokenizer, sentences: Sequence[Sentence], labels: Sequence[str], max_length: int) -> list[EncodedSentence]:
    """Tokenize pre-split words and put each word's label id on its first sub-word (module docstring)."""
    label2id = {label: i for i, label in enumerate(labels)}
    tok = tokenizer.tokenizer
    tok.enable_truncation(max_length)
    try:
        encodings = tok.encode_batch([list(s.words) for s in sentences], is_pretokenized=True)
    finally:
        tok.no_truncation()
    encoded, lost = [], 0
    for sentence, encoding in zip(sentences, encodings):
        ids, seen = [], set()
        for word in encoding.word_ids:  # None for [CLS], [SEP]
            first = word is not None and word not in seen
            ids.append(label2id[sentence.tags[word]] if first else IGNORE)
            seen.add(word)
        lost += len(sentence.words) - len(seen - {None})
        encoded.append(EncodedSentence(encoding.ids, encoding.type_ids, ids))
    if lost:
        print(f"warning: {lost:,} of {sum(len(s.words) for s in sentences):,} words have no sub-word within {max_length} tokens "
              "(cut off, or deleted by the normaliser); they are neither trained on nor scored", file=sys.stderr)  # fmt: skip
    return encoded


def collate_tokens(items: Sequence[EncodedSentence], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Pad to the longest item -> input_ids, attention_mask, token_type_ids and labels (B, T), labels padded with IGNORE."""
    batch = tokenizer.pad([(item.input_ids, item.token_type_ids) for item in items])
    labels = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)  # (B, T)
    for row, item in enumerate(items):
        labels[row, : len(item.labels)] = torch.tensor(item.labels, dtype=torch.long)
    return {**batch, "labels": labels}


def word_tags(labels: torch.Tensor, predictions: torch.Tensor, names: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag sequences, one per row, read at the first sub-words (labels != IGNORE): the predictions
    decoded back to one tag per word. labels, predictions (B, T)."""
    gold, predicted = [], []
    for row_labels, row_predictions in zip(labels.tolist(), predictions.tolist()):
        kept = [(g, p) for g, p in zip(row_labels, row_predictions) if g != IGNORE]
        gold.append([names[g] for g, _ in kept])
        predicted.append([names[p] for _, p in kept])
    return gold, predicted
