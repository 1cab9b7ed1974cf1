"""The before/after table of issue 18: every case of tests/bad_input_cases.py run as its own
`python -m minitransformers` process against a checkout, each outcome classified.

    python scripts/bad_inputs_report.py                      # this checkout
    python scripts/bad_inputs_report.py --code /tmp/before   # another one (e.g. a `git worktree` of an older commit)

The inputs are built once with this checkout's code (a tiny model, its runs, then each case's damage); only the
command under test runs from `--code`. Outcomes: `clean` (exit status not 0, the last line of stderr `error: ...`,
no traceback), `clean, names it` (that line contains the file or flag), `traceback`, `silent` (exit 0 where the
input should have been refused), and for the cases that must succeed `works` / `fails`; and whether the command
changed any of its inputs (each case starts from a fresh copy of them). Prints a markdown table
of every case and the counts, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "tests")]


def classify(case, done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    if case.ok:
        return "works" if done.returncode == 0 else "fails"
    if done.returncode == 0:
        return "silent"
    if "Traceback" in done.stderr or not lines or "error" not in lines[-1]:
        return "traceback"
    return "clean, names it" if case.expect in lines[-1] else "clean"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", default=str(HERE), help="the checkout whose CLI runs each case (default: this one)")
    parser.add_argument("--json", help="also write the outcomes to this JSON file")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case; a case that runs longer counts as a traceback (default: 120)")
    args = parser.parse_args()

    from bad_input_cases import Artifacts, all_cases, make_artifacts
    from conftest import DATA, make_tiny
    from test_bad_inputs import snapshot

    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    pristine = root / "pristine"
    make_artifacts(pristine / "artifacts", make_tiny(pristine / "tiny"))
    work = root / "work"
    artifacts = Artifacts(work / "tiny", work / "artifacts" / "full", work / "artifacts" / "adapter", work / "artifacts" / "quantized")

    env = {**os.environ, "PYTHONPATH": args.code, "MINITRANSFORMERS_DATA": str(DATA)}
    results = {}
    for number, (name, build) in enumerate(all_cases().items(), 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)  # every case starts from whole inputs, whatever the one before did to them
        tmp = root / f"case{number}"
        tmp.mkdir()
        case = build(artifacts, tmp)
        before = snapshot(work)
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "minitransformers", *case.argv], input=case.stdin, capture_output=True, text=True,
                                  cwd=tmp, env=env, timeout=args.timeout)  # fmt: skip
            outcome = classify(case, done)
            line = (done.stderr.strip().splitlines() or [""])[-1][:160]
        except subprocess.TimeoutExpired:
            outcome, line = "traceback", f"(ran past {args.timeout} s)"
        changed = sorted(str(Path(k).relative_to(work)) for k, v in snapshot(work).items() if before.get(k) != v)
        results[name] = {"outcome": outcome, "inputs_changed": changed, "seconds": round(time.perf_counter() - start, 2), "last_line": line}
        print(f"{number:3} {outcome:16} {name}{'  (changed its inputs!)' if changed else ''}", file=sys.stderr)

    counts = collections.Counter(r["outcome"] for r in results.values())
    counts["changed its inputs"] = sum(bool(r["inputs_changed"]) for r in results.values())
    print(f"code: {args.code}\n\n| case | outcome | inputs changed | s | last line of stderr |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['outcome']} | {', '.join(r['inputs_changed'][:3]) or 'no'} | {r['seconds']} | {r['last_line'].replace('|', '/')} |")
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" (of {len(results)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"code": args.code, "counts": counts, "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
