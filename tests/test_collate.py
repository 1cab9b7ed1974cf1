"""Dynamic padding and the length-bucketing batch sampler."""

import random

import pytest

from minitransformers.text.collate import BatchSampler, Encoded, collate, pack_sequences


def random_lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 120) for _ in range(n)]


def test_collate_pads_to_the_longest_item_and_keeps_labels():
    items = [Encoded([5, 6, 7], [0, 0, 0], 1), Encoded([8, 9, 10, 11, 12], [0, 0, 1, 1, 1], 0)]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]


@pytest.mark.parametrize("bucket", [True, False])
def test_each_epoch_covers_every_example_exactly_once(bucket):
    sampler = BatchSampler(random_lengths(), batch_size=32, bucket=bucket, seed=1)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == len(sampler) == 32 and all(len(b) == 32 for b in batches[:-1] if not bucket)


def test_order_is_a_function_of_seed_and_epoch():
    a, b = BatchSampler(random_lengths(), 16, seed=7), BatchSampler(random_lengths(), 16, seed=7)
    assert a.batches(2) == b.batches(2)
    assert a.batches(2) != a.batches(3)
    assert a.batches(2) != BatchSampler(random_lengths(), 16, seed=8).batches(2)


def test_bucketing_cuts_padding_at_least_in_half():
    lengths = random_lengths()

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = padding(BatchSampler(lengths, 32, bucket=False).batches(0))
    bucketed = padding(BatchSampler(lengths, 32, bucket=True).batches(0))
    assert bucketed < 0.5 * plain


def test_unshuffled_batches_are_in_order():
    assert BatchSampler([1] * 5, 2, shuffle=False).batches(0) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        BatchSampler([1], 0)


def test_pack_sequences_cuts_the_stream_into_full_sequences():
    docs = [list(range(10, 10 + n)) for n in (3, 7, 1, 9)]  # 20 tokens
    packed = pack_sequences(docs, length=8, cls_id=1, sep_id=2)
    assert [len(s) for s in packed] == [8, 8, 8]  # 3 × 6 tokens; the 2 left over are dropped
    assert all(s[0] == 1 and s[-1] == 2 for s in packed)
    assert [t for s in packed for t in s[1:-1]] == [t for d in docs for t in d][:18]
