"""Direct Preference Optimization: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", eq. 7, as a task for the trainer (trainer.py).

Given a prompt x and two completions, the preferred y_w ("chosen") and the dispreferred y_l ("rejected"), DPO fits
the policy π_θ directly, with no reward model and no sampling, against a frozen reference π_ref (the starting,
usually SFT, model):

    L_DPO = −log σ( β [ (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x)) ] )       (eq. 7)

    log π(y|x) = Σ_t log π(y_t | x, y_<t)         the SUM over the completion's tokens; prompt and padding masked

β · (log π_θ(y|x) − log π_ref(y|x)) is the reward the policy implies (section 5, eq. 5 without β log Z(x), which
cancels between y_w and y_l). β weighs the KL penalty to the reference: small β lets the policy move further. The
paper's default β = 0.1 (section 6; 0.5 for TL;DR summarisation), as TRL's.

One forward for both completions, as TRL does: the batch holds the B prompt+chosen rows, then the B
prompt+rejected rows (text/preference.py), input_ids (2B, T), and a completion_mask (2B, T) that is 1 on the
completion tokens only. Logged as TRL's DPOTrainer logs them (loss_type "sigmoid"):

    rewards/chosen, rewards/rejected     β (log π_θ − log π_ref) of y_w, of y_l, averaged over pairs
    rewards/accuracies                   the share of pairs whose chosen reward is above the rejected one
    rewards/margins                      rewards/chosen − rewards/rejected
    logps/chosen, logps/rejected         log π_θ(y|x), the summed completion log-probs

TRL averages a metric over each batch, then over batches; `evaluate` here averages over every pair at once. TRL
switches dropout off in both models (disable_dropout); the decoder has none (attention_dropout 0) and the reference
forward runs none, but a policy given LoRA dropout (--lora-dropout) keeps it, where TRL would switch it off.

The reference π_ref, three ways to compute the same numbers (`DPO(reference=...)`), from most memory to least:
- a frozen copy of the starting model (`frozen_copy`), for full fine-tuning: one more set of weights in memory (no
  gradients, no optimizer state: about a fifth of a full fine-tune's 16 bytes a parameter in fp32 with AdamW), and a
  second forward, without grad, each step;
- the policy itself with its PEFT method switched off (`reference=None` on a model prepared with LoRA or QLoRA,
  peft/common.py `disabled`): the base is the reference, for no memory at all, a second forward each step;
- precomputed log-probs (`precompute_reference_logps`): one pass over the data before training, two floats a pair kept with
  the data (the batch's "reference_logps"), and no reference forward or weights during training. The data must be
  fixed: the numbers belong to these exact token sequences.
All three give the same loss and gradients (tests/test_dpo.py).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..peft.common import attached, disabled
from .distributed import unwrap

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


def completion_logps(model: nn.Module, batch: dict) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over each row's completion tokens -> (2B,). The logits at t predict token t + 1."""
    logits = model(batch["input_ids"], batch["attention_mask"])  # (2B, T, V)
    targets, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:].bool()  # (2B, T − 1)
    token_logps = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    token_logps[mask] = -F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")  # (N,)
    return token_logps.sum(-1)


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7 over (2B,) log-probs, chosen rows first -> the loss of each pair (B,) and the rewards its chosen and
    rejected completions imply, β (log π_θ − log π_ref), each (B,)."""
    chosen_logratios, rejected_logratios = (policy_logps - reference_logps).chunk(2)  # (B,), (B,)
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def frozen_copy(model: nn.Module) -> nn.Module:
    """The starting model, copied before training moves it: the reference for full fine-tuning."""
    return copy.deepcopy(unwrap(model)).eval().requires_grad_(False)


@torch.no_grad()
def precompute_reference_logps(reference: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    """The reference's log-probs of every pair in `batches`, computed once before training -> (N, 2): each pair's
    chosen and rejected log π_ref(y|x), in batch order. A model with a PEFT method is read with the method off."""
    per_batch = []
    with disabled(reference) if attached(unwrap(reference)) else contextlib.nullcontext():
        for batch in batches:
            per_batch.append(completion_logps(reference, batch).view(2, -1).T.cpu())  # (2B,) -> (B, 2)
    return torch.cat(per_batch)


class DPO:
    """The DPO task: `loss_sum` of eq. 7 over a batch of pairs, `count` the pairs, `evaluate` TRL's metrics.

    reference: a frozen model (`frozen_copy`), or None: the batch's precomputed "reference_logps" (2B,) when it has
    them, else the policy with its PEFT method off (a full fine-tune without either is refused)."""

    metrics = METRICS

    def __init__(self, beta: float = 0.1, reference: nn.Module | None = None):
        if not beta > 0:
            raise InputError(f"beta is {beta}; DPO needs β > 0 (the paper's default is 0.1)")
        self.beta, self.reference = beta, reference

    def count(self, batch: dict) -> int:
        return batch["input_ids"].size(0) // 2

    @torch.no_grad()
    def reference_logps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if "reference_logps" in batch:
            return batch["reference_logps"]
        if self.reference is not None:
            return completion_logps(self.reference, batch)
        if not attached(unwrap(model)):
            raise InputError("DPO needs a reference: this model has no PEFT method to switch off; pass "
                             "reference=frozen_copy(model) for full fine-tuning, or precompute reference_logps")  # fmt: skip
        with disabled(model):
            return completion_logps(model, batch)

    def pairs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
        """-> per pair (B,): loss, chosen and rejected rewards, chosen and rejected log-probs."""
        logps = completion_logps(model, batch)  # (2B,)
        losses, chosen_rewards, rejected_rewards = dpo_loss(logps, self.reference_logps(model, batch), self.beta)
        return losses, chosen_rewards, rejected_rewards, *logps.detach().chunk(2)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.pairs(model, batch)[0].sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        columns = [torch.cat(c) for c in zip(*(self.pairs(model, batch) for batch in batches))]  # each (N,)
        if not columns:
            raise InputError("no preference pairs to evaluate")
        losses, chosen, rejected, chosen_logps, rejected_logps = columns
        values = (losses, chosen, rejected, (chosen > rejected).float(), chosen - rejected, chosen_logps, rejected_logps)
        return {name: v.mean().item() for name, v in zip(METRICS, values)}
