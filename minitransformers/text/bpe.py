"""Byte-level BPE (GPT-2's tokenizer), on the `tokenizers` library, from a GGUF file's metadata or a tokenizer.json.

Byte-level BPE (Sennrich et al. 2016; Radford et al. 2019, section 2.2) spells text as UTF-8 bytes, each byte
drawn as one printable character (space is `Ġ`, newline `Ċ`), then merges adjacent symbols in the order the
merge list ranks them. A pre-tokenizer first cuts the text into words, and merges never cross a word:

    "<|im_start|>user\\nHi 42"  ->  special tokens matched whole: <|im_start|> | "user\\nHi 42"
                               ->  pre-tokenizer regexes, in sequence:  "user" "\\n" "Hi" " " "4" "2"
                               ->  bytes as characters:  "user" "Ċ" "Hi" "Ġ" "4" "2"  ->  BPE merges  ->  ids

A GGUF file carries no tokenizer.json, only llama.cpp's metadata keys (read by `minitransformers.io.gguf`):

    tokenizer.ggml.model       "gpt2" = byte-level BPE (the only model this file builds)
    tokenizer.ggml.pre         names the pre-tokenizer, one of PRE_TOKENIZERS below
    tokenizer.ggml.tokens      every token, id = position; normal tokens in the byte alphabet, others as raw text
    tokenizer.ggml.token_type  llama_token_type per token: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    tokenizer.ggml.merges      "left right", best first
    tokenizer.ggml.{bos,eos,padding}_token_id, tokenizer.ggml.add_{bos,eos}_token, tokenizer.chat_template

llama.cpp defines what these mean (src/llama-vocab.cpp, `llm_tokenizer_bpe`, and src/unicode.cpp): each `pre` value
names a list of regexes, applied one after the other to the pieces the previous one produced, and text that no
match covers stays a piece of its own (`Split(behavior="isolated")` here). Control tokens (type 3) and
user-defined tokens (type 4) are matched whole in the text before any of this; decoding drops control tokens only
when asked (`skip_special_tokens`, llama.cpp's `special=false`), and always writes user-defined ones.

Where transformers' GGUF loader (`transformers.integrations.gguf`) reads the same file differently:
- `pre = "smollm"`: transformers has no entry for it and keeps GPT-2's single regex, which does not isolate numbers.
  The ids differ only where whitespace stands right before a number character and the grouping changes the merges:
  "a  5" is "a" "ĠĠ" "5" in llama.cpp (and in SmolLM2's own tokenizer.json, whose pre-tokenizer is
  `Digits(individual_digits=True)` then ByteLevel) but "a" "Ġ" "Ġ" "5" in transformers, and " ½" is "Ġ" "Â½"
  against "ĠÂ" "½". We follow llama.cpp. On 1,000 WikiText-2 lines the two agree on every id.
- A control token spelled outside the byte alphabet is skipped by transformers (it calls that a mislabel) and
  matched whole by llama.cpp; we follow llama.cpp. SmolLM2 has none.
- For `pre = "gpt-2"`, llama.cpp's detokenizer also removes a space before ? ! . , (`tokenizer_clean_spaces`
  is true there, false for smollm); we decode the bytes as they are, like transformers, so decode(encode(x)) == x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from ..errors import InputError

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, `llm_tokenizer_bpe`), copied verbatim and applied in
# order. GPT-2's regex is spelled without its final `|\s+`: llama.cpp keeps unmatched text as a piece anyway.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS = {
    "gpt-2": (GPT2_REGEX,),  # LLAMA_VOCAB_PRE_TYPE_GPT2
    "smollm": (r"\p{N}", GPT2_REGEX),  # LLAMA_VOCAB_PRE_TYPE_SMOLLM: every number character alone, then GPT-2's
}
CONTROL, USER_DEFINED = 3, 4  # llama_token_type


def byte_level_pipeline(model: models.Model, regexes: Sequence[str]) -> RustTokenizer:
    """Wrap a BPE model in the pre-tokenizer regexes (in sequence), the byte alphabet, and its decoder."""
    tok = RustTokenizer(model)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


class BPETokenizer:
    """A byte-level BPE tokenizer with the ids a decoder model needs (bos, eos, pad) and its chat template source."""

    def __init__(self, tokenizer: RustTokenizer, bos_id: int | None, eos_id: int | None, pad_id: int | None, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template

    @classmethod
    def from_gguf_metadata(cls, metadata: dict) -> BPETokenizer:
        """Build the tokenizer llama.cpp builds from a GGUF file's `tokenizer.*` metadata (a dict of plain values)."""
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise InputError(f"tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported here")
        pre = metadata.get("tokenizer.ggml.pre")
        if pre not in PRE_TOKENIZERS:
            raise InputError(
                f"tokenizer.ggml.pre is {pre!r}, an unsupported pre-tokenizer; supported: {', '.join(sorted(PRE_TOKENIZERS))} "
                "(add its regexes from llama.cpp's src/llama-vocab.cpp to PRE_TOKENIZERS)"
            )
        tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
        vocab = {token: i for i, token in enumerate(tokens)}
        if len(vocab) != len(tokens) or len(types) != len(tokens):
            raise InputError(f"{len(tokens)} tokens ({len(vocab)} distinct) and {len(types)} token types in the GGUF metadata; expected one type per distinct token")
        merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
        tok = byte_level_pipeline(models.BPE(vocab=vocab, merges=merges), PRE_TOKENIZERS[pre])
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED])

        bos, eos = metadata.get("tokenizer.ggml.bos_token_id"), metadata.get("tokenizer.ggml.eos_token_id")
        add_bos, add_eos = metadata.get("tokenizer.ggml.add_bos_token", False), metadata.get("tokenizer.ggml.add_eos_token", False)
        if (add_bos and bos is None) or (add_eos and eos is None):
            raise InputError("tokenizer.ggml.add_bos_token / add_eos_token is true but that token's id is not set")
        if add_bos or add_eos:
            template = [tokens[bos]] * add_bos + ["$A"] + [tokens[eos]] * add_eos
            ends = [(tokens[i], i) for i, add in ((bos, add_bos), (eos, add_eos)) if add]
            tok.post_processor = processors.TemplateProcessing(single=" ".join(template), special_tokens=ends)
        return cls(tok, bos, eos, metadata.get("tokenizer.ggml.padding_token_id"), metadata.get("tokenizer.chat_template"))

    @classmethod
    def from_file(cls, tokenizer_json_path: str | Path) -> BPETokenizer:
        """Read a tokenizer.json; bos, eos, pad and the chat template come from tokenizer_config.json (and
        chat_template.jinja, which transformers 5 writes) beside it, when those exist."""
        path = Path(tokenizer_json_path)
        try:
            tok = RustTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception on a malformed file
            raise InputError(f"{path}: cannot parse tokenizer ({err})") from err
        config_path, jinja_path = path.with_name("tokenizer_config.json"), path.with_name("chat_template.jinja")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}

        def token_id(key: str) -> int | None:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else tok.token_to_id(token)

        template = jinja_path.read_text() if jinja_path.is_file() else config.get("chat_template")
        return cls(tok, token_id("bos_token"), token_id("eos_token"), token_id("pad_token"), template)

    def save_pretrained(self, path: str | Path, chat_template: str | None = None) -> None:
        """Write tokenizer.json, tokenizer_config.json (bos, eos, pad by name) and chat_template.jinja (the template
        source given, else the tokenizer's own) into PATH, which `from_file` and transformers' AutoTokenizer read."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path / "tokenizer.json"))
        name = lambda i: None if i is None else self.tokenizer.id_to_token(i)  # noqa: E731
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(self.bos_id), "eos_token": name(self.eos_id), "pad_token": name(self.pad_id)}
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if template := chat_template or self.chat_template:
            (path / "chat_template.jinja").write_text(template)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens in it are matched whole. add_special_tokens adds BOS/EOS where the
        file asks for them (SmolLM2 asks for neither: its chat template writes the markers)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | Sequence[str], padding_side: str = "left", add_special_tokens: bool = False) -> dict[str, torch.Tensor]:
        """Encode and pad to the longest -> input_ids, attention_mask (B, T), the mask 0 on the pad_id positions.

        Left padding (the default) puts every prompt's last token in the last column, where generation continues.
        """
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        encoded = self.encode_batch([texts] if isinstance(texts, str) else texts, add_special_tokens)
        T = max((len(ids) for ids in encoded), default=0)
        if self.pad_id is None and any(len(ids) < T for ids in encoded):
            raise InputError("these texts need padding but the tokenizer has no pad token; set tokenizer.pad_id (eos_id is usual)")
        input_ids = torch.full((len(encoded), T), self.pad_id or 0, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros(len(encoded), T, dtype=torch.long)
        for row, ids in enumerate(encoded):
            cols = slice(T - len(ids), T) if padding_side == "left" else slice(0, len(ids))
            input_ids[row, cols] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
