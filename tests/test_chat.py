"""Chat templates rendered without Jinja: equal to transformers' Jinja rendering of the same template source, and
an unknown source is an error rather than a guess."""

import pytest

from minitransformers.text.chat import CHATML_DOCS_SOURCE, CHATML_SOURCE, SMOLLM2_SOURCE, SMOLLM2_SYSTEM, ChatTemplate

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system first": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write\n  two lines, with <b>markup</b> and émoji 🚀."},
    ],
    "multi-turn, system first": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "system later": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Late system message."}],
}
CASES = [(name, gen) for name in CONVERSATIONS for gen in (False, True)]


@pytest.mark.parametrize("name, add_generation_prompt", CASES)
def test_smollm2_template_renders_like_transformers(smollm2_metadata, hf_smollm2_tokenizer, name, add_generation_prompt):
    template = ChatTemplate.from_string(smollm2_metadata["tokenizer.chat_template"])
    assert template.name == "smollm2"
    messages = CONVERSATIONS[name]
    want = hf_smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert template.render(messages, add_generation_prompt=add_generation_prompt) == want


@pytest.mark.parametrize("source", [CHATML_SOURCE, CHATML_DOCS_SOURCE], ids=["chatml", "chatml (transformers docs)"])
@pytest.mark.parametrize("name, add_generation_prompt", CASES)
def test_chatml_template_renders_like_transformers(hf_smollm2_tokenizer, source, name, add_generation_prompt):
    template = ChatTemplate.from_string(source)
    assert template is ChatTemplate.named("chatml")
    messages = CONVERSATIONS[name]
    want = hf_smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=source)
    assert template.render(messages, add_generation_prompt=add_generation_prompt) == want


def test_the_gguf_carries_the_smollm2_source_and_its_stop_string_is_eos(smollm2_metadata, smollm2_tokenizer):
    assert smollm2_metadata["tokenizer.chat_template"] == SMOLLM2_SOURCE
    template = ChatTemplate.named("smollm2")
    assert [smollm2_tokenizer.encode(s) for s in template.stop_strings] == [[smollm2_tokenizer.eos_id]]


def test_chatml_format():
    messages = CONVERSATIONS["multi-turn, system first"]
    assert ChatTemplate.named("chatml").render(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ChatTemplate.named("chatml").render(CONVERSATIONS["one user turn"]) == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert ChatTemplate.named("chatml").stop_strings == ("<|im_end|>",)


def test_smollm2_adds_its_system_message_only_when_the_conversation_opens_without_one():
    smollm2, chatml = ChatTemplate.named("smollm2"), ChatTemplate.named("chatml")
    default = f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
    for name, messages in CONVERSATIONS.items():
        opens_without_system = messages[0]["role"] != "system"
        assert smollm2.render(messages, True) == (default if opens_without_system else "") + chatml.render(messages, True), name


def test_unknown_template_is_an_error_naming_the_supported_ones():
    llama3 = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}{% endfor %}"
    for source in (llama3, SMOLLM2_SOURCE + " ", SMOLLM2_SOURCE.replace("{% for", "{%- for"), ""):  # any other text, even in whitespace
        with pytest.raises(ValueError, match=r"unrecognised chat template .*supported: chatml, smollm2 .*template='chatml'"):
            ChatTemplate.from_string(source)
    with pytest.raises(ValueError, match=r"unknown chat template 'llama3'; supported: chatml, smollm2"):
        ChatTemplate.named("llama3")


def test_empty_conversation_is_an_error_as_in_transformers(hf_smollm2_tokenizer):
    with pytest.raises(ValueError, match="empty conversation"):
        hf_smollm2_tokenizer.apply_chat_template([], tokenize=False)
    with pytest.raises(ValueError, match="cannot render an empty conversation"):
        ChatTemplate.named("smollm2").render([], add_generation_prompt=True)


def test_malformed_message_is_an_error():
    for message in ({"role": "user"}, {"content": "hi"}, {"role": "user", "content": ["a", "list"]}):
        with pytest.raises(ValueError, match="message 1 .*expected a dict with string 'role' and 'content'"):
            ChatTemplate.named("chatml").render([{"role": "user", "content": "ok"}, message])
