"""Compile the Triton kernels for an H100 (sm_90) on this machine, no GPU needed, and count what their PTX holds.

The cheapest look at a kernel (device METHOD.md: "read what costs no device time"): the shared memory each
autotuning config asks for, and whether the weight loads are 16 bytes wide (`cp.async ... 0x10`, `ld.global.v4`)
or one byte (`ld.global.b8`), and whether the dots are Hopper `wgmma` or `mma.sync`. Integer arguments that Triton
would specialise as multiples of 16 at these sizes (N, K, row_bytes, the pointers) are declared so.

    python scripts/kernel_ptx.py                 # every config of the three kernels, bf16 activations
    python scripts/kernel_ptx.py --ptx /tmp/ptx  # also write each kernel's PTX there
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from minitransformers.kernels import int4_mm, int8_mm

PATTERNS = ["ld.global.b8", "ld.global.v4", "cvt.rn.f32", "ld.shared", "bar.sync", "cp.async.cg.shared.global", "cp.async.ca.shared.global", "mma.sync", "wgmma.mma_async"]
FORMATS = {  # name -> W4A16 constexprs and the dtype of the stored scales
    "int4 G=128": ({"GROUP": 128, "CODEBOOK": False, "AFFINE": False, "DOUBLE_QUANT": False}, "*fp32"),
    "nf4 double-quant": ({"GROUP": 64, "CODEBOOK": True, "AFFINE": False, "DOUBLE_QUANT": True}, "*u8"),
}


def compile_sm90(kernel, types: dict, constants: dict, config: dict):
    jit_fn = kernel.fn  # under the autotuner
    names = jit_fn.arg_names
    meta = dict(config)
    options = {"num_warps": meta.pop("num_warps", 4), "num_stages": meta.pop("num_stages", 2)}  # autotuned()'s defaults
    constants = constants | meta
    signature = {n: "constexpr" if n in constants else types.get(n, "*fp32" if n.endswith("_ptr") else "i32") for n in names}
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n in ("N", "K", "row_bytes")}
    source = ASTSource(jit_fn, signature, {(names.index(n),): v for n, v in constants.items()}, aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def cases():
    """(label, kernel, argument types, constexprs, configs) for every kernel and weight format."""
    for fmt, (flags, scale_type) in FORMATS.items():
        types = {"x_ptr": "*bf16", "out_ptr": "*fp32", "packed_ptr": "*u8", "zero_ptr": "*u8", "scale_ptr": scale_type}
        constants = {**flags, "DQ_GROUP": 256, "HAS_BIAS": True, "DOT_PRECISION": None}
        gemv_types = types | {"x_ptr": "*i32", "out_ptr": "*bf16", "arrived_ptr": "*i32"}  # bf16 x read as int32 words
        gemv_constants = {k: v for k, v in constants.items() if k != "DOT_PRECISION"} | {"X_WORDS": True, "X_BF16": True}
        yield f"w4a16 GEMV, {fmt}", int4_mm.w4a16_gemv_kernel, gemv_types, gemv_constants, int4_mm.GEMV_CONFIGS
        yield f"w4a16 split-K, {fmt}", int4_mm.w4a16_splitk_kernel, types, constants | {"BLOCK_M": 16}, int4_mm.SPLITK_CONFIGS
        yield f"w4a16 tiled, {fmt}", int4_mm.w4a16_tiled_kernel, types | {"out_ptr": "*bf16"}, constants, int4_mm.TILED_CONFIGS
    types = {"xq_ptr": "*i8", "wq_ptr": "*i8", "out_ptr": "*bf16"}
    yield "w8a8", int8_mm.w8a8_kernel, types, {"HAS_BIAS": True}, int8_mm.W8A8_CONFIGS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptx", type=Path, help="write each kernel's PTX into this folder")
    args = parser.parse_args(argv)
    print("| kernel | config | shared KB | " + " | ".join(PATTERNS) + " |")
    print("|" + "---|" * (3 + len(PATTERNS)))
    for label, kernel, types, constants, configs in cases():
        for i, config in enumerate(configs):
            compiled = compile_sm90(kernel, types, constants, config)
            ptx = compiled.asm["ptx"]
            counts = [str(len(re.findall(re.escape(p) + r"\b", ptx))) for p in PATTERNS]
            print(f"| {label} | {i}: {config} | {compiled.metadata.shared / 1024:.0f} | " + " | ".join(counts) + " |", flush=True)
            if args.ptx:
                args.ptx.mkdir(parents=True, exist_ok=True)
                (args.ptx / f"{re.sub(r'[^a-z0-9]+', '_', label.lower())}_{i}.ptx").write_text(ptx)


if __name__ == "__main__":
    main()
