"""W8A8 on the GPU: per-token int8 activations × per-channel int8 weights, the product in int32, in two kernels.

The scheme is the vector-wise quantization of LLM.int8 (Dettmers et al. 2022, section 3.1, without its outlier
decomposition) and SmoothQuant's per-token × per-channel W8A8 (Xiao et al. 2023, section 2, without smoothing);
quant/qlinear.py's W8A8Linear states it and its error. The data, all contiguous and row-major:

    x    (M, K) bf16 / fp16 / fp32      M tokens
    X_q  (M, K) int8,  s_X (M, 1) fp32   s_X = max(absmax of the row, eps) / 127,  X_q = round(x / s_X)
    W_q  (N, K) int8,  s_W (N, 1) fp32   made once by W8A8Linear.from_linear
    y    (M, N) in x's dtype             y = (X_q W_qᵀ) ⊙ s_X ⊙ s_Wᵀ + b

Kernel 1, `quantize_rows_kernel`: one program per token. It reads the row once for its absmax and once more to
round it (the second read mostly hits the L2 cache); no kernel can skip the first pass, since every code needs
the row's scale. Its cost is a copy of x, small against the GEMM.

Kernel 2, `w8a8_kernel`: a tiled GEMM. Each program owns a (BLOCK_M, BLOCK_N) tile of y, walks K in BLOCK_K steps
and accumulates tl.dot(X_q tile (BLOCK_M, BLOCK_K), W_qᵀ tile (BLOCK_K, BLOCK_N)) in int32 registers: int8 tensor
cores, exact. The epilogue (int32 -> fp32, × s_X, × s_W, + b, cast to x's dtype) runs on the accumulator in
registers, so y is written once; torch._int_mm instead writes the int32 product to memory (4 bytes an element)
and the scaling reads it back. At M = N = K = 8192 the matmul needs 2 M N K = 1.1e12 int8 operations and moves
M K + N K + 2 M N bytes: about 4 000 operations a byte, far above the H100's 1 979 TOPS / 3.35 TB/s ≈ 600, so the
GEMM is compute-bound and its tiles are large, autotuned over a few shapes; programs go GROUP_M row tiles at a
time so neighbours share tiles in the L2 cache.

Each kernel sits beside its plain-torch reference (`quantize_rows_reference`, `w8a8_linear_reference`, whose int8
product is `int8_matmul`: torch._int_mm where it takes the shapes, an exact float64 matmul elsewhere). The
reference is W8A8Linear's product wherever the kernels do not run: `w8a8_linear`, which W8A8Linear calls, picks the
kernels on CUDA when Triton imports, the reference elsewhere.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from . import autotuned, grouped_tile, jit, round_half_even, tl, triton, triton_runs_on

EPS = torch.finfo(torch.float32).eps  # the smallest scale, as quant/uniform.py: an all-zero row gets codes 0


# --- per-token activation quantization -----------------------------------------------------------------------------


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> X_q (M, K) int8 and s_X (M, 1) fp32: symmetric absmax / 127 per row, round half to even; the
    codes and scales of quant/uniform.py's `quantize_uniform(x, 8, block_size=(1, K))` (a test checks), in fewer
    passes over x, since a dynamic quantization runs at every call. |x| · 127 / absmax ≤ 127 rounds inside the int8
    range, so no clamp is needed. 127 is a tensor on x's device: on CUDA, PyTorch divides by a Python number as a
    multiplication by its rounded reciprocal, which can miss the correctly rounded quotient (the kernel's div_rn)
    by one ulp."""
    absmax = x.float().abs().amax(-1, keepdim=True).clamp_min(EPS)  # (M, 1)
    scale = absmax / torch.full((), 127.0, device=x.device)  # (M, 1)
    return (x.float() / scale).round_().to(torch.int8), scale


@jit
def quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, EPS: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    ks = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * K + k0 + ks, mask=k0 + ks < K, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.abs(x))
    scale = tl.math.div_rn(tl.maximum(tl.max(absmax, axis=0), EPS), 127.0)  # IEEE division, as torch's
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * K + k0 + ks, mask=k0 + ks < K, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * K + k0 + ks, round_half_even(tl.math.div_rn(x, scale)).to(tl.int8), mask=k0 + ks < K)


def quantize_rows_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton version of `quantize_rows_reference`: the same codes and scales."""
    x = x.contiguous()
    M, K = x.shape
    codes = torch.empty(M, K, dtype=torch.int8, device=x.device)
    scale = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    quantize_rows_kernel[(M,)](x, codes, scale, K, EPS=EPS, BLOCK_K=min(triton.next_power_of_2(K), 1024))
    return codes, scale


# --- the int8 GEMM with its fused epilogue -------------------------------------------------------------------------


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has VNNI, the int8 dot-product instructions (AVX512-VNNI, AVX-VNNI) that torch._int_mm's
    CPU kernel (oneDNN) is fast with. Without them it is slow: on an AVX2-only AMD EPYC, (2048, 384) @ (384, 384)
    took 124 ms, against 4 ms for fp32 F.linear and 13 ms for the exact float64 fallback below."""
    return getattr(torch.cpu, "_is_vnni_supported", lambda: True)()


def int_mm_supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch._int_mm's preconditions, and where it pays: int8 matrices on a CPU with VNNI (any shape) or on CUDA,
    where cuBLASLt needs M > 16 and K, N positive multiples of 8 (the checks of `_int_mm_out_cuda`,
    aten/src/ATen/native/cuda/Blas.cpp)."""
    (M, K), N = a.shape, b.shape[1]
    if a.device.type == "cpu":
        return cpu_has_int8_dot()
    return a.device.type == "cuda" and M > 16 and K > 0 and K % 8 == 0 and N > 0 and N % 8 == 0


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> (M, N) int32, exact.

    Fast path: torch._int_mm, whenever `int_mm_supported` (every shape on a CPU with VNNI; CUDA shapes with M > 16
    and K, N multiples of 8). The reference passes b as the transposed view of the contiguous (N, K) weight, a column-major
    (K, N) that needs no copy. Fallback, everywhere else: a float64 matmul, rounded to int32. It is exact
    because every product |a b| ≤ 128² = 2^14 and every partial sum stays below 2^53 for K < 2^39. Either path
    wraps around once a sum leaves int32: possible from K = 2^31 / 2^14 = 131,072 on (133,144 for codes in ±127)."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul multiplies int8 matrices, got {a.dtype} and {b.dtype}; quantize them first")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise InputError(f"int8_matmul needs a (M, K) and b (K, N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if int_mm_supported(a, b):
        return torch._int_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)  # exact, see above


def w8a8_linear_reference(x: torch.Tensor, w_codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) float, W_q (N, K) int8, s_W (N, 1) fp32, b (N,) or None -> y (M, N) in x's dtype."""
    codes, scale = quantize_rows_reference(x)  # (M, K) int8, (M, 1)
    acc = int8_matmul(codes, w_codes.t())  # (M, K) @ (K, N) -> (M, N) int32; w_codes.t() is column-major
    y = acc.to(scale.dtype).mul_(scale).mul_(w_scale.t())  # (M, N) ⊙ s_X (M, 1) ⊙ s_Wᵀ (1, N), in place
    if bias is not None:
        y = y.add_(bias)
    return y.to(x.dtype)


W8A8_CONFIGS = [  # H100: int8 tiles of 128 × 256 × 128 keep 3 stages in 144 KB of shared memory
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
]  # fmt: skip
W8A8_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}


@autotuned(W8A8_CONFIGS, W8A8_INTERPRETER_CONFIG, key=["M_CLASS", "N", "K"])
def w8a8_kernel(
    xq_ptr, sx_ptr, wq_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, M_CLASS,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """y tile = (X_q W_qᵀ) ⊙ s_X ⊙ s_Wᵀ + b. M_CLASS, the next power of two of M, only keys the autotuning cache."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) tokens
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    ks = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        a = tl.load(xq_ptr + rows[:, None] * K + k[None, :], mask=(rows[:, None] < M) & (k[None, :] < K), other=0)  # (BM, BK)
        b = tl.load(wq_ptr + cols[None, :] * K + k[:, None], mask=(cols[None, :] < N) & (k[:, None] < K), other=0)  # (BK, BN): W_qᵀ
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    s_x = tl.load(sx_ptr + rows, mask=rows < M, other=0.0)  # (BLOCK_M,)
    s_w = tl.load(sw_ptr + cols, mask=cols < N, other=0.0)  # (BLOCK_N,)
    y = acc.to(tl.float32) * s_x[:, None] * s_w[None, :]  # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * N + cols[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def w8a8_matmul_triton(codes, scale, w_codes, w_scale, bias, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """X_q (M, K) int8, s_X (M, 1), W_q (N, K) int8, s_W (N, 1), b (N,) or None -> y (M, N) of `dtype`, written into
    `out` when given (the tests fill it with NaN first, so that a tile left unwritten shows)."""
    (M, K), N = codes.shape, w_codes.shape[0]
    out = torch.empty(M, N, dtype=dtype, device=codes.device) if out is None else out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    w8a8_kernel[grid](
        codes.contiguous(), scale.contiguous(), w_codes.contiguous(), w_scale.contiguous(), bias, out,
        M, N, K, triton.next_power_of_2(M), HAS_BIAS=bias is not None,
    )  # fmt: skip
    return out


def w8a8_linear_triton(x, w_codes, w_scale, bias, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton version of `w8a8_linear_reference`: two launches, quantize the tokens, then the fused GEMM."""
    codes, scale = quantize_rows_triton(x)
    return w8a8_matmul_triton(codes, scale, w_codes, w_scale, bias, x.dtype, out)


def w8a8_linear(x: torch.Tensor, w_codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Ŵᵀ + b, W8A8: x (M, K) -> (M, N). The Triton kernels on CUDA, the reference elsewhere."""
    if triton_runs_on(x, w_codes):
        return w8a8_linear_triton(x, w_codes, w_scale, bias)
    return w8a8_linear_reference(x, w_codes, w_scale, bias)
