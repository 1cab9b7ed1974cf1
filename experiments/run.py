"""Run every experiment in turn (`make experiment`; `PROFILE=full make experiment` for the long profiles), timing each.
The quick profiles take about 18 minutes in all on a quiet 2-core CPU machine (measured 2026-12-08: 17 min 47 s; each script's docstring gives its share).
Each comparison writes its report to experiments/results/ (one entry per profile); sts_benchmark.py writes to
runs/sts_benchmark/ unless run with --write-reference. Prints each experiment's wall time as it ends, then a table
of them and the total, also written to runs/experiment_times_<PROFILE>.json. If one fails, the times so far are
still printed and written, and the run stops there with a non-zero exit status."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RUNS, wall_time

HERE = Path(__file__).resolve().parent
PROFILE = os.environ.get("PROFILE", "quick")
EXPERIMENTS = [
    ["sts_benchmark.py"],
    ["finetune_sentiment.py", "--profile", PROFILE],
    ["mlm_pretrain.py", "--profile", PROFILE],
    ["peft_compare.py", "--profile", PROFILE],
    ["qlora.py", "--profile", PROFILE],
    ["quant_compare.py", "--profile", PROFILE],
    ["ner_wnut.py", "--profile", PROFILE],
    ["faq_retrieval.py"],
    ["decoder_check.py", "--profile", PROFILE],
    ["sft_reviews.py", "--profile", PROFILE],
    ["dpo_sentiment.py", "--profile", PROFILE],
]

argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help describes the run
seconds, failed = {}, None
for script, *args in EXPERIMENTS:
    name = " ".join([script, *args])
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, str(HERE / script), *args]).returncode
    seconds[name] = time.perf_counter() - start
    print(f"== {name}: {'done' if code == 0 else f'failed (exit status {code})'} in {wall_time(seconds[name])}", flush=True)
    if code:
        failed = name
        break

total = sum(seconds.values())
width = max(map(len, [*seconds, "total"]))
print(f"\n== wall times, profile {PROFILE}{f' (stopped: {failed} failed)' if failed else ''}")
for name, s in [*seconds.items(), ("total", total)]:
    print(f"{name:<{width}}  {wall_time(s)}")
RUNS.mkdir(parents=True, exist_ok=True)
record = {"profile": PROFILE, "cpus": os.cpu_count(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "failed": failed,
          "seconds": seconds, "total_seconds": total}  # fmt: skip
(RUNS / f"experiment_times_{PROFILE}.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {RUNS / f'experiment_times_{PROFILE}.json'}")
if failed:
    sys.exit(f"{failed} failed")
