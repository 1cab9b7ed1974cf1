"""Extractive question answering: a long context cut into overlapping windows, and the best answer spans decoded
from the start and end logits back to characters of the context.

Each window is `[CLS] question [SEP] context piece [SEP]` of at most `max_length` tokens; only the context is cut
(truncation "only_second"), and consecutive pieces share `stride` tokens, so an answer near a cut is whole in some
window. This is the windowing of transformers' question-answering pipeline (a fast tokenizer with
return_overflowing_tokens, stride and offsets), done by the same `tokenizers` library.

Decoding, per window, as transformers 4.x's pipeline did it (4.57.6, pipelines/question_answering.py; version 5
removed the pipeline):

    allowed   = context tokens ∪ {[CLS]}                        (question, [SEP] and padding get logit −10000)
    P_start   = softmax(start logits over allowed),  P_end likewise
    null      = P_start([CLS]) · P_end([CLS])                    then both set to 0
    score(i, j) = P_start(i) · P_end(j)   for i ≤ j ≤ i + max_answer_len − 1, else 0

the top 2·top_k + 10 spans of each window, both ends in the context, are mapped to whole words of the context
(token -> word -> characters). Across windows, answers with the same text (ignoring case) add their scores, the
first one's offsets kept; with `handle_impossible_answer` the empty answer competes with the smallest null score of
any window. The top_k by score are returned.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .tokenizer import Tokenizer


def windows(tokenizer: Tokenizer, question: str, context: str, max_length: int = 384, stride: int | None = None) -> list:
    """The `tokenizers` Encodings of `[CLS] question [SEP] context piece [SEP]`, one per window; `stride` context
    tokens are shared by consecutive windows (the pipeline's doc_stride: min(max_length // 2, 128) by default)."""
    if not question.strip() or not context.strip():
        raise InputError(f"question {question[:50]!r} and context {context[:50]!r}: both must hold text; a question needs a context to answer from")
    stride = min(max_length // 2, 128) if stride is None else stride
    rust = tokenizer.tokenizer
    whole = rust.encode(question, context)  # no truncation: Tokenizer keeps it off between calls
    room = max_length - (len(whole.ids) - sum(seq == 1 for seq in whole.sequence_ids))  # context tokens a window holds
    if len(whole.ids) > max_length and room <= stride:  # tokenizers would fail, or panic, on it
        raise InputError(
            f"the question takes {max_length - room} of max_length {max_length} tokens (with [CLS] and two [SEP]), leaving {room} "
            f"for the context, which must be more than the stride {stride}; shorten the question, raise max_length or lower the stride"
        )
    rust.enable_truncation(max_length, stride=stride, strategy="only_second")
    try:
        first = rust.encode(question, context)
    finally:
        rust.no_truncation()
    return [first, *first.overflowing]


def window_batch(tokenizer: Tokenizer, encodings: list) -> dict[str, torch.Tensor]:
    """The windows right-padded into input_ids, attention_mask, token_type_ids (W, T), and `allowed` (W, T): the
    tokens the softmax runs over, the context and [CLS] (the pipeline's p_mask, inverted)."""
    batch = tokenizer.pad([(e.ids, e.type_ids) for e in encodings])
    cls_id = tokenizer.token_to_id("[CLS]")
    allowed = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, e in enumerate(encodings):
        allowed[row, : len(e.ids)] = torch.tensor([seq == 1 or token == cls_id for seq, token in zip(e.sequence_ids, e.ids)])
    return {**batch, "allowed": allowed}


def span_scores(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, max_answer_len: int = 15) -> tuple[torch.Tensor, float]:
    """One window's (T,) logits -> score(i, j) (T, T), zero where j < i or j − i ≥ max_answer_len, and the null
    score P_start(0) · P_end(0) of [CLS] at position 0."""
    p_start = start_logits.float().masked_fill(~allowed, -10000.0).softmax(-1)  # (T,)
    p_end = end_logits.float().masked_fill(~allowed, -10000.0).softmax(-1)  # (T,)
    null = (p_start[0] * p_end[0]).item()
    p_start[0] = p_end[0] = 0.0
    outer = p_start[:, None] * p_end[None, :]  # (T, 1) × (1, T) -> (T, T)
    return outer.triu().tril(max_answer_len - 1), null


def decode(encodings: list, context: str, start_logits, end_logits, allowed, top_k: int = 1, max_answer_len: int = 15, handle_impossible_answer: bool = False) -> list[dict]:
    """The top_k answers {"score", "start", "end", "answer"} (character offsets into `context`) from the logits
    (W, T) of the windows `encodings`, best first. One difference from the pipeline: when a window has fewer spans of
    nonzero score than it looks at, the pipeline could also return spans of score 0 that start or end at [CLS]
    (offsets 0); here both ends are always in the context."""
    answers: list[dict] = []
    min_null = 1_000_000.0
    for w, enc in enumerate(encodings):
        scores, null = span_scores(start_logits[w], end_logits[w], allowed[w], max_answer_len)
        min_null = min(min_null, null)
        context_tokens = torch.tensor([seq == 1 for seq in enc.sequence_ids] + [False] * (scores.size(0) - len(enc.ids)))
        flat = scores.flatten()  # (T·T,)
        best = flat.topk(min(2 * top_k + 10, flat.numel())).indices
        for i, j in zip((best // scores.size(1)).tolist(), (best % scores.size(1)).tolist()):
            if not (context_tokens[i] and context_tokens[j]):
                continue
            start, end = enc.word_to_chars(enc.token_to_word(i), 1)[0], enc.word_to_chars(enc.token_to_word(j), 1)[1]  # whole words
            text = context[start:end]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same:
                same["score"] += scores[i, j].item()
            else:
                answers.append({"score": scores[i, j].item(), "start": start, "end": end, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


@torch.inference_mode()
def answer(
    model, tokenizer: Tokenizer, question: str, context: str, top_k: int = 1, max_answer_len: int = 15, handle_impossible_answer: bool = False, max_length: int = 384, stride: int | None = None
) -> list[dict]:
    """The top_k answers to `question` in `context` by a QuestionAnswering `model`, best first: a list of
    {"score", "start", "end", "answer"} (the pipeline returned a bare dict for top_k = 1)."""
    encodings = windows(tokenizer, question, context, max_length, stride)
    batch = window_batch(tokenizer, encodings)
    device = next(model.parameters()).device
    start_logits, end_logits = model(**{k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")})  # (W, T) each
    return decode(encodings, context, start_logits.cpu(), end_logits.cpu(), batch["allowed"], top_k, max_answer_len, handle_impossible_answer)
