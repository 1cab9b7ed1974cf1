"""The tokenizer against `transformers.BertTokenizerFast` on MiniLM's vocabulary, and WordPiece training."""

import json
import subprocess
import sys

import pytest
import torch

from minitransformers import Tokenizer
from minitransformers.text.tokenizer import SPECIAL_TOKENS, train_wordpiece


TEXTS = ["Héllo, World! Tokenization isn't trivial.", "A man is playing a guitar.", "unaffable 1234 ###"]
PAIRS = ["Is it?", "Someone plays an instrument.", "x"]


def vocab_only_copy(minilm_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    return tmp_path


def test_matches_hf_tokenizer_on_singles_and_pairs(minilm_dir, transformers):
    ours = Tokenizer.from_pretrained(minilm_dir)
    hf = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    for pairs in (None, PAIRS):
        got = ours(TEXTS, pairs, max_length=12)
        want = hf(TEXTS, pairs, max_length=12, truncation=True, padding=True, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(got[key], want[key]), key


def test_vocab_txt_builds_the_same_tokenizer_as_tokenizer_json(minilm_dir, tmp_path):
    from_json = Tokenizer.from_pretrained(minilm_dir)
    from_vocab = Tokenizer.from_pretrained(vocab_only_copy(minilm_dir, tmp_path))
    for pairs in (None, PAIRS):
        a, b = from_json(TEXTS, pairs), from_vocab(TEXTS, pairs)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pair_token_types_mark_the_second_segment(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    batch = tok(["first part"], ["second"], padding=False)
    ids, types = batch["input_ids"][0].tolist(), batch["token_type_ids"][0].tolist()
    sep = tok.token_to_id("[SEP]")
    first_sep = ids.index(sep)
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == sep
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_padding_modes_and_truncation(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    batch = tok(TEXTS, max_length=16, padding="max_length")
    assert batch["input_ids"].shape == (3, 16)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_id).all()
    long = tok(["word " * 100], max_length=10)
    assert long["input_ids"].shape == (1, 10) and long["input_ids"][0, -1] == tok.token_to_id("[SEP]")
    with pytest.raises(ValueError, match="pass padding=True"):
        tok(TEXTS, padding=False)


def test_decode_inverts_encode_up_to_normalisation(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    ids = tok(["The capital of France is Paris."])["input_ids"][0]
    assert tok.decode(ids) == "the capital of france is paris."
    assert tok.decode(ids, skip_special_tokens=False).startswith("[CLS] the capital")


def test_save_pretrained_round_trips_and_hf_reads_it(minilm_dir, tmp_path, transformers):
    tok = Tokenizer.from_pretrained(minilm_dir)
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    a, b = tok(TEXTS, PAIRS), again(TEXTS, PAIRS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "tokenizer.json").unlink()  # make transformers read the vocab.txt we wrote
    hf = transformers.BertTokenizer.from_pretrained(tmp_path)
    assert torch.equal(a["input_ids"], hf(TEXTS, PAIRS, padding=True, return_tensors="pt")["input_ids"])


def test_train_wordpiece_learns_a_vocabulary_with_special_tokens_first(tmp_path):
    corpus = tmp_path / "corpus.txt"
    words = ["transformer", "transformers", "attention", "encoder", "encoding", "token", "tokens"]
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g).tolist()) for _ in range(300)]
    corpus.write_text("\n".join(lines))
    tok = train_wordpiece([corpus], vocab_size=120, min_frequency=2)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert 60 < tok.vocab_size <= 120
    ids = tok(["transformers encode tokens"])["input_ids"][0]
    assert tok.token_to_id("[UNK]") not in ids.tolist()
    assert tok.decode(ids) == "transformers encode tokens"


TRAIN_IN_A_PROCESS = """
import json, sys
from minitransformers.text.tokenizer import train_wordpiece
print(json.dumps(sorted(train_wordpiece([sys.argv[1]], vocab_size=150, min_frequency=2).tokenizer.get_vocab().items())))
"""


def test_train_wordpiece_gives_the_same_ids_in_every_process(tmp_path):
    # tokenizers' trainer numbers the ##c pieces in a per-process hash order (tokenizers #1794): two processes
    # trained different vocabularies before train_wordpiece fixed the order.
    g = torch.Generator().manual_seed(1)
    letters = "abcdefghijklmnopqrstuvwxyzßø"
    words = ["".join(letters[i] for i in torch.randint(0, len(letters), (int(n),), generator=g)) for n in torch.randint(2, 9, (400,), generator=g)]
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(words[i] for i in torch.randint(0, 400, (15,), generator=g)) for _ in range(200)))
    runs = [subprocess.run([sys.executable, "-c", TRAIN_IN_A_PROCESS, str(tmp_path / "corpus.txt")], capture_output=True, text=True, check=True).stdout for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    vocab = dict(json.loads(runs[0]))
    assert {"##" + c for c in letters} <= vocab.keys() and len(vocab) == 150


def test_continuation_pieces_are_plain_vocabulary_not_special_tokens(tmp_path):
    (tmp_path / "corpus.txt").write_text("playing played plays\n" * 20)
    tok = train_wordpiece([tmp_path / "corpus.txt"], vocab_size=40, min_frequency=2)
    assert [t.content for t in tok.tokenizer.get_added_tokens_decoder().values()] == SPECIAL_TOKENS
    playing = tok.tokenizer.encode("gaily", add_special_tokens=False)  # an unseen word, spelt from ## pieces
    assert len(playing.tokens) > 1 and tok.decode(playing.ids) == "gaily"  # "##" pieces survive skip_special_tokens
    assert tok.tokenizer.encode("##s", add_special_tokens=False).tokens == ["[UNK]", "[UNK]", "s"]  # not matched as an added "##s"


def test_missing_tokenizer_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="training files not found"):
        train_wordpiece([tmp_path / "nope.txt"], vocab_size=100)
