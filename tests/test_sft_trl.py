"""Our SFT loss against TRL's `SFTTrainer.compute_loss` (the second implementation, DESIGN.md tier 5): the same tiny
random Llama (our CausalLM and transformers' LlamaForCausalLM holding the same weights), SmolLM2's tokenizer and chat
template, fixed prompt/completion conversations; TRL prepares the data (chat template, tokenization, labels) and
computes the loss its way, we do it ours. The token ids, the labels and the loss must agree."""

import pytest
import torch
from conftest import hf_llama_of, random_causal_lm

from minitransformers.config import DecoderConfig
from minitransformers.text.chat import SMOLLM2_SOURCE, ChatTemplate
from minitransformers.text.sft import Conversation, collate, tokenize
from minitransformers.train.tasks import SupervisedFineTuning

PAIRS = [
    ("Write a 2-star review of a Dresses item titled \"Too short\".", "The hem hit well above the knee. Returned it."),
    ("Write a 5-star review of a Knits item.", "Soft, warm, and it washes well! 😀"),
    ("Say hi.", "Hi."),
    ("Write a 3-star review of a Jeans item titled \"Ok\".", "Fine fit, but the color faded after two washes; café au lait now."),
]


@pytest.fixture
def trl():
    return pytest.importorskip("trl", reason="trl is not installed; pip install the test extra")


@pytest.mark.parametrize("completion_only", [True, False], ids=["completion-only", "every-token"])
def test_our_sft_loss_equals_trls_compute_loss(tmp_path, transformers, trl, smollm2_tokenizer, completion_only):
    datasets = pytest.importorskip("datasets")
    config = DecoderConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, max_position_embeddings=128)
    ours = random_causal_lm(config)
    theirs = hf_llama_of(ours, transformers)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=smollm2_tokenizer.tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>")
    hf_tokenizer.chat_template = SMOLLM2_SOURCE
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]} for p, c in PAIRS]
    args = trl.SFTConfig(output_dir=str(tmp_path), completion_only_loss=completion_only, max_length=128, report_to="none", use_cpu=True,
                         per_device_train_batch_size=len(PAIRS), bf16=False)  # fmt: skip
    trainer = trl.SFTTrainer(model=theirs, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=hf_tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(theirs, dict(batch)).item()

    examples = [tokenize(smollm2_tokenizer, ChatTemplate.from_string(SMOLLM2_SOURCE), Conversation((r["prompt"][0], r["completion"][0]), 1, f"pairs:{i}"), completion_only)
                for i, r in enumerate(rows)]  # fmt: skip
    mine = collate([[e] for e in examples], pad_id=smollm2_tokenizer.eos_id)
    real = mine["attention_mask"].bool()
    assert torch.equal(mine["input_ids"][real], batch["input_ids"][real])  # the same tokens, right-padded alike
    assert torch.equal(mine["labels"][:, 1:], batch["labels"][:, 1:])  # -100 on the same positions (the first label predicts nothing)
    task = SupervisedFineTuning()
    with torch.no_grad():
        our_loss = (task.loss_sum(ours, mine) / task.count(mine)).item()
    assert abs(our_loss - trl_loss) <= 1e-6, (our_loss, trl_loss)  # measured: 0 in both settings (the same float32 sums)
