"""DPO (train/dpo.py) and its preference pairs (text/preference.py): the tokenized pairs, the loss, its gradients and
TRL's reward metrics against `trl.DPOTrainer` (loss_type sigmoid, β 0.1) on a tiny random Llama, and SmolLM2's real
tokenizer; then the torch-only invariants: log 2 and zero rewards at initialisation, the three references giving the
same loss and gradients, the reference and a LoRA / QLoRA base untouched by training, resume, and bad pairs refused
with their file and line, or skipped and counted; last, the `dpo` command."""

import copy
import json
import math

import pytest
import torch
from conftest import final_weights, hf_llama_of, random_causal_lm
from tokenizers import AddedToken
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from minitransformers.cli import main
from minitransformers.config import DecoderConfig
from minitransformers.errors import InputError
from minitransformers.io.llama import to_hf
from minitransformers.model.causal_lm import CausalLM
from minitransformers.peft import add_lora, add_qlora
from minitransformers.recipes.generate import load_language_model
from minitransformers.text.bpe import PRE_TOKENIZERS, BPETokenizer, byte_level_pipeline
from minitransformers.text.chat import CHATML_SOURCE, ChatTemplate
from minitransformers.text.preference import collate_pairs, load_pairs, tokenize_pair
from minitransformers.train.dpo import DPO, METRICS, frozen_copy, precompute_reference_logps
from minitransformers.train.trainer import TrainConfig, Trainer

MERGES = [("Ġ", "g"), ("o", "o"), ("Ġg", "oo"), ("Ġ", "b"), ("a", "d")]  # a few merges, so tokens span characters
SPECIALS = ["<|im_start|>", "<|im_end|>"]
CONFIG = DecoderConfig(vocab_size=256 + len(MERGES) + len(SPECIALS), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, max_position_embeddings=128)
MAX_LENGTH = 40
PLAIN = [
    {"prompt": "The film was", "chosen": " good.", "rejected": " bad."},
    {"prompt": "Service:", "chosen": " quick and kind", "rejected": " slow"},
    {"prompt": "A long prompt that fills every one of the forty positions we allow", "chosen": " yes", "rejected": " no"},
    {"prompt": "Plot", "chosen": " twists everywhere, and the ending lands well beyond the limit", "rejected": " twists everywhere, and the ending lands well beyond the end"},
    {"prompt": "Acting", "chosen": " good" * 20, "rejected": " bad"},
]
CHAT = [
    {"prompt": [{"role": "user", "content": "Review: the film"}], "chosen": [{"role": "assistant", "content": "Good."}], "rejected": [{"role": "assistant", "content": "Bad."}]},
    {"prompt": [{"role": "system", "content": "Short."}, {"role": "user", "content": "Food?"}], "chosen": [{"role": "assistant", "content": "Good food"}], "rejected": [{"role": "assistant", "content": "bad"}]},
    {"prompt": [{"role": "user", "content": "Rate it"}], "chosen": [{"role": "assistant", "content": "4 of 5, good good good good good"}], "rejected": [{"role": "assistant", "content": "1"}]},
]


def rust_tokenizer() -> RustTokenizer:
    """Byte-level BPE over the 256 byte characters, a few merges and ChatML's two markers (ids 261, 262)."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({a + b: 256 + i for i, (a, b) in enumerate(MERGES)})
    tok = byte_level_pipeline(models.BPE(vocab=vocab, merges=MERGES), PRE_TOKENIZERS["gpt-2"])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


@pytest.fixture
def tokenizer() -> BPETokenizer:
    end = 256 + len(MERGES) + 1
    return BPETokenizer(rust_tokenizer(), None, end, end, CHATML_SOURCE)


@pytest.fixture
def models_pair():
    """A random policy, and a reference that differs from it (so that every reward is non-zero)."""
    policy = random_causal_lm(CONFIG)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference.requires_grad_(False)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# --- against TRL ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [PLAIN, CHAT], ids=["plain", "conversation"])
def test_pairs_loss_and_reward_metrics_equal_trl_dpo_trainer(tmp_path, transformers, tokenizer, models_pair, pairs):
    trl = pytest.importorskip("trl", reason="trl is not installed; pip install the test extra")
    datasets = pytest.importorskip("datasets", reason="datasets is not installed; pip install the test extra")
    policy, reference = models_pair
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=rust_tokenizer(), eos_token="<|im_end|>", pad_token="<|im_end|>")
    hf_tokenizer.chat_template = CHATML_SOURCE
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], max_length=MAX_LENGTH, bf16=False, use_cpu=True,
                         gradient_checkpointing=False, report_to="none")  # fmt: skip
    trainer = trl.DPOTrainer(hf_llama_of(policy, transformers), hf_llama_of(reference, transformers), args, train_dataset=datasets.Dataset.from_list(pairs), processing_class=hf_tokenizer)

    theirs = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]  # tokenized, not yet truncated
    untruncated = [tokenize_pair(p, tokenizer, ChatTemplate.named("chatml")) for p in pairs]
    kept, untruncated = zip(*[(p, t) for p, t in zip(pairs, untruncated) if len(t.prompt_ids) < MAX_LENGTH])  # TRL drops the rest, as we do
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in untruncated] == [(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]) for t in theirs]
    ours, skipped = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", pairs), tokenizer, ChatTemplate.named("chatml"), MAX_LENGTH)
    if pairs is PLAIN:  # TRL keeps the pair whose truncated completions are equal; we skip it, counted
        assert (skipped.long_prompt, skipped.equal_after_truncation) == (1, 1)
        theirs = [t for t, p in zip(theirs, kept) if p is not PLAIN[3]]
    their_batch, ours_batch = trainer.data_collator(theirs), collate_pairs(ours, tokenizer.pad_id)
    assert ours_batch["input_ids"].size(1) == MAX_LENGTH  # a completion was truncated
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours_batch[key], their_batch[key]), key

    trainer.model.train()
    their_loss = trainer.compute_loss(trainer.model, their_batch)
    their_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    task = DPO(beta=0.1, reference=reference)
    our_loss = task.loss_sum(policy.train(), ours_batch) / task.count(ours_batch)
    ours_metrics = task.evaluate(policy, [ours_batch])
    assert abs(our_loss.item() - their_loss.item()) < 1e-6 and abs(ours_metrics["loss"] - their_loss.item()) < 1e-6
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert abs(ours_metrics[name] - their_metrics[name]) < 1e-6 * max(1, abs(their_metrics[name])), name
    assert ours_metrics["rewards/chosen"] != 0 and 0 < ours_metrics["rewards/accuracies"] < 1  # the comparison is not vacuous

    their_loss.backward()
    our_loss.backward()
    ours_grads = to_hf({name: p.grad for name, p in policy.named_parameters()}, CONFIG)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(ours_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_smollm2_pairs_tokenize_as_trl_with_transformers_tokenizer_of_the_same_gguf(tmp_path, transformers, smollm2_tokenizer, hf_smollm2_tokenizer):
    """The real tokenizer and chat template (SmolLM2's default system message, `<|im_end|>` as EOS): both formats."""
    trl = pytest.importorskip("trl", reason="trl is not installed; pip install the test extra")
    datasets = pytest.importorskip("datasets", reason="datasets is not installed; pip install the test extra")
    tiny = transformers.LlamaConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16)
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), max_length=256, bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none")
    template = ChatTemplate.from_string(smollm2_tokenizer.chat_template)
    for pairs in (PLAIN, CHAT):
        model = transformers.LlamaForCausalLM(tiny)
        trainer = trl.DPOTrainer(model, copy.deepcopy(model), args, train_dataset=datasets.Dataset.from_list(pairs), processing_class=hf_smollm2_tokenizer)
        theirs = [(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]) for t in trainer.train_dataset]
        ours = [tokenize_pair(p, smollm2_tokenizer, template) for p in pairs]
        assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in ours] == theirs and len(theirs) == len(pairs)


# --- invariants (torch only) ----------------------------------------------------------------------------------------


@pytest.fixture
def batch(tmp_path, tokenizer):
    pairs, _ = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", PLAIN + CHAT), tokenizer, ChatTemplate.named("chatml"), MAX_LENGTH)
    return collate_pairs(pairs, tokenizer.pad_id)


@pytest.mark.parametrize("reference", ["frozen copy", "adapters off", "precomputed"])
def test_at_initialisation_the_loss_is_log_2_and_every_reward_is_0(batch, reference):
    policy = random_causal_lm(CONFIG)
    if reference == "frozen copy":
        task = DPO(reference=frozen_copy(policy))
    else:
        add_lora(policy, r=4, targets=("query", "value", "down"))  # B = 0: the adapted model is the base
        task = DPO()
    if reference == "precomputed":
        batch = {**batch, "reference_logps": precompute_reference_logps(policy, [batch]).T.reshape(-1)}  # (B, 2) -> (2B,)
    losses, chosen, rejected, _, _ = task.pairs(policy, batch)
    assert torch.equal(losses, torch.full_like(losses, math.log(2)))
    assert torch.equal(chosen, torch.zeros_like(chosen)) and torch.equal(rejected, torch.zeros_like(rejected))


def test_precomputed_online_and_frozen_copy_references_give_the_same_loss_and_gradients(batch):
    base = random_causal_lm(CONFIG)
    policy = add_lora(copy.deepcopy(base), r=4, targets=("query", "value", "down"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # move the policy away from the reference
    precomputed = {**batch, "reference_logps": precompute_reference_logps(policy, [batch]).T.reshape(-1)}
    results = []
    for task, data in ((DPO(), batch), (DPO(), precomputed), (DPO(reference=frozen_copy(base)), batch)):
        policy.zero_grad()
        loss = task.loss_sum(policy, data)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}))
    (loss, grads), others = results[0], results[1:]
    assert abs(loss.item() / DPO().count(batch) - math.log(2)) > 1e-3 and all(g.abs().sum() > 0 for g in grads.values())
    for other_loss, other_grads in others:  # bit for bit: the same forward of the same weights on the same batch
        assert torch.equal(other_loss, loss) and all(torch.equal(other_grads[name], grads[name]) for name in grads)


def a_few_steps(policy, task, tokenizer, tmp_path, steps=4) -> dict:
    """Train `policy` with `task` for a few steps of 4 pairs on PLAIN + CHAT -> the last validation metrics."""
    pairs, _ = load_pairs(write_jsonl(tmp_path / "train.jsonl", PLAIN + CHAT), tokenizer, ChatTemplate.named("chatml"), MAX_LENGTH)
    config = TrainConfig(out=None, max_steps=steps, batch_size=4, lr=1e-2, warmup=0.0, metric="loss", eval_batch_size=8, bucket=False)
    trainer = Trainer(policy, task, pairs, pairs, lambda items: collate_pairs(items, tokenizer.pad_id), [len(p) for p in pairs], config, save=None)
    trainer.fit()
    return trainer.history[-1]


def test_training_leaves_the_frozen_reference_bit_identical_and_moves_the_policy_toward_the_chosen(tokenizer, tmp_path):
    policy = random_causal_lm(CONFIG)
    reference = frozen_copy(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    metrics = a_few_steps(policy, DPO(reference=reference), tokenizer, tmp_path)
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in before.items())
    assert any(not torch.equal(policy.state_dict()[k], v) for k, v in start.items())
    assert metrics["validation_loss"] < math.log(2) and metrics["validation_rewards/margins"] > 0


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_with_lora_and_qlora_the_base_is_bit_identical_after_training(tokenizer, tmp_path, method):
    policy = random_causal_lm(CONFIG)
    add_lora(policy, r=4, targets=("query", "value")) if method == "lora" else add_qlora(policy, r=4)
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    lora = {k: v.clone() for k, v in policy.state_dict().items() if "lora_B" in k}
    metrics = a_few_steps(policy, DPO(), tokenizer, tmp_path)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in frozen.items())
    assert all(not torch.equal(policy.state_dict()[k], v) for k, v in lora.items())
    assert metrics["validation_rewards/margins"] > 0


def test_full_fine_tuning_without_a_reference_is_refused_naming_the_options(batch):
    with pytest.raises(InputError, match="frozen_copy"):
        DPO().loss_sum(random_causal_lm(CONFIG), batch)


# --- bad pairs ------------------------------------------------------------------------------------------------------

GOOD = PLAIN[0]


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "rejected": GOOD["chosen"]}, "chosen equals rejected"),
    ({**GOOD, "chosen": ""}, "chosen is empty"),
    ({**GOOD, "prompt": ""}, "prompt is empty"),
    ({**CHAT[0], "rejected": [{"role": "assistant", "content": ""}]}, "rejected is empty"),
    ({"prompt": GOOD["prompt"], "chosen": GOOD["chosen"]}, "expected an object with prompt, chosen, rejected"),
    ({**CHAT[0], "chosen": "Good."}, "must all be strings or all conversations"),
])  # fmt: skip
def test_a_bad_pair_is_refused_naming_its_file_and_line(tmp_path, tokenizer, bad, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, bad])
    with pytest.raises(InputError, match=f"pairs.jsonl:2: .*{message}"):
        load_pairs(path, tokenizer, ChatTemplate.named("chatml"), MAX_LENGTH)


def test_long_prompts_and_pairs_equal_once_truncated_are_skipped_and_counted_and_all_skipped_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", PLAIN)
    pairs, skipped = load_pairs(path, tokenizer, None, MAX_LENGTH)
    assert (len(pairs), skipped.long_prompt, skipped.equal_after_truncation) == (3, 1, 1)
    assert skipped.places == [f"{path}:3", f"{path}:4"]
    assert all(len(p.prompt_ids) + len(p.chosen_ids) <= MAX_LENGTH for p in pairs)
    with pytest.raises(InputError, match="every pair was skipped"):
        load_pairs(write_jsonl(tmp_path / "long.jsonl", [PLAIN[2]]), tokenizer, None, MAX_LENGTH)


def test_plain_completions_end_with_eos_and_chat_completions_with_the_end_of_turn(tokenizer):
    plain = tokenize_pair(GOOD, tokenizer, None)
    chat = tokenize_pair(CHAT[0], tokenizer, ChatTemplate.named("chatml"))
    assert tokenizer.decode(plain.prompt_ids + plain.chosen_ids) == "The film was good.<|im_end|>"
    assert tokenizer.decode(chat.chosen_ids) == "Good.<|im_end|>\n" and tokenizer.decode(chat.prompt_ids).endswith("<|im_start|>assistant\n")


# --- the recipe and the command line --------------------------------------------------------------------------------


@pytest.fixture
def start_and_pairs(tmp_path, tokenizer) -> tuple[str, str]:
    """A tiny HF Llama folder with its tokenizer, and 20 pairs: 18 plain (two held out for validation), 2 chats."""
    start = tmp_path / "start"
    start.mkdir()
    random_causal_lm(CONFIG).save_pretrained(start)
    tokenizer.save_pretrained(start)
    pairs = [{"prompt": f"Review {i}:", "chosen": " good" * (1 + i % 3), "rejected": " bad" * (1 + i % 2)} for i in range(18)] + CHAT[:2]
    return str(start), write_jsonl(tmp_path / "pairs.jsonl", pairs)


def dpo_argv(start_and_pairs, out, *extra) -> list[str]:
    start, data = start_and_pairs
    return ["dpo", "--model", start, "--data", data, "--out", str(out), "--device", "cpu", "--lr", "1e-2", "--batch-size", "6", *extra]  # max_length: the model's 128 positions


def test_cli_dpo_trains_lora_then_full_from_that_run_writing_trl_metrics(tmp_path, start_and_pairs, capsys):
    main(dpo_argv(start_and_pairs, tmp_path / "lora", "--method", "lora", "--lora-r", "4", "--max-steps", "3", "--json"))
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["train_pairs"], metrics["validation_pairs"], metrics["steps"], metrics["reference"]) == (18, 2, 3, "lora switched off")
    assert metrics["validation_rewards/margins"] > 0 and metrics["validation_loss"] < math.log(2)

    policy, reloaded_tokenizer = load_language_model(tmp_path / "lora")  # the run folder is a model: LoRA merged in
    ids = torch.tensor([reloaded_tokenizer.encode("Review 1: good")])
    assert not torch.allclose(policy(ids), CausalLM.from_pretrained(start_and_pairs[0])(ids))
    main(dpo_argv((str(tmp_path / "lora"), start_and_pairs[1]), tmp_path / "full", "--precompute-reference", "--max-steps", "3", "--json"))
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["reference"], metrics["method"], metrics["trainable_parameters"]) == ("precomputed", "full", metrics["total_parameters"])
    assert set(METRICS) <= {k.removeprefix("validation_") for k in metrics}
    assert load_language_model(tmp_path / "full")[0].config == CONFIG


def test_resume_after_a_crash_gives_the_weights_and_losses_of_an_uninterrupted_run(tmp_path, start_and_pairs, monkeypatch):
    """Full fine-tuning: on --resume the frozen reference is rebuilt from --model, the policy from the checkpoint."""
    main(dpo_argv(start_and_pairs, tmp_path / "straight", "--max-steps", "4", "--eval-every", "2"))
    original = Trainer.train_step

    def crash_at_step_3(self, group):
        if self.state["step"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, group)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_3)
    with pytest.raises(SystemExit, match="130"):
        main(dpo_argv(start_and_pairs, tmp_path / "resumed", "--max-steps", "4", "--eval-every", "2"))
    monkeypatch.setattr(Trainer, "train_step", original)
    main(dpo_argv(start_and_pairs, tmp_path / "resumed", "--max-steps", "4", "--eval-every", "2", "--resume"))
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("straight", "resumed")]
    assert [r.get("loss") for r in rows[0]] == [r.get("loss") for r in rows[1]] and len(rows[0]) == 7  # 4 steps; validations at 2, 3 (the epoch end), 4


def test_cli_dpo_stops_on_a_bad_pair_with_one_line_naming_file_and_line(tmp_path, start_and_pairs, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "rejected": GOOD["chosen"]}])
    with pytest.raises(SystemExit, match="2"):
        main(dpo_argv((start_and_pairs[0], bad), tmp_path / "run"))
    assert f"error: {bad}:2: chosen equals rejected" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(dpo_argv(start_and_pairs, tmp_path / "run", "--method", "full", "--lora-r", "4"))
    assert "--lora-* and --no-double-quant apply to --method lora / qlora, not full" in capsys.readouterr().err
