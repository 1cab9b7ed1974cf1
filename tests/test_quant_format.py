"""The one protocol of quantized weights (quant/format.py), for every registered format: storage round trips bit for
bit, byte counts in closed form, dequantize to a dtype, torchao's block_size; and a new format, defined here, that
WeightOnlyLinear, save_quantized and load_quantized take with no other code. Fresh random weights, never zeros."""

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from conftest import LINEARS, ragged_batch, random_ggml, small_classifier
from torch import nn

from minitransformers.quant.format import FORMATS, QuantizedWeight, format_of, register
from minitransformers.quant.kmeans import kmeans_quantize
from minitransformers.quant.nonuniform import quantize_fp4, quantize_log2, quantize_nf4
from minitransformers.quant.qlinear import WeightOnlyLinear
from minitransformers.quant.serialize import load_quantized, save_quantized
from minitransformers.quant.uniform import quantize_uniform

N, K = 48, 192  # 9216 weights: 144 blocks of 64, 72 of 128
n = N * K

# name -> (quantizer of w, its bytes in closed form, its block_size)
CASES = {
    "uniform int8 per row": (lambda w: quantize_uniform(w, 8, (1, K)), n + 4 * N, (1, K)),
    "uniform int4 affine, groups of 32": (lambda w: quantize_uniform(w, 4, (1, 32), symmetric=False), n // 2 + 5 * n // 32, (1, 32)),
    "uniform int4 per tensor": (lambda w: quantize_uniform(w, 4), n // 2 + 4, (N, K)),
    "codebook nf4": (quantize_nf4, n // 2 + 4 * (n // 64), (64,)),
    "codebook nf4 double-quantized": (lambda w: quantize_nf4(w, double_quant=True), n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4, (64,)),
    "codebook fp4 of a bf16 weight, blocks of 128": (lambda w: quantize_fp4(w.bfloat16(), 128), n // 2 + 4 * (n // 128), (128,)),
    "codebook log2, 3 bits": (lambda w: quantize_log2(w, 3), n // 2 + 4 * (n // 64), (64,)),
    "kmeans 4 bits per layer": (lambda w: kmeans_quantize(w, 4), n // 2 + 4 * 16, (N, K)),
    "kmeans 8 bits per layer": (lambda w: kmeans_quantize(w, 8), n + 4 * 256, (N, K)),
    "kmeans 4 bits per channel": (lambda w: kmeans_quantize(w, 4, per_channel=True), n // 2 + 4 * 16 * N, (1, K)),
    "ggml Q4_1 blocks, random (GGUF's blocks are read, not made from w)": (lambda w: random_ggml("Q4_1", w.shape), 20 * n // 32, (1, 32)),
}


def weight() -> torch.Tensor:
    return torch.randn(N, K) * 0.02


def quantized(case: str) -> QuantizedWeight:
    return CASES[case][0](weight())


def test_every_registered_format_has_cases():
    assert {type(quantized(case)).format for case in CASES} == set(FORMATS)


@pytest.mark.parametrize("case", CASES)
def test_storage_round_trip_dequantizes_bit_identically(case):
    q = quantized(case)
    layout, tensors = q.to_storage()
    layout = json.loads(json.dumps(layout))  # JSON-able, as quantization.json keeps it
    assert layout["shape"] == [N, K] and format_of(layout) is type(q) and layout["format"] == q.format
    assert sorted(tensors) == sorted(type(q).stored_names(layout))
    back = format_of(layout).from_storage(layout, tensors)
    assert torch.equal(back.dequantize(), q.dequantize()) and back.dequantize().dtype == q.dequantize().dtype
    assert back.nbytes == q.nbytes and back.block_size == q.block_size


@pytest.mark.parametrize("case", CASES)
def test_bytes_and_bits_per_weight_in_closed_form(case):
    q, expected = quantized(case), CASES[case][1]
    assert q.nbytes == expected and q.bits_per_weight == 8 * expected / n


@pytest.mark.parametrize("case", CASES)
def test_dequantize_to_a_dtype_is_the_formats_result_cast_once(case):
    q = quantized(case)
    w = q.dequantize()
    assert w.shape == (N, K) and q.shape == (N, K)
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16 and torch.equal(q.dequantize(torch.bfloat16), w.to(torch.bfloat16))
    assert torch.equal(q.dequantize(w.dtype), w)


@pytest.mark.parametrize("case", CASES)
def test_block_size_is_torchaos_one_entry_per_quantized_dimension(case):
    """Uniform and k-means blocks tile the (N, K) weight; bitsandbytes' blocks tile it flattened, (n,)."""
    q, expected = quantized(case), CASES[case][2]
    assert q.block_size == expected
    assert len(q.block_size) == (1 if q.format == "codebook" else 2)


# --- a new format: one class and a registry entry --------------------------------------------------------------------


@dataclass
class SignQuantized(QuantizedWeight):
    """A toy format: w ≈ sign(w) · mean |w| of its row, the signs stored one per int8."""

    format: ClassVar[str] = "sign"
    signs: torch.Tensor  # (out, in) int8, ±1
    scale: torch.Tensor  # (out, 1) float32

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "SignQuantized":
        return cls(torch.where(w >= 0, 1, -1).to(torch.int8), w.abs().mean(dim=1, keepdim=True).float())

    @property
    def shape(self) -> torch.Size:
        return self.signs.shape

    @property
    def block_size(self) -> tuple[int, ...]:
        return (1, self.shape[1])

    def dequantize(self, dtype=None) -> torch.Tensor:
        w = self.signs * self.scale  # (out, in) float32
        return w if dtype is None else w.to(dtype)

    @property
    def nbytes(self) -> int:
        return self.signs.numel() + 4 * self.scale.numel()

    def to_storage(self):
        return {"shape": list(self.shape), "format": self.format}, {"signs": self.signs, "scale": self.scale}

    @classmethod
    def from_storage(cls, layout, tensors):
        return cls(tensors["signs"], tensors["scale"])

    @staticmethod
    def stored_names(layout):
        return ["signs", "scale"]


@pytest.fixture
def sign_format():
    register(SignQuantized)
    yield SignQuantized
    FORMATS.pop(SignQuantized.format, None)


def signed_classifier() -> nn.Module:
    """small_classifier with every Linear but the classifier in the sign format."""
    model = small_classifier()
    for name in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "classifier"]:
        linear = model.get_submodule(name)
        model.set_submodule(name, WeightOnlyLinear.from_representation(SignQuantized.quantize(linear.weight.detach()), linear.bias))
    return model


def test_a_format_registered_in_a_test_computes_in_weight_only_linear(sign_format):
    linear = nn.Linear(K, N)
    q = SignQuantized.quantize(linear.weight.detach())
    layer = WeightOnlyLinear.from_representation(q, linear.bias.detach())
    x = torch.randn(3, 5, K)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, q.dequantize(), linear.bias))
    assert layer.bits_per_weight == 8 + 32 / K and layer.packed_4bit() is None and "format=sign" in repr(layer)


def test_a_format_registered_in_a_test_saves_and_loads_with_identical_logits(sign_format, tmp_path):
    model = signed_classifier()
    save_quantized(model, tmp_path, "sign")
    modules = json.loads((tmp_path / "quantization.json").read_text())["modules"]
    assert len(modules) == LINEARS and {m["layout"]["format"] for m in modules.values()} == {"sign"}
    loaded = load_quantized(tmp_path).eval()
    ids_mask = ragged_batch()
    with torch.no_grad():
        assert torch.equal(loaded(*ids_mask), model(*ids_mask))


def test_a_folder_in_a_format_no_longer_registered_fails_naming_it(sign_format, tmp_path):
    save_quantized(signed_classifier(), tmp_path, "sign")
    FORMATS.pop("sign")
    with pytest.raises(ValueError, match=r"encoder.layers.0.attention.query: unknown quantized-weight format 'sign'"):
        load_quantized(tmp_path)


def test_register_refuses_a_name_already_taken():
    with pytest.raises(ValueError, match="'uniform' is already registered"):
        register(type("Other", (QuantizedWeight,), {"format": "uniform"}))
