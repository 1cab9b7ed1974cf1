"""The extractive question-answering head: a start and an end score for every token.

Devlin et al. 2019, section 4.2 (SQuAD v1.1): "We only introduce a start vector S ∈ R^H and an end vector E ∈ R^H
during fine-tuning. The probability of word i being the start of the answer span is computed as a dot product
between T_i and S followed by a softmax over all of the words in the paragraph". Stacking S and E as the rows of
W ∈ R^{2×H}:

    [start_i, end_i] = W T_i + b        (B, T, H) -> (B, T, 2) -> start (B, T), end (B, T)

and the answer is the span i ≤ j that maximises P_start(i) · P_end(j) (text/qa.py decodes it). Training is the
mean of the cross-entropies of the true start and end positions. This is `transformers`' BertForQuestionAnswering:
a BertModel without the pooler and `qa_outputs` (no dropout); its folders load and save here through io/hf.py's
weight map, the head renamed between `qa_outputs.*` and the `classifier.*` that the map's head functions use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import EncoderConfig, naming
from ..errors import InputError
from ..io import hf
from .encoder import Encoder


def renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """`state` with the prefix `old` of its keys replaced by `new`."""
    return {new + k.removeprefix(old) if k.startswith(old) else k: v for k, v in state.items()}


class QuestionAnswering(nn.Module):
    """Encoder -> linear on every token -> (start_logits, end_logits), each (B, T).

    For PEFT (peft/common.py): `modules_to_save` is the new head, which always trains; no weights are tied."""

    modules_to_save = ("qa_outputs",)
    tied_weights: dict[str, str] = {}

    def __init__(self, encoder: Encoder):
        super().__init__()
        encoder.pooler = None  # BertForQuestionAnswering has none (add_pooling_layer=False)
        self.encoder = encoder
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)  # rows S and E: W (2, H), b (2,)
        nn.init.normal_(self.qa_outputs.weight, mean=0.0, std=0.02)  # BERT's initialisation
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        start, end = self.qa_outputs(hidden).unbind(dim=-1)  # (B, T, 2) -> 2 × (B, T)
        return start, end

    @staticmethod
    def loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
        """(CE(start) + CE(end)) / 2, as BertForQuestionAnswering computes it: positions outside the sequence are
        clamped to T, which is ignored."""
        T = start_logits.size(1)
        ce = nn.CrossEntropyLoss(ignore_index=T)
        return (ce(start_logits, start_positions.clamp(0, T)) + ce(end_logits, end_positions.clamp(0, T))) / 2

    @classmethod
    def from_encoder(cls, path: str | Path, **config_overrides) -> QuestionAnswering:
        """A new, randomly initialised head on a pretrained encoder folder (its pooler, if any, left out), ready to fine-tune."""
        return cls(Encoder.from_pretrained(path, **config_overrides))

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> QuestionAnswering:
        """Load an HF BertForQuestionAnswering folder (as `save_pretrained` writes it), strictly: a pooler or a
        missing key fails with the list."""
        hf_config = hf.read_config(path)
        config = EncoderConfig.from_hf(hf_config, Path(path) / "config.json", **config_overrides)
        hf_state = hf.read_weights(path)
        if "qa_outputs.weight" not in hf_state and "qa_outputs.bias" not in hf_state:
            found = sorted({k.split(".")[0] for k in hf_state})
            raise InputError(
                f"{path}: no qa_outputs.* keys (top-level names: {found}); is this a BertForQuestionAnswering folder? "
                "To put a new head on an encoder use QuestionAnswering.from_encoder(path)"
            )
        encoder_state, head = hf.split_classifier(renamed(hf_state, "qa_outputs.", "classifier."), path)
        hf.check_layer_count(encoder_state, config.num_layers, path)
        with hf.shapes_only(), naming(Path(path) / "config.json"):  # checked against the weights before anything is allocated
            model = cls(Encoder(config, add_pooler=False).resize_layers(hf.layer_widths(encoder_state, config.num_layers)))
        expected = model.state_dict()
        expected_head = {k: v for k, v in expected.items() if k.startswith("qa_outputs.")}
        hf.check_keys(renamed(head, "classifier.", "qa_outputs."), expected_head, path, "a question-answering head", "qa_outputs holds 2 rows: start and end")
        state = hf.classifier_to_ours(encoder_state, head, config.num_layers, renamed(expected, "qa_outputs.", "classifier."), path)
        model = hf.materialize(model)
        model.load_state_dict(renamed(state, "classifier.", "qa_outputs."))
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder that `transformers.BertForQuestionAnswering.from_pretrained` (and its question-answering
        pipeline, with the tokenizer saved beside) loads."""
        state = hf.classifier_to_hf(renamed(self.state_dict(), "qa_outputs.", "classifier."), self.encoder.config.num_layers)
        config = {**self.encoder.config.to_hf(), "architectures": ["BertForQuestionAnswering"]}
        hf.save(path, config, renamed(state, "classifier.", "qa_outputs."))
