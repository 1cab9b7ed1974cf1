"""One call of each W4A16 GEMV (M = 1) inside an NVTX range, for Nsight Compute: where does the kernel's time go?

The autotuner's trial launches run first, outside the range, so ncu profiles only the tuned kernel:

    ncu --nvtx --nvtx-include "profile/" --clock-control none --section SpeedOfLight --section WarpStateStats \
        --section Occupancy --section LaunchStats --csv python3 scripts/ncu_gemv.py

The shapes: K = N = 8192 (issue 21's headline) and Llama-8B's FFN up projection, 4096 -> 14336. The question ncu
answers: is the GEMV bound by DRAM (dram__throughput near its peak) or by instruction issue (sm__throughput,
issue slots busy) while DRAM waits.
"""

from __future__ import annotations

import torch
from torch import nn

from minitransformers.kernels.int4_mm import w4a16_linear_triton
from minitransformers.quant.qlinear import WeightOnlyLinear

FORMATS = {"int4 G=128": ("int4", {"group_size": 128}), "nf4 double-quant": ("nf4", {"double_quant": True})}
SHAPES = [(8192, 8192), (4096, 14336)]  # (K, N)


def main() -> None:
    torch.manual_seed(0)
    calls = []
    for K, N in SHAPES:
        linear = nn.Linear(K, N, bias=False, device="cuda")
        nn.init.normal_(linear.weight, std=0.02)
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        for name, (method, options) in FORMATS.items():
            w = WeightOnlyLinear.from_linear(linear, method, **options).packed_4bit()
            w4a16_linear_triton(x, w, None)  # autotune, outside the profiled range
            calls.append((f"{name} {K}->{N}", x, w))
    torch.cuda.synchronize()
    with torch.cuda.nvtx.range("profile"):  # ncu lists the kernels in this order
        for label, x, w in calls:
            w4a16_linear_triton(x, w, None)
            torch.cuda.synchronize()
            print(label, "profiled")


if __name__ == "__main__":
    main()
