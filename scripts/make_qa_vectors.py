"""Make tests/data/qa_tiny/ and tests/data/qa_pipeline_vectors.json: the answers of transformers 4.x's
question-answering pipeline, which transformers 5 removed, for tests/test_qa.py to hold text/qa.py to.

How the committed files were made (once, by hand, outside the project's venv):

    python3 -m venv /tmp/tf457
    /tmp/tf457/bin/pip install transformers==4.57.6 torch        # got torch 2.14.1 (PyPI wheel, run on CPU), tokenizers 0.22.2
    /tmp/tf457/bin/python scripts/make_qa_vectors.py

What it does:
1. A WordPiece vocabulary from the texts below: BERT's five special tokens, every character and its `##` piece,
   and the lower-cased words of at most 6 characters (longer words split into pieces, so answers must be widened
   to whole words). Written as vocab.txt; `BertTokenizerFast` on it is saved into tests/data/qa_tiny/.
2. `BertForQuestionAnswering` of a tiny BertConfig (2 layers, hidden 32, 4 heads, FFN 64, 64 positions) with
   torch.manual_seed(0); LayerNorms, biases and qa_outputs redrawn from N(·, 0.5) so that spans have distinct scores.
   Saved (safetensors) into tests/data/qa_tiny/.
3. For each case, `pipeline("question-answering")(question=…, context=…, top_k, max_seq_len, doc_stride,
   handle_impossible_answer)` (align_to_words left True, max_answer_len 15), its answers as a list (score, start, end,
   answer), and the windows' input_ids from the tokenizer (truncation="only_second", return_overflowing_tokens).
   One context is longer than max_seq_len and splits into several windows.
Running it again reproduces every file byte for byte (checked once, on CPU).
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent / "tests" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LONG = (
    "The lighthouse on the northern cape was built in 1871 by a company of stonemasons from Aberdeen. "
    "Its lamp burned whale oil until 1902, when the keepers changed to paraffin. In the storm of 1931 the "
    "tower lost its lantern room, and the village paid for a new one within two years. Today the building is "
    "a museum; visitors climb 147 steps to the gallery, which looks over the harbour, the old fish market and "
    "the island where seals rest in summer. The last keeper, Margaret Duncan, retired in 1989 and wrote a book "
    "about her thirty years on the cape."
)
CASES = [
    {"question": "Where is the tower?", "context": "The tower is in Paris, beside the river Seine.", "top_k": 1, "max_seq_len": 64, "doc_stride": 16, "handle_impossible_answer": False},
    {"question": "Who wrote the letter?", "context": "The letter was written by Eleanor Whitfield in 1902, a friend of the family.", "top_k": 3, "max_seq_len": 64, "doc_stride": 16, "handle_impossible_answer": False},
    {"question": "When was the lighthouse built?", "context": LONG, "top_k": 3, "max_seq_len": 48, "doc_stride": 16, "handle_impossible_answer": False},
    {"question": "Who was the last keeper?", "context": LONG, "top_k": 1, "max_seq_len": 40, "doc_stride": 12, "handle_impossible_answer": True},
    {"question": "What does the museum show?", "context": "Visitors see Roman coins, Saxon jewellery and a Viking sword.", "top_k": 2, "max_seq_len": 64, "doc_stride": 16, "handle_impossible_answer": True},
    {"question": "What does the museum show?", "context": "Visitors see Roman coins, Saxon jewellery and a Viking sword.", "top_k": 8, "max_seq_len": 64, "doc_stride": 16, "handle_impossible_answer": True},
]


def vocabulary() -> list[str]:
    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for case in CASES for text in (case["question"], case["context"]) for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = sorted({c for w in words for c in w})
    return SPECIALS + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) <= 6 and len(w) > 1)


def main() -> None:
    assert transformers.__version__ == "4.57.6", f"run in a venv with transformers==4.57.6, found {transformers.__version__}"
    out = ROOT / "qa_tiny"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocabulary()), encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    tokenizer.save_pretrained(out)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias") or name.startswith("qa_outputs."):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.5)
    model.save_pretrained(out)
    qa = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device=-1)
    vectors = []
    for case in CASES:
        args = {k: case[k] for k in ("top_k", "max_seq_len", "doc_stride", "handle_impossible_answer")}
        answers = qa(question=case["question"], context=case["context"], **args)
        answers = answers if isinstance(answers, list) else [answers]
        windows = tokenizer(case["question"], case["context"], truncation="only_second", max_length=case["max_seq_len"], stride=case["doc_stride"], return_overflowing_tokens=True)["input_ids"]
        vectors.append({**case, "windows": windows, "answers": [{k: a[k] for k in ("score", "start", "end", "answer")} for a in answers]})
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "python": sys.version.split()[0], "max_answer_len": 15, "align_to_words": True}
    (ROOT / "qa_pipeline_vectors.json").write_text(json.dumps({"made_with": meta, "cases": vectors}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
