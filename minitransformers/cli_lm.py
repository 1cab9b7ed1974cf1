"""The decoder's commands: `generate`, `chat`, `perplexity`, `tokenize`, `sft`, `dpo` (cli.py registers them with the others)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import InputError
from .cli_args import add_run_args, add_training_args, count, device, fraction, nonnegative_float, positive_float, positive_int, probability
from .recipes import config_from, default_device

MODEL_HELP = "data/smollm2 (fetch smollm2 first), a .gguf file, or an HF LlamaForCausalLM folder"


def cmd_generate(args) -> None:
    from .recipes import generate

    prompts = args.prompts or [sys.stdin.read()]
    for prompt, result in zip(prompts, generate.run(config_from(generate.GenerateConfig, args, prompts=prompts))):
        if args.json:
            print(json.dumps(result))
        else:  # a raw prompt is shown with its continuation; a chat answer stands alone
            print(result["text"] if args.chat else prompt + result["text"])


def cmd_chat(args) -> None:
    """Read user turns (a line each) from stdin, answer each with the history so far, printing as tokens come."""
    from .recipes import generate

    config = config_from(generate.GenerateConfig, args, chat=True, prompts=[])
    model, tokenizer = generate.load_language_model(config.model, config.device, config.dtype)
    template = generate.chat_template(tokenizer, config.template)
    options = generate.generation_config(config, tokenizer, template)
    history = [{"role": "system", "content": config.system}] if config.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: type a message, /reset to forget the conversation, /exit or Ctrl-D to quit", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            history = history[:1] if config.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.strip()})
        ids = tokenizer.encode(template.render(history, add_generation_prompt=True))
        if len(ids) + config.max_new_tokens > model.config.max_position_embeddings:
            raise InputError(f"the conversation is {len(ids)} tokens; with {config.max_new_tokens} new ones it exceeds the model's positions: /reset")
        answer = []
        for text, _ in generate.stream_text(model, tokenizer, ids, options):
            print(text, end="", flush=True)
            answer.append(text)
        print()
        history.append({"role": "assistant", "content": "".join(answer)})


def cmd_perplexity(args) -> None:
    from .recipes import perplexity

    result = perplexity.run(config_from(perplexity.PerplexityConfig, args))
    print(json.dumps(result) if args.json else f"perplexity {result['perplexity']:.4f} over {result['tokens_scored']} tokens ({result['chunks']} windows of {result['context']})")


def cmd_tokenize(args) -> None:
    from .recipes.generate import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    with open(args.file, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read())
    if args.json:
        print(json.dumps(ids))
        return
    for i in ids:
        print(f"{i}\t{tokenizer.decode([i])!r}")


def lora_options(args):
    """--method lora / qlora's flags as its options dataclass (unset flags take its defaults); refused with full."""
    from .peft.methods import method_config

    given = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": tuple(args.lora_targets) if args.lora_targets else None}
    given = {name: value for name, value in given.items() if value is not None} | ({"double_quant": False} if args.no_double_quant else {})
    if args.method == "full" and given:
        raise InputError(f"--lora-* and --no-double-quant apply to --method lora / qlora, not full; drop {', '.join(given)}")
    if args.method == "lora" and "double_quant" in given:
        raise InputError("--no-double-quant applies to --method qlora only; drop it")
    return method_config(args.method, given) if args.method != "full" else None


def cmd_sft(args) -> None:
    from .recipes import sft
    from .recipes.outputs import check_new_run, data_path

    args.resume |= args.resume_anyway
    config = config_from(sft.SFTConfig, args, method_options=lora_options(args), completion_only=not args.train_on_prompt)
    check_new_run(args.out, {"--model": args.model, "--data": data_path(args.data)}, args.resume, args.overwrite)
    metrics = sft.run(config)
    if args.json and metrics:
        print(json.dumps(metrics))


def cmd_dpo(args) -> None:
    from .recipes import dpo
    from .recipes.outputs import check_new_run

    args.resume |= args.resume_anyway
    config = config_from(dpo.DPOConfig, args, method_options=lora_options(args))
    check_new_run(args.out, {"--model": args.model, "--data": args.data, "--eval-data": args.eval_data}, args.resume, args.overwrite)
    metrics = dpo.run(config)
    if args.json and metrics:
        print(json.dumps(metrics))


def add_lm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights and compute (default: float32)")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens, help=f"at most this many new tokens (default: {max_new_tokens})")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="softmax temperature; 0 = greedy (default: 0.8, as llama.cpp)")
    p.add_argument("--top-k", type=count, default=40, help="sample among the k most likely tokens; 0 = all (default: 40)")
    p.add_argument("--top-p", type=probability, default=0.95, help="nucleus sampling: the smallest set of tokens with this much probability (default: 0.95)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="divide the logits of tokens already seen by this (CTRL; default: 1.0, off)")
    p.add_argument("--seed", type=count, default=None, help="seed the sampling (default: torch's global generator)")
    p.add_argument("--system", help="a system message (default: the template's own, if it has one)")
    p.add_argument("--template", choices=("chatml", "smollm2"), help="render with this chat template instead of the model's")


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="continue a text with a causal LM", description="Generate a continuation of each PROMPT (raw text, no template, unless --chat) with a KV cache. Sampling as llama.cpp's defaults; --temperature 0 is greedy. --json prints one line per prompt: {\"text\": ..., \"token_ids\": [the new ids]}.")
    add_lm_args(p)
    add_sampling_args(p, 128)
    p.add_argument("--chat", action="store_true", help="send each prompt as a user message through the chat template")
    p.add_argument("--json", action="store_true", help='one JSON line per prompt: {"text", "token_ids"}')
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="texts to continue (default: all of stdin, as one prompt)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("chat", help="talk with an instruct model", description="An interactive chat: each line you type is a user message; the model answers with the conversation so far, rendered by its chat template (ChatML for SmolLM2), the answer printed as it is generated. /reset forgets the conversation, /exit or Ctrl-D quits. Lines piped on stdin are the turns of a scripted conversation.")
    add_lm_args(p)
    add_sampling_args(p, 256)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("perplexity", help="perplexity on a text, as llama.cpp's perplexity tool computes it", description="Tokenize the whole split as one text (no BOS), cut it into non-overlapping windows of --context tokens, and score in each window the predictions of its second half (tokens context/2 + 1 ... context - 1, 255 of 512), as llama.cpp's llama-perplexity does. Prints perplexity and tokens scored.")
    add_lm_args(p)
    p.add_argument("--data", default="wikitext2", help="'wikitext2' (fetch it first) or a UTF-8 text file (default: wikitext2)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="with wikitext2: which split (default: test)")
    p.add_argument("--context", type=positive_int, default=512, help="tokens per window (default: 512, llama.cpp's)")
    p.add_argument("--max-chunks", type=count, default=0, help="score only the first K windows (default: 0, all)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--json", action="store_true", help='print {"perplexity": ..., "tokens_scored": ...} as one JSON line')
    p.set_defaults(run=cmd_perplexity)

    p = sub.add_parser("tokenize", help="print the token ids of a file's text", description="Tokenize the whole FILE as one text, without special tokens added (control tokens written in the text, such as <|im_start|>, are matched whole). Prints one 'id<TAB>piece' line per token, or with --json one JSON list.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the ids as one JSON list")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=cmd_tokenize)

    p = sub.add_parser("sft", help="supervised fine-tuning of a causal LM on conversations", description="Supervised fine-tuning (InstructGPT's SFT, Ouyang et al. 2022) of a causal LM on conversations rendered by its chat template, the loss on the assistant's turns only (labels -100 elsewhere), as TRL's SFTTrainer with completion-only loss. Data: 'reviews' (write an N-star review of a <class> item titled <title> -> the review) or a JSONL file of {\"messages\": [...]} or {\"prompt\", \"completion\"} lines. Writes metrics.jsonl, checkpoint.pt, the best model by validation loss as an HF Llama folder with its tokenizer and chat template (LoRA and QLoRA merged into it), which generate --model and chat --model load, and metrics.json (validation loss and perplexity of the responses, trainable parameters, peak memory, time).")
    add_sft_args(p)
    p.set_defaults(run=cmd_sft)

    p = sub.add_parser("dpo", help="preference-tune a causal LM with DPO", description="Direct Preference Optimization (Rafailov et al. 2023, eq. 7) on pairs {prompt, chosen, rejected}, plain strings or conversations, tokenized as TRL's DPOTrainer does. The reference is the starting model, frozen: a copy (full), the policy with LoRA off (lora, qlora), or log-probs precomputed before training (--precompute-reference). Writes metrics.jsonl, checkpoint.pt, the best model by validation loss (an HF Llama folder, LoRA / QLoRA merged in, with its tokenizer and chat template: generate, chat, sft and dpo read it) and metrics.json with TRL's metrics on the validation pairs: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected.")
    add_dpo_args(p)
    p.set_defaults(run=cmd_dpo)


def add_sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"the model to start from: {MODEL_HELP}")
    p.add_argument("--data", required=True, help='\'reviews\' (fetch reviews first) or a JSONL file, one example a line: {"messages": [{"role", "content"}, ...]} trains on every assistant turn, {"prompt", "completion"} (strings or message lists) on the completion; a file is cut 90/10 into train and validation')
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoint, the best model and its tokenizer")
    p.add_argument("--template", choices=("chatml", "smollm2"), help="render with this chat template instead of the model's own")
    p.add_argument("--train-on-prompt", action="store_true", help="put the loss on every token (system, user and assistant turns) instead of the assistant's turns only")
    p.add_argument("--packing", action="store_true", help="pack several examples into each row of --max-length tokens (best-fit decreasing), attention kept inside each example: the same loss, no padding")
    p.add_argument("--max-length", type=positive_int, default=512, help="tokens per example (and per packed row); longer examples are skipped and counted, not truncated (default: 512)")
    p.add_argument("--max-train-examples", type=count, default=0, help="train on the first N examples only (default: 0, all)")
    p.add_argument("--max-eval-examples", type=count, default=0, help="validate on the first N examples only, for a quick try (default: 0, all)")
    add_training_args(p, epochs=1, epochs_note="; InstructGPT's SFT overfits validation loss after one", lr=2e-5, lr_note=", TRL's, for full; LoRA usually wants 1e-4 to 2e-4",
                      batch_size=8, batch_help="rows (examples, or packed rows) per micro-step over all processes; TRL's", warmup=0.03, schedule="cosine",
                      weight_decay=0.0, weight_decay_note=" (TRL's 0)", seed_help="seeds the data order and LoRA's initialisation", layer="decoder")  # fmt: skip
    add_lora_args(p, "what trains (minitransformers/peft/); the saved model has LoRA merged in")
    add_run_args(p)


def add_dpo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"the starting policy, also the reference: {MODEL_HELP}, or an sft / dpo run folder")
    p.add_argument("--data", required=True, help='preference pairs, JSONL: {"prompt", "chosen", "rejected"} per line, all strings or all conversations (lists of {"role", "content"})')
    p.add_argument("--eval-data", help="validation pairs, same format (default: every 10th pair of --data, held out)")
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoint, the best model and its tokenizer")
    p.add_argument("--beta", type=positive_float, default=0.1, help="β, the strength of the KL penalty to the reference; lower lets the policy move further (default: 0.1, the paper's and TRL's)")
    p.add_argument("--precompute-reference", action="store_true", help="compute the reference's log-probs of every pair once before training: no reference copy or second forward during training")
    p.add_argument("--template", choices=("chatml", "smollm2"), help="render conversations with this chat template instead of the model's own")
    p.add_argument("--max-length", type=positive_int, help="keep the first N tokens of prompt + completion; pairs whose prompt alone is this long are skipped, counted (default: 1024, TRL's, or the model's positions if fewer)")
    add_training_args(p, epochs=1, lr=1e-6, lr_note=", the paper's and TRL's, for full; LoRA usually wants 1e-5 to 1e-4", batch_size=8,
                      batch_help="pairs per micro-step over all processes, each pair two sequences; TRL's", warmup=0.1, schedule="linear",
                      weight_decay=0.0, weight_decay_note=" (TRL's 0)", seed_help="seeds the data order and LoRA's initialisation", layer="decoder")  # fmt: skip
    p.add_argument("--eval-batch-size", type=positive_int, default=16, help="pairs per validation (and precompute) batch (default: 16)")
    add_lora_args(p, "what trains; the reference is always the starting model")
    add_run_args(p)


def add_lora_args(p: argparse.ArgumentParser, description: str) -> None:
    """--method full | lora | qlora and LoRA's flags, which `lora_options` reads (sft and dpo)."""
    g = p.add_argument_group("method", description)
    g.add_argument("--method", default="full", choices=("full", "lora", "qlora"), help="full: every weight; lora: low-rank updates; qlora: lora over a frozen NF4 base (default: full)")
    g.add_argument("--lora-r", type=positive_int, help="lora, qlora: rank r (default: 8)")
    g.add_argument("--lora-alpha", type=positive_float, help="lora, qlora: the update is scaled by alpha / r (default: 16)")
    g.add_argument("--lora-dropout", type=fraction, help="lora, qlora: dropout on the input of the low-rank path (default: 0)")
    g.add_argument("--lora-targets", nargs="+", help="lora, qlora: adapt the linears whose names end with these (default: query value for lora; every Linear of the layers for qlora)")
    g.add_argument("--no-double-quant", action="store_true", help="qlora: keep the NF4 block absmax in float32 instead of 8 bits")
