"""The Llama decoder against `transformers.LlamaForCausalLM`: tiny random configs (GQA, tied and untied output) both
ways through saved folders, both attention paths, padding; the KV cache against the full forward; generation
token for token against `generate` (greedy, and sampled with the same seed); then the real SmolLM2-135M GGUF
against the model transformers builds from the same file (minGPT's test: logits, then 20 greedy tokens)."""

import dataclasses
import json

import pytest
import torch
from conftest import fetched, hf_llama_of, left_padded_batch, random_causal_lm

from minitransformers.config import DecoderConfig
from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.model.kv_cache import make_caches

CONFIGS = [
    DecoderConfig(vocab_size=101, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=64, max_position_embeddings=64, rope_theta=10000.0),
    DecoderConfig(vocab_size=67, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=40, max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=False),
]
IDS = ["gqa-tied", "mha-untied"]


def logits_at_real_tokens(model, ids, mask):
    with torch.no_grad():
        out = model(ids, mask) if isinstance(model, CausalLM) else model(input_ids=ids, attention_mask=mask).logits
    return out[mask.bool()]  # (N, V): padding positions are not compared (their rows attend to nothing real)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_logits_equal_transformers_loaded_from_their_folder(tmp_path, transformers, config, impl):
    theirs = hf_llama_of(random_causal_lm(config), transformers)
    theirs.save_pretrained(tmp_path)
    ours = CausalLM.from_pretrained(tmp_path, attn_impl=impl).eval()
    ids, mask = left_padded_batch(config)
    assert (logits_at_real_tokens(ours, ids, mask) - logits_at_real_tokens(theirs, ids, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_our_saved_folder_loads_in_transformers_with_the_same_logits(tmp_path, transformers, config):
    ours = random_causal_lm(config)
    ours.save_pretrained(tmp_path)
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert (theirs.lm_head.weight is theirs.model.embed_tokens.weight) == config.tie_word_embeddings
    ids, mask = left_padded_batch(config)
    assert (logits_at_real_tokens(ours, ids, mask) - logits_at_real_tokens(theirs.eval(), ids, mask)).abs().max() <= 1e-5


def test_a_saved_and_reloaded_model_is_bit_identical_and_stays_tied(tmp_path):
    ours = random_causal_lm(CONFIGS[0])
    ours.save_pretrained(tmp_path)
    again = CausalLM.from_pretrained(tmp_path).eval()
    assert again.lm_head.weight is again.decoder.embed.weight
    ids, mask = left_padded_batch(CONFIGS[0])
    assert torch.equal(logits_at_real_tokens(ours, ids, mask), logits_at_real_tokens(again, ids, mask))


def test_sdpa_equals_eager():
    eager = random_causal_lm(dataclasses.replace(CONFIGS[0], attn_impl="eager"))
    sdpa = CausalLM(CONFIGS[0]).eval()
    sdpa.load_state_dict(eager.state_dict())
    ids, mask = left_padded_batch(CONFIGS[0])
    assert (logits_at_real_tokens(sdpa, ids, mask) - logits_at_real_tokens(eager, ids, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_incremental_decoding_with_the_cache_equals_the_full_forward(config):
    model = random_causal_lm(config)
    ids, mask = left_padded_batch(config, B=3, T=12)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    slot_mask = torch.cat([mask, torch.ones(3, 4, dtype=torch.long)], dim=1)  # room for 4 more slots than needed
    caches = make_caches(config, 3, 16, torch.float32)
    with torch.no_grad():
        full = model(ids, mask, positions)
        steps = [model(ids[:, :7], slot_mask, positions[:, :7], caches, torch.arange(7))]  # a prefill of 7
        steps += [model(ids[:, t : t + 1], slot_mask, positions[:, t : t + 1], caches, torch.tensor([t])) for t in range(7, 12)]
    incremental = torch.cat(steps, dim=1)  # (B, 12, V)
    assert (incremental - full)[mask.bool()].abs().max() <= 1e-5


def test_a_cache_longer_than_the_positions_is_refused():
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        make_caches(CONFIGS[0], 1, 65, torch.float32)


SETTINGS = {
    "greedy": dict(temperature=0),
    "greedy-repetition": dict(temperature=0, repetition_penalty=1.3),
    "sampled": dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_generation_equals_transformers_generate_token_for_token(transformers, setting):
    """Left-padded batch, a stop token; sampling draws from torch's global generator in both, seeded alike."""
    config = CONFIGS[0]
    ours = random_causal_lm(config)
    theirs = hf_llama_of(ours, transformers)
    ids, mask = left_padded_batch(config, B=3, T=9)
    ids = ids.masked_fill(mask == 0, 0)
    options = SETTINGS[setting]
    torch.manual_seed(7)
    new = generate(ours, ids, mask, GenerationConfig(max_new_tokens=20, pad_id=0, stop_ids=(5,), **options))
    sampled = options["temperature"] > 0
    hf_options = dict(temperature=options["temperature"], top_k=options["top_k"], top_p=options["top_p"]) if sampled else dict(temperature=None, top_k=None, top_p=None)
    torch.manual_seed(7)
    expected = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=sampled, max_new_tokens=20, pad_token_id=0, eos_token_id=5,
                               repetition_penalty=options.get("repetition_penalty", 1.0), **hf_options)[:, ids.size(1) :]  # fmt: skip
    assert torch.equal(new, expected[:, : new.size(1)]) and new.size(1) == expected.size(1)


def test_rows_stop_at_their_stop_token_and_are_padded_after():
    model = random_causal_lm(CONFIGS[0])
    ids, mask = left_padded_batch(CONFIGS[0])
    free = generate(model, ids, mask, GenerationConfig(max_new_tokens=8, temperature=0))
    stop = int(free[0, 2])  # row 0's third token
    stopped = generate(model, ids, mask, GenerationConfig(max_new_tokens=8, temperature=0, stop_ids=(stop,), pad_id=99))
    first = (free[0] == stop).nonzero()[0].item()
    assert torch.equal(stopped[0, : first + 1], free[0, : first + 1]) and (stopped[0, first + 1 :] == 99).all()


def test_seeded_sampling_repeats_and_another_seed_differs():
    model = random_causal_lm(CONFIGS[0])
    ids, mask = left_padded_batch(CONFIGS[0])
    runs = [generate(model, ids, mask, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# --- the real checkpoint: SmolLM2-135M-Instruct, Q4_1 GGUF --------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):", "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_tokenizer):
    """Our model from the GGUF, and the float model transformers builds from the same file (`gguf_file=`)."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package; pip install the test extra")
    folder = fetched("smollm2")
    ours = CausalLM.from_pretrained(folder).eval()
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32, attn_implementation="sdpa").eval()
    return ours, theirs, smollm2_tokenizer


def test_smollm2_logits_equal_transformers_from_the_same_gguf(smollm2_pair):
    ours, theirs, tok = smollm2_pair
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            assert (ours(ids) - theirs(input_ids=ids).logits).abs().max() <= 1e-4, prompt


def test_smollm2_greedy_20_tokens_equal_transformers(smollm2_pair):
    ours, theirs, tok = smollm2_pair
    for prompt in PROMPTS[:2]:
        ids = torch.tensor([tok.encode(prompt)])
        new = generate(ours, ids, config=GenerationConfig(max_new_tokens=20, temperature=0))
        expected = theirs.generate(input_ids=ids, do_sample=False, max_new_tokens=20, min_new_tokens=20, temperature=None, top_p=None, top_k=None)[:, ids.size(1) :]
        assert new.tolist() == expected.tolist(), (prompt, tok.decode(new[0].tolist()), tok.decode(expected[0].tolist()))


def test_smollm2_answers_a_chat_question_sensibly(smollm2_pair):
    ours, _, tok = smollm2_pair
    ids = torch.tensor([tok.encode(PROMPTS[2])])
    new = generate(ours, ids, config=GenerationConfig(max_new_tokens=12, temperature=0, stop_ids=(tok.token_to_id("<|im_end|>"),)))
    assert "4" in tok.decode(new[0].tolist())


def test_smollm2_perplexity_equals_transformers_on_the_same_windows(smollm2_pair):
    """llama.cpp's protocol on the first windows of WikiText-2's test split, through both models: within 0.1%."""
    from minitransformers.recipes.perplexity import split_text, window_nll

    ours, theirs, tok = smollm2_pair
    fetched("wikitext2")
    ids = tok.encode(split_text("wikitext2", "test"))
    mine = window_nll(ours, ids, 512, max_chunks=2, batch_size=2, progress=False)
    reference = window_nll(lambda x: theirs(input_ids=x).logits, ids, 512, max_chunks=2, batch_size=2, progress=False)
    assert mine["tokens_scored"] == reference["tokens_scored"] == 2 * 255
    assert abs(mine["perplexity"] / reference["perplexity"] - 1) < 1e-3, (mine, reference)


def test_cli_generate_tokenize_and_perplexity_on_smollm2(tmp_path, capsys, smollm2_pair):
    from minitransformers.cli import main

    ours, _, tok = smollm2_pair
    folder = str(fetched("smollm2"))
    main(["generate", "--model", folder, "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu", "--json", PROMPTS[0]])
    row = json.loads(capsys.readouterr().out)
    expected = generate(ours, torch.tensor([tok.encode(PROMPTS[0])]), config=GenerationConfig(max_new_tokens=8, temperature=0))[0].tolist()
    assert row["token_ids"] == expected and row["text"] == tok.decode(expected)
    text = tmp_path / "t.txt"
    text.write_text("Héllo wörld 🤗\n<|im_start|>user\n12345<|im_end|>\n", encoding="utf-8")
    main(["tokenize", "--model", folder, "--json", str(text)])
    assert json.loads(capsys.readouterr().out) == tok.encode(text.read_text(encoding="utf-8"))
    main(["perplexity", "--model", folder, "--data", str(text), "--context", "8", "--device", "cpu", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["tokens_scored"] == 3 * (len(tok.encode(text.read_text(encoding="utf-8"))) // 8) and result["perplexity"] > 1
