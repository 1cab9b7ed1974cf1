"""From per-token label scores to entities in the text, as `transformers`' token-classification pipeline groups them.

`pipeline("token-classification", aggregation_strategy=...)` (transformers/pipelines/token_classification.py) takes
each token's softmax scores and its character offsets, and

    none      keeps every token, labelled by its argmax: {entity, score, index, word, start, end}
    simple    groups adjacent tokens whose labels share a type, a B- opening a new group: {entity_group, score (the
              mean of the tokens' scores), word, start, end}
    first     first makes each word one token, labelled by its first sub-word's argmax, then groups as simple
    average   ... labelled by the argmax of its sub-words' mean scores
    max       ... labelled by the sub-word whose top score is highest

then drops what is labelled O. A token is a sub-word (it continues the word before it) when the tokenizer has a
continuation prefix (WordPiece's `##`) and the token's text differs in length from the span of the input it covers
("##ing" against "ing"); without such a prefix, when the character before it is no space. [UNK] is never a sub-word,
and its `word` is the span of the input. A group's `word` is its tokens joined by the tokenizer's decoder (`##`
pieces glued on, and the decoder's clean-up of spaces before punctuation), `start` and `end` the characters it covers.

The text is truncated to the model's positions (the pipeline truncates to the tokenizer's model_max_length, which a
folder that `Tokenizer.save_pretrained` writes leaves unlimited); tests/test_ner_entities.py holds the two equal.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .tokenizer import Tokenizer

STRATEGIES = ("none", "simple", "first", "average", "max")


@torch.no_grad()
def predict_entities(model, tokenizer: Tokenizer, text: str, strategy: str = "simple", ignore_labels=("O",)) -> list[dict]:
    """The entities a token classifier (model/token_classifier.py; in eval mode, as the pipeline's) finds in TEXT,
    grouped by STRATEGY (module docstring). Each is a dict with the pipeline's keys, in its order."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown aggregation strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    tok = tokenizer.tokenizer
    tok.enable_truncation(model.encoder.config.max_position_embeddings)
    try:
        encoding = tok.encode(text)
    finally:
        tok.no_truncation()
    device = next(model.parameters()).device
    ids = torch.tensor([encoding.ids], device=device)  # (1, T)
    logits = model(ids, torch.ones_like(ids), torch.tensor([encoding.type_ids], device=device))[0].float().cpu().numpy()  # (T, K)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = shifted / shifted.sum(axis=-1, keepdims=True)  # (T, K): softmax
    tokens = token_entries(text, encoding, scores, tokenizer)
    if strategy in ("none", "simple"):
        entities = [labelled(t["scores"], model.labels) | {"index": t["index"], "word": t["word"], "start": t["start"], "end": t["end"]} for t in tokens]
    else:
        entities = [merge_word(group, strategy, model.labels, tokenizer) for group in words_of(tokens)]
    if strategy != "none":
        entities = group_entities(entities, tokenizer)
    return [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore_labels]


def token_entries(text: str, encoding, scores: np.ndarray, tokenizer: Tokenizer) -> list[dict]:
    """One entry per non-special token: its text, scores (K,), index, character span and whether it is a sub-word."""
    tok = tokenizer.tokenizer
    prefix = getattr(tok.model, "continuing_subword_prefix", None)
    unk = getattr(tok.model, "unk_token", None)
    entries = []
    for index, (token, (start, end), special) in enumerate(zip(encoding.tokens, encoding.offsets, encoding.special_tokens_mask)):
        if special:
            continue
        span = text[start:end]
        is_subword = len(token) != len(span) if prefix else start > 0 and " " not in text[start - 1 : start + 1]
        if unk is not None and token == unk:
            token, is_subword = span, False
        entries.append({"word": token, "scores": scores[index], "index": index, "start": start, "end": end, "is_subword": is_subword})
    return entries


def labelled(scores: np.ndarray, labels: list[str]) -> dict:
    best = int(scores.argmax())
    return {"entity": labels[best], "score": float(scores[best])}


def words_of(tokens: list[dict]) -> list[list[dict]]:
    """The tokens cut into words: a token that is not a sub-word starts a new one."""
    words = []
    for token in tokens:
        if words and token["is_subword"]:
            words[-1].append(token)
        else:
            words.append([token])
    return words


def merge_word(tokens: list[dict], strategy: str, labels: list[str], tokenizer: Tokenizer) -> dict:
    """One word's label and score from its sub-words, by the first, average or max strategy."""
    if strategy == "first":
        entity = labelled(tokens[0]["scores"], labels)
    elif strategy == "max":
        entity = labelled(max(tokens, key=lambda t: t["scores"].max())["scores"], labels)  # the first of equal maxima
    else:
        entity = labelled(np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0), labels)  # (K,)
    return entity | {"word": join_tokens([t["word"] for t in tokens], tokenizer), "start": tokens[0]["start"], "end": tokens[-1]["end"]}


def join_tokens(tokens: list[str], tokenizer: Tokenizer) -> str:
    """The tokens as text, by the tokenizer's decoder (`convert_tokens_to_string` in transformers)."""
    decoder = tokenizer.tokenizer.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def bio_of(label: str) -> tuple[str, str]:
    """("B" or "I", type) of a label; a label without a B- or I- prefix is its own type, continuing."""
    return (label[0], label[2:]) if label.startswith(("B-", "I-")) else ("I", label)


def group_entities(entities: list[dict], tokenizer: Tokenizer) -> list[dict]:
    """Adjacent entries of one type joined into one entity, a B- starting a new one: its score the mean of theirs."""
    groups: list[list[dict]] = []
    for entity in entities:
        bi, type_ = bio_of(entity["entity"])
        if groups and bi != "B" and type_ == bio_of(groups[-1][-1]["entity"])[1]:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [
        {
            "entity_group": group[0]["entity"].split("-", 1)[-1],
            "score": float(np.nanmean([e["score"] for e in group])),
            "word": join_tokens([e["word"] for e in group], tokenizer),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }
        for group in groups
    ]
