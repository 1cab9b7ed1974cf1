"""The W8A8 Triton kernels (kernels/int8_mm.py) against their plain-torch reference, which is W8A8Linear's product
wherever the kernels do not run. On CPU the kernels run under Triton's interpreter in a subprocess (see
kernel_helpers.py), on small odd shapes: M = 1, 3, 17, K not a multiple of the block, several tiles in every
direction. The output is filled with NaN first. The int32 accumulation is exact, so codes and scales must be equal
and the output equal up to float32 rounding in the epilogue. The interpreter rounds fp32 -> bf16 by truncation and
cannot tl.dot bf16, so bf16 runs on the GPU only (`pytest -m gpu`), on the real sizes of the GPU matrix."""

import itertools
import subprocess
import sys
from functools import partial

import pytest
import torch
from kernel_helpers import poisoned, relative, result, run_interpreted

from minitransformers.kernels.int8_mm import (
    quantize_rows_reference,
    quantize_rows_triton,
    w8a8_linear,
    w8a8_linear_reference,
    w8a8_linear_triton,
)
from minitransformers.quant.qlinear import W8A8Linear
from minitransformers.quant.uniform import quantize_uniform

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weights(K: int, N: int, device: str):
    """W_q (N, K) int8 over the whole range, s_W (N, 1) positive, b (N,): random, never zero."""
    w_codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
    return w_codes, torch.rand(N, 1, device=device) * 0.01 + 1e-3, torch.randn(N, device=device)


def measure_quantize_rows(M: int, K: int, dtype: str, device: str = "cpu") -> dict:
    x = (torch.randn(M, K, device=device) * torch.rand(M, 1, device=device) * 4).to(DTYPES[dtype])  # rows of unequal scale
    codes, scale = quantize_rows_triton(x)
    ref_codes, ref_scale = quantize_rows_reference(x)
    return {"code_mismatches": (codes != ref_codes).sum().item(), "scale_mismatches": (scale != ref_scale).sum().item()}


def measure_w8a8(M: int, K: int, N: int, dtype: str, bias: bool = True, device: str = "cpu") -> dict:
    x = torch.randn(M, K, device=device).to(DTYPES[dtype])
    w_codes, w_scale, b = weights(K, N, device)
    b = b if bias else None
    out = w8a8_linear_triton(x, w_codes, w_scale, b, out=poisoned(M, N, DTYPES[dtype], device))
    return {"unwritten": out.isnan().sum().item(), "relative_error": relative(out, w8a8_linear_reference(x, w_codes, w_scale, b))}


SHAPES = [(1, 77, 45), (3, 77, 45), (17, 100, 33), (17, 32, 64), (3, 300, 7)]  # (M, K, N); interpreter tiles 16 × 32 × 32
QUANTIZE_CASES = {f"quantize M={M} K={K} {dt}": partial(measure_quantize_rows, M, K, dt) for M, K in [(1, 77), (3, 1500), (17, 64)] for dt in ("fp32", "fp16")}
W8A8_CASES = {
    f"w8a8 M={M} K={K} N={N} {dt}": partial(measure_w8a8, M, K, N, dt) for (M, K, N), dt in itertools.product(SHAPES, ("fp32", "fp16"))
} | {"w8a8 M=3 K=77 N=45 fp32 no bias": partial(measure_w8a8, 3, 77, 45, "fp32", bias=False)}  # fmt: skip
CASES = QUANTIZE_CASES | W8A8_CASES


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    return run_interpreted(__file__, tmp_path_factory.mktemp("int8_mm"))


@pytest.mark.parametrize("name", QUANTIZE_CASES)
def test_row_quantization_kernel_gives_the_reference_codes_and_scales(name, interpreted):
    assert result(interpreted, name) == {"code_mismatches": 0, "scale_mismatches": 0}


@pytest.mark.parametrize("name", W8A8_CASES)
def test_w8a8_kernel_writes_every_output_and_matches_the_reference(name, interpreted):
    numbers = result(interpreted, name)
    assert numbers["unwritten"] == 0
    assert numbers["relative_error"] < 1e-6  # exact int32 sums; only the fp32 epilogue (and fp16 output) rounds


def test_reference_row_quantization_gives_quantize_uniforms_codes_and_scales():
    """W8A8's activation quantizer is uniform.py's symmetric int8 per row, with fewer passes over x."""
    x = torch.randn(512, 768) * torch.logspace(-3, 2, 512).unsqueeze(1)  # rows of very different scales
    codes, scale = quantize_rows_reference(x)
    reference = quantize_uniform(x, 8, block_size=(1, 768))
    assert torch.equal(codes, reference.codes) and torch.equal(scale, reference.scale)


def test_w8a8_linear_computes_through_the_one_dispatch_which_takes_the_reference_on_cpu():
    linear = torch.nn.Linear(96, 40)
    layer = W8A8Linear.from_linear(linear)
    x = torch.randn(2, 7, 96)
    with torch.no_grad():
        expected = w8a8_linear_reference(x.reshape(14, 96), layer.codes, layer.scale, layer.bias).reshape(2, 7, 40)
        assert torch.equal(layer(x), expected)
        assert torch.equal(w8a8_linear(x.reshape(14, 96), layer.codes, layer.scale, layer.bias), expected.reshape(14, 40))


def test_library_imports_and_quantizes_without_triton():
    script = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch, minitransformers\n"
        "from minitransformers import kernels\n"
        "from minitransformers.quant.qlinear import W8A8Linear, WeightOnlyLinear\n"
        "assert kernels.triton is None\n"
        "lin = torch.nn.Linear(64, 8)\n"
        "W8A8Linear.from_linear(lin)(torch.randn(2, 64)); WeightOnlyLinear.from_linear(lin, 'nf4')(torch.randn(2, 64))\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


GPU_M = [1, 2, 4, 8, 16, 64, 512, 4096]
GPU_KN = list(itertools.product([768, 3072, 4096, 8192], repeat=2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("M", GPU_M)
@pytest.mark.parametrize("K, N", GPU_KN)
def test_w8a8_kernels_on_cuda_real_sizes(M, K, N):
    assert measure_quantize_rows(M, K, "bf16", device="cuda") == {"code_mismatches": 0, "scale_mismatches": 0}
    for dtype, budget in [("fp32", 1e-6), ("bf16", 1e-3)]:  # bf16: the output's own rounding, where the sums differ in the last bit
        numbers = measure_w8a8(M, K, N, dtype, device="cuda")
        assert numbers["unwritten"] == 0 and numbers["relative_error"] < budget, numbers
