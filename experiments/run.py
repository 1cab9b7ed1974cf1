"""Run every experiment in turn (`make experiment`; `PROFILE=full make experiment` for the long profiles).
Each comparison writes its report to experiments/results/ (one entry per profile); sts_benchmark.py writes to
runs/sts_benchmark/ unless run with --write-reference."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = os.environ.get("PROFILE", "quick")
EXPERIMENTS = [
    ["sts_benchmark.py"],
    ["finetune_sentiment.py", "--profile", PROFILE],
    ["mlm_pretrain.py", "--profile", PROFILE],
    ["peft_compare.py", "--profile", PROFILE],
    ["qlora.py", "--profile", PROFILE],
    ["quant_compare.py", "--profile", PROFILE],
    ["decoder_check.py", "--profile", PROFILE],
]

argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help describes the run
for script, *args in EXPERIMENTS:
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
