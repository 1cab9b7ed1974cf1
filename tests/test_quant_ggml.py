"""GGUF's Q4_0 / Q4_1 / Q8_0 blocks kept quantized (quant/ggml.py): the format's protocol on fresh random blocks
(finite nonzero half scales), its dequantize against the GGUF reader's, its bytes in closed form, the Q/K row
un-permutation on rows of blocks; WeightOnlyLinear over it against F.linear; and CausalLM.from_pretrained(...,
quantized=True) against the float load, on tiny written GGUF files and on the real SmolLM2-135M Q4_1."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOLLM2_GGUF, fetched, llama_gguf, random_blocks, random_ggml, write_gguf
from torch import nn

from minitransformers.io.gguf import read_gguf
from minitransformers.io.llama import unpermute
from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.quant.format import format_of
from minitransformers.quant.ggml import TYPES, GGMLQuantized
from minitransformers.quant.qlinear import WeightOnlyLinear

N, K = 48, 192  # 6 blocks of 32 a row
BYTES_PER_BLOCK = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
BITS = {"Q4_0": 4.5, "Q4_1": 5.0, "Q8_0": 8.5}
EPS32 = torch.finfo(torch.float32).eps


# --- the format ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_storage_round_trip_is_bit_identical(type_name):
    q = random_ggml(type_name, (N, K))
    layout, tensors = q.to_storage()
    layout = json.loads(json.dumps(layout))
    assert layout == {"shape": [N, K], "format": "ggml", "type": type_name} and list(tensors) == GGMLQuantized.stored_names(layout)
    back = format_of(layout).from_storage(layout, tensors)
    assert torch.equal(back.blocks, q.blocks) and torch.equal(back.dequantize(), q.dequantize()) and back.nbytes == q.nbytes


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_equals_the_gguf_readers_bit_for_bit(tmp_path, type_name):
    """Blocks written to a GGUF file (ne = [K, N]) and read back: our weight over f.raw equals f.tensor."""
    raw = random_blocks(type_name, N * K, torch.Generator().manual_seed(1))
    f = read_gguf(write_gguf(tmp_path / "w.gguf", {}, {"w": (type_name, [K, N], raw)}))
    q = GGMLQuantized(f.raw("w"), type_name)
    w = q.dequantize()
    assert w.dtype == torch.float32 and w.shape == (N, K) and torch.isfinite(w).all()
    assert torch.equal(w, f.tensor("w")) and w.abs().sum() > 0
    assert torch.equal(q.dequantize(torch.bfloat16), w.to(torch.bfloat16))


@pytest.mark.parametrize("type_name", TYPES)
def test_bytes_are_the_blocks_in_closed_form(type_name):
    q = random_ggml(type_name, (N, K))
    assert q.nbytes == N * K // 32 * BYTES_PER_BLOCK[type_name] and q.bits_per_weight == BITS[type_name]
    assert q.shape == (N, K) and q.block_size == (1, 32)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_head", [1, 3, 4, 6])  # head sizes 48, 16, 12, 8: W_q or W_k rows of n_head heads
def test_unpermuting_rows_of_blocks_equals_unpermuting_the_dequantized_weight(type_name, n_head):
    q = random_ggml(type_name, (N, K))
    moved = GGMLQuantized(unpermute(q.blocks, n_head), type_name)
    assert torch.equal(moved.dequantize(), unpermute(q.dequantize(), n_head))
    assert n_head == 1 or not torch.equal(moved.blocks, q.blocks)


def test_other_types_and_partial_blocks_are_refused():
    with pytest.raises(ValueError, match=r"'F16' is not a block format kept quantized"):
        GGMLQuantized(torch.zeros(4, 64, dtype=torch.uint8), "F16")
    with pytest.raises(ValueError, match=r"whole 20-byte blocks per row\), got torch.uint8 \(4, 30\)"):
        GGMLQuantized(torch.zeros(4, 30, dtype=torch.uint8), "Q4_1")
    layout, tensors = random_ggml("Q4_1", (N, K)).to_storage()
    with pytest.raises(ValueError, match=r"hold a weight \(48, 192\), but the layout says \[48, 96\]"):
        GGMLQuantized.from_storage({**layout, "shape": [N, K // 2]}, tensors)


# --- the layer -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_weight_only_linear_equals_f_linear_over_the_dequantized_weight(type_name):
    """Bit-equal to F.linear over Ŵ in float32 and in bf16 (the reference is that F.linear: no kernel reads the
    blocks). Against float64 over the same Ŵ, float32's rounding stays within 4 ε₃₂ of Σ_k |x_k| |ŵ_k| (measured
    1.4e-7 = 1.2 ε₃₂; the worst-case bound of a K-term dot product is K ε₃₂ = 2.3e-5)."""
    q = random_ggml(type_name, (N, K))
    bias = torch.randn(N)
    layer = WeightOnlyLinear.from_representation(q, bias)
    x = torch.randn(3, 5, K)
    w = q.dequantize()
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(y, F.linear(x, w, bias)) and layer.packed_4bit() is None
        assert torch.equal(layer(x.bfloat16()), F.linear(x.bfloat16(), w.bfloat16(), bias.bfloat16()))
    exact = x.double() @ w.double().T + bias.double()  # (3, 5, N)
    magnitude = x.double().abs() @ w.double().abs().T + bias.double().abs()
    assert ((y.double() - exact).abs() / magnitude).max() <= 4 * EPS32
    assert layer.weight_nbytes == q.nbytes and layer.bits_per_weight == BITS[type_name] and f"type={type_name}" in repr(layer)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_dispatch_takes_the_reference_over_the_blocks():
    q = random_ggml("Q4_1", (N, K))
    layer = WeightOnlyLinear.from_representation(q).cuda()
    x = torch.randn(4, K, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, q.dequantize(torch.bfloat16).cuda()))


# --- a whole model: tiny GGUF files of every block type, and SmolLM2 -------------------------------------------------

TINY = dict(vocab_size=40, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96, rope_theta=10000.0,
            rms_norm_eps=1e-5, max_position_embeddings=64)  # fmt: skip


def tiny_type(name: str) -> str:
    """Every block type, and one F16 Linear (which loads as float): attention Q4_0, FFN Q8_0, output Q4_1."""
    if name == "blk.1.attn_v.weight":
        return "F16"
    return "Q4_1" if name == "output.weight" else "Q4_0" if ".attn" in name else "Q8_0"


def quantized_linears(model) -> dict[str, str]:
    return {name: m.layout["type"] for name, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_quantized_load_keeps_every_block_linear_and_equals_the_float_load(tmp_path, tied, dtype):
    path = llama_gguf(tmp_path / "tiny.gguf", {**TINY, "tie_word_embeddings": tied}, tiny_type)
    ref = CausalLM.from_pretrained(path, dtype).eval()
    model = CausalLM.from_pretrained(path, dtype, quantized=True).eval()
    types = quantized_linears(model)
    assert len(types) == 2 * 7 - 1 + (not tied) and "decoder.layers.1.attention.value" not in types
    assert types["decoder.layers.0.attention.query"] == "Q4_0" and types["decoder.layers.1.ffn.down"] == "Q8_0"
    assert types.get("lm_head") == (None if tied else "Q4_1")
    assert type(model.decoder.layers[1].attention.value) is nn.Linear and model.decoder.layers[1].attention.value.weight.dtype == dtype
    assert model.decoder.embed.weight.dtype == dtype and (not tied or model.lm_head.weight is model.decoder.embed.weight)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))
    greedy = GenerationConfig(max_new_tokens=8, temperature=0)  # through the KV cache, one token a step
    assert torch.equal(generate(model, ids, config=greedy), generate(ref, ids, config=greedy))


def test_a_quantized_load_of_an_hf_folder_is_refused(tmp_path):
    from minitransformers.config import DecoderConfig

    CausalLM(DecoderConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="quantized=True keeps a GGUF file's blocks, but this is an HF folder"):
        CausalLM.from_pretrained(tmp_path, quantized=True)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"]
SMOLLM2_LINEAR_WEIGHTS = 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)  # q, o; k, v (3 kv heads of 64); gate, up, down


@pytest.fixture(scope="module")
def smollm2_float_and_quantized():
    path = fetched("smollm2") / SMOLLM2_GGUF
    return CausalLM.from_pretrained(path).eval(), CausalLM.from_pretrained(path, quantized=True).eval()


def test_smollm2_keeps_210_q4_1_linears_at_5_bits_and_a_tied_float_embedding(smollm2_float_and_quantized):
    _, model = smollm2_float_and_quantized
    assert list(quantized_linears(model).values()) == ["Q4_1"] * 210
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    weights, stored = sum(m.in_features * m.out_features for m in layers), sum(m.weight_nbytes for m in layers)
    assert weights == SMOLLM2_LINEAR_WEIGHTS == 106_168_320 and stored == 66_355_200 and 8 * stored / weights == 5.0
    assert 2 * weights / stored == 3.2  # bf16 / Q4_1 bytes: 212,336,640 against 66,355,200
    assert model.lm_head.weight is model.decoder.embed.weight and model.decoder.embed.weight.dtype == torch.float32
    assert not any(isinstance(m, nn.Linear) and m is not model.lm_head for m in model.modules())


def test_smollm2_quantized_logits_equal_the_float_loads(smollm2_float_and_quantized, smollm2_tokenizer):
    """Measured bound: 0. Both loads multiply by the same float32 values, the blocks dequantized by one function."""
    ref, model = smollm2_float_and_quantized
    for prompt in PROMPTS:
        ids = torch.tensor([smollm2_tokenizer.encode(prompt)])
        with torch.no_grad():
            assert torch.equal(model(ids), ref(ids)), prompt
