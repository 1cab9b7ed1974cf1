"""The decoder on a GPU in bf16 and fp16, against `transformers.LlamaForCausalLM` holding the same weights.

Both models round, so neither equals the fp32 result; each is measured against it, on the same GPU, and ours may
drift from it at most FACTOR times as far as transformers' does (the encoder's half-precision test makes the same
comparison). Greedy generation must equal the fp32 tokens until a close call flips them, and the KV cache's
incremental logits must equal the full forward's in bf16 up to rounding. Random weights (conftest's random_causal_lm)
of two tiny configs (GQA and tied; MHA and untied) and of a mid-size one: SmolLM2-135M with 8 of its 30 layers.

    pytest -m gpu tests/test_decoder_gpu.py          # on the device machine (scripts/gpu_checks.sh decoder)
"""

import dataclasses

import pytest
import torch
from conftest import hf_llama_of, left_padded_batch, random_causal_lm

from minitransformers.config import DecoderConfig
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.model.kv_cache import make_caches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"
CONFIGS = {
    "gqa-tied": DecoderConfig(vocab_size=101, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=64, max_position_embeddings=128, rope_theta=10000.0),
    "mha-untied": DecoderConfig(vocab_size=67, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=40, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "mid": DecoderConfig(num_layers=8, max_position_embeddings=512),
}
TINY = ["gqa-tied", "mha-untied"]
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
FACTOR = 2.0  # our largest logit error against fp32 ≤ FACTOR × transformers' largest
MARGIN = 0.2  # a close call: fp32 top-2 logits within 0.2, 4× the largest bf16 logit error of the tiny models (0.045 on a CPU)
CACHE_FACTOR = 2.0  # |incremental − full| in bf16 ≤ CACHE_FACTOR × |full bf16 − full fp32|: another rounding of the same function


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def their_model(ours, transformers, impl: str):
    theirs = hf_llama_of(ours, transformers)
    theirs.set_attn_implementation(impl)
    theirs.generation_config.eos_token_id = None  # ours has no stop token here: both generate every token asked for
    return theirs.to(DEVICE)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("name", CONFIGS)
def test_half_precision_logits_are_as_accurate_as_transformers(transformers, name, half, impl):
    ours = random_causal_lm(dataclasses.replace(CONFIGS[name], attn_impl=impl)).to(DEVICE)
    theirs = their_model(ours, transformers, impl)
    ids, mask = on_device(*left_padded_batch(CONFIGS[name], B=4, T=64))
    real = mask.bool()  # padding positions attend to nothing real and are not compared
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=mask).logits[real]  # fp32, the same weights, the same GPU
        their_error = (theirs.to(HALF[half])(input_ids=ids, attention_mask=mask).logits[real].float() - reference).abs().max()
        our_error = (ours.to(HALF[half])(ids, mask)[real].float() - reference).abs().max()
    assert torch.isfinite(our_error) and our_error <= FACTOR * their_error, (our_error.item(), their_error.item())


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("name", TINY)
def test_greedy_20_tokens_equal_transformers_unless_a_close_call_flips(transformers, name, half, impl):
    """Rounding may flip a close call, after which two continuations rightly part. So each row, ours and
    transformers' in half precision, equals the fp32 tokens up to its first difference, if any, and that difference
    comes at a close call: a step whose fp32 top-2 logits lie within MARGIN. At least one row must match whole."""
    config, greedy = CONFIGS[name], GenerationConfig(max_new_tokens=20, temperature=0)
    ours = random_causal_lm(dataclasses.replace(config, attn_impl=impl)).to(DEVICE)
    theirs = their_model(ours, transformers, impl)
    (ids,) = on_device(torch.randint(0, config.vocab_size, (4, 16)))
    reference = generate(ours, ids, config=greedy)  # (B, 20), fp32
    with torch.no_grad():
        logits = ours(torch.cat([ids, reference], dim=1))[:, ids.size(1) - 1 : -1]  # (B, 20, V): what each choice was made from
    top2 = logits.topk(2).values  # (B, 20, 2)
    margin = top2[..., 0] - top2[..., 1]  # (B, 20)
    ours_new = generate(ours.to(HALF[half]), ids, config=greedy)
    theirs_new = theirs.to(HALF[half]).generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                                                temperature=None, top_p=None, top_k=None, pad_token_id=0)[:, ids.size(1) :]  # fmt: skip
    for new in (ours_new, theirs_new):
        differs = new != reference
        first = torch.where(differs.any(dim=1), differs.int().argmax(dim=1), 20)  # (B,): each row's first difference, 20 if none
        flipped = first < 20
        assert (margin[flipped, first[flipped]] <= MARGIN).all() and not flipped.all(), (first, margin)


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_decoding_in_bf16_equals_the_full_forward(name):
    config = CONFIGS[name]
    model = random_causal_lm(config).to(DEVICE)
    ids, mask = on_device(*left_padded_batch(config, B=3, T=24))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    slot_mask = torch.cat([mask, torch.ones_like(mask[:, :8])], dim=1)  # 8 more slots than the input needs
    real = mask.bool()
    with torch.no_grad():
        full32 = model(ids, mask, positions)
        model.to(torch.bfloat16)
        full = model(ids, mask, positions)
        caches = make_caches(config, 3, 32, torch.bfloat16, DEVICE)
        steps = [model(ids[:, :16], slot_mask, positions[:, :16], caches, torch.arange(16, device=DEVICE))]  # a prefill of 16
        steps += [model(ids[:, t : t + 1], slot_mask, positions[:, t : t + 1], caches, torch.tensor([t], device=DEVICE)) for t in range(16, 24)]
    incremental = torch.cat(steps, dim=1)  # (B, 24, V)
    rounding = (full - full32)[real].float().abs().max()
    assert (incremental - full)[real].float().abs().max() <= CACHE_FACTOR * rounding, rounding.item()
