"""AdamW's weight-decay groups and the warmup-then-decay schedule (BERT, appendix A.2)."""

import math

import pytest
import torch

from minitransformers import Encoder, EncoderConfig
from minitransformers.train.optim import adamw, param_groups, schedule, warmup_decay


def test_biases_and_layernorm_get_no_weight_decay():
    model = Encoder(EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_linear_warmup_then_linear_decay_to_zero():
    assert [warmup_decay(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_decay(4, 4, 12) == 1.0
    assert warmup_decay(8, 4, 12) == pytest.approx(0.5)
    assert warmup_decay(12, 4, 12) == 0.0


def test_cosine_decay_passes_one_half_at_mid_point():
    assert warmup_decay(8, 4, 12, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_decay(12, 4, 12, "cosine") == pytest.approx(0.0)


def test_scheduler_drives_the_optimizer_learning_rate():
    model = torch.nn.Linear(4, 4)
    opt = adamw(model, lr=1e-3)
    sched = schedule(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        schedule(opt, 1, 5, "step")
