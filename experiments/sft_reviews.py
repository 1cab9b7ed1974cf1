"""Supervised fine-tuning of SmolLM2-135M-Instruct to write clothing reviews on request: full, LoRA and QLoRA
(InstructGPT's SFT, Ouyang et al. 2022, section 3.5; recipes/sft.py), the task "Write a N-star review of a <class> item
titled <title>." -> the review (text/sft.py `review_conversation`), the loss on the review's tokens only.

    python experiments/sft_reviews.py --profile quick   # CPU smoke run: 8 train reviews packed, 2 steps per method, 8 scored: about 2.5 min on the quiet 2-core CPU (the quick review classifier's 50 s included, the first time)
    python experiments/sft_reviews.py --profile full    # meant for a GPU: all 18,092 train reviews packed into 512-token rows, 1 epoch, 1,000 scored

Methods, all with packing and the same data: full (every weight, lr 2e-5, TRL's default), lora (r 16, α 32 on every
Linear of the layers, lr 2e-4, over the float base), qlora (the same LoRA over the base frozen in NF4 with double
quantization, as Dettmers et al.'s comparison of QLoRA with 16-bit LoRA: the base's storage is the only difference).

Per method: trainable parameters, validation loss and perplexity of the review tokens after SFT against the same
for the starting model (the instruct model, zero-shot), peak memory (CUDA's max allocated; on a CPU the process's
peak RSS, each run in its own process), train time; rating agreement: for validation requests of 1-2 stars and of
4-5 stars (as many of each), the share of generated reviews whose sentiment, by the review classifier of
review_reward.py (P(positive) > 0.5), matches the requested side, before SFT (the instruct model prompted zero-shot)
and after; and the generations for three fixed requests (1, 3 and 5 stars). Generation is greedy with a repetition
penalty of 1.1 (deterministic; it keeps a 135M model out of loops), batched with left padding.

Writes runs/sft_reviews_<profile>/ (the run folders) and experiments/results/sft_reviews.{json,md} (one entry per
profile); the last line printed is JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import generate as generate_ids
from minitransformers.peft.lora import LoRAConfig
from minitransformers.peft.methods import apply_method
from minitransformers.peft.qlora import ALL_LINEAR, QLoRAConfig
from minitransformers.recipes import generate, sft
from minitransformers.text.sft import collate, review_conversation, sft_splits, tokenize_all
from minitransformers.text.datasets import load_reviews
from minitransformers.text.sources import data_dir
from minitransformers.train.tasks import SupervisedFineTuning

from common import device_name, experiment_parser, wall_time
from review_reward import ReviewSentiment

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL_LINEAR}
METHODS = {"full": (None, 2e-5), "lora": (LoRAConfig(**LORA), 2e-4), "qlora": (QLoRAConfig(**LORA, double_quant=True), 2e-4)}
PROFILES = {  # SFTConfig fields, the new tokens of each generation, requests per side (negative, positive) for the agreement
    "quick": {"sft": {"max_train_examples": 8, "max_eval_examples": 8, "max_length": 256, "batch_size": 2, "max_steps": 2}, "new_tokens": 32, "requests": 3},
    "full": {"sft": {"max_eval_examples": 1000, "max_length": 512, "batch_size": 8, "epochs": 1}, "new_tokens": 96, "requests": 100},
}
KEPT = ("trainable_parameters", "validation_loss", "validation_perplexity", "validation_tokens", "steps", "train_rows", "train_seconds", "peak_memory_mb")


def requests(per_side: int) -> tuple[list[str], list[int]]:
    """The instructions of the first validation reviews rated 1, 3 and 5 stars (the shown samples), then of the first
    PER_SIDE rated 1-2 and the first PER_SIDE rated 4-5 (the agreement's), and the requested ratings."""
    reviews = load_reviews("validation")
    shown = [next(r for r in reviews if r.rating == stars) for stars in (1, 3, 5)]
    scored = [r for r in reviews if r.rating <= 2][:per_side] + [r for r in reviews if r.rating >= 4][:per_side]
    return [review_conversation(r, "").messages[0]["content"] for r in shown + scored], [r.rating for r in shown + scored]


@torch.no_grad()
def generations(model: str, prompts: list[str], new_tokens: int, device: str, batch_size: int = 16) -> list[str]:
    """Each prompt as a user message through the chat template, answered greedily (repetition penalty 1.1), in
    left-padded batches; each answer up to its first stop token."""
    lm, tokenizer = generate.load_language_model(model, device)
    template = generate.chat_template(tokenizer)
    options = generate.generation_config(generate.GenerateConfig(model=model, temperature=0, repetition_penalty=1.1, max_new_tokens=new_tokens), tokenizer, template)
    texts = []
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer([template.render([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts[i : i + batch_size]])  # left-padded
        tokens = generate_ids(lm, batch["input_ids"].to(device), batch["attention_mask"].to(device), options)  # (B, N)
        for row in tokens.tolist():
            stop = next((k for k, t in enumerate(row) if t in options.stop_ids), len(row))
            texts.append(tokenizer.decode(row[:stop]))
    return texts


def agreement(texts: list[str], ratings: list[int], reward) -> float:
    """The share of reviews whose classified sentiment (P(positive) > 0.5) is the requested one (4-5 stars positive)."""
    positive = reward.positive_probability(texts)
    return sum((p > 0.5) == (stars >= 4) for p, stars in zip(positive, ratings)) / len(texts)


@torch.no_grad()
def starting_loss(model: str, profile: dict, device: str, precision: str, method: str) -> dict:
    """The starting model's validation loss and perplexity on the review tokens, scored as SFT scores them: the float
    model, or for QLoRA its NF4 base (LoRA's B = 0 adds nothing yet), which is the loaded weights quantized again."""
    tokenizer = generate.load_tokenizer(model)
    examples, _ = tokenize_all(tokenizer, generate.chat_template(tokenizer), sft_splits("reviews", 1, profile["sft"]["max_eval_examples"])["validation"], profile["sft"]["max_length"])
    lm = CausalLM.from_pretrained(model)
    if method == "qlora":
        apply_method(lm, method, METHODS[method][0])
    lm = lm.to(device).eval()
    size = profile["sft"]["batch_size"]
    batches = ({k: v.to(device) for k, v in collate([[e] for e in examples[i : i + size]], tokenizer.eos_id).items()} for i in range(0, len(examples), size))
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
        return SupervisedFineTuning().evaluate(lm, batches)


def main() -> None:
    start = time.perf_counter()
    parser = experiment_parser(__doc__, PROFILES, workers=1)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    profile, root, base = PROFILES[args.profile], Path("runs") / f"sft_reviews_{args.profile}", str(data_dir("smollm2"))
    prompts, ratings = requests(profile["requests"])
    before = {"float": starting_loss(base, profile, args.device, args.precision, "full")}
    if "qlora" in args.methods:
        before["nf4"] = starting_loss(base, profile, args.device, args.precision, "qlora")
    configs = [sft.SFTConfig(model=base, data="reviews", out=str(root / method), method=method, method_options=METHODS[method][0], lr=METHODS[method][1],
                             packing=True, device=args.device, precision=args.precision, **profile["sft"])
               for method in args.methods]  # fmt: skip
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:  # each run's peak memory its own
        metrics = list(pool.map(sft.run, configs))
    texts = {"before": generations(base, prompts, profile["new_tokens"], args.device)}
    texts.update({c.method: generations(c.out, prompts, profile["new_tokens"], args.device) for c in configs})
    reward = ReviewSentiment.train_or_load(args.profile, args.device, args.precision)
    agree = {name: agreement(t[3:], ratings[3:], reward) for name, t in texts.items()}  # the first three are the shown samples
    rows = [{"method": c.method, "lr": c.lr, "before": before["nf4" if c.method == "qlora" else "float"], **{k: m[k] for k in KEPT},
             "agreement_before": agree["before"], "agreement": agree[c.method]} for c, m in zip(configs, metrics)]  # fmt: skip
    classifier = {k: reward.metrics[k] for k in ("train_examples", "test_accuracy", "test_macro_f1")}
    samples = {name: t[:3] for name, t in texts.items()}
    report = {"profile": args.profile, "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)", "sft": profile["sft"], "lora": {**LORA, "targets": list(ALL_LINEAR)},
              "before": before, "rows": rows, "prompts": prompts[:3], "generations": samples, "classifier": classifier, "requests_per_side": profile["requests"], "device_name": device_name(args.device), "precision": args.precision,
              "torch": torch.__version__, "wall_seconds": time.perf_counter() - start}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "sft_reviews.json"
    reports = json.loads(path.read_text()) if path.exists() else {}
    reports[args.profile] = report
    path.write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "sft_reviews.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(f"wrote {RESULTS / 'sft_reviews.md'}")
    print(json.dumps(rows))


def render(r: dict) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["sft"].items())
    lines = [
        f"# SFT on clothing reviews, {r['profile']} profile: {r['model']}",
        "",
        f"Command: `python experiments/sft_reviews.py --profile {r['profile']}`; device {r['device_name']}, torch {r['torch']}, precision {r['precision']}; "
        f"wall time {wall_time(r['wall_seconds'])}.",
        f"Every method: `sft --data reviews --packing {flags}`; LoRA and QLoRA: r = {r['lora']['r']}, α = {r['lora']['alpha']} on every Linear of the layers "
        "(query key value out gate up down); QLoRA's base in NF4 with double quantization. Validation loss: mean cross-entropy per review token "
        f"(the review and its end of turn), on the first {r['sft']['max_eval_examples']:,} validation reviews.",
        "",
        "| method | lr | trainable params | validation loss (before → after) | perplexity (before → after) | rating agreement (before → after) | steps | packed rows | peak memory MB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {row['method']} | {row['lr']:g} | {row['trainable_parameters']:,} | {row['before']['loss']:.4f} → {row['validation_loss']:.4f} | "
          f"{row['before']['perplexity']:.2f} → {row['validation_perplexity']:.2f} | {row['agreement_before']:.2f} → {row['agreement']:.2f} | {row['steps']} | {row['train_rows']:,} | {row['peak_memory_mb']:.0f} | {row['train_seconds']:.0f} |"
          for row in r["rows"]],
        "",
        "Before: the starting model, zero-shot; for QLoRA its NF4 base, the GGUF's Q4_1 weights (dequantized) quantized again to NF4, "
        + (f"whose loss is {r['before']['nf4']['loss'] - r['before']['float']['loss']:+.4f} from the float model's before any step." if "nf4" in r["before"] else "not run here."),
        "",
        f"Rating agreement: the share of {2 * r['requests_per_side']} generated reviews ({r['requests_per_side']} requests of 1-2 stars, "
        f"{r['requests_per_side']} of 4-5, the first of the validation split) whose sentiment by the review classifier (review_reward.py: "
        f"{r['classifier']['train_examples']:,} train reviews, test accuracy {r['classifier']['test_accuracy']:.3f}, macro-F1 "
        f"{r['classifier']['test_macro_f1']:.3f}) is the requested side; 0.5 is chance, and a classifier that calls everything positive gives 0.5.",
        "",
    ]  # fmt: skip
    if r["profile"] == "quick":
        lines += ["The quick profile is a smoke run of two steps per method: the losses move little, and on a shared CPU the train seconds and the "
                  "process's peak RSS say more about the machine than about the method. The full profile compares them.", ""]  # fmt: skip
    lines += ["Greedy generations (repetition penalty 1.1):", ""]
    for i, prompt in enumerate(r["prompts"]):
        lines += [f"**{prompt}**", ""]
        lines += [f"- {name}: {json.dumps(texts[i], ensure_ascii=False)}" for name, texts in r["generations"].items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
