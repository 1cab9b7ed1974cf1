"""Supervised fine-tuning of SmolLM2-135M-Instruct to write clothing reviews on request: full, LoRA and QLoRA
(InstructGPT's SFT, Ouyang et al. 2022, section 3.5; recipes/sft.py), the task "Write a N-star review of a <class> item
titled <title>." -> the review (text/sft.py `review_conversation`), the loss on the review's tokens only.

    python experiments/sft_reviews.py --profile quick   # CPU smoke run: 8 train reviews packed, 2 steps per method, 8 scored (8 to 15 min on the 2-core CPU, as busy)
    python experiments/sft_reviews.py --profile full    # meant for a GPU: all 18,092 train reviews packed into 512-token rows, 1 epoch, 1,000 scored

Methods, all with packing and the same data: full (every weight, lr 2e-5, TRL's default), lora (r 16, α 32 on every
Linear of the layers, lr 2e-4, over the float base), qlora (the same LoRA over the base frozen in NF4 with double
quantization, as Dettmers et al.'s comparison of QLoRA with 16-bit LoRA: the base's storage is the only difference).

Per method: trainable parameters, validation loss and perplexity of the review tokens after SFT against the same
for the starting model (the instruct model, zero-shot), peak memory (CUDA's max allocated; on a CPU the process's
peak RSS, each run in its own process), train time; and greedy generations for three fixed requests (1, 3 and 5
stars, from the validation split) before and after. The issue's other SFT metric, agreement between the requested
rating and the sentiment of the generated review, needs the review sentiment classifier, which is not built yet.

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
from minitransformers.peft.lora import LoRAConfig
from minitransformers.peft.methods import apply_method
from minitransformers.peft.qlora import ALL_LINEAR, QLoRAConfig
from minitransformers.recipes import generate, sft
from minitransformers.text.sft import collate, review_conversation, sft_splits, tokenize_all
from minitransformers.text.datasets import load_reviews
from minitransformers.text.sources import data_dir
from minitransformers.train.tasks import SupervisedFineTuning

from common import device_name, experiment_parser, wall_time

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL_LINEAR}
METHODS = {"full": (None, 2e-5), "lora": (LoRAConfig(**LORA), 2e-4), "qlora": (QLoRAConfig(**LORA, double_quant=True), 2e-4)}
PROFILES = {  # SFTConfig fields, and the new tokens of each generation
    "quick": {"sft": {"max_train_examples": 8, "max_eval_examples": 8, "max_length": 256, "batch_size": 2, "max_steps": 2}, "new_tokens": 32},
    "full": {"sft": {"max_eval_examples": 1000, "max_length": 512, "batch_size": 8, "epochs": 1}, "new_tokens": 96},
}
KEPT = ("trainable_parameters", "validation_loss", "validation_perplexity", "validation_tokens", "steps", "train_rows", "train_seconds", "peak_memory_mb")


def requests() -> list[str]:
    """The instructions of the first validation reviews rated 1, 3 and 5 stars: the fixed prompts of the generations."""
    reviews = load_reviews("validation")
    return [review_conversation(next(r for r in reviews if r.rating == stars), "").messages[0]["content"] for stars in (1, 3, 5)]


def generations(model: str, prompts: list[str], new_tokens: int, device: str) -> list[str]:
    """Greedy answers (repetition penalty 1.1, which keeps a 135M model out of loops) through the chat template."""
    config = generate.GenerateConfig(model=model, prompts=prompts, chat=True, temperature=0, repetition_penalty=1.1, max_new_tokens=new_tokens, device=device)
    return [result["text"] for result in generate.run(config)]


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
    prompts = requests()
    before = {"float": starting_loss(base, profile, args.device, args.precision, "full")}
    if "qlora" in args.methods:
        before["nf4"] = starting_loss(base, profile, args.device, args.precision, "qlora")
    configs = [sft.SFTConfig(model=base, data="reviews", out=str(root / method), method=method, method_options=METHODS[method][0], lr=METHODS[method][1],
                             packing=True, device=args.device, precision=args.precision, **profile["sft"])
               for method in args.methods]  # fmt: skip
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:  # each run's peak memory its own
        metrics = list(pool.map(sft.run, configs))
    rows = [{"method": c.method, "lr": c.lr, "before": before["nf4" if c.method == "qlora" else "float"], **{k: m[k] for k in KEPT}} for c, m in zip(configs, metrics)]
    samples = {"before": generations(base, prompts, profile["new_tokens"], args.device)}
    samples.update({c.method: generations(c.out, prompts, profile["new_tokens"], args.device) for c in configs})
    report = {"profile": args.profile, "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)", "sft": profile["sft"], "lora": {**LORA, "targets": list(ALL_LINEAR)},
              "before": before, "rows": rows, "prompts": prompts, "generations": samples, "device_name": device_name(args.device), "precision": args.precision,
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
        "| method | lr | trainable params | validation loss (before → after) | perplexity (before → after) | steps | packed rows | peak memory MB | train s |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {row['method']} | {row['lr']:g} | {row['trainable_parameters']:,} | {row['before']['loss']:.4f} → {row['validation_loss']:.4f} | "
          f"{row['before']['perplexity']:.2f} → {row['validation_perplexity']:.2f} | {row['steps']} | {row['train_rows']:,} | {row['peak_memory_mb']:.0f} | {row['train_seconds']:.0f} |"
          for row in r["rows"]],
        "",
        "Before: the starting model, zero-shot; for QLoRA its NF4 base, the GGUF's Q4_1 weights (dequantized) quantized again to NF4, "
        + (f"whose loss is {r['before']['nf4']['loss'] - r['before']['float']['loss']:+.4f} from the float model's before any step." if "nf4" in r["before"] else "not run here."),
        "",
        "Rating agreement (the requested rating against the sentiment of the generated review) is not measured yet: it needs the review "
        "sentiment classifier of issue 22.",
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
