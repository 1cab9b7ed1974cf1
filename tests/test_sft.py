"""SFT data and loss (text/sft.py, train/tasks.py SupervisedFineTuning): labels on the assistant turns only, packing
equal to padding (loss and gradients), and the bad inputs (no assistant turn, too long, malformed lines) refused or
counted, never a silent zero loss. TRL parity is in tests/test_sft_trl.py, the recipe and CLI in tests/test_sft_cli.py."""

import json

import pytest
import torch
from conftest import random_causal_lm

from minitransformers.config import DecoderConfig
from minitransformers.text.chat import ChatTemplate
from minitransformers.text.datasets import Review
from minitransformers.text.sft import IGNORE, Conversation, SFTExample, collate, pack, read_conversations, review_conversation, tokenize, tokenize_all
from minitransformers.train.tasks import SupervisedFineTuning

CONFIG = DecoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, max_position_embeddings=64)
SMOLLM2 = ChatTemplate.named("smollm2")


def random_examples(n=7, seed=0) -> list[SFTExample]:
    """Examples of 3 to 20 tokens whose first few (a 'prompt') carry no label."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(3, 21, (), generator=g))
        ids = torch.randint(0, CONFIG.vocab_size, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (), generator=g))
        examples.append(SFTExample(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


def loss_and_grads(model, batch):
    model.zero_grad()
    task = SupervisedFineTuning()
    loss_sum = task.loss_sum(model, batch)
    loss_sum.backward()
    return loss_sum.detach(), task.count(batch), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_loss_and_gradients_equal_the_padded_batch():
    model = random_causal_lm(CONFIG)
    examples = random_examples()
    rows = pack([len(e.input_ids) for e in examples], capacity=40)
    assert len(rows) < len(examples)  # several examples do share a row
    padded_loss, padded_count, padded_grads = loss_and_grads(model, collate([[e] for e in examples], pad_id=0))
    packed_loss, packed_count, packed_grads = loss_and_grads(model, collate([[examples[i] for i in row] for row in rows], pad_id=0))
    assert packed_count == padded_count == sum(sum(label != IGNORE for label in e.labels[1:]) for e in examples)
    assert abs(packed_loss - padded_loss) / padded_loss <= 1e-6  # float32: only the order of the sums differs
    assert max((packed_grads[n] - g).abs().max() / g.abs().max() for n, g in padded_grads.items()) <= 1e-5


def test_each_packed_example_computes_what_it_computes_alone():
    model = random_causal_lm(CONFIG).double()
    examples = random_examples(3)
    batch = collate([examples], pad_id=0)  # one row, three examples
    with torch.no_grad():
        packed = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[0]
        start = 0
        for e in examples:
            alone = model(torch.tensor([e.input_ids]))[0]
            assert (packed[start : start + len(e.input_ids)] - alone).abs().max() <= 1e-12
            start += len(e.input_ids)


def test_collate_numbers_the_examples_restarts_positions_and_ignores_each_first_label():
    a, b = SFTExample([5, 6, 7], [5, 6, 7]), SFTExample([8, 9], [8, 9])
    batch = collate([[a, b], [b]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9], [IGNORE, 9, IGNORE, IGNORE, IGNORE]]


def test_best_fit_decreasing_packs_every_example_once_within_the_capacity():
    lengths = torch.randint(1, 50, (300,)).tolist()
    rows = pack(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert max(sum(lengths[i] for i in row) for row in rows) <= 64
    assert len(rows) <= 1.05 * sum(lengths) / 64 + 1  # nearly full rows


# --- labels from the chat template (SmolLM2's tokenizer) --------------------------------------------------------------


def labelled_text(tokenizer, example: SFTExample) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE])


def test_labels_cover_exactly_the_assistant_turns_and_their_end_of_turn(smollm2_tokenizer):
    messages = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"},
                {"role": "user", "content": "Café?"}, {"role": "assistant", "content": " Ça va 😀\n\nok"})  # fmt: skip
    example = tokenize(smollm2_tokenizer, SMOLLM2, Conversation(messages, 0, "x.jsonl:1"))
    assert example.input_ids == smollm2_tokenizer.encode(SMOLLM2.render(messages))  # the ids of inference
    assert labelled_text(smollm2_tokenizer, example) == "Hello there!<|im_end|>\n Ça va 😀\n\nok<|im_end|>\n"
    prompt_completion = tokenize(smollm2_tokenizer, SMOLLM2, Conversation(messages, 2, "x.jsonl:1"))  # the first answer is prompt
    assert labelled_text(smollm2_tokenizer, prompt_completion) == " Ça va 😀\n\nok<|im_end|>\n"
    everything = tokenize(smollm2_tokenizer, SMOLLM2, Conversation(messages, 0, "x.jsonl:1"), completion_only=False)
    assert everything.labels == everything.input_ids


def test_the_review_task_asks_for_the_rating_class_and_title():
    review = review_conversation(Review("Lovely", "Fits well.", 2, "Tops", "Knits"), "r:1")
    assert review.messages[0]["content"] == 'Write a 2-star review of a Knits item titled "Lovely".'
    assert review.messages[1] == {"role": "assistant", "content": "Fits well."}
    assert review_conversation(Review(None, "Ok.", 5, None, None), "r:2").messages[0]["content"] == "Write a 5-star review of an item."


# --- bad input -------------------------------------------------------------------------------------------------------


def write_jsonl(path, *objects):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def test_both_of_trls_conversational_forms_are_read(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "",
                       {"prompt": "q", "completion": "r"}, {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "r"}]})  # fmt: skip
    conversations = read_conversations(path)
    assert [c.where for c in conversations] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert conversations[1].messages == conversations[2].messages and conversations[1].train_from == 1


def test_a_conversation_without_an_assistant_turn_is_refused_naming_its_line(tmp_path, smollm2_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", {"prompt": "q", "completion": "r"}, {"messages": [{"role": "user", "content": "only a question"}]})
    conversations = read_conversations(path)
    with pytest.raises(ValueError, match=rf"{path}:2: no assistant turn to train on \(roles \['user'\]\)"):
        tokenize_all(smollm2_tokenizer, SMOLLM2, conversations, max_length=100)
    system_answer = Conversation(({"role": "user", "content": "q"}, {"role": "system", "content": "r"}), 1, "d.jsonl:7")
    with pytest.raises(ValueError, match="d.jsonl:7: no assistant turn"):  # a completion that is not the assistant's
        tokenize(smollm2_tokenizer, SMOLLM2, system_answer)


def test_examples_longer_than_max_length_are_skipped_and_counted_and_all_skipped_is_an_error(smollm2_tokenizer):
    short = Conversation(({"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}), 0, "d:1")
    long = Conversation(({"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "r"}), 0, "d:2")
    limit = len(tokenize(smollm2_tokenizer, SMOLLM2, short).input_ids)
    examples, skipped = tokenize_all(smollm2_tokenizer, SMOLLM2, [short, long, short], max_length=limit)
    assert len(examples) == 2 and skipped == 1
    with pytest.raises(ValueError, match=r"every one of the 1 examples is longer than --max-length 10 tokens \(the longest: \d+\)"):
        tokenize_all(smollm2_tokenizer, SMOLLM2, [long], max_length=10)


@pytest.mark.parametrize("line, message", [
    ("{not json", r":2: bad JSON"),
    ('{"text": "x"}', r":2: expected an object with 'messages', or with 'prompt' and 'completion'; found \['text'\]"),
    ('{"messages": []}', r":2: 'messages' should be a string or a non-empty list"),
    ('{"prompt": "q", "completion": [{"role": "assistant"}]}', r":2: 'completion' should be"),
])  # fmt: skip
def test_malformed_lines_are_refused_naming_the_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", {"prompt": "q", "completion": "r"}, line)
    with pytest.raises(ValueError, match=message):
        read_conversations(path)


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no examples"):
        read_conversations(write_jsonl(tmp_path / "d.jsonl", "", "  "))
