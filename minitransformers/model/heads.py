"""Pooling and the sequence classifier: from per-token hidden states (B, T, H) to one vector, then to logits.

Pooling, from hidden states (B, T, H) to one vector per sequence (B, H):
- CLS pooling takes the first token's state (Devlin et al. 2019, section 3: "[CLS] ... used as the
  aggregate sequence representation for classification tasks").
- BERT's pooler is tanh(W h_CLS + b), the layer trained by next-sentence prediction; it is part of the
  encoder (encoder.py), as in `transformers`' BertModel, which calls it `pooler.dense`.
- Mean pooling averages the states of real (non-padding) tokens. Sentence-BERT (Reimers & Gurevych 2019,
  section 3) found it the best of the three for sentence embeddings; all-MiniLM-L6-v2 is trained with it
  and then L2-normalised.

Classification, Devlin et al. 2019, section 4.1: the pooled vector C ∈ R^H and a new layer W ∈ R^{K×H}
for K labels give the loss log(softmax(C Wᵀ)). `SequenceClassifier` returns the logits C Wᵀ + b (B, K),
with dropout on C as in BERT; with pooling "pooler" it is `transformers`' BertForSequenceClassification.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..config import EncoderConfig, naming
from ..io import hf
from .encoder import Encoder, Pooler

POOLING = ("cls", "mean", "pooler")


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]  # (B, H)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the hidden states over real tokens. hidden (B, T, H), attention_mask (B, T) of 0/1."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, H)


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sentence-BERT's embedding: mean pooling, then L2 normalisation, so a dot product is a cosine."""
    return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)


def pool(hidden, attention_mask, kind: str, pooler: Pooler | None = None) -> torch.Tensor:
    """One entry point for the three kinds of pooling, as a classifier head selects them."""
    if kind == "cls":
        return cls_pool(hidden)
    if kind == "mean":
        return mean_pool(hidden, attention_mask)
    if kind == "pooler":
        if pooler is None:
            raise InputError("pooling 'pooler' needs BERT's pooler weights, and this encoder has none")
        return pooler(hidden)
    raise InputError(f"unknown pooling {kind!r}; use one of {POOLING}")


def head_config(hf_config: dict, path, head: dict[str, torch.Tensor]) -> dict:
    """The head's part of a classifier folder's config.json, checked, naming the file: the labels (hf.labels_of, one
    per row of the saved classifier.weight or .bias, in `head`), our "pooling" key ("pooler" when absent) and
    classifier_dropout (null: the encoder's hidden dropout, as in transformers); as SequenceClassifier's keyword
    arguments."""
    where = Path(path) / "config.json"
    rows = next((t.shape[0] for k in ("classifier.weight", "classifier.bias") if isinstance(t := head.get(k), torch.Tensor) and t.dim()), None)
    if rows is None:
        raise InputError(f"{path}: the weights lack classifier.weight and classifier.bias (they have {sorted(head)[:5]}); is this a classifier folder?")
    pooling, dropout = hf_config.get("pooling", "pooler"), hf_config.get("classifier_dropout")
    if pooling not in POOLING:
        raise InputError(f"{where}: pooling {pooling!r} is not one of {POOLING}")
    if dropout is not None and not (type(dropout) in (int, float) and 0 <= dropout < 1):
        raise InputError(f"{where}: classifier_dropout {dropout!r} should be a number in [0, 1), or null for the encoder's dropout")
    labels = hf.labels_of(hf_config, path, rows)
    return {"num_labels": len(labels), "pooling": pooling, "dropout": dropout, "labels": labels}


class SequenceClassifier(nn.Module):
    """Encoder -> pool -> dropout -> linear: logits (B, num_labels). `labels` names the rows of W.

    What PEFT and quantization read of a task model (peft/common.py, quant/qlinear.py):
    `modules_to_save`, the modules that always train (peft's name): the new head, plus BERT's pooler when the
    head pools with it; `tied_weights`, parameters shared between modules (none here)."""

    tied_weights: dict[str, str] = {}

    def __init__(self, encoder: Encoder, num_labels: int, pooling: str = "pooler", dropout: float | None = None, labels: list[str] | None = None):
        super().__init__()
        if pooling not in POOLING:
            raise InputError(f"unknown pooling {pooling!r}; use one of {POOLING}")
        if pooling == "pooler" and encoder.pooler is None:
            raise InputError("pooling 'pooler' needs BERT's pooler weights, and this encoder has none; use pooling 'cls' or 'mean'")
        labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
        if len(labels) != num_labels:
            raise InputError(f"{len(labels)} label names for {num_labels} labels; give one name per label")
        self.encoder, self.pooling, self.labels = encoder, pooling, labels
        if pooling != "pooler" and encoder.pooler is not None:
            encoder.pooler.requires_grad_(False)  # unused: kept only so a saved folder has HF's full layout
        self.dropout = nn.Dropout(encoder.config.hidden_dropout if dropout is None else dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)  # W (K, H), b (K,)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.02)  # BERT's initialisation
        nn.init.zeros_(self.classifier.bias)

    @property
    def modules_to_save(self) -> tuple[str, ...]:
        return ("classifier", "encoder.pooler") if self.pooling == "pooler" else ("classifier",)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        pooled = pool(hidden, attention_mask, self.pooling, self.encoder.pooler)  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)

    @classmethod
    def from_encoder(cls, path: str | Path, num_labels: int, pooling: str = "pooler", labels: list[str] | None = None, **config_overrides) -> SequenceClassifier:
        """A new, randomly initialised head on a pretrained encoder folder, ready to fine-tune."""
        return cls(Encoder.from_pretrained(path, **config_overrides), num_labels, pooling, labels=labels)

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> SequenceClassifier:
        """Load an HF BertForSequenceClassification folder (as `save_pretrained` writes it), strictly."""
        hf_config = hf.read_config(path)
        config = EncoderConfig.from_hf(hf_config, Path(path) / "config.json", **config_overrides)
        encoder_state, head = hf.split_classifier(hf.read_weights(path), path)
        head_options = head_config(hf_config, path, head)
        hf.check_layer_count(encoder_state, config.num_layers, path)
        with hf.shapes_only(), naming(Path(path) / "config.json"):  # checked against the weights before anything is allocated
            encoder = Encoder(config, add_pooler=hf.has_pooler(encoder_state)).resize_layers(hf.layer_widths(encoder_state, config.num_layers))
            model = cls(encoder, **head_options)
        state = hf.classifier_to_ours(encoder_state, head, config.num_layers, model.state_dict(), path)
        model = hf.materialize(model)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder that `transformers.BertForSequenceClassification.from_pretrained` loads.

        `transformers` derives num_labels from id2label; "pooling" is our key, which it keeps and ignores.
        """
        hf.save(path, self.hf_config(), hf.classifier_to_hf(self.state_dict(), self.encoder.config.num_layers))

    def hf_config(self) -> dict:
        """config.json's contents: the encoder's HF config plus the head's labels, dropout and pooling."""
        return {
            **self.encoder.config.to_hf(),
            "architectures": ["BertForSequenceClassification"],
            "id2label": {str(i): label for i, label in enumerate(self.labels)},
            "label2id": {label: i for i, label in enumerate(self.labels)},
            "classifier_dropout": self.dropout.p,
            "pooling": self.pooling,
        }
