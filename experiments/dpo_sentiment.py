"""The controlled-sentiment experiment of the DPO paper, offline, on the clothing reviews: Rafailov et al. 2023, "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model", section 6.1 and Fig. 2 (left).

The paper: x is a short prefix of an IMDb review, and the policy must continue it with positive sentiment; the reward
is a sentiment classifier's; the SFT model samples completions of each training prefix, the classifier ranks them
into preference pairs, and DPO trains on the pairs at several β; each policy is a point (KL(π‖π_ref), mean reward)
on held-out prefixes. Its claim: DPO "achieves the highest expected reward for all KL values" (against PPO there;
against best-of-N sampling here, as issue 22 asks). What this script does:

- x: SmolLM2's chat template, the user asking "Write a review of a <class> item.", and the assistant's turn opened
  on the first PREFIX_WORDS words of a review (train-split reviews for training, test-split ones held out);
- π_ref = the starting policy: an SFT run folder (recipes/sft.py, `--sft`; the full profile's default is
  sft_reviews.py's full-method run); the quick profile starts from SmolLM2-135M-Instruct itself, since a smoke-sized
  SFT run would change nothing;
- r(x, y) = P(positive | prefix + completion) under the review sentiment classifier (review_reward.py);
- pairs: K completions of each training prompt sampled from π_ref at temperature 1, the best (highest r) chosen, the
  worst rejected (the paper, appendix C.1, makes all 6 pairs of its 4 samples); a prompt whose rewards tie gives none;
- DPO: recipes/dpo.py, full fine-tuning, reference log-probs precomputed, one run per β;
- on held-out prompts, M completions each sampled at temperature 1 (no top-k or top-p: samples of π itself):
  reward = mean r; KL(π‖π_ref) = E_{y~π} Σ_t [log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)], estimated by the mean over
  samples of the summed log-ratio of the sampled tokens, the stop token included (train/dpo.py completion_logps);
- the baseline: best-of-N sampling from π_ref, N = 1, 2, 4, ...: reward = the mean best r of N samples (over prompts
  and disjoint groups of N samples), KL = log N − (N − 1)/N (Gao et al. 2023, "Scaling Laws for Reward Model
  Overoptimization", section 2; an upper bound of the true KL, Beirami et al. 2024). N = 1 is π_ref itself.
The paper's curves hold several checkpoints of each run; here each β gives one point, its best validation model.

    python experiments/dpo_sentiment.py --profile quick   # CPU smoke run: 10 train prompts, 2 β of 4 DPO steps, 8 held out
    python experiments/dpo_sentiment.py --profile full    # meant for a GPU: 10,000 train prompts, 4 β, 500 held out, N ≤ 64

The quick profile is meant to take about 3 minutes on a quiet 2-core CPU machine (the report's wall time says what
it took); it checks that every step runs, and is far too small to test the paper's claim. The full profile starts
from sft_reviews.py's full-method run (`--sft` for another) and trains each β for 3 epochs at the paper's lr 1e-6,
batch 64 (appendix B; AdamW here, RMSprop there).

Writes runs/dpo_sentiment_<profile>/ (pairs.jsonl, a DPO run folder per β) and experiments/results/dpo_sentiment.
{json,md} (one entry per profile) with dpo_sentiment_<profile>.png (needs matplotlib: `make experiment` installs it).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.recipes import dpo
from minitransformers.recipes.generate import chat_template, load_language_model, stop_ids
from minitransformers.text.datasets import load_reviews
from minitransformers.train.dpo import completion_logps

from common import RESULTS, RUNS, device_name, wall_time
from review_reward import ReviewSentiment

PREFIX_WORDS = 4  # the paper's prefixes are 2-8 tokens
PROFILES = {  # prompts and samples; the DPO runs' DPOConfig fields
    "quick": {"sft": "data/smollm2", "train_prompts": 10, "samples": 4, "eval_prompts": 8, "eval_samples": 4, "best_of": 4, "new_tokens": 24,
              "rows": 64, "betas": [0.1, 0.5], "dpo": {"lr": 5e-5, "batch_size": 4, "max_steps": 4, "max_length": 128}},
    "full": {"sft": "runs/sft_reviews_full/full", "train_prompts": 10000, "samples": 4, "eval_prompts": 500, "eval_samples": 4, "best_of": 64, "new_tokens": 48,
             "rows": 256, "betas": [0.05, 0.1, 0.5, 1.0], "dpo": {"lr": 1e-6, "batch_size": 64, "epochs": 3, "max_length": 128, "eval_every": 100}},
}  # fmt: skip


def review_prompts(split: str, n: int, template) -> list[tuple[str, str]]:
    """(prefix, prompt) of the first N reviews of SPLIT with at least 2 × PREFIX_WORDS words: the prefix is their
    first PREFIX_WORDS words, the prompt the chat frame with the assistant's turn opened on it."""
    reviews = [r for r in load_reviews(split) if len(r.text.split()) >= 2 * PREFIX_WORDS][:n]
    if len(reviews) < n:
        raise ValueError(f"the {split} split has {len(reviews)} reviews of {2 * PREFIX_WORDS} words or more, fewer than the {n} prompts asked for")
    prompts = []
    for r in reviews:
        prefix = " ".join(r.text.split()[:PREFIX_WORDS])
        frame = template.render([{"role": "user", "content": f"Write a review of {f'a {r.class_name} item' if r.class_name else 'an item'}."}], add_generation_prompt=True)
        prompts.append((prefix, frame + prefix))
    return prompts


def until_stop(tokens: list[int], stops: tuple[int, ...]) -> list[int]:
    """A sampled row up to and including its first stop token (all of it when none came)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], k: int, options: GenerationConfig, rows: int) -> list[list[list[int]]]:
    """K completions of each prompt, sampled in batches of about ROWS rows (left-padded) -> [prompt][k] token ids,
    each cut after its stop token."""
    device = next(model.parameters()).device
    per_batch = max(1, rows // k)  # whole prompts a batch, so each batch's generator draws each copy differently
    samples = []
    for b in range(0, len(prompt_ids), per_batch):
        batch = [ids for ids in prompt_ids[b : b + per_batch] for _ in range(k)]
        T = max(map(len, batch))
        input_ids = torch.tensor([[options.pad_id] * (T - len(ids)) + ids for ids in batch], device=device)  # (B·k, T)
        mask = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        new = generate(model, input_ids, mask, replace(options, seed=options.seed + b)).tolist()  # (B·k, N)
        rows_cut = [until_stop(row, options.stop_ids) for row in new]
        samples += [rows_cut[i : i + k] for i in range(0, len(rows_cut), k)]
    return samples


def scoring_batch(prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows prompt + completion, right-padded, as completion_logps reads them: input_ids, attention_mask and
    completion_mask (1 on the completion's tokens), each (N, T)."""
    T = max(len(p) + len(c) for p, c in zip(prompt_ids, completions))
    input_ids = torch.full((len(completions), T), pad_id, dtype=torch.long)
    attention_mask, completion_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for row, (p, c) in enumerate(zip(prompt_ids, completions)):
        input_ids[row, : len(p) + len(c)] = torch.tensor(p + c)
        attention_mask[row, : len(p) + len(c)] = 1
        completion_mask[row, len(p) : len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


@torch.no_grad()
def sequence_logps(model, prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int, rows: int) -> torch.Tensor:
    """log π(y|x), summed over each completion's tokens -> (N,)."""
    device = next(model.parameters()).device
    parts = [completion_logps(model, {k: v.to(device) for k, v in scoring_batch(prompt_ids[i : i + rows], completions[i : i + rows], pad_id).items()}) for i in range(0, len(completions), rows)]
    return torch.cat(parts).double().cpu()


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """The mean of VALUES and its standard error (0 for a single value)."""
    values = values.double().flatten()
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else 0.0


def best_and_worst(rewards: list[float]) -> tuple[int, int] | None:
    """Indices of the highest and the lowest reward (the first of equals), or None when all are equal: no preference."""
    best, worst = max(range(len(rewards)), key=rewards.__getitem__), min(range(len(rewards)), key=rewards.__getitem__)
    return None if rewards[best] == rewards[worst] else (best, worst)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-N ‖ π_ref) = log N − (N − 1)/N: the limit over ever more distinct outcomes, and an upper bound."""
    return math.log(n) - (n - 1) / n


def best_of_n_reward(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """rewards (P, M), M samples per prompt -> the best reward of each disjoint group of N samples, (P, M // N)."""
    P, M = rewards.shape
    return rewards[:, : M // n * n].reshape(P, M // n, n).max(-1).values  # (P, M // N, N) -> (P, M // N)


def frontier_reward(kl: float, frontier: list[tuple[float, float]]) -> float:
    """The best-of-N reward at KL, linear between the (KL, reward) points (sorted by KL), held flat beyond them."""
    kls, rewards = zip(*frontier)
    if kl <= kls[0] or kl >= kls[-1]:
        return rewards[0] if kl <= kls[0] else rewards[-1]
    i = next(i for i in range(1, len(kls)) if kl <= kls[i])
    return rewards[i - 1] + (rewards[i] - rewards[i - 1]) * (kl - kls[i - 1]) / (kls[i] - kls[i - 1])


def measure(policy, reference, reward: ReviewSentiment, prompts, tokenizer, k: int, options: GenerationConfig, rows: int) -> dict:
    """K samples of each prompt from POLICY: their completions as text, the rewards of prefix + completion (P, K),
    and the KL estimate against REFERENCE (the reference against itself: 0)."""
    prompt_ids = [tokenizer.encode(p) for _, p in prompts]
    samples = sample(policy, prompt_ids, k, options, rows)
    completions = [[tokenizer.decode([t for t in s if t not in options.stop_ids]) for s in per] for per in samples]
    reviews = [prefix + c for (prefix, _), per in zip(prompts, completions) for c in per]
    rewards = torch.tensor(reward.positive_probability(reviews)).view(len(prompts), k)
    kl = torch.zeros(1)
    if policy is not reference:
        flat_prompts, flat = [ids for ids in prompt_ids for _ in range(k)], [s for per in samples for s in per]
        kl = sequence_logps(policy, flat_prompts, flat, options.pad_id, rows) - sequence_logps(reference, flat_prompts, flat, options.pad_id, rows)
    return {"rewards": rewards, "kl": mean_and_error(kl), "completions": completions}


def preference_pairs(prompts: list[str], completions: list[list[str]], rewards: list[list[float]]) -> list[dict]:
    """The best against the worst completion of each prompt, as TRL's plain-string pairs; prompts whose rewards tie
    are left out."""
    pairs = []
    for prompt, candidates, scores in zip(prompts, completions, rewards):
        if (chosen := best_and_worst(scores)) is not None:
            pairs.append({"prompt": prompt, "chosen": candidates[chosen[0]], "rejected": candidates[chosen[1]]})
    return pairs


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--sft", help="the starting policy and reference: an sft run folder (default: the profile's, PROFILES)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32", help="of the DPO training; sampling and scoring run in float32")
    args = parser.parse_args()
    profile, root = PROFILES[args.profile], RUNS / f"dpo_sentiment_{args.profile}"
    sft = args.sft or profile["sft"]
    if not Path(sft).exists():
        sys.exit(f"--sft {sft}: no such model; train it first (python experiments/sft_reviews.py --profile full --methods full) or pass --sft")

    reward = ReviewSentiment.train_or_load(args.profile, args.device, args.precision)
    reference, tokenizer = load_language_model(sft, args.device)
    template = chat_template(tokenizer)
    options = GenerationConfig(max_new_tokens=profile["new_tokens"], temperature=1.0, top_k=0, top_p=1.0, stop_ids=stop_ids(tokenizer, template), pad_id=tokenizer.eos_id, seed=0)
    train_prompts, test_prompts = review_prompts("train", profile["train_prompts"], template), review_prompts("test", profile["eval_prompts"], template)

    ranked = measure(reference, reference, reward, train_prompts, tokenizer, profile["samples"], options, profile["rows"])
    pairs = preference_pairs([p for _, p in train_prompts], ranked["completions"], ranked["rewards"].tolist())
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))

    held_out = replace(options, seed=1)  # the same seed for every policy: one that has not moved draws the reference's samples
    before = measure(reference, reference, reward, test_prompts, tokenizer, profile["best_of"], held_out, profile["rows"])
    rows = []
    for n in (2**i for i in range(int(math.log2(profile["best_of"])) + 1)):
        r, se = mean_and_error(best_of_n_reward(before["rewards"], n))
        rows.append({"method": "best-of-N", "n": n, "reward": r, "reward_se": se, "kl": best_of_n_kl(n), "kl_se": 0.0})
    frontier = [(row["kl"], row["reward"]) for row in rows]
    samples = {"reference": [prefix + c[0] for (prefix, _), c in zip(test_prompts, before["completions"])]}
    for beta in profile["betas"]:
        out = root / f"beta_{beta:g}"
        metrics = dpo.run(dpo.DPOConfig(model=sft, data=str(root / "pairs.jsonl"), out=str(out), beta=beta, precompute_reference=True, device=args.device, precision=args.precision, **profile["dpo"]))
        policy = CausalLM.from_pretrained(out).to(args.device).eval()
        after = measure(policy, reference, reward, test_prompts, tokenizer, profile["eval_samples"], held_out, profile["rows"])
        (r, r_se), (kl, kl_se) = mean_and_error(after["rewards"]), after["kl"]
        rows.append({"method": "DPO", "beta": beta, "reward": r, "reward_se": r_se, "kl": kl, "kl_se": kl_se, "best_of_n_at_kl": frontier_reward(kl, frontier),
                     "validation_accuracy": metrics["validation_rewards/accuracies"], "steps": metrics["steps"]})  # fmt: skip
        samples[f"DPO β={beta:g}"] = [prefix + c[0] for (prefix, _), c in zip(test_prompts, after["completions"])]
        del policy

    report = {"profile": args.profile, "command": shlex.join(["python", "experiments/dpo_sentiment.py", *sys.argv[1:]]), "sft": sft, "sizes": profile,
              "prefix_words": PREFIX_WORDS, "reward_model": {k: reward.metrics[k] for k in ("train_examples", "test_accuracy", "test_macro_f1")},
              "pairs": len(pairs), "train_prompts_tied": len(train_prompts) - len(pairs), "pair_reward_gap": (ranked["rewards"].max(1).values - ranked["rewards"].min(1).values).mean().item(),
              "rows": rows, "generations": {"prefixes": [p for p, _ in test_prompts[:3]], **{k: v[:3] for k, v in samples.items()}},
              "device_name": device_name(args.device), "precision": args.precision, "torch": torch.__version__, "wall_seconds": time.perf_counter() - start}  # fmt: skip
    path = RESULTS / "dpo_sentiment.json"
    reports = json.loads(path.read_text()) if path.exists() else {}
    reports[args.profile] = report
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")
    notes = {name: plot(r, RESULTS / f"dpo_sentiment_{name}.png") for name, r in sorted(reports.items())}
    (RESULTS / "dpo_sentiment.md").write_text("\n".join(render(reports[name], notes[name]) for name in sorted(reports)))
    print(f"wrote {RESULTS / 'dpo_sentiment.md'}")
    print(json.dumps(rows))


def verdict(r: dict) -> str:
    """Whether each DPO point lies above the best-of-N frontier at its KL, and what that says of the paper's claim."""
    dpo_rows = [row for row in r["rows"] if row["method"] == "DPO"]
    above = [row for row in dpo_rows if row["reward"] > row["best_of_n_at_kl"]]
    largest = max(row["kl"] for row in r["rows"] if row["method"] == "best-of-N")
    outside = [row for row in dpo_rows if row["kl"] > largest]
    said = f"{len(above)} of {len(dpo_rows)} DPO policies reach a higher reward than best-of-N at the same KL"
    if outside:
        said += f" ({len(outside)} lie beyond best-of-{r['sizes']['best_of']}'s KL of {largest:.2f}, compared there with its reward)"
    if r["profile"] == "quick":
        return (f"{said}. This is a smoke run, of {r['pairs']} pairs and {r['sizes']['eval_prompts']} held-out prompts: it checks that every step runs, and cannot "
                "test the paper's claim. In a few steps β matters little: it scales the gradient, which Adam divides out, and changes only the sigmoid's weighting of the pairs.")  # fmt: skip
    return f"{said}: the paper's claim (DPO reaches higher reward at the same KL) {'holds' if len(above) == len(dpo_rows) else 'holds in part' if above else 'does not hold'} in this run."


def render(r: dict, plot_note: str) -> str:
    s, m = r["sizes"], r["reward_model"]
    lines = [
        f"# DPO controlled sentiment (Rafailov et al. 2023, §6.1, Fig. 2 left), {r['profile']} profile",
        "",
        f"Command: `{r['command']}`; device {r['device_name']}, torch {r['torch']}, DPO precision {r['precision']}; wall time {wall_time(r['wall_seconds'])}.",
        f"Policy and reference: `{r['sft']}`. Prompts: SmolLM2's chat frame (\"Write a review of a <class> item.\") with the assistant's turn opened on "
        f"the first {r['prefix_words']} words of a review. Reward: P(positive) of the review sentiment classifier (`review_reward.py`: MiniLM on "
        f"{m['train_examples']:,} reviews, test accuracy {m['test_accuracy']:.3f}, macro-F1 {m['test_macro_f1']:.3f}).",
        f"Pairs: {s['samples']} samples (temperature 1, {s['new_tokens']} new tokens at most) of each of {s['train_prompts']:,} train prompts, best against "
        f"worst: {r['pairs']:,} pairs ({r['train_prompts_tied']} prompts tied), mean reward gap {r['pair_reward_gap']:.3f}. DPO: full fine-tuning, "
        + ", ".join(f"{k} {v}" for k, v in s["dpo"].items()) + ", reference log-probs precomputed.",
        f"Measured on {s['eval_prompts']:,} test-split prompts: {s['eval_samples']} samples each from every DPO policy (KL: the mean summed log-ratio of "
        f"the sampled tokens), {s['best_of']} from the reference for best-of-N (KL = log N − (N−1)/N). ± is the standard error over samples.",
        "",
        "| method | β or N | reward | KL(π‖π_ref), nats | best-of-N reward at that KL | DPO validation pair accuracy | steps |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in r["rows"]:
        if row["method"] == "DPO":
            lines.append(f"| DPO | β = {row['beta']:g} | {row['reward']:.3f} ± {row['reward_se']:.3f} | {row['kl']:.2f} ± {row['kl_se']:.2f} | "
                         f"{row['best_of_n_at_kl']:.3f} | {row['validation_accuracy']:.2f} | {row['steps']} |")  # fmt: skip
        else:
            lines.append(f"| best-of-N from the reference | N = {row['n']} | {row['reward']:.3f} ± {row['reward_se']:.3f} | {row['kl']:.2f} | | | |")
    lines += ["", verdict(r), "", plot_note, "", "Completions of the first held-out prompts (one sample each, temperature 1):", ""]
    generations = r["generations"]
    for i, prefix in enumerate(generations["prefixes"]):
        lines += [f"**{prefix} …**", ""] + [f"- {name}: {json.dumps(texts[i], ensure_ascii=False)}" for name, texts in generations.items() if name != "prefixes"] + [""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> str:
    """Reward against KL, best-of-N as a line and each DPO β as a point -> the report's line about the figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "No plot: matplotlib is missing (`pip install -e '.[experiments]'`, which `make experiment` does)."
    best = [row for row in r["rows"] if row["method"] == "best-of-N"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([row["kl"] for row in best], [row["reward"] for row in best], "o-", color="gray", label="best-of-N from the reference")
    for row in best:
        ax.annotate(f"N={row['n']}", (row["kl"], row["reward"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    for row in (row for row in r["rows"] if row["method"] == "DPO"):
        ax.errorbar(row["kl"], row["reward"], xerr=row["kl_se"], yerr=row["reward_se"], fmt="s", color="tab:blue")
        ax.annotate(f"β={row['beta']:g}", (row["kl"], row["reward"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="KL(π ‖ π_ref), nats", ylabel="mean reward: P(positive)", title=f"DPO vs best-of-N, {r['profile']} profile")
    ax.plot([], [], "s", color="tab:blue", label="DPO")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"Plot: `{path.name}`."


if __name__ == "__main__":
    main()
