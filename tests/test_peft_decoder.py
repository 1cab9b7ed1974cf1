"""The PEFT methods on the decoder (model/causal_lm.py): the lifecycle checklist of tests/test_peft_lifecycle.py on a
CausalLM, what each method does there (LoRA and QLoRA leave the tied lm_head alone, prefix rows have the key width,
the prompt takes the first positions and cache slots), generation with the KV cache after each method, gradient
checkpointing, and prompt and prefix tuning against peft on `transformers.LlamaForCausalLM`. Fresh random weights,
perturbed away from each method's identity initialisation so that "adapted" really differs from "base"."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import copy_prefix_to_peft, hf_llama_of, left_padded_batch, quantized_base, random_causal_lm
from torch import nn

from minitransformers.config import DecoderConfig
from minitransformers.model.decoder import CausalSelfAttention
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.model.kv_cache import make_caches
from minitransformers.peft import (
    NF4Linear, add_adapters, add_lora, add_prefix_tuning, add_prompt_tuning, add_qlora, count_parameters, disabled,
    merge_lora, merge_prefix, merge_qlora, remove_method, set_enabled,
)  # fmt: skip
from minitransformers.peft.lora import lora_layers
from minitransformers.peft.prompts import PrefixAttention, PrefixMLP, PrefixTable, PromptTunedDecoder

CONFIG = DecoderConfig(vocab_size=100, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=64, max_position_embeddings=64)
H, L, V = CONFIG.hidden_size, CONFIG.num_layers, CONFIG.vocab_size
HKV = CONFIG.num_kv_heads * CONFIG.head_dim  # 16: the width of a key, and of a prefix row
N = 3  # virtual tokens
METHODS = {  # every method that applies to the decoder (BitFit does not: a Llama layer has no biases)
    "lora": lambda model: add_lora(model, r=4, targets=("query", "value", "gate")),
    "qlora": lambda model: add_qlora(model, r=4),
    "houlsby": lambda model: add_adapters(model, "houlsby", reduction_factor=8),
    "prompt": lambda model: add_prompt_tuning(model, N, init="random"),
    "prefix": lambda model: add_prefix_tuning(model, N),
    "prefix_table": lambda model: add_prefix_tuning(model, N, reparameterize=False),
}
MERGES = {"lora": merge_lora, "qlora": merge_qlora, "prefix": merge_prefix}  # the methods whose paper defines a merge


@pytest.fixture
def base() -> nn.Module:
    return random_causal_lm(CONFIG)


def prepared(base: nn.Module, method: str) -> nn.Module:
    """A copy of `base` with `method`, its trainable parameters moved by noise."""
    model = METHODS[method](copy.deepcopy(base))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def outputs(model: nn.Module, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, mask)


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Each row's count of real tokens before each slot, as generate.py gives the rotary positions (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def incremental_logits(model: nn.Module, ids, mask, new) -> torch.Tensor:
    """As generate.py runs the model, with the next tokens given (`new` (B, K)): a prefill over ids (B, T), then
    one decode step per new token over the static KV cache -> the last logits of each call (B, K + 1, V)."""
    (B, T), K = ids.shape, new.size(1)
    caches = make_caches(model.config, B, T + K, torch.float32)
    slot_mask = torch.cat([mask, mask.new_ones(B, K)], dim=1)  # (B, T + K)
    positions = positions_of(mask)
    logits = [model(ids, slot_mask, positions, caches, torch.arange(T), logits_to_keep=1)[:, -1]]
    for i in range(K):
        positions = positions[:, -1:] + 1
        logits.append(model(new[:, i : i + 1], slot_mask, positions, caches, torch.tensor([T + i]), logits_to_keep=1)[:, -1])
    return torch.stack(logits, dim=1)


@torch.no_grad()
def full_logits(model: nn.Module, ids, mask, new) -> torch.Tensor:
    """One forward over [ids; new] without a cache -> the logits that predict each new token and the next (B, K + 1, V)."""
    T, whole = ids.size(1), torch.cat([mask, mask.new_ones(new.shape)], dim=1)
    return model(torch.cat([ids, new], dim=1), whole, positions_of(whole))[:, T - 1 :]


# --- the lifecycle ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_disabling_the_method_gives_the_base_outputs_and_enabling_gives_the_adapted_ones(base, method):
    ids, mask = left_padded_batch(CONFIG)
    model = prepared(base, method)
    reference = outputs(quantized_base(base) if method == "qlora" else base, ids, mask)
    adapted = outputs(model, ids, mask)
    assert adapted.shape == (3, 7, V)
    assert (adapted - reference).abs().max() > 1e-2  # the method changes the function
    with disabled(model):
        assert torch.equal(outputs(model, ids, mask), reference)
    assert torch.equal(outputs(model, ids, mask), adapted)
    set_enabled(model, False)
    assert torch.equal(outputs(model, ids, mask), reference)


@pytest.mark.parametrize("method", METHODS)
def test_removing_the_method_restores_the_base_state_dict_flags_and_classes_bit_for_bit(base, method):
    expected = quantized_base(base) if method == "qlora" else base  # QLoRA's base is the NF4 model it froze
    state, flags = expected.state_dict(), {n: p.requires_grad for n, p in expected.named_parameters()}
    model = remove_method(prepared(base, method))
    assert model.state_dict().keys() == state.keys()
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])] == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert [type(m) for m in model.modules()] == [type(m) for m in expected.modules()]  # CausalSelfAttention, Decoder again
    assert model.lm_head.weight is model.decoder.embed.weight
    ids, mask = left_padded_batch(CONFIG)
    assert torch.equal(outputs(model, ids, mask), outputs(expected, ids, mask))


@pytest.mark.parametrize("method", MERGES)
def test_merge_equals_unmerged(base, method):
    ids, mask = left_padded_batch(CONFIG)
    model = prepared(base, method)
    adapted = outputs(model, ids, mask)
    merged = MERGES[method](model)
    assert (outputs(merged, ids, mask) - adapted).abs().max() <= 1e-5
    assert merged.lm_head.weight is merged.decoder.embed.weight and type(merged.lm_head) is nn.Linear


# --- generation with the KV cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_after_each_method_the_cached_logits_equal_the_full_forward_and_greedy_generation_follows_them(base, method):
    model = prepared(base, method)
    ids, mask = left_padded_batch(CONFIG)
    tokens = generate(model, ids, mask, GenerationConfig(max_new_tokens=5, temperature=0))  # (B, 5)
    assert tokens.shape == (3, 5)
    cached = incremental_logits(model, ids, mask, tokens)  # (B, 6, V)
    assert (cached - full_logits(model, ids, mask, tokens)).abs().max() <= 1e-5
    assert torch.equal(cached[:, :-1].argmax(-1), tokens)  # each greedy token is the argmax of the logits before it


@pytest.mark.parametrize("method", METHODS)
def test_a_left_padded_row_generates_as_the_same_row_alone(base, method):
    model = prepared(base, method)
    ids, mask = left_padded_batch(CONFIG)
    new = torch.randint(0, V, (3, 4))
    batch = incremental_logits(model, ids, mask, new)
    for row, length in enumerate(mask.sum(1).tolist()):
        alone = incremental_logits(model, ids[row : row + 1, -length:], mask[row : row + 1, -length:], new[row : row + 1])
        assert (batch[row] - alone[0]).abs().max() <= 1e-5


# --- what each method does on the decoder ---------------------------------------------------------------------------


def test_lora_finds_the_decoders_query_and_value_and_leaves_the_tied_lm_head_alone(base):
    model = add_lora(base, r=8)
    assert sorted(lora_layers(model)) == [f"decoder.layers.{i}.attention.{p}" for i in range(L) for p in ("query", "value")]
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.decoder.embed.weight
    assert not model.lm_head.weight.requires_grad
    assert count_parameters(model) == L * 8 * ((H + H) + (H + HKV))  # B A on W_q (H -> H) and W_v (H -> Hkv)


def test_qlora_by_default_adapts_every_linear_of_the_layers_gate_included_and_keeps_lm_head_float_and_tied(base):
    model = add_qlora(base, r=4)
    expected = [f"decoder.layers.{i}.{p}" for i in range(L) for p in ("attention.query", "attention.key", "attention.value", "attention.out", "ffn.gate", "ffn.up", "ffn.down")]
    assert sorted(lora_layers(model)) == sorted(expected)
    assert sum(isinstance(m, NF4Linear) for m in model.modules()) == 7 * L
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.decoder.embed.weight
    assert model.lm_head.weight.dtype == torch.float32 and not model.lm_head.weight.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{name}.lora_{m}" for name in expected for m in "AB"}


def test_houlsby_adapters_train_two_bottlenecks_per_layer_and_every_rmsnorm(base):
    m = H // 8
    model = add_adapters(base, "houlsby", reduction_factor=8)
    assert count_parameters(model) == L * 2 * (H * m + m + m * H + H) + (2 * L + 1) * H  # adapters; RMSNorm gains g
    layer = model.decoder.layers[0]
    assert layer.attention_norm.weight.requires_grad and model.decoder.norm.weight.requires_grad
    assert layer.attention.out.bias is None and "decoder.layers.0.attention.out.weight" in model.state_dict()


def test_pfeiffer_adapters_are_refused_on_the_pre_norm_decoder_naming_houlsby():
    with pytest.raises(ValueError, match=r"CausalLM has pre-norm DecoderLayers .* use kind='houlsby'"):
        add_adapters(random_causal_lm(CONFIG), "pfeiffer")


@pytest.mark.parametrize("reparameterize", [False, True], ids=["table", "mlp"])
def test_prefix_rows_have_the_key_width_and_the_attention_keeps_its_rotary_cache_class(base, reparameterize):
    model = add_prefix_tuning(base, N, reparameterize=reparameterize)
    assert model.decoder.prefix().shape == (L, 2, N, HKV)  # num_kv_heads · head_dim, not H
    attention = model.decoder.layers[0].attention
    assert isinstance(attention, PrefixAttention) and isinstance(attention, CausalSelfAttention)
    assert type(attention).__name__ == "PrefixCausalSelfAttention" and type(attention).project is CausalSelfAttention.project
    mlp = N * HKV + (HKV * HKV + HKV) + (HKV * L * 2 * HKV + L * 2 * HKV)  # P', Linear(Hkv, d = Hkv), Linear(d, L·2·Hkv)
    assert count_parameters(model) == (mlp if reparameterize else N * 2 * HKV * L)
    assert isinstance(model.decoder.prefix, PrefixMLP if reparameterize else PrefixTable)


def test_the_prompt_takes_positions_0_to_n_minus_1_and_the_real_tokens_follow_it(base):
    """The prompt-tuned decoder is the base decoder over [P; E[x]], mask [1; m], positions [0 … n−1; n + p]."""
    model = prepared(base, "prompt")
    assert isinstance(model.decoder, PromptTunedDecoder)
    ids, mask = left_padded_batch(CONFIG)
    positions, B = positions_of(mask), ids.size(0)
    with torch.no_grad():
        embeds = torch.cat([model.decoder.prompt.expand(B, N, -1), base.decoder.embed(ids)], dim=1)  # (B, n + T, H)
        whole_mask = torch.cat([torch.ones(B, N, dtype=torch.long), mask], dim=1)
        whole_positions = torch.cat([torch.arange(N).expand(B, N), positions + N], dim=1)
        expected = base(inputs_embeds=embeds, attention_mask=whole_mask, position_ids=whole_positions)[:, N:]
        assert (model(ids, mask, positions) - expected).abs().max() <= 1e-5
        assert model(ids, mask, positions).shape == (B, 7, V)


def test_a_prompt_and_input_longer_than_the_positions_fail_saying_how_to_fit(base):
    model = add_prompt_tuning(base, 20)
    with pytest.raises(ValueError, match=r"20 virtual tokens \+ 50 tokens = 70 positions, more than max_position_embeddings 64; use at most 44 tokens"):
        model(torch.randint(0, V, (1, 50)))
    with pytest.raises(ValueError, match=r"20 virtual tokens \+ 60 tokens = 80 positions"):
        generate(model, torch.randint(0, V, (1, 10)), config=GenerationConfig(max_new_tokens=50, temperature=0))


# --- gradient checkpointing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora", "prompt", "prefix"])
def test_gradient_checkpointing_recomputes_each_layer_and_gives_equal_gradients(base, method):
    model = (base if method == "full" else prepared(base, method)).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.decoder.gradient_checkpointing = True
    ids, mask = left_padded_batch(CONFIG, B=3, T=12)
    saved, grads = [], []
    for m in (model, checkpointed):
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
        with hooks:
            logits = m(ids, mask)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
        saved.append(None)  # separates the two runs
    plain, recomputed = saved.index(None), len(saved) - saved.index(None) - 2
    assert recomputed < plain / 3  # only each layer's input is kept, not its intermediates
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7)


# --- against peft on transformers' Llama ----------------------------------------------------------------------------


@pytest.mark.parametrize("reparameterize", [False, True], ids=["table", "mlp"])
def test_prefix_tuning_matches_peft_on_llama(base, reparameterize, transformers, peft):
    """peft passes the prefix as past_key_values, so the real tokens take positions n … n+T−1 there, and peft adds
    n to the position_ids it is given: positions p − n give back ours, p. The MLP's defaults agree (d = Hkv)."""
    theirs = peft.get_peft_model(hf_llama_of(base, transformers), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=reparameterize)).eval()
    ours = add_prefix_tuning(base, N, reparameterize=reparameterize)
    prefix, encoder = ours.decoder.prefix, theirs.prompt_encoder["default"]
    copy_prefix_to_peft(prefix, encoder, reparameterize)
    ids, mask = left_padded_batch(CONFIG)
    positions = positions_of(mask)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, position_ids=positions - N).logits
        logits = ours(ids, mask, positions)
    real = mask.bool()
    assert (logits - expected)[real].abs().max() <= 1e-5


def prompt_tuned_pair(base, transformers, peft):
    """Ours and peft's prompt tuning of the same LlamaForCausalLM, with the same N random prompt vectors."""
    theirs = peft.get_peft_model(hf_llama_of(base, transformers), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N)).eval()
    ours = add_prompt_tuning(base, N, init="random")
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.decoder.prompt)
    return ours, theirs


def test_prompt_tuning_matches_peft_on_llama_over_the_real_tokens(base, transformers, peft):
    """peft prepends the prompt to inputs_embeds and extends the mask; Llama then numbers all n + T slots."""
    ours, theirs = prompt_tuned_pair(base, transformers, peft)
    ids = torch.randint(0, V, (3, 9))
    mask = (torch.arange(9)[None] < torch.tensor([[9], [6], [4]])).long()  # right padding: positions are the slots
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        logits = ours(ids, mask)
    assert expected.shape == (3, N + 9, V)
    assert (logits - expected[:, N:])[mask.bool()].abs().max() <= 1e-5


def test_prompt_tuned_greedy_generation_matches_peft_generate(base, transformers, peft):
    ours, theirs = prompt_tuned_pair(base, transformers, peft)
    ids = torch.randint(0, V, (2, 6))
    expected = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert torch.equal(generate(ours, ids, config=GenerationConfig(max_new_tokens=10, temperature=0)), expected[:, -10:])
