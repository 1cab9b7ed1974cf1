"""Batching: tokenized examples, dynamic padding, and a seeded, resumable length-bucketing batch sampler.

Dynamic padding pads each batch to its own longest sequence, not to a global max_length. Length bucketing
(as in fairseq and HF's `group_by_length`) makes the sequences inside a batch similar in length, so little
of the batch is padding:

    shuffle all indices (seed + epoch) -> cut into pools of `pool` batches -> sort each pool by length
    -> cut each pool into batches -> shuffle the order of the batches (same generator)

The sampler yields *global* batches: the examples of one optimizer micro-step across all processes. With
several processes, each takes the slice `batch[rank::world_size]`, so the set of examples in a step, and the
loss, are the same for any number of processes (this is the job of torch's DistributedSampler, done per
batch so that bucketing and sharding compose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import InputError
from .datasets import Example
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    label: int


def encode_examples(tokenizer: Tokenizer, examples: Sequence[Example], max_length: int) -> list[Encoded]:
    """Tokenize once, up front; batches are padded later, per batch."""
    encoded = tokenizer.encode([e.text for e in examples], max_length=max_length)
    return [Encoded(ids, types, e.label) for (ids, types), e in zip(encoded, examples)]


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest item -> input_ids, attention_mask, token_type_ids (B, T) and labels (B,)."""
    T = max(len(item.input_ids) for item in items)
    batch = {
        "input_ids": torch.full((len(items), T), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(items), T, dtype=torch.long),
        "token_type_ids": torch.zeros(len(items), T, dtype=torch.long),
        "labels": torch.tensor([item.label for item in items], dtype=torch.long),
    }
    for row, item in enumerate(items):
        n = len(item.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(item.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["token_type_ids"][row, :n] = torch.tensor(item.token_type_ids)
    return batch


def pack_sequences(token_lists: Iterable[list[int]], length: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """Concatenate the documents' tokens into one stream and cut it into `length`-token sequences
    [CLS] + length − 2 tokens + [SEP], dropping the short tail (as HF's run_mlm `group_texts` does). Every
    position then carries text, so pretraining spends no compute on padding."""
    stream = [token for ids in token_lists for token in ids]
    body = length - 2
    return [[cls_id, *stream[i : i + body], sep_id] for i in range(0, len(stream) - body + 1, body)]


class BatchSampler:
    """Global batches of indices for one epoch, a pure function of (seed, epoch): resuming needs only the
    epoch and the number of batches already taken."""

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, bucket: bool = True, seed: int = 0, pool: int = 50):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths, self.batch_size = list(lengths), batch_size
        self.shuffle, self.bucket, self.seed, self.pool = shuffle, bucket, seed, pool

    def batches(self, epoch: int) -> list[list[int]]:
        n, B = len(self.lengths), self.batch_size
        if not self.shuffle:
            return [list(range(i, min(i + B, n))) for i in range(0, n, B)]
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
        if self.bucket:
            pools = [order[i : i + B * self.pool] for i in range(0, n, B * self.pool)]
            order = [i for pool in pools for i in sorted(pool, key=lambda i: self.lengths[i])]
        batches = [order[i : i + B] for i in range(0, n, B)]
        if self.bucket:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)
