"""experiments/decode_bench.py on its tiny CPU profile, in-process: every mode runs and the report holds what it
must (device, versions, command, profile, copy rate, bytes a token, the ratios to transformers); a mode past its
budget is stopped with a note; a run never overwrites the committed report unless told to. No timings are checked."""

import json

import pytest
import torch
from conftest import load_experiment

from minitransformers.model.causal_lm import CausalLM


@pytest.fixture(scope="module")
def decode_bench():
    return load_experiment("decode_bench")


def run_tiny(decode_bench, out, *extra) -> dict:
    decode_bench.main(["--configs", "tiny", "--device", "cpu", "--new-tokens", "8", "--repeats", "2", "--out", str(out), *extra])
    return json.loads((out / "decode_bench_cpu.json").read_text())


def test_the_tiny_cpu_profile_times_every_mode_and_reports_its_fields(decode_bench, transformers, tmp_path):
    found = run_tiny(decode_bench, tmp_path)
    meta, tiny = found["meta"], found["configs"]["tiny"]
    assert meta["device"] == "CPU" and meta["torch"] == torch.__version__ and meta["transformers"] == transformers.__version__
    assert meta["command"].endswith(f"--configs tiny --device cpu --new-tokens 8 --repeats 2 --out {tmp_path}")
    assert "8 new tokens" in meta["profile"] and meta["copy_GBps"] > 0 and meta["copy_bytes"] == 2**28
    config = decode_bench.CONFIGS["tiny"][1]
    assert tiny["parameter_bytes"] == 2 * sum(p.numel() for p in CausalLM(config).parameters())  # bf16, the tied weight once
    assert tiny["kv_cache_bytes"] == 2 * config.num_layers * config.num_kv_heads * config.head_dim * (64 + 8 / 2) * 2
    rows = {r["mode"]: r for r in tiny["rows"]}
    assert list(rows) == ["ours eager", "ours compiled", "transformers eager", "transformers static+compile"]
    for r in rows.values():
        assert r["status"] == "ok" and 1 <= r["repeats"] <= 2, r
        assert r["tokens_per_s"] == pytest.approx(8 / r["seconds"]) and r["ms_per_token"] == pytest.approx(1e3 / r["tokens_per_s"])
        assert r["implied_GBps"] == pytest.approx((tiny["parameter_bytes"] + tiny["kv_cache_bytes"]) * r["tokens_per_s"] / 1e9)
    assert rows["ours compiled"]["leading_tokens_as_ours_eager"] == 8  # the captured step computes what the eager one does
    assert "1 graph(s) compiled, 0 graph break(s), 0 without CUDA graphs" in rows["ours compiled"]["note"]
    for ours, peer in decode_bench.PEERS.items():
        assert rows[ours]["vs_peer"] == pytest.approx(rows[ours]["tokens_per_s"] / rows[peer]["tokens_per_s"])
    report = (tmp_path / "decode_bench_cpu.md").read_text()
    assert "# Decode speed: CPU" in report and meta["command"] in report and meta["profile"] in report
    assert f"eager {rows['ours eager']['vs_peer']:.2f}; compiled (ours compiled / transformers static+compile) {rows['ours compiled']['vs_peer']:.2f}" in report


def test_a_mode_past_its_budget_is_stopped_with_a_note_and_the_report_still_written(decode_bench, transformers, tmp_path):
    rows = run_tiny(decode_bench, tmp_path, "--budget-s", "0.001")["configs"]["tiny"]["rows"]
    assert [r["status"] for r in rows] == ["over budget"] * 4
    assert all(r["note"] == "stopped after 0.001 s, in its warm-up" and "vs_peer" not in r for r in rows)
    assert "eager n/a; compiled (ours compiled / transformers static+compile) n/a" in (tmp_path / "decode_bench_cpu.md").read_text()


def test_a_run_writes_the_committed_report_only_when_told_to(decode_bench):
    assert decode_bench.parse_args(["--device", "cpu"]).out == decode_bench.RESULTS.parent.parent / "runs" / "decode_bench"
    assert decode_bench.parse_args(["--device", "cpu", "--write-reference"]).out == decode_bench.RESULTS
    for refused in (["--out", str(decode_bench.RESULTS)], ["--write-reference", "--out", "elsewhere"]):
        with pytest.raises(SystemExit):
            decode_bench.parse_args(["--device", "cpu", *refused])
