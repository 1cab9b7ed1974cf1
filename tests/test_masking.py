"""BERT's MLM corruption as a specification: 15% selected, of those 80% [MASK] / 10% random / 10% unchanged,
never a special token or padding, labels only at selected positions, and whole words selected together.
Statistical checks allow 5 binomial standard deviations, computed from the counts."""

import math
import random

import pytest
import torch

from minitransformers.text.masking import MaskingCollator, continuation_table, mask_tokens
from minitransformers.text.tokenizer import train_wordpiece

V, B, T = 1000, 512, 128
PAD, UNK, CLS, SEP, MASK = range(5)
SPECIAL = (PAD, UNK, CLS, SEP, MASK)


def random_batch(seed=0, vocab_size=V):
    """(B, T) ids: [CLS] content [SEP] [PAD]..., content drawn from the non-special ids, random lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (B,), generator=g)  # (B,)
    pos = torch.arange(T)[None, :]  # (1, T)
    ids = torch.randint(len(SPECIAL), vocab_size, (B, T), generator=g)
    ids[:, 0] = CLS
    ids[pos == lengths[:, None] - 1] = SEP
    ids[pos >= lengths[:, None]] = PAD
    special = torch.isin(ids, torch.tensor(SPECIAL)) | (pos >= lengths[:, None])
    return ids, special


def within_5_sigma(count: int, n: int, q: float) -> bool:
    """Is count/n within 5 standard deviations of a Binomial(n, q) proportion?"""
    return abs(count / n - q) < 5 * math.sqrt(q * (1 - q) / n)


def masked(seed=0, **kwargs):
    ids, special = random_batch(seed)
    inputs, labels = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(seed), **kwargs)
    return ids, special, inputs, labels


def test_fifteen_percent_of_eligible_tokens_are_selected():
    ids, special, inputs, labels = masked()
    selected = labels != -100
    n = int((~special).sum())
    assert n > 20_000
    assert within_5_sigma(int(selected.sum()), n, 0.15)


def test_selected_tokens_are_80_percent_mask_10_random_10_unchanged():
    ids, special, inputs, labels = masked()
    selected = labels != -100
    m = int(selected.sum())
    x, y = ids[selected], inputs[selected]  # (m,) originals and corrupted
    # The random token is uniform over all V ids, so it may land on [MASK] or on the original (1/V each).
    assert within_5_sigma(int((y == MASK).sum()), m, 0.8 + 0.1 / V)
    assert within_5_sigma(int(((y != x) & (y != MASK)).sum()), m, 0.1 * (1 - 2 / V))
    assert within_5_sigma(int((y == x).sum()), m, 0.1 + 0.1 / V)


def test_random_replacements_are_uniform_over_the_whole_vocabulary():
    small = 20  # a small vocabulary, so that each id is drawn often
    ids, special = random_batch(vocab_size=small)
    inputs, labels = mask_tokens(ids, special, small, MASK, probability=1.0, generator=torch.Generator().manual_seed(1))
    y = inputs[labels != -100]  # (m,) every eligible token is selected
    # The originals are never special, so a special id other than [MASK] appears only as a random draw.
    for token in (PAD, UNK, CLS, SEP):
        assert within_5_sigma(int((y == token).sum()), y.numel(), 0.1 / small), token


def test_special_tokens_and_padding_are_never_selected():
    ids, special, inputs, labels = masked(probability=1.0)
    assert (labels[special] == -100).all()
    assert torch.equal(inputs[special], ids[special])
    assert (labels[~special] != -100).all()  # probability 1 selects every eligible token


def test_labels_hold_the_original_at_selected_positions_and_nothing_changes_elsewhere():
    ids, special, inputs, labels = masked()
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    assert (inputs != ids).sum() > 0.8 * 0.15 * (~special).sum()


def test_input_is_not_mutated():
    ids, special = random_batch()
    ids_before, special_before = ids.clone(), special.clone()
    mask_tokens(ids, special, V, MASK, word_starts=torch.rand(B, T) < 0.5)
    assert torch.equal(ids, ids_before) and torch.equal(special, special_before)


def test_same_seed_gives_the_same_masks_and_another_seed_different_ones():
    ids, special = random_batch()

    def run(seed, use_global):
        if use_global:
            torch.manual_seed(seed)
            return mask_tokens(ids, special, V, MASK)
        return mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(seed))

    for use_global in (False, True):
        a, b, c = run(3, use_global), run(3, use_global), run(4, use_global)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[1], c[1])


def random_words(seed=0):
    """The random batch with known word boundaries: specials are one-piece words; content pieces start a
    new word with probability 0.4 (words of 2.5 pieces on average), the first content piece always."""
    ids, special = random_batch(seed)
    word_starts = (torch.rand(B, T, generator=torch.Generator().manual_seed(seed + 1)) < 0.4) | special
    word_starts[:, 1] = True
    return ids, special, word_starts


def test_whole_word_masking_selects_all_pieces_of_a_word_or_none():
    ids, special, word_starts = random_words()
    inputs, labels = mask_tokens(ids, special, V, MASK, word_starts=word_starts, generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    continuation = ~word_starts[:, 1:]  # (B, T-1): piece t+1 belongs to the word of piece t
    assert torch.equal(selected[:, 1:][continuation], selected[:, :-1][continuation])
    assert (selected[:, 1:] & continuation).sum() > 1000  # many multi-piece words were selected whole
    assert (labels[special] == -100).all()


def test_whole_word_masking_selects_fifteen_percent_of_words():
    ids, special, word_starts = random_words()
    inputs, labels = mask_tokens(ids, special, V, MASK, word_starts=word_starts, generator=torch.Generator().manual_seed(0))
    words = word_starts & ~special  # (B, T): the first piece of each content word
    assert within_5_sigma(int((labels != -100)[words].sum()), int(words.sum()), 0.15)


def test_collator_pads_to_the_longest_and_masks_only_real_tokens():
    rng = random.Random(0)
    sequences = [[CLS] + [rng.randrange(5, V) for _ in range(rng.randint(1, 40))] + [SEP] for _ in range(64)]
    collate = MaskingCollator(pad_id=PAD, mask_id=MASK, vocab_size=V, special_ids=SPECIAL)
    batch = collate(sequences)
    longest = max(len(s) for s in sequences)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(t.shape == (64, longest) and t.dtype == torch.long for t in batch.values())
    assert batch["attention_mask"].sum(1).tolist() == [len(s) for s in sequences]
    assert (batch["token_type_ids"] == 0).all()
    for row, s in enumerate(sequences):
        labels, inputs = batch["labels"][row], batch["input_ids"][row]
        assert (inputs[len(s) :] == PAD).all() and (labels[len(s) :] == -100).all()
        assert labels[0] == labels[len(s) - 1] == -100  # [CLS], [SEP]
        kept = labels[: len(s)] == -100
        assert inputs[: len(s)][kept].tolist() == torch.tensor(s)[kept].tolist()
        assert labels[: len(s)][~kept].tolist() == torch.tensor(s)[~kept].tolist()
    assert (batch["labels"] != -100).any()
    # Padding is never selected, even when special_ids leaves out [PAD] and every other token is selected.
    all_real = MaskingCollator(pad_id=PAD, mask_id=MASK, vocab_size=V, special_ids=(CLS, SEP), probability=1.0)(sequences)
    padding = all_real["attention_mask"] == 0
    assert padding.sum() > 100 and (all_real["labels"][padding] == -100).all()
    assert (all_real["labels"][~padding] != -100).sum() == sum(len(s) - 2 for s in sequences)
    with pytest.raises(ValueError, match="continuation_table"):
        MaskingCollator(pad_id=PAD, mask_id=MASK, vocab_size=V, special_ids=SPECIAL, whole_word=True)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece vocabulary too small for whole words, so that words split into "##" pieces."""
    rng = random.Random(0)
    stems, suffixes = ["play", "work", "read", "talk", "walk", "jump"], ["", "ing", "ed", "er", "s"]
    lines = [" ".join(rng.choice(stems) + rng.choice(suffixes) for _ in range(10)) for _ in range(200)]
    path = tmp_path_factory.mktemp("wordpiece") / "corpus.txt"
    path.write_text("\n".join(lines))
    return train_wordpiece([path], vocab_size=60, min_frequency=1), lines


def test_continuation_table_marks_exactly_the_hash_pieces(tokenizer):
    tok, _ = tokenizer
    table = continuation_table(tok)
    vocab = tok.tokenizer.get_vocab()
    assert table.shape == (tok.vocab_size,)
    assert [table[i].item() for i in vocab.values()] == [t.startswith("##") for t in vocab]
    assert 0 < table.sum() < tok.vocab_size


def test_word_starts_from_the_table_match_the_tokenizers_words(tokenizer):
    tok, lines = tokenizer
    encodings = tok.tokenizer.encode_batch(lines[:20])
    table = continuation_table(tok)
    for enc in encodings:
        words = enc.word_ids  # None for [CLS]/[SEP]
        expected = [w is None or t == 0 or w != words[t - 1] for t, w in enumerate(words)]
        assert (~table[torch.tensor(enc.ids)]).tolist() == expected
    assert any(len(enc.ids) > len(set(w for w in enc.word_ids if w is not None)) + 2 for enc in encodings)


def test_whole_word_collator_on_real_wordpieces_keeps_words_together(tokenizer):
    tok, lines = tokenizer
    encodings = tok.tokenizer.encode_batch(lines)
    collate = MaskingCollator.for_tokenizer(tok, whole_word=True)
    assert sorted(collate.special_ids) == [0, 1, 2, 3, 4] and collate.mask_id == tok.token_to_id("[MASK]")
    batch = collate([enc.ids for enc in encodings])
    for row, enc in enumerate(encodings):
        selected = (batch["labels"][row] != -100).tolist()
        by_word = {}
        for t, w in enumerate(enc.word_ids):
            if w is not None:
                by_word.setdefault(w, set()).add(selected[t])
        assert all(len(s) == 1 for s in by_word.values()), by_word
    selected = batch["labels"] != -100
    assert (selected & collate.continuation[batch["labels"].clamp(min=0)]).sum() > 20  # "##" pieces, with their words
