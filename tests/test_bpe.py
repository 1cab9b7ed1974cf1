"""The byte-level BPE tokenizer: llama.cpp's pre-tokenizer rules on a tiny vocabulary, and SmolLM2's GGUF tokenizer
against llama.cpp's own ids and transformers' GGUF tokenizer, on WikiText-2 and on hard text.

transformers' GGUF loader has no pre-tokenizer for `pre = "smollm"` and falls back to GPT-2's regex, while llama.cpp
first isolates every number character (as SmolLM2's own tokenizer.json does, with `Digits(individual_digits=True)`).
The two disagree only where whitespace stands right before a number character and the grouping changes the merges:
`test_transformers_differs_only_where_llama_cpp_isolates_numbers` pins those cases, and every parity test checks that
each text that differs is such a text and equals SmolLM2's tokenizer.json pipeline. We follow llama.cpp."""

import unicodedata

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import pre_tokenizers

from conftest import SMOLLM2_GGUF, fetched
from minitransformers.text.bpe import BPETokenizer

SAMPLES = {
    "emoji": "Hello 👋 world 🌍🚀 👨‍👩‍👧 ❤️!",
    "accents": "Café naïve résumé Ångström São Paulo — ñ ü ß, and e\u0301 decomposed",
    "cjk": "日本語のテキスト、中文句子。한국어 문장",
    "digits": "3.14159 and 2024-12-02, 1,000,000 ½ ² Ⅻ ٣",
    "code": "def f(x):\n    return x ** 2  # square\n\tif a  5:\n        pass\n",
    "whitespace": "  leading,   inner \t\t tabs\u00a0nbsp\u3000wide, x   2024, trailing   \n\n\r\n",
    "chat markup": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "markup edges": "<|im_start|><|im_end|><|endoftext|>not<|im_end|>glued <|im_start",
    "contractions": "it's they'll I'M we'd",
}

# llama.cpp's own ids for SAMPLES, from llama-cpp-python 0.3.36 (which builds llama.cpp from source):
# Llama(gguf, vocab_only=True).tokenize(text.encode(), add_bos=False, special=True). test_llama_cpp_ids_are_current
# regenerates them where llama-cpp-python is installed.
LLAMA_CPP_IDS = {
    "emoji": [19556, 15107, 235, 229, 905, 15107, 230, 231, 10813, 244, 218, 15107, 235, 118, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117, 4636, 247, 114, 31752, 17],
    "accents": [51, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756, 5549, 223, 863, 1321, 45682, 40481, 36619, 1841, 5549, 126, 5549, 137, 5549, 249, 28, 284, 297, 151, 219, 48304],
    "cjk": [23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 29917, 28589, 29184, 12034, 115, 47222, 19076, 33085, 246, 181, 130, 251, 183, 240, 129, 25947, 122, 133, 183, 248, 115],
    "digits": [35, 30, 33, 36, 33, 37, 41, 284, 216, 34, 32, 34, 36, 29, 33, 34, 29, 32, 34, 28, 216, 33, 28, 32, 32, 32, 28, 32, 32, 32, 216, 16738, 216, 19133, 216, 173, 223, 121, 216, 164, 113],
    "code": [1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 216, 907, 5222, 198, 197, 342, 253, 256, 37, 42, 448, 1301, 198],
    "whitespace": [216, 2899, 28, 256, 6210, 216, 1656, 29416, 15442, 94, 32093, 12109, 218, 3641, 28, 1792, 333, 34, 32, 34, 36, 28, 35079, 333, 1116, 2738],
    "chat markup": [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198, 36, 2, 198],
    "markup edges": [1, 2, 0, 1766, 2, 87, 1374, 277, 2067, 108, 306, 79, 3738],
    "contractions": [269, 506, 502, 3060, 339, 23, 61, 392, 6737],
}


def wikitext_lines(n=1000) -> list[str]:
    text = (fetched("wikitext2") / "test.raw").read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line.strip()][:n]


def whitespace_before_number(text: str) -> bool:
    return any(a.isspace() and unicodedata.category(b).startswith("N") for a, b in zip(text, text[1:]))


def smollm2_json_pipeline(hf) -> RustTokenizer:
    """transformers' tokenizer with the pre-tokenizer of SmolLM2's own tokenizer.json: llama.cpp's rule, in the
    terms of the `tokenizers` library."""
    backend = RustTokenizer.from_str(hf.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


def differences_from_transformers(ours, hf, texts) -> list[str]:
    """The texts whose ids differ from transformers'. Every text must equal SmolLM2's tokenizer.json pipeline, and
    every one that differs must have whitespace before a number."""
    want = hf(list(texts), add_special_tokens=False)["input_ids"]
    json_pipeline = smollm2_json_pipeline(hf)
    differ = []
    for text, hf_ids in zip(texts, want):
        ids = ours.encode(text)
        assert ids == json_pipeline.encode(text, add_special_tokens=False).ids, text
        if ids != hf_ids:
            assert whitespace_before_number(text), text
            differ.append(text)
    return differ


def tokens(tok: BPETokenizer, text: str) -> list[str]:
    return [tok.tokenizer.id_to_token(i) for i in tok.encode(text)]


# --- SmolLM2 against llama.cpp and transformers -----------------------------------------------------------------------


def test_matches_transformers_on_1000_wikitext_lines(smollm2_tokenizer, hf_smollm2_tokenizer):
    lines = wikitext_lines()
    assert len(lines) == 1000
    assert differences_from_transformers(smollm2_tokenizer, hf_smollm2_tokenizer, lines) == []


def test_matches_transformers_on_hard_text_except_whitespace_before_numbers(smollm2_tokenizer, hf_smollm2_tokenizer):
    differ = differences_from_transformers(smollm2_tokenizer, hf_smollm2_tokenizer, list(SAMPLES.values()))
    assert {name for name, text in SAMPLES.items() if text in differ} == {"digits", "code", "whitespace"}


@pytest.mark.parametrize(
    "text, llama_cpp, transformers_gguf",
    [
        ("a  5", ["a", "ĠĠ", "5"], ["a", "Ġ", "Ġ", "5"]),  # GPT-2's regex makes " 5" one word and leaves a lone space
        ("x   2024", ["x", "ĠĠĠ", "2", "0", "2", "4"], ["x", "ĠĠ", "Ġ", "2", "0", "2", "4"]),
        (" ½", ["Ġ", "Â½"], ["ĠÂ", "½"]),  # one word " ½" (bytes Ġ Â ½): the merge "Ġ Â" outranks "Â ½"
    ],
)
def test_transformers_differs_only_where_llama_cpp_isolates_numbers(smollm2_tokenizer, hf_smollm2_tokenizer, text, llama_cpp, transformers_gguf):
    assert tokens(smollm2_tokenizer, text) == llama_cpp
    assert hf_smollm2_tokenizer.convert_ids_to_tokens(hf_smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]) == transformers_gguf


def test_matches_llama_cpp_on_hard_text(smollm2_tokenizer):
    assert {name: smollm2_tokenizer.encode(text) for name, text in SAMPLES.items()} == LLAMA_CPP_IDS


def test_llama_cpp_ids_are_current(smollm2_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; it regenerates LLAMA_CPP_IDS")
    llm = llama_cpp.Llama(str(fetched("smollm2") / SMOLLM2_GGUF), vocab_only=True, verbose=False)
    assert {name: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for name, text in SAMPLES.items()} == LLAMA_CPP_IDS
    for ids in LLAMA_CPP_IDS.values():  # llama.cpp's special=False/True is skip_special_tokens=True/False
        for special in (False, True):
            assert llm.detokenize(ids, special=special).decode("utf-8") == smollm2_tokenizer.decode(ids, skip_special_tokens=not special)


def test_gpt2_pre_tokenizer_matches_transformers_everywhere(smollm2_metadata, hf_smollm2_tokenizer):
    """With `pre = "gpt-2"` (GPT-2's regex alone) the same vocabulary gives transformers' ids on every text."""
    gpt2 = BPETokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "gpt-2"})
    texts = wikitext_lines() + list(SAMPLES.values())
    assert [gpt2.encode(t) for t in texts] == hf_smollm2_tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_decode_inverts_encode(smollm2_tokenizer):
    for text in wikitext_lines() + list(SAMPLES.values()):
        assert smollm2_tokenizer.decode(smollm2_tokenizer.encode(text)) == text


def test_decode_matches_transformers(smollm2_tokenizer, hf_smollm2_tokenizer):
    for text in SAMPLES.values():
        ids = smollm2_tokenizer.encode(text)
        for skip in (False, True):
            assert smollm2_tokenizer.decode(ids, skip_special_tokens=skip) == hf_smollm2_tokenizer.decode(ids, skip_special_tokens=skip)


def test_smollm2_special_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49152, 1, 2, 2)
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    ids = tok.encode(SAMPLES["chat markup"])
    assert ids[0] == tok.bos_id and ids.count(tok.token_to_id("<|im_start|>")) == 2 and ids.count(tok.eos_id) == 2
    assert tok.encode("<|im_start") != tok.encode("<|im_start|>")  # only the whole marker is the special token
    assert tok.decode(ids, skip_special_tokens=True) == "user\nWhat is 2+2?\nassistant\n4\n"
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")  # add_bos_token is False in this file


def test_from_file_reads_what_transformers_saves(smollm2_metadata, hf_smollm2_tokenizer, tmp_path):
    hf_smollm2_tokenizer.save_pretrained(tmp_path)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    tok = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49152, 1, 2, 2)
    assert tok.chat_template == smollm2_metadata["tokenizer.chat_template"]
    texts = list(SAMPLES.values())  # the saved file holds transformers' pre-tokenizer, so even "a  5" agrees
    assert tok.encode_batch(texts) == hf_smollm2_tokenizer(texts, add_special_tokens=False)["input_ids"]


# --- llama.cpp's rules on a tiny vocabulary (no data, no transformers) ------------------------------------------------

TINY_MERGES = ["Ġ Ġ", "1 2", "h e", "he l", "hel l", "hell o"]


def tiny_metadata(**changes) -> dict:
    """GGUF tokenizer metadata of a tiny vocabulary: three control tokens, one user-defined, the 256 byte characters
    and the tokens that TINY_MERGES make."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
    vocab = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + [merge.replace(" ", "") for merge in TINY_MERGES]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": vocab,
        "tokenizer.ggml.token_type": [3, 3, 3, 4] + [1] * (len(vocab) - 4),
        "tokenizer.ggml.merges": TINY_MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
    }
    return {**metadata, **{f"tokenizer.ggml.{key}": value for key, value in changes.items()}}


def test_smollm_isolates_numbers_then_applies_gpt2_regex():
    # smollm: "a  " "1" "2", then GPT-2's regex on "a  ": "a" "  ". gpt-2: "a" " " " 12", so the merge "1 2" applies.
    assert tokens(BPETokenizer.from_gguf_metadata(tiny_metadata()), "a  12") == ["a", "ĠĠ", "1", "2"]
    assert tokens(BPETokenizer.from_gguf_metadata(tiny_metadata(pre="gpt-2")), "a  12") == ["a", "Ġ", "Ġ", "12"]


def test_control_and_user_defined_tokens_are_matched_whole():
    tok = BPETokenizer.from_gguf_metadata(tiny_metadata())
    hello = tok.token_to_id("hello")
    assert tok.encode("<|im_start|>hello<think>hello<|im_end|>") == [1, hello, 3, hello, 2]
    assert tok.decode([1, hello, 3, hello, 2]) == "<|im_start|>hello<think>hello<|im_end|>"
    # skip_special_tokens drops control tokens (llama.cpp's special=false) but writes user-defined ones, as llama.cpp
    assert tok.decode([1, hello, 3, hello, 2], skip_special_tokens=True) == "hello<think>hello"


def test_add_special_tokens_adds_bos_and_eos_only_where_the_file_asks():
    hello = BPETokenizer.from_gguf_metadata(tiny_metadata()).token_to_id("hello")
    tok = BPETokenizer.from_gguf_metadata(tiny_metadata(add_bos_token=True, add_eos_token=True))
    assert tok.encode("hello") == [hello]
    assert tok.encode("hello", add_special_tokens=True) == [1, hello, 2]
    assert BPETokenizer.from_gguf_metadata(tiny_metadata(add_bos_token=True)).encode_batch(["hello"], add_special_tokens=True) == [[1, hello]]


def test_tokenizer_json_round_trip(tmp_path):
    tok = BPETokenizer.from_gguf_metadata(tiny_metadata())
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = BPETokenizer.from_file(tmp_path / "tokenizer.json")
    text = "<|im_start|>hello  12 he<think>"
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size
    assert (again.bos_id, again.eos_id, again.pad_id, again.chat_template) == (None, None, None, None)  # no tokenizer_config.json


def test_left_padding_pads_with_pad_id_and_masks_it():
    tok = BPETokenizer.from_gguf_metadata(tiny_metadata(padding_token_id=3))
    texts = ["hello", "a", "hello  12 hello"]
    encoded = [tok.encode(t) for t in texts]
    T = max(map(len, encoded))
    for side in ("left", "right"):
        batch = tok(texts, padding_side=side)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, T)
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        for row, ids in enumerate(encoded):
            pad = [3] * (T - len(ids))
            assert batch["input_ids"][row].tolist() == (pad + ids if side == "left" else ids + pad)
            assert batch["attention_mask"][row].tolist() == ([0] * len(pad) + [1] * len(ids) if side == "left" else [1] * len(ids) + [0] * len(pad))
    assert tok("hello")["input_ids"].tolist() == [encoded[0]]


def test_padding_without_a_pad_token_is_an_error():
    metadata = tiny_metadata()
    del metadata["tokenizer.ggml.padding_token_id"]
    tok = BPETokenizer.from_gguf_metadata(metadata)
    assert tok.pad_id is None and tok(["hello"])["input_ids"].shape == (1, 1)  # one text needs no padding
    with pytest.raises(ValueError, match="no pad token"):
        tok(["hello", "a  12"])
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        tok(["hello"], padding_side="center")


def test_unsupported_pre_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre is 'llama-bpe', an unsupported pre-tokenizer; supported: gpt-2, smollm"):
        BPETokenizer.from_gguf_metadata(tiny_metadata(pre="llama-bpe"))
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre is None"):
        BPETokenizer.from_gguf_metadata({k: v for k, v in tiny_metadata().items() if k != "tokenizer.ggml.pre"})
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model is 'llama'; only byte-level BPE \('gpt2'\)"):
        BPETokenizer.from_gguf_metadata(tiny_metadata(model="llama"))
    with pytest.raises(ValueError, match="one type per distinct token"):
        BPETokenizer.from_gguf_metadata(tiny_metadata(token_type=[1, 1]))
