"""Extractive QA decoding (text/qa.py) against transformers 4.57.6's question-answering pipeline: the vectors in
tests/data/qa_pipeline_vectors.json were made once by scripts/make_qa_vectors.py on the tiny model in
tests/data/qa_tiny/ (transformers 5 has no such pipeline). Needs torch and tokenizers only."""

import json
from pathlib import Path

import pytest
import torch

from minitransformers import Tokenizer
from minitransformers.errors import InputError
from minitransformers.model import QuestionAnswering
from minitransformers.text import qa

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "qa_pipeline_vectors.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def tiny():
    return QuestionAnswering.from_pretrained(DATA / "qa_tiny").eval(), Tokenizer.from_pretrained(DATA / "qa_tiny")


def ids_of(case) -> str:
    return f"{case['question'][:20]}-k{case['top_k']}-{case['max_seq_len']}"


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_windows_equal_the_fast_tokenizers_overflowing_windows(tiny, case):
    _, tok = tiny
    windows = qa.windows(tok, case["question"], case["context"], case["max_seq_len"], case["doc_stride"])
    assert [w.ids for w in windows] == case["windows"]


def test_a_long_context_splits_into_overlapping_windows_that_cover_it(tiny):
    _, tok = tiny
    case = CASES[2]
    windows = qa.windows(tok, case["question"], case["context"], case["max_seq_len"], case["doc_stride"])
    assert len(windows) > 1 and all(len(w.ids) <= case["max_seq_len"] for w in windows)
    pieces = [[off for off, seq in zip(w.offsets, w.sequence_ids) if seq == 1] for w in windows]
    assert pieces[0][0][0] == 0 and pieces[-1][-1][1] == len(case["context"].rstrip())
    for before, after in zip(pieces, pieces[1:]):
        assert before[-case["doc_stride"] :] == after[: case["doc_stride"]]  # `stride` context tokens shared


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_answers_equal_the_transformers_4_pipeline(tiny, case):
    model, tok = tiny
    args = {k: case[k] for k in ("top_k", "handle_impossible_answer")}
    answers = qa.answer(model, tok, case["question"], case["context"], max_length=case["max_seq_len"], stride=case["doc_stride"], **args)
    assert [(a["answer"], a["start"], a["end"]) for a in answers] == [(a["answer"], a["start"], a["end"]) for a in case["answers"]]
    assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(answers, case["answers"]))
    assert all(case["context"][a["start"] : a["end"]] == a["answer"] for a in answers)


def test_span_scores_are_the_outer_product_of_context_probabilities():
    torch.manual_seed(0)
    start, end = torch.randn(12), torch.randn(12)
    allowed = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)  # [CLS], question + [SEP], context, [SEP]
    scores, null = qa.span_scores(start, end, allowed, max_answer_len=3)
    p_start, p_end = start[allowed].softmax(0), end[allowed].softmax(0)  # over [CLS] and the context only
    assert null == pytest.approx((p_start[0] * p_end[0]).item(), abs=1e-7)
    ctx = allowed.nonzero().flatten()[1:]
    for a, i in enumerate(ctx.tolist()):
        for b, j in enumerate(ctx.tolist()):
            want = (p_start[a + 1] * p_end[b + 1]).item() if 0 <= j - i < 3 else 0.0
            assert scores[i, j].item() == pytest.approx(want, abs=1e-7)
    assert scores[~allowed].abs().max() == 0 and scores[:, ~allowed].abs().max() == 0 and scores[0].abs().max() == 0


def test_handle_impossible_answer_returns_the_empty_answer_when_null_wins(tiny):
    """A [CLS] with a very large start and end logit: the null score is near 1, and the empty answer comes first."""
    model, tok = tiny
    windows = qa.windows(tok, "Where is the tower?", "The tower is in Paris.", 64)
    batch = qa.window_batch(tok, windows)
    start, end = torch.zeros(batch["input_ids"].shape), torch.zeros(batch["input_ids"].shape)
    start[:, 0] = end[:, 0] = 50.0
    best = qa.decode(windows, "The tower is in Paris.", start, end, batch["allowed"], top_k=2, handle_impossible_answer=True)
    assert best[0] == {"score": pytest.approx(1.0, abs=1e-6), "start": 0, "end": 0, "answer": ""} and best[1]["answer"]
    assert qa.decode(windows, "The tower is in Paris.", start, end, batch["allowed"])[0]["answer"] != ""


@pytest.mark.parametrize("question, context", [("Where?", ""), ("", "The tower is in Paris."), ("Where?", "   ")])
def test_a_question_without_a_context_is_refused(tiny, question, context):
    with pytest.raises(InputError, match="needs a context"):
        qa.windows(tiny[1], question, context)


def test_a_question_too_long_for_the_window_is_refused(tiny):
    with pytest.raises(InputError, match="the question takes 32 of max_length 12 tokens .with .CLS. and two .SEP.., leaving -20 for the context"):
        qa.windows(tiny[1], "Who was the last keeper of the lighthouse on the northern cape?", "Margaret Duncan.", max_length=12, stride=2)


def test_a_stride_that_leaves_no_progress_is_refused(tiny):
    with pytest.raises(InputError, match="must be more than the stride 20"):
        qa.windows(tiny[1], "Who?", "The last keeper, Margaret Duncan, retired in 1989 and wrote a book about her thirty years.", max_length=24, stride=20)


def test_minilm_answers_are_slices_of_the_context_and_whole_words_within_a_window(minilm_dir):
    """A new (random) head on the real MiniLM and its tokenizer. Over several windows: answers are slices of the
    context, best first, scores in (0, 1]. In one window: each answer is whole words (it starts and ends at a word
    boundary). Across windows a word cut by a window's edge can be cut in the answer too, as in the pipeline
    (the vectors' "two years. Today the buil")."""
    context = CASES[2]["context"]
    torch.manual_seed(0)
    model, tok = QuestionAnswering.from_encoder(minilm_dir).eval(), Tokenizer.from_pretrained(minilm_dir)
    assert len(qa.windows(tok, "When was it built?", context, 64, 16)) > 1 and len(qa.windows(tok, "When was it built?", context)) == 1
    for max_length, stride in ((64, 16), (384, None)):
        answers = qa.answer(model, tok, "When was it built?", context, top_k=5, max_length=max_length, stride=stride)
        assert len(answers) == 5 and [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
        assert all(0 < a["score"] <= 1 and a["answer"] == context[a["start"] : a["end"]] for a in answers)
    for a in answers:  # the one-window answers
        assert (a["start"] == 0 or not context[a["start"] - 1].isalnum()) and (a["end"] == len(context) or not context[a["end"]].isalnum())
