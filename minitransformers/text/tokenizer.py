"""BERT's WordPiece tokenizer, on the `tokenizers` library (Rust), with tensors out.

WordPiece (Schuster & Nakajima 2012; Wu et al. 2016, section 4.1) splits each word greedily into the longest
vocabulary pieces, continuation pieces marked `##`. BERT's pipeline (Devlin et al. 2019, section 3):

    normalise (clean, lowercase, strip accents)  ->  split on whitespace and punctuation  ->  WordPiece
    ->  [CLS] A [SEP]            token_type_ids 0 … 0
        [CLS] A [SEP] B [SEP]    token_type_ids 0 … 0 1 … 1

`Tokenizer.from_pretrained(dir)` reads `tokenizer.json`, or builds the pipeline above from `vocab.txt`.
Padding and truncation are done per call here, not baked into the tokenizer file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import InputError
from ..io import manifest

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_pipeline(model: models.Model, lowercase: bool = True) -> RustTokenizer:
    """Wrap a WordPiece model in BERT's normaliser, pre-tokenizer and decoder (post-processor added later)."""
    tok = RustTokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def add_bert_template(tok: RustTokenizer) -> RustTokenizer:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def lowercases(config: Path) -> bool:
    """tokenizer_config.json's do_lower_case (True without the file, as BERT's uncased vocabularies)."""
    if not config.is_file():
        return True
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise InputError(f"{config}: expected a JSON object ({type(err).__name__}: {err})") from None
    if not isinstance(value, bool):
        raise InputError(f"{config}: do_lower_case is {value!r}, expected true or false")
    return value


class Tokenizer:
    def __init__(self, tokenizer: RustTokenizer, pad_token: str = "[PAD]"):
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_id = tokenizer.token_to_id(pad_token)
        if self.pad_id is None:
            raise InputError(f"pad token {pad_token!r} is not in the vocabulary")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """The tokenizer of a folder: tokenizer.json, else vocab.txt (+ tokenizer_config.json's do_lower_case),
        each checked against the folder's manifest if it has one."""
        path = Path(path)
        manifest.verify(path, "tokenizer.json", "vocab.txt", "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            try:
                return cls(RustTokenizer.from_file(str(path / "tokenizer.json")))
            except Exception as err:  # the Rust side raises a bare Exception on a malformed file
                raise InputError(f"{path / 'tokenizer.json'}: cannot parse tokenizer ({err})") from err
        if (path / "vocab.txt").is_file():
            lowercase = lowercases(path / "tokenizer_config.json")
            try:
                wordpiece = models.WordPiece.from_file(str(path / "vocab.txt"), unk_token="[UNK]")
            except Exception as err:
                raise InputError(f"{path / 'vocab.txt'}: cannot read a WordPiece vocabulary ({err})") from err
            return cls(add_bert_template(bert_pipeline(wordpiece, lowercase)))
        raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt; is this a tokenizer folder?")

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer.json and vocab.txt (ids in order), which `transformers.BertTokenizerFast` reads, and
        tokenizer_config.json + special_tokens_map.json naming the BERT class and its special tokens (pad
        included), so that `transformers.AutoTokenizer` gets them even from a folder without config.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path / "tokenizer.json"))
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])
        (path / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
        roles = {"pad_token": self.tokenizer.id_to_token(self.pad_id), "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
        special = {role: token for role, token in roles.items() if self.token_to_id(token) is not None}
        normalizer = json.loads(self.tokenizer.to_str()).get("normalizer") or {}
        config = {"tokenizer_class": "BertTokenizer", **special}
        if normalizer.get("type") == "BertNormalizer":
            config["do_lower_case"] = normalizer["lowercase"]  # from_pretrained reads it back for a vocab.txt-only folder
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 512, truncation: bool = True, special_tokens: bool = True
    ) -> list[tuple[list[int], list[int]]]:
        """Unpadded (input_ids, token_type_ids) per text, with [CLS]/[SEP] added unless special_tokens=False."""
        if pairs is not None and len(pairs) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; pass one pair per text")
        if truncation:
            self.tokenizer.enable_truncation(max_length)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=special_tokens)
        self.tokenizer.no_truncation()
        return [(e.ids, e.type_ids) for e in encodings]

    def pad(self, encoded: Sequence[tuple[list[int], list[int]]], length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-pad to `length` (default: the longest) -> input_ids, attention_mask, token_type_ids (B, T)."""
        T = max((len(ids) for ids, _ in encoded), default=0) if length is None else length
        batch = {
            "input_ids": torch.full((len(encoded), T), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(encoded), T, dtype=torch.long),
            "token_type_ids": torch.zeros(len(encoded), T, dtype=torch.long),
        }
        for row, (ids, types) in enumerate(encoded):
            batch["input_ids"][row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["attention_mask"][row, : len(ids)] = 1
            batch["token_type_ids"][row, : len(ids)] = torch.tensor(types, dtype=torch.long)
        return batch

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = 512,
        padding: bool | str = True,
        truncation: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Encode texts (and optional second segments) -> input_ids, attention_mask, token_type_ids (B, T).

        padding: True pads to the longest in the batch, "max_length" to max_length, False needs equal lengths.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.encode(texts, pairs, max_length, truncation)
        lengths = {len(ids) for ids, _ in encoded}
        if not padding and len(lengths) > 1:
            raise InputError(f"sequences have lengths {sorted(lengths)}; pass padding=True to pad them")
        return self.pad(encoded, max_length if padding == "max_length" else None)

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def continuation_pieces(tok: RustTokenizer, files: Sequence[str | Path]) -> list[str]:
    """'##c' for each character c that follows another inside a word of `files` (as `tok` normalises and splits
    them), sorted by code point: exactly the continuation pieces the trainer starts from."""
    chars: set[str] = set()
    for f in files:
        with open(f, encoding="utf-8") as lines:
            for line in lines:
                for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
                    chars.update(word[1:])
    return ["##" + c for c in sorted(chars)]


def train_wordpiece(files: Sequence[str | Path], vocab_size: int = 30522, min_frequency: int = 2, lowercase: bool = True) -> Tokenizer:
    """Learn a WordPiece vocabulary from text files, with BERT's special tokens at ids 0-4; the same files give
    the same vocabulary, id for id, in every process.

    `tokenizers`' trainer (BPE merges, then WordPiece's `##` pieces) numbers the `##c` pieces in the order it
    meets them in a hash map, which differs from process to process (tokenizers issue #1794); equal merge counts
    are then broken by those ids, so the ids and even the set of merges change from run to run. Giving the
    trainer the `##c` pieces up front, sorted, right after the special tokens fixes every id. The trainer
    treats them as special tokens, so the tokenizer is rebuilt on the learned vocabulary with only BERT's five
    special tokens.
    """
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"training files not found: {missing}")
    tok = bert_pipeline(models.WordPiece(unk_token="[UNK]"), lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS + continuation_pieces(tok, files),
        continuing_subword_prefix="##", show_progress=False,
    )  # fmt: skip
    tok.train([str(f) for f in files], trainer)
    learned = bert_pipeline(models.WordPiece(tok.get_vocab(with_added_tokens=False), unk_token="[UNK]", continuing_subword_prefix="##"), lowercase)
    learned.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(add_bert_template(learned))
