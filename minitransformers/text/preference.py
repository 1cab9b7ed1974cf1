"""Preference pairs for DPO (train/dpo.py): read from JSONL, tokenized as TRL 1.16's DPOTrainer tokenizes them,
and collated into one batch of chosen rows then rejected rows.

A line of the file is one pair, in either of TRL's two formats (explicit prompt):

    {"prompt": "The movie was", "chosen": " wonderful.", "rejected": " dull."}                     plain strings
    {"prompt": [{"role": "user", "content": "Review it"}],                                        conversations
     "chosen": [{"role": "assistant", "content": "Loved it."}], "rejected": [{"role": "assistant", "content": "Meh."}]}

Tokenization, as TRL's `DPOTrainer._prepare_dataset`:
- plain strings: EOS is appended to each completion that does not end with it; then `prompt` and `prompt + chosen`
  (and `prompt + rejected`) are tokenized whole, with the tokenizer's special tokens (SmolLM2 adds none);
- conversations: the prompt is rendered by the chat template with the assistant turn opened (the generation
  prompt), and `prompt + chosen` without it, so the completion is the answer and its end of turn, `<|im_end|>\\n`
  in ChatML (the newline after the end-of-turn token is trained on too, as in TRL);
- the completion starts where the prompt's ids and the prompt+completion's ids part (TRL's common prefix), so a
  token that merges across the boundary goes to the completion;
- truncation (TRL's "keep_start"): each prompt + completion keeps its first `max_length` tokens.

Bad pairs: a line that is not a pair (not JSON, a key missing, a mix of strings and conversations), an empty prompt
or completion, or a chosen completion equal to the rejected one raises an InputError naming the file and line,
before any training. Two kinds of pairs are skipped, and counted (`Skipped`), since only `max_length` makes them
useless: a prompt of `max_length` tokens or more (no completion token would be left), and a pair whose completions
become equal once truncated (its loss would be log 2 with a zero gradient whatever the model).
Where we differ from TRL: TRL drops the long prompts without a count and trains on pairs truncated to equal
completions; it also accepts "implicit prompt" data (chosen and rejected full conversations, the prompt their
common start), which we refuse, naming the fix; and it warns, once, when the prompt is not a prefix of
prompt+completion, which we do not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError
from .bpe import BPETokenizer
from .chat import ChatTemplate

KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One tokenized pair: prompt + chosen and prompt + rejected are the two sequences the model scores."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    reference_logps: tuple[float, float] | None = None  # log π_ref of chosen and rejected, when precomputed

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class Skipped:
    """Pairs left out, and why (the module docstring says when)."""

    long_prompt: int = 0
    equal_after_truncation: int = 0
    places: list[str] = field(default_factory=list)  # file:line of each


def is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def check_pair(example, where: str) -> None:
    """Refuse what is not a usable pair, naming `where` (file:line) and the fix."""
    if not isinstance(example, dict) or any(k not in example for k in KEYS):
        found = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise InputError(f"{where}: expected an object with {', '.join(KEYS)} (TRL's explicit-prompt format), found {found}; "
                         "for chosen/rejected conversations that repeat the prompt, move the shared turns into 'prompt'")  # fmt: skip
    kinds = {k: "string" if isinstance(example[k], str) else "conversation" if is_conversation(example[k]) else type(example[k]).__name__ for k in KEYS}
    if len(set(kinds.values())) != 1 or kinds["prompt"] not in ("string", "conversation"):
        raise InputError(f"{where}: prompt, chosen and rejected must all be strings or all conversations (lists of {{role, content}}), found {kinds}")
    for key in KEYS:
        value = example[key]
        if not value or (is_conversation(value) and not any(m.get("content") for m in value)):
            raise InputError(f"{where}: {key} is empty; every pair needs a prompt and two non-empty completions")
    if example["chosen"] == example["rejected"]:
        raise InputError(f"{where}: chosen equals rejected ({str(example['chosen'])[:60]!r}); such a pair has no preference "
                         "to learn (its loss is log 2 whatever the model): drop it or fix the data")  # fmt: skip


def read_pairs(path: str | Path) -> list[tuple[str, dict]]:
    """Every pair of a JSONL file, checked, with its place "file:line" (blank lines skipped)."""
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{where}: not a JSON line ({err.msg}); each line should be one {{prompt, chosen, rejected}} object") from None
            check_pair(example, where)
            pairs.append((where, example))
    if not pairs:
        raise InputError(f"{path}: no preference pairs; expected JSON lines with {', '.join(KEYS)}")
    return pairs


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_pair(example: dict, tokenizer: BPETokenizer, template: ChatTemplate | None) -> PreferencePair:
    """prompt, chosen, rejected -> ids, as TRL's DPOTrainer tokenizes them (the module docstring), not truncated."""
    prompt, chosen, rejected = (example[k] for k in KEYS)
    if isinstance(prompt, str):
        if tokenizer.eos_id is None:
            raise InputError("plain-string pairs end each completion with EOS (as TRL), but this tokenizer has none; set tokenizer.eos_id")
        eos = tokenizer.tokenizer.id_to_token(tokenizer.eos_id)
        chosen, rejected = (c if c.endswith(eos) else c + eos for c in (chosen, rejected))
        prompt_ids, *full = (tokenizer.encode(text, add_special_tokens=True) for text in (prompt, prompt + chosen, prompt + rejected))
    else:
        if template is None:
            raise InputError("these pairs are conversations, but no chat template was given to render them")
        prompt_ids = tokenizer.encode(template.render(prompt, add_generation_prompt=True))
        full = [tokenizer.encode(template.render(prompt + completion)) for completion in (chosen, rejected)]
    n = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return PreferencePair(prompt_ids[:n], full[0][n:], full[1][n:])


def truncate(pair: PreferencePair, max_length: int) -> PreferencePair:
    """Keep the first max_length tokens of prompt + chosen and of prompt + rejected (TRL's keep_start)."""
    room = max_length - len(pair.prompt_ids)
    return PreferencePair(pair.prompt_ids, pair.chosen_ids[:room], pair.rejected_ids[:room], pair.reference_logps)


def load_pairs(path: str | Path, tokenizer: BPETokenizer, template: ChatTemplate | None, max_length: int) -> tuple[list[PreferencePair], Skipped]:
    """Read, check, tokenize and truncate the pairs of a JSONL file -> the pairs kept, and what was skipped."""
    kept, skipped = [], Skipped()
    for where, example in read_pairs(path):
        try:
            pair = tokenize_pair(example, tokenizer, template)
        except InputError as err:  # a message the template refuses
            raise InputError(f"{where}: {err}") from None
        if len(pair.prompt_ids) >= max_length:
            skipped.long_prompt += 1
        elif (pair := truncate(pair, max_length)).chosen_ids == pair.rejected_ids:
            skipped.equal_after_truncation += 1
        else:
            kept.append(pair)
            continue
        skipped.places.append(where)
    if not kept:
        raise InputError(f"{path}: every pair was skipped ({skipped.long_prompt} prompts of {max_length} tokens or more, "
                         f"{skipped.equal_after_truncation} equal once truncated); raise --max-length")  # fmt: skip
    return kept, skipped


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> input_ids, attention_mask, completion_mask (2B, T), right-padded: rows 0 … B−1 are prompt + chosen,
    rows B … 2B−1 prompt + rejected (TRL's DataCollatorForPreference); and reference_logps (2B,) when precomputed."""
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    T = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), T, dtype=torch.long)
    for row, (prompt, completion) in enumerate(rows):
        n, m = len(prompt), len(completion)
        input_ids[row, : n + m] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, : n + m] = 1
        completion_mask[row, n : n + m] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    if any(p.reference_logps is not None for p in pairs):
        if any(p.reference_logps is None for p in pairs):
            raise InputError("some pairs of this batch have precomputed reference log-probs and some do not; precompute them for every pair")
        batch["reference_logps"] = torch.tensor([p.reference_logps[0] for p in pairs] + [p.reference_logps[1] for p in pairs])  # (2B,)
    return batch
