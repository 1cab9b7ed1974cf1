"""Supervised fine-tuning data: conversations rendered by the chat template, tokenized, with labels on the responses.

InstructGPT (Ouyang et al. 2022, "Training language models to follow instructions with human feedback", section 3.5)
fine-tunes a pretrained model on demonstrations, prompt -> the response a person wrote, with the language-modelling
loss. Each example here is a conversation (a list of {role, content}); the chat template (chat.py) renders it, and

    text     <|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\nWrite a 2-star review …<|im_end|>\\n<|im_start|>assistant\\nToo short…<|im_end|>\\n
    labels   -100 ………………………………………………………………………………………………………………………………………………………………………  Too short…<|im_end|>\\n

labels = the token id where the model is to learn the token, −100 (ignored) elsewhere: on the assistant turns' content
and end of turn only (completion-only loss), or on every token with `completion_only=False`. The loss at position t
predicts labels[t] from the tokens before it (the shift is in train/tasks.py), so an example's first label is never
used. Tokens are assigned to a turn by their character offsets in the rendered text (one tokenization of the whole
conversation, so the ids are exactly those of inference); a token that starts before the turn is context.

TRL's conventions (`SFTTrainer`), and where we differ:
- a `messages` example trains on its assistant turns (TRL's `assistant_only_loss`, which needs a `{% generation %}`
  template; we read the turns from the renderer instead); a `prompt`/`completion` example trains on the assistant
  turns of the completion (TRL's `completion_only_loss`: everything after the prompt's generation prompt, the same
  tokens for a one-message completion, which the TRL parity test checks). A string prompt or completion is a user
  or assistant message here; TRL would train on the raw strings without the template.
- an example longer than `max_length` is skipped and counted (TRL truncates it, keeping the start, and drops an
  example left without a label); a conversation without an assistant turn to train on is an error naming its line
  (TRL trains on it with zero loss).
- packing: best-fit decreasing (TRL's default "bfd"), each example kept whole in one row, and attention kept inside
  each example (model/decoder.py: attention_mask numbers the examples, position_ids restart at 0), as TRL's
  padding-free packing does with flash attention's sequence boundaries. So a packed batch computes what the padded
  batch computes, without its padding (tests/test_sft.py).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import InputError
from .bpe import BPETokenizer
from .chat import ChatTemplate
from .datasets import Review, decoded_lines, fixed_split, load_reviews
from .sources import data_dir

IGNORE = -100  # the label of a token without loss, as torch's cross_entropy(ignore_index=-100) and transformers


@dataclass(frozen=True)
class Conversation:
    """Messages to render, the index of the first message that may be trained on, and where it was read (file:line)."""

    messages: tuple[dict, ...]
    train_from: int
    where: str


@dataclass(frozen=True)
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss


def review_conversation(review: Review, where: str) -> Conversation:
    """The reviews task: "Write a 4-star review of a Dresses item titled "Lovely"." -> the review text."""
    item = f"a {review.class_name} item" if review.class_name else "an item"
    titled = f' titled "{review.title}"' if review.title else ""
    instruction = f"Write a {review.rating}-star review of {item}{titled}."
    return Conversation(({"role": "user", "content": instruction}, {"role": "assistant", "content": review.text}), 0, where)


def as_messages(value, role: str, where: str, key: str) -> list[dict]:
    """A prompt or completion: a string is one message of `role`; a list must be messages with string role and content."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise InputError(f"{where}: {key!r} should be a string or a non-empty list of {{\"role\": ..., \"content\": ...}} messages, found {json.dumps(value)[:80]}")


def read_conversations(path: str | Path) -> list[Conversation]:
    """A JSONL file, one example a line, in either of TRL's conversational forms:
    {"messages": [{"role": "user", "content": …}, {"role": "assistant", "content": …}, …]}  trains on every assistant turn
    {"prompt": [messages] or "text", "completion": [messages] or "text"}                     trains on the completion
    Blank lines are skipped; anything else is an InputError naming the file and line."""
    conversations = []
    for number, line in enumerate(decoded_lines(path), 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: bad JSON ({err.msg} at column {err.colno}); expected one object per line") from None
        if isinstance(obj, dict) and "messages" in obj:
            conversations.append(Conversation(tuple(as_messages(obj["messages"], "user", where, "messages")), 0, where))
        elif isinstance(obj, dict) and "prompt" in obj and "completion" in obj:
            prompt = as_messages(obj["prompt"], "user", where, "prompt")
            conversations.append(Conversation(tuple(prompt + as_messages(obj["completion"], "assistant", where, "completion")), len(prompt), where))
        else:
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{where}: expected an object with 'messages', or with 'prompt' and 'completion'; found {found}")
    if not conversations:
        raise InputError(f"{path}: no examples; expected one JSON object a line with 'messages', or 'prompt' and 'completion'")
    return conversations


def sft_splits(spec: str, max_train: int = 0, max_eval: int = 0) -> dict[str, list[Conversation]]:
    """train and validation conversations for `--data SPEC`, the first MAX_TRAIN / MAX_EVAL of each (0: all):
    "reviews" (the fetched reviews' own split, `review_conversation` each), or a JSONL file (`read_conversations`)
    cut 90/10 by the fixed shuffle of datasets.fixed_split."""
    if spec == "reviews":
        folder = data_dir("reviews")
        splits = {split: [review_conversation(r, f"{folder / split}.jsonl:{i}") for i, r in enumerate(load_reviews(split), 1)] for split in ("train", "validation")}
    elif Path(spec).suffix == ".jsonl":
        splits = fixed_split(read_conversations(spec), 0.9)
    else:
        raise InputError(f"--data {spec!r}: expected 'reviews' (fetch reviews first) or a .jsonl file of conversations")
    splits = {"train": splits["train"][: max_train or None], "validation": splits["validation"][: max_eval or None]}
    if not splits["validation"]:
        raise InputError(f"--data {spec}: the validation split is empty ({len(splits['train'])} train examples); a file is cut 90/10, so give it 10 examples or more")
    return splits


def tokenize(tokenizer: BPETokenizer, template: ChatTemplate, conversation: Conversation, completion_only: bool = True) -> SFTExample:
    """Render and tokenize a conversation once; label the tokens of its assistant turns from `train_from` on
    (every token without `completion_only`). A conversation with no such turn is refused."""
    messages = conversation.messages
    trained = [i for i in range(conversation.train_from, len(messages)) if messages[i]["role"] == "assistant"]
    if not trained:
        roles = [m["role"] for m in messages]
        raise InputError(f"{conversation.where}: no assistant turn to train on (roles {roles}); SFT learns the assistant's replies, so add one or drop the example")
    text, spans = template.render_with_spans(messages)
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    ids = encoding.ids
    if not completion_only:
        return SFTExample(ids, list(ids))
    starts = [start for start, _ in encoding.offsets]  # each token's first character
    labels = [IGNORE] * len(ids)
    for a, b in (spans[i] for i in trained):
        for t in range(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)):
            labels[t] = ids[t]
    return SFTExample(ids, labels)


def tokenize_all(tokenizer: BPETokenizer, template: ChatTemplate, conversations: Iterable[Conversation], max_length: int, completion_only: bool = True) -> tuple[list[SFTExample], int]:
    """Every conversation tokenized, those longer than `max_length` tokens left out -> (examples, how many were
    left out). All left out is an error: there would be nothing to train on."""
    examples, skipped, longest = [], 0, 0
    for conversation in conversations:
        example = tokenize(tokenizer, template, conversation, completion_only)
        if len(example.input_ids) > max_length:
            skipped, longest = skipped + 1, max(longest, len(example.input_ids))
        else:
            examples.append(example)
    if not examples:
        raise InputError(f"every one of the {skipped:,} examples is longer than --max-length {max_length} tokens (the longest: {longest:,}); raise --max-length")
    return examples, skipped


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: the longest example first, each into the row with the least room left that still fits
    it, else into a new row -> rows of example indices, each row's lengths summing to at most `capacity`."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = bisect.bisect_left(room, (lengths[i], -1))  # the fullest row with room for it
        if k == len(room):
            rows.append([i])
            free, row = capacity - lengths[i], len(rows) - 1
        else:
            free, row = room.pop(k)
            rows[row].append(i)
            free -= lengths[i]
        if free > 0:
            bisect.insort(room, (free, row))
    return rows


def collate(rows: Sequence[Sequence[SFTExample]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of examples (one each, or several packed) -> right-padded tensors (B, T): input_ids; attention_mask
    numbering each row's examples 1, 2, … and 0 on padding; position_ids restarting at 0 for each example; labels
    with each example's first label IGNORE (nothing before it predicts it) and IGNORE on padding."""
    T = max(sum(len(e.input_ids) for e in row) for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), T), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), T, dtype=torch.long),
        "position_ids": torch.zeros(len(rows), T, dtype=torch.long),
        "labels": torch.full((len(rows), T), IGNORE, dtype=torch.long),
    }
    for r, row in enumerate(rows):
        start = 0
        for number, example in enumerate(row, 1):
            n = len(example.input_ids)
            cols = slice(start, start + n)
            batch["input_ids"][r, cols] = torch.tensor(example.input_ids)
            batch["attention_mask"][r, cols] = number
            batch["position_ids"][r, cols] = torch.arange(n)
            batch["labels"][r, start + 1 : start + n] = torch.tensor(example.labels[1:], dtype=torch.long)
            start += n
    return batch
