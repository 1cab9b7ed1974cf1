"""Pack the data a GPU run needs into .carry/, in pieces that fit the device call's 64 MiB working tree.

The lent GPU machine reaches no network, so `fetch` cannot run there, and one call carries at most 64 MiB. This
writes, from the fetched data/ here:

    .carry/minilm/      all-MiniLM-L6-v2 with its weights rounded to fp16 (45 MB instead of 91); its .fetched stamp
                        says so, and the experiments' tables name it "(weights rounded to fp16)"
    .carry/reviews/     the clothing reviews as fetched (9 MB)
    .carry/smollm2.N    the SmolLM2 GGUF cut into pieces of at most --piece-mb (94 MB in all), with its name, sha256
                        and fetch stamp beside them; on the GPU, `bash scripts/gpu_checks.sh unpack` joins the
                        pieces and checks the sha256

Carry one or two of them a call (`.git/info/exclude` must name /.carry/): what a call carries stays on the warm
machine for the next. Run from the repository root: python scripts/carry_data.py
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from minitransformers.text.sources import data_dir

CARRY = Path(".carry")


def minilm_fp16(out: Path) -> None:
    source = data_dir("minilm")
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("model.safetensors", ".fetched"))
    state = load_file(source / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})
    sha = (source / ".fetched").read_text().split()[0]
    (out / ".fetched").write_text(f"{sha}\nweights rounded to fp16\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piece-mb", type=int, default=48, help="the largest piece of the GGUF (default: 48)")
    args = parser.parse_args()
    shutil.rmtree(CARRY, ignore_errors=True)
    CARRY.mkdir()
    minilm_fp16(CARRY / "minilm")
    shutil.copytree(data_dir("reviews"), CARRY / "reviews")
    gguf = next(data_dir("smollm2").glob("*.gguf"))
    data, size = gguf.read_bytes(), args.piece_mb * 2**20
    for i in range(0, len(data), size):
        (CARRY / f"smollm2.{i // size}").write_bytes(data[i : i + size])
    digest = hashlib.sha256(data).hexdigest()  # the joined file's, checked on the GPU machine
    (CARRY / "smollm2.name").write_text(f"{digest}  {gguf.name}\n")
    shutil.copy(gguf.parent / ".fetched", CARRY / "smollm2.fetched")
    for path in sorted(CARRY.iterdir()):
        mb = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))) / 2**20
        print(f"{path}: {mb:.1f} MiB")


if __name__ == "__main__":
    main()
