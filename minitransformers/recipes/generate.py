"""`python -m minitransformers generate | chat | tokenize`: a causal LM with its tokenizer and chat template.

    load_language_model(path)   a GGUF file (or a folder holding one) or an HF Llama folder -> model, tokenizer, template
    run(GenerateConfig)         each prompt -> its continuation: raw text, or a chat turn with `chat=True`
    stream_text(...)            the continuation as text pieces, as the tokens come (the `chat` command prints them)

The prompt is tokenized as it is (no BOS: SmolLM2's GGUF says add_bos_token = False). With `chat`, the prompt is
the user's message rendered by the model's chat template (text/chat.py) with the assistant's turn opened, and
generation stops at the template's end-of-turn token as well as at EOS. Sampling defaults are llama.cpp's
(`llama-cli`: temperature 0.8, top-k 40, top-p 0.95, no repetition penalty); temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..io.gguf import read_gguf
from ..model.causal_lm import CausalLM, gguf_file
from ..model.generate import GenerationConfig, generate_tokens
from ..text.bpe import BPETokenizer
from ..text.chat import ChatTemplate
from . import default_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerateConfig:
    """`generate`'s options: one field per flag, at the flag's default."""

    model: str  # a GGUF file, a folder holding one, or an HF Llama folder
    prompts: list[str] = field(default_factory=list)
    chat: bool = False  # render each prompt as a user message with the chat template
    system: str | None = None  # with chat: the system message (else the template's default, if it has one)
    template: str | None = None  # a template name (chatml, smollm2) instead of the model's own
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    seed: int | None = None
    device: str = field(default_factory=default_device)
    dtype: str = "float32"


def load_tokenizer(path: str | Path) -> BPETokenizer:
    """A causal LM's tokenizer: from its GGUF file's metadata, or its HF folder's tokenizer.json."""
    gguf = gguf_file(path)
    return BPETokenizer.from_gguf_metadata(read_gguf(gguf).metadata) if gguf else BPETokenizer.from_file(Path(path) / "tokenizer.json")


def load_language_model(path: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[CausalLM, BPETokenizer]:
    """The model, in `dtype` on `device`, and its tokenizer."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return CausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval(), load_tokenizer(path)


def chat_template(tokenizer: BPETokenizer, name: str | None = None) -> ChatTemplate:
    """The template named `name`, else the model's own (refused, naming the fix, when it is not one we render)."""
    if name is not None:
        return ChatTemplate.named(name)
    if tokenizer.chat_template is None:
        raise InputError("the model has no chat template; pass one by name (--template chatml)")
    return ChatTemplate.from_string(tokenizer.chat_template)


def stop_ids(tokenizer: BPETokenizer, template: ChatTemplate | None) -> tuple[int, ...]:
    """EOS, and with a chat template its end-of-turn tokens."""
    names = template.stop_strings if template is not None else ()
    ids = {tokenizer.eos_id, *(tokenizer.token_to_id(name) for name in names)}
    return tuple(sorted(i for i in ids if i is not None))


def generation_config(config: GenerateConfig, tokenizer: BPETokenizer, template: ChatTemplate | None) -> GenerationConfig:
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    return GenerationConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        repetition_penalty=config.repetition_penalty, stop_ids=stop_ids(tokenizer, template), pad_id=pad or 0, seed=config.seed,
    )  # fmt: skip


def stream_text(model: CausalLM, tokenizer: BPETokenizer, prompt_ids: list[int], options: GenerationConfig) -> Iterator[tuple[str, int]]:
    """Yield (new text, token id) for every generated token, the final stop token included (its text is ""). A
    token that ends inside a UTF-8 character (byte-level BPE splits emoji) brings "" until the character is whole."""
    device = next(model.parameters()).device
    ids: list[int] = []
    shown = ""
    for token in generate_tokens(model, torch.tensor([prompt_ids], device=device), config=options):
        token = int(token[0])
        if token in options.stop_ids:
            yield "", token
            return
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            yield "", token
            continue
        yield text[len(shown) :], token
        shown = text


def render_prompt(config: GenerateConfig, tokenizer: BPETokenizer, template: ChatTemplate | None, prompt: str) -> str:
    if template is None:
        return prompt
    messages = ([{"role": "system", "content": config.system}] if config.system else []) + [{"role": "user", "content": prompt}]
    return template.render(messages, add_generation_prompt=True)


def run(config: GenerateConfig) -> list[dict]:
    """Each prompt's continuation: {"text", "token_ids"}: the new tokens, a final stop token included, and their
    text without it."""
    if not config.prompts:
        raise InputError("no prompt given; pass the text to continue")
    model, tokenizer = load_language_model(config.model, config.device, config.dtype)
    template = chat_template(tokenizer, config.template) if config.chat else None
    options = generation_config(config, tokenizer, template)
    results = []
    for prompt in config.prompts:
        ids = tokenizer.encode(render_prompt(config, tokenizer, template, prompt))
        pieces = list(stream_text(model, tokenizer, ids, options))
        results.append({"text": "".join(text for text, _ in pieces), "token_ids": [token for _, token in pieces]})
    return results
