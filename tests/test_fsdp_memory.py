"""Per-rank training memory under --fsdp: 2 gloo processes each hold half the parameters, gradients and AdamW
state of one process (to the rows of uneven shards), as counted and as predicted by train/memory.py."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One AdamW step of the tiny classifier (cls pooling, random labels) on this process; its memory as JSON.
STEP = textwrap.dedent("""
    import json, sys, torch
    from minitransformers.model import SequenceClassifier
    from minitransformers.peft.methods import apply_method
    from minitransformers.train import distributed, memory
    from minitransformers.train.optim import adamw

    def one_step(model_dir, method, world):
        torch.manual_seed(0)
        model = apply_method(SequenceClassifier.from_encoder(model_dir, 2, pooling="cls"), method)
        shapes = {n: (p.shape, p.requires_grad) for n, p in model.named_parameters()}
        model = distributed.wrap(model, world, fsdp=world.size > 1 or distributed.dist.is_initialized())
        optimizer = adamw(model, 1e-3)
        ids = torch.randint(5, 90, (4, 12))
        torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), torch.tensor([0, 1, 1, 0])).backward()
        optimizer.step()
        row_bytes = sum(4 * shape[1:].numel() for shape, _ in shapes.values())  # one row of every tensor: the most a shard can be off half
        return {"measured": memory.measured(model, optimizer), "analytic": memory.analytic(shapes, world.rank, world.size), "row_bytes": row_bytes}
""")


def test_two_ranks_each_hold_half_the_optimizer_state_of_one(tiny, tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP + textwrap.dedent("""
        world = distributed.init("cpu", fsdp=True)
        rows = {method: one_step(sys.argv[1], method, world) for method in ("full", "lora")}
        open(f"{sys.argv[2]}/rank{world.rank}.json", "w").write(json.dumps(rows))
        distributed.shutdown(world)
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tiny / "model"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    namespace = {}
    exec(STEP, namespace)  # the same step in this process, unsharded: what one process (or each DDP rank) holds
    one = {method: namespace["one_step"](tiny / "model", method, namespace["distributed"].World()) for method in ("full", "lora")}
    report = {}
    for method in ("full", "lora"):
        single, halves = one[method], [rank[method] for rank in ranks]
        assert single["measured"] == single["analytic"]
        for half in halves:
            assert half["measured"] == half["analytic"]  # each rank's shards, as the chunk rule predicts
        for kind in ("parameters", "gradients", "optimizer"):
            assert sum(h["measured"][kind] for h in halves) == single["measured"][kind]  # the shards add up to the whole
            assert all(abs(h["measured"][kind] - single["measured"][kind] / 2) <= single["row_bytes"] for h in halves)
        report[method] = {"world 1": single["measured"], "world 2 per rank": [h["measured"] for h in halves]}
    print(json.dumps(report))  # pytest -s shows the numbers

