"""Running the Triton kernel tests on CPU, under Triton's interpreter, from inside one pytest process.

TRITON_INTERPRET=1 makes Triton run kernels on CPU tensors with numpy, but triton 3.9 reads it when `triton.jit`
decorates a function (`knobs.runtime.interpret` in `triton.jit`), that is when minitransformers.kernels is
first imported, and every test that imports minitransformers.quant imports it, usually before a kernel test
could set the variable. So a kernel test module lists its checks in `CASES` (name -> function returning a dict
of numbers), and `run_interpreted` runs them all in a fresh process with the variable set, this file being the
script; the tests in the module then assert on the numbers. On the GPU the same functions run in-process.

    python tests/kernel_helpers.py tests/test_kernels_int8.py results.json
"""

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import torch


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN if out holds NaN, so an unwritten poisoned element fails any budget)."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def poisoned(M: int, N: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """An output buffer full of NaN: whatever the kernel leaves unwritten stays NaN."""
    return torch.full((M, N), float("nan"), dtype=dtype, device=device)


def run_interpreted(test_file: str, workdir: Path) -> dict:
    """Run every case of `test_file`'s CASES in a fresh process under TRITON_INTERPRET=1: {name: numbers or error}."""
    results = workdir / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__, test_file, str(results)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the interpreter run of {test_file} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(results.read_text())


def result(results: dict, name: str) -> dict:
    """One case's numbers; a case that raised in the interpreter process fails here with its traceback."""
    if "error" in results[name]:
        raise AssertionError(f"case {name!r} raised under the interpreter:\n{results[name]['error']}")
    return results[name]


def main(test_file: str, out: str) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1: this script runs the kernel cases under Triton's interpreter")
    spec = importlib.util.spec_from_file_location(Path(test_file).stem, test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = {}
    for name, case in module.CASES.items():
        torch.manual_seed(0)
        try:
            results[name] = case()
        except Exception:  # reported by the test of that case, with the traceback
            results[name] = {"error": traceback.format_exc()}
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
