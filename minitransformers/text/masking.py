"""BERT's masked-LM input corruption, with optional whole-word masking.

Devlin et al. 2019, section 3.1 ("Task #1: Masked LM") and appendix C.2. For each sequence:

    1. select:   s_t ~ Bernoulli(p), p = 0.15, for each eligible position t (never [CLS], [SEP], [PAD], ...)
    2. corrupt:  at selected t, draw u_t ~ Uniform(0, 1) and set
                     x'_t = [MASK]                 if u_t < 0.8
                     x'_t = r_t ~ Uniform(vocab)   if 0.8 <= u_t < 0.9
                     x'_t = x_t                    otherwise
    3. labels:   y_t = x_t where s_t = 1, else -100 (the index `cross_entropy` ignores)

The model predicts the original x_t at selected positions only. The random token r_t is uniform over the
whole vocabulary, special tokens and the original token included (as in BERT and HF's
DataCollatorForLanguageModeling), so r_t = x_t with probability 1/V.

Whole-word masking (Google's BERT WWM release; Cui et al. 2019): the Bernoulli of step 1 is drawn once per
word and spread to all of the word's WordPiece pieces, so a word's pieces ("play", "##ing") are selected
together. Each piece is still selected with probability p; step 2 stays per piece. Google's scripts pick a
fixed count of round(p * n) positions per sequence; a Bernoulli per position, as in HF, has the same mean.

Randomness comes from `generator`, or else torch's global RNG. The trainer seeds the global RNG and saves
it in its checkpoints, so a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from ..errors import InputError
from .tokenizer import SPECIAL_TOKENS, Tokenizer


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    probability: float = 0.15,
    word_starts: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt input_ids (B, T) for masked LM -> (inputs, labels), both (B, T) long; input_ids is unchanged.

    special (B, T) bool marks positions never selected: special tokens and padding.
    word_starts (B, T) bool, if given, turns on whole-word masking: True at the first piece of each word.
    """
    shape, device = input_ids.shape, input_ids.device
    selected = torch.rand(shape, generator=generator, device=device) < probability  # (B, T): per word slot
    if word_starts is not None:
        word = (word_starts.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): index of each piece's word
        selected = selected.gather(1, word)  # (B, T): each piece takes its word's draw
    selected &= ~special
    u = torch.rand(shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device)
    inputs = torch.where(selected & (u < 0.8), mask_id, input_ids)
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, inputs)
    labels = torch.where(selected, input_ids, -100)
    return inputs, labels


def continuation_table(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) bool, True for WordPiece continuation pieces ("##ing"); a word starts where ~table[input_ids]."""
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for token, i in tokenizer.tokenizer.get_vocab().items():
        table[i] = token.startswith("##")
    return table


@dataclass(frozen=True)
class MaskingCollator:
    """Token-id lists (each with its [CLS]/[SEP]) -> a padded, masked batch for MLM pretraining.

    Returns input_ids, attention_mask, token_type_ids (all zeros: one segment) and labels, all (B, T) long,
    padded to the longest sequence. Whole-word masking needs `continuation` from `continuation_table`.
    """

    pad_id: int
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    whole_word: bool = False
    continuation: torch.Tensor | None = None  # (V,) bool

    def __post_init__(self):
        if self.whole_word and self.continuation is None:
            raise InputError("whole_word=True needs continuation=continuation_table(tokenizer)")

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, probability: float = 0.15, whole_word: bool = False) -> MaskingCollator:
        """BERT's special tokens that the vocabulary has ([UNK] included, as in HF) are never selected."""
        mask_id = tokenizer.token_to_id("[MASK]")
        if mask_id is None:
            raise InputError("the tokenizer has no [MASK] token; masked-LM training needs one in the vocabulary")
        special = tuple(i for i in map(tokenizer.token_to_id, SPECIAL_TOKENS) if i is not None)
        continuation = continuation_table(tokenizer) if whole_word else None
        return cls(tokenizer.pad_id, mask_id, tokenizer.vocab_size, special, probability, whole_word, continuation)

    def __call__(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(s) for s in sequences])  # (B,)
        rows = [torch.tensor(s, dtype=torch.long) for s in sequences]
        input_ids = pad_sequence(rows, batch_first=True, padding_value=self.pad_id)  # (B, T)
        attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()  # (B, T)
        special = torch.isin(input_ids, torch.tensor(list(self.special_ids))) | (attention_mask == 0)
        word_starts = ~self.continuation[input_ids] if self.whole_word else None
        inputs, labels = mask_tokens(input_ids, special, self.vocab_size, self.mask_id, self.probability, word_starts)
        return {"input_ids": inputs, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids), "labels": labels}
