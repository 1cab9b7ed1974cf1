"""Chat templates, rendered in plain Python: a conversation -> the one prompt string the model was trained on.

A checkpoint ships its template as Jinja source (GGUF `tokenizer.chat_template`, or `chat_template` in
tokenizer_config.json). Rather than run Jinja (not a dependency), we recognise the source by exact match against
known templates, copied below from real files, and render each with a few lines of Python. An unknown source is
an error, never a best guess: a prompt in the wrong format degrades the model silently. Matching is exact because
whitespace between Jinja tags is output, so two sources that differ only in whitespace can render differently.

ChatML (OpenAI's Chat Markup Language), one block per message, and the start of an assistant turn on request:

    <|im_start|>{role}\\n{content}<|im_end|>\\n  ...  [<|im_start|>assistant\\n]

SmolLM2 is ChatML with a default system message written first when the conversation does not open with one.
The model ends its turn with <|im_end|>, so that is the stop string (SmolLM2's eos token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import InputError

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Jinja sources, verbatim. From internlm/internlm2-chat-7b's tokenizer_config.json (also rhysjones/phi-2-orange-v2's):
CHATML_SOURCE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The ChatML template that transformers' chat templating guide recommends (also mlx-community/dbrx-instruct-4bit's):
CHATML_DOCS_SOURCE = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" + CHATML_SOURCE
# `tokenizer.chat_template` of SmolLM2-135M-Instruct.Q4_1.gguf (the smollm2 data source):
SMOLLM2_SOURCE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """ChatML, with an optional system message written when the conversation does not start with one."""

    name: str
    default_system: str | None = None
    stop_strings: tuple[str, ...] = ("<|im_end|>",)

    @classmethod
    def named(cls, name: str) -> ChatTemplate:
        if name not in TEMPLATES:
            raise InputError(f"unknown chat template {name!r}; supported: {', '.join(sorted(TEMPLATES))}")
        return TEMPLATES[name]

    @classmethod
    def from_string(cls, jinja_source: str) -> ChatTemplate:
        """The template whose Jinja source this is, matched exactly; ValueError for any other source."""
        if jinja_source not in SOURCES:
            head = jinja_source[:120] + ("..." if len(jinja_source) > 120 else "")
            raise InputError(
                f"unrecognised chat template {head!r}; supported: {', '.join(sorted(TEMPLATES))} "
                "(matched by exact Jinja source). If the model uses one of them, pick it by name, "
                "e.g. template='chatml' (ChatTemplate.named('chatml')); otherwise add its source and renderer to text/chat.py"
            )
        return TEMPLATES[SOURCES[jinja_source]]

    @property
    def source(self) -> str:
        """The Jinja source of this template (the first of SOURCES that renders as it does), to save beside a model."""
        return next(source for source, name in SOURCES.items() if name == self.name)

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        """The prompt for `messages` (dicts with a role and a content string), as the Jinja template writes it."""
        prompt, _ = self.render_with_spans(messages)
        return prompt + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def render_with_spans(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and, for each message, the character span [start, end) of what the model writes
        in that turn: its content and the end of turn, `content<|im_end|>\n`, after the `<|im_start|>role\n` header
        (the header is the generation prompt, so it is context, not response). SFT trains on the assistant's spans."""
        if not messages:
            raise InputError("cannot render an empty conversation; pass at least one message (transformers refuses it too)")
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise InputError(f"message {i} is {dict(message)!r}; expected a dict with string 'role' and 'content'")
        turns = [(m["role"], m["content"]) for m in messages]
        prompt = f"<|im_start|>system\n{self.default_system}<|im_end|>\n" if self.default_system is not None and turns[0][0] != "system" else ""
        spans = []
        for role, content in turns:
            prompt += f"<|im_start|>{role}\n"
            spans.append((len(prompt), len(prompt) + len(content) + len("<|im_end|>\n")))
            prompt += f"{content}<|im_end|>\n"
        return prompt, spans


TEMPLATES = {"chatml": ChatTemplate("chatml"), "smollm2": ChatTemplate("smollm2", default_system=SMOLLM2_SYSTEM)}
SOURCES = {CHATML_SOURCE: "chatml", CHATML_DOCS_SOURCE: "chatml", SMOLLM2_SOURCE: "smollm2"}
