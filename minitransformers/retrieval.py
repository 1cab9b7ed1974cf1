"""Retrieve-then-read over a text file: dense passage retrieval (Karpukhin et al. 2020, "DPR") with the sentence
encoder, and an answer from a decoder conditioned on the retrieved passages (Lewis et al. 2020, "RAG").

    passages  p_1 .. p_N      paragraphs of the file (blank-line separated), long ones cut into windows of W words,
                              each prefixed with its article's title, as DPR prepends the Wikipedia title (section 4.1)
    index     E (N, H)        E_i = normalize(mean-pool(encoder(p_i)))           (sentence.embed)
    retrieve  top-k_i  q · E_i   over q = normalize(mean-pool(encoder(question)))  (one matrix product, DPR's MIPS)
    read      answer = decoder(chat template(passages [1]..[k] numbered, question))

Unlike RAG, the reader is not trained and does not marginalise over passages: all k passages go into one prompt
("RAG-sequence" with a frozen generator, as retrieve-then-read is usually served), and the answer cites them as [n].

The index is a folder: embeddings.safetensors (E, float32), passages.jsonl ({"file", "line", "text", "title"} a line, in
the order of E's rows) and index.json (the corpus's sha256, the encoder path and the splitting settings). It is
rebuilt whenever one of those differs from what the folder records, so an edited corpus is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import InputError
from .io.safetensors import load_file, save_file
from .sentence import embed, search
from .text.datasets import decoded_lines

INDEX_VERSION = 2
WORDS = 100  # DPR's passages are 100-word blocks of Wikipedia
OVERLAP = 20


# A heading line: WikiText's ` = Title = `, ` = = Section = = ` (the level is the count of `=`), or Markdown's `# Title`.
HEADING = re.compile(r"^\s*(?:(=(?: =)*) (.+?) \1|(#+) (.+?))\s*$")


@dataclass(frozen=True)
class Passage:
    file: str
    line: int  # 1-based line of the passage's first word in `file`
    text: str
    title: str = ""  # the last level-1 heading above it, "" if none

    def content(self) -> str:
        """What is embedded and shown to the reader: "title: text", as DPR's title [SEP] passage."""
        return f"{self.title}: {self.text}" if self.title else self.text


def heading(line: str) -> tuple[int, str] | None:
    """(level, title) of a heading line, else None."""
    m = HEADING.match(line)
    if m is None:
        return None
    return (m[1].count("="), m[2]) if m[1] else (len(m[3]), m[4])


def split_passages(path: str | Path, words: int = WORDS, overlap: int = OVERLAP) -> list[Passage]:
    """PATH's paragraphs (runs of non-blank lines, joined by spaces), each cut into windows of at most `words`
    words that start every `words - overlap` words; a window's line is that of its first word. Heading lines are
    not passages: a level-1 heading is the title of the passages below it. An empty file, or one that is only
    blank lines or headings, and bytes that are not UTF-8 are InputErrors naming the file (and line)."""
    if not 0 <= overlap < words:
        raise InputError(f"overlap {overlap} must be at least 0 and below the window of {words} words")
    paragraphs: list[tuple[str, list[tuple[str, int]]]] = [("", [])]  # (title, [(word, line), ...])
    title = ""
    for number, line in enumerate(decoded_lines(path), 1):
        tokens = line.split()
        head = heading(line) if tokens else None
        if tokens and head is None:
            paragraphs[-1][1].extend((word, number) for word in tokens)
            continue
        if head is not None and head[0] == 1:
            title = head[1]
        if paragraphs[-1][1] or paragraphs[-1][0] != title:
            paragraphs.append((title, []))
    passages = []
    step = words - overlap
    for title, para in paragraphs:
        for start in range(0, max(len(para) - overlap, 1), step):
            window = para[start : start + words]
            if window:
                passages.append(Passage(str(path), window[0][1], " ".join(word for word, _ in window), title))
    if not passages:
        raise InputError(f"{path}: the corpus is empty (no text beside blank lines and headings); expected paragraphs separated by blank lines")
    return passages


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_index_dir(corpus: str | Path) -> Path:
    """CORPUS.index/, beside the corpus."""
    corpus = Path(corpus)
    return corpus.with_name(corpus.name + ".index")


@dataclass
class Index:
    passages: list[Passage]
    embeddings: torch.Tensor  # (N, H), unit-norm rows
    settings: dict
    rebuilt: bool = False

    def retrieve(self, query: torch.Tensor, k: int) -> list[list[tuple[float, Passage]]]:
        """query (Q, H) unit-norm -> for each query, its k best (cosine, passage), best first."""
        scores, indices = search(query.to(self.embeddings), self.embeddings, k)  # (Q, k) each
        return [[(s, self.passages[i]) for s, i in zip(row_s, row_i)] for row_s, row_i in zip(scores.tolist(), indices.tolist())]


def settings_for(corpus: str | Path, model: str, words: int, overlap: int, max_length: int) -> dict:
    return {"version": INDEX_VERSION, "corpus": str(corpus), "corpus_sha256": sha256_of(corpus), "model": str(Path(model).resolve()),
            "words": words, "overlap": overlap, "max_length": max_length}  # fmt: skip


def load_index(folder: str | Path) -> Index:
    """An index folder as written by `build_index`; InputError naming the file when it does not hold together."""
    folder = Path(folder)
    settings = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    embeddings = load_file(folder / "embeddings.safetensors")["embeddings"]
    with open(folder / "passages.jsonl", encoding="utf-8") as f:
        passages = [Passage(**json.loads(line)) for line in f if line.strip()]
    if embeddings.shape[0] != len(passages):
        raise InputError(f"{folder}: {embeddings.shape[0]} embeddings but {len(passages)} passages; delete the folder to rebuild it")
    return Index(passages, embeddings, settings)


def build_index(corpus, encoder, tokenizer, model: str, folder, words=WORDS, overlap=OVERLAP, max_length=256, batch_size=64, progress=False) -> Index:
    """Split, embed and write the index into FOLDER (through a temporary folder and a rename)."""
    folder = Path(folder)
    settings = settings_for(corpus, model, words, overlap, max_length)
    passages = split_passages(corpus, words, overlap)
    embeddings = embed(encoder, tokenizer, [p.content() for p in passages], batch_size, max_length, progress=progress).cpu()  # (N, H)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-tmp-") as tmp:
        staging = Path(tmp) / "index"
        staging.mkdir()
        save_file({"embeddings": embeddings.contiguous()}, staging / "embeddings.safetensors", {"format": "pt"})
        with open(staging / "passages.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in passages)
        (staging / "index.json").write_text(json.dumps(settings | {"passages": len(passages), "dim": embeddings.shape[1]}, indent=1) + "\n")
        if folder.exists():
            os.replace(folder, Path(tmp) / "stale")
        os.replace(staging, folder)
    return Index(passages, embeddings, settings, rebuilt=True)


def open_index(corpus, encoder, tokenizer, model: str, folder=None, words=WORDS, overlap=OVERLAP, max_length=256, batch_size=64, progress=False) -> Index:
    """The index of CORPUS in FOLDER (default CORPUS.index/), rebuilt when the corpus's sha256, the encoder or the
    settings differ from those it was built with, or when it is missing or unreadable."""
    corpus = Path(corpus)
    if not corpus.is_file():
        raise InputError(f"{corpus}: no such corpus file; pass a UTF-8 text file with --corpus")
    folder = Path(folder) if folder else default_index_dir(corpus)
    if folder.exists() and not (folder / "index.json").is_file():
        raise InputError(f"{folder}: exists but is not an index folder (no index.json); pick another --index")
    want = settings_for(corpus, model, words, overlap, max_length)
    try:
        index = load_index(folder)
        if all(index.settings.get(key) == value for key, value in want.items() if key != "corpus"):
            return index
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged: rebuilt below
    return build_index(corpus, encoder, tokenizer, model, folder, words, overlap, max_length, batch_size, progress)


INSTRUCTION = ("Answer the question using only the numbered passages below. Cite the passages you use as [1], [2]. "
               "If the passages do not hold the answer, say so.")  # fmt: skip


def answer_prompt(question: str, hits: list[tuple[float, Passage]]) -> str:
    """The user message: the instruction, the passages numbered [1]..[k], then the question."""
    numbered = "\n\n".join(f"[{n}] {p.content()}" for n, (_, p) in enumerate(hits, 1))
    return f"{INSTRUCTION}\n\n{numbered}\n\nQuestion: {question}"


def citations(answer: str, k: int) -> list[int]:
    """The passage numbers 1..k cited as [n] (or [n, m]) in ANSWER, in order of first citation."""
    found = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer):
        for n in map(int, group.split(",")):
            if 1 <= n <= k and n not in found:
                found.append(n)
    return found
