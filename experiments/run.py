"""Run every experiment in turn (`make experiment`). Each writes its report to experiments/results/."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPERIMENTS = ["sts_benchmark.py"]

for script in EXPERIMENTS:
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
