"""experiments/decode_bench.py on its tiny CPU profile, in-process: every mode runs and the report holds what it
must (device, versions, command, profile, copy rate, bytes a step, the ratios to the peers); the 4-bit modes compute
what their dequantized twins compute and count their weights at their real bits; a mode past its budget is stopped
with a note; a run never overwrites the committed report unless told to. No timings are checked."""

import json

import pytest
import torch
from conftest import load_experiment

from minitransformers.model.causal_lm import CausalLM
from minitransformers.model.generate import GenerationConfig, generate
from minitransformers.quant.qlinear import WeightOnlyLinear


@pytest.fixture(scope="module")
def decode_bench():
    return load_experiment("decode_bench")


def run_tiny(decode_bench, out, *extra) -> dict:
    decode_bench.main(["--configs", "tiny", "--device", "cpu", "--new-tokens", "8", "--repeats", "2", "--out", str(out), *extra])
    return json.loads((out / "decode_bench_cpu.json").read_text())


def test_the_tiny_cpu_profile_times_every_mode_and_reports_its_fields(decode_bench, transformers, tmp_path):
    found = run_tiny(decode_bench, tmp_path)
    meta, tiny = found["meta"], found["configs"]["tiny, batch 1"]
    assert meta["device"] == "CPU" and meta["torch"] == torch.__version__ and meta["transformers"] == transformers.__version__
    assert meta["command"].endswith(f"--configs tiny --device cpu --new-tokens 8 --repeats 2 --out {tmp_path}")
    assert "8 new tokens" in meta["profile"] and "batch 1" in meta["profile"] and meta["copy_GBps"] > 0 and meta["copy_bytes"] == 2**28
    config = decode_bench.CONFIGS["tiny"][1]
    assert tiny["parameter_bytes"] == 2 * sum(p.numel() for p in CausalLM(config).parameters())  # bf16, the tied weight once
    assert tiny["kv_cache_bytes"] == 2 * config.num_layers * config.num_kv_heads * config.head_dim * (64 + 8 / 2) * 2
    rows = {r["mode"]: r for r in tiny["rows"]}
    assert list(rows) == ["ours eager", "ours compiled", "ours int4 compiled", "ours nf4 compiled", "transformers eager", "transformers static+compile"]
    for r in rows.values():
        assert r["status"] == "ok" and 1 <= r["repeats"] <= 2, r
        assert r["tokens_per_s"] == pytest.approx(8 / r["seconds"]) and r["ms_per_step"] == pytest.approx(1e3 / r["tokens_per_s"])
        assert r["implied_GBps"] == pytest.approx(r["bytes_per_step"] * r["tokens_per_s"] / 1e9)
    for mode in ("ours eager", "ours compiled", "transformers eager", "transformers static+compile"):
        assert rows[mode]["bytes_per_step"] == tiny["parameter_bytes"] + tiny["kv_cache_bytes"]
    for mode in ("ours compiled", "ours int4 compiled", "ours nf4 compiled"):  # the captured step computes what the eager one does
        assert rows[mode]["leading_tokens_as_ours_eager"] == 8 and "1 graph(s) compiled, 0 graph break(s)" in rows[mode]["note"]
    for mode in decode_bench.QUANTIZED:  # on a CPU the 4-bit layers multiply by Ŵ itself
        assert rows[mode]["twin_logits_error"] == 0 and rows[mode]["twin_leading_tokens"] == rows[mode]["twin_tokens"] == 8
        assert rows[mode]["bytes_per_step"] < 0.6 * rows["ours compiled"]["bytes_per_step"]
    for ours, peer in decode_bench.PEERS.items():
        assert rows[ours]["vs_peer"] == pytest.approx(rows[ours]["tokens_per_s"] / rows[peer]["tokens_per_s"])
    report = (tmp_path / "decode_bench_cpu.md").read_text()
    assert "# Decode speed: CPU" in report and meta["command"] in report and meta["profile"] in report
    assert f"ours eager / transformers eager {rows['ours eager']['vs_peer']:.2f}; ours compiled / transformers static+compile {rows['ours compiled']['vs_peer']:.2f}" in report
    assert f"ours int4 compiled / ours compiled {rows['ours int4 compiled']['vs_peer']:.2f}" in report


def test_a_mode_past_its_budget_is_stopped_with_a_note_and_the_report_still_written(decode_bench, transformers, tmp_path):
    rows = run_tiny(decode_bench, tmp_path, "--budget-s", "0.001", "--modes", "ours eager", "transformers eager")["configs"]["tiny, batch 1"]["rows"]
    assert [r["status"] for r in rows] == ["over budget"] * 2
    assert all(r["note"] == "stopped after 0.001 s, in its warm-up" and "vs_peer" not in r for r in rows)
    assert "Ratios of tokens/s: n/a." in (tmp_path / "decode_bench_cpu.md").read_text()


def test_a_4bit_decoder_generates_what_its_dequantized_twin_generates(decode_bench):
    """The invariant behind the 4-bit modes: quantize_model's layers compute F.linear over their dequantized weight,
    so the whole decoder, batch of 3, greedy, gives the twin's tokens exactly, where the reference path runs (CPU)."""
    ours, _ = decode_bench.models(decode_bench.CONFIGS["tiny"][1], torch.device("cpu"), None)
    ids = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(1))
    greedy = GenerationConfig(max_new_tokens=12, temperature=0)
    for mode in decode_bench.QUANTIZED:
        quantized = decode_bench.quantized(ours, mode)
        assert sum(isinstance(m, WeightOnlyLinear) for m in quantized.modules()) == 2 * 7  # q k v o gate up down; lm_head is tied
        with torch.no_grad():
            tokens, logits = generate(quantized, ids, config=greedy), quantized(ids)
            assert not torch.equal(logits, ours(ids))  # the 4-bit model is not the bf16 one
            twin = decode_bench.dequantized_twin(quantized)
            assert not any(isinstance(m, WeightOnlyLinear) for m in twin.modules())
            assert torch.equal(twin(ids), logits) and torch.equal(generate(twin, ids, config=greedy), tokens)


def test_bytes_a_step_count_4bit_weights_at_their_real_bits(decode_bench):
    """int4 with G = 128: 4 bits a weight + an fp32 scale per 128 = 4.25 bits; NF4 double-quantized: 4 + 8 / 64
    (a uint8 absmax a block of 64) + 32 / (64 · 256) (an fp32 scale a 256 blocks, rounded up a layer) ≈ 4.127."""
    config = decode_bench.CONFIGS["tiny"][1]
    ours, _ = decode_bench.models(config, torch.device("cpu"), None)
    bf16 = decode_bench.weight_bytes(ours)
    assert bf16 == 2 * sum(p.numel() for p in ours.parameters())  # tied: the embedding is lm_head's weight, read whole
    linear = {name: m.weight.numel() for name, m in ours.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    for mode, bits in (("ours int4 compiled", 4.25), ("ours nf4 compiled", 4.127)):
        quantized = decode_bench.weight_bytes(decode_bench.quantized(ours, mode))
        assert 8 * (quantized - (bf16 - 2 * sum(linear.values()))) / sum(linear.values()) == pytest.approx(bits, abs=0.01)


def test_a_run_writes_the_committed_report_only_when_told_to(decode_bench):
    assert decode_bench.parse_args(["--device", "cpu"]).out == decode_bench.RESULTS.parent.parent / "runs" / "decode_bench"
    assert decode_bench.parse_args(["--device", "cpu", "--write-reference"]).out == decode_bench.RESULTS
    for refused in (["--out", str(decode_bench.RESULTS)], ["--write-reference", "--out", "elsewhere"]):
        with pytest.raises(SystemExit):
            decode_bench.parse_args(["--device", "cpu", *refused])
