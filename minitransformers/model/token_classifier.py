"""The token classifier: one label per token, for named-entity recognition.

Devlin et al. 2019, section 4.3 and Figure 4(d): "we feed the final hidden representation T_i ∈ R^H for each token
i into a classification layer over the NER label set". With W ∈ R^{K×H} for K labels, each token's logits are

    logits_i = W Dropout(T_i) + b        (B, T, H) -> (B, T, K)

trained with cross-entropy on the first sub-word of each word (text/ner.py aligns the labels). This is
`transformers`' BertForTokenClassification: a BertModel without the pooler, dropout (classifier_dropout, or the
encoder's hidden dropout when null) and `classifier`; its folders load and save here (io/hf.py's weight map, the
head as `classifier.weight` and `classifier.bias`, the tags in config.json's id2label / label2id).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import EncoderConfig, naming
from ..errors import InputError
from ..io import hf
from .encoder import Encoder
from .heads import head_config


class TokenClassifier(nn.Module):
    """Encoder -> dropout -> linear on every token: logits (B, T, num_labels). `labels` names the rows of W.

    For PEFT (peft/common.py): `modules_to_save` is the new head, which always trains; no weights are tied."""

    modules_to_save = ("classifier",)
    tied_weights: dict[str, str] = {}

    def __init__(self, encoder: Encoder, num_labels: int, dropout: float | None = None, labels: list[str] | None = None):
        super().__init__()
        labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
        if len(labels) != num_labels:
            raise InputError(f"{len(labels)} label names for {num_labels} labels; give one name per label")
        encoder.pooler = None  # BertForTokenClassification has none (add_pooling_layer=False)
        self.encoder, self.labels = encoder, labels
        self.dropout = nn.Dropout(encoder.config.hidden_dropout if dropout is None else dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)  # W (K, H), b (K,)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.02)  # BERT's initialisation
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.classifier(self.dropout(hidden))  # (B, T, num_labels)

    @classmethod
    def from_encoder(cls, path: str | Path, num_labels: int, labels: list[str] | None = None, **config_overrides) -> TokenClassifier:
        """A new, randomly initialised head on a pretrained encoder folder (its pooler, if any, left out), ready to fine-tune."""
        return cls(Encoder.from_pretrained(path, **config_overrides), num_labels, labels=labels)

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> TokenClassifier:
        """Load an HF BertForTokenClassification folder (as `save_pretrained` writes it), strictly: a pooler or a
        missing key fails with the list."""
        hf_config = hf.read_config(path)
        config = EncoderConfig.from_hf(hf_config, Path(path) / "config.json", **config_overrides)
        encoder_state, head = hf.split_classifier(hf.read_weights(path), path)
        options = head_config(hf_config, path, head)
        hf.check_layer_count(encoder_state, config.num_layers, path)
        with hf.shapes_only(), naming(Path(path) / "config.json"):  # checked against the weights before anything is allocated
            encoder = Encoder(config, add_pooler=False).resize_layers(hf.layer_widths(encoder_state, config.num_layers))
            model = cls(encoder, options["num_labels"], options["dropout"], options["labels"])
        state = hf.classifier_to_ours(encoder_state, head, config.num_layers, model.state_dict(), path)
        model = hf.materialize(model)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder that `transformers.BertForTokenClassification.from_pretrained` (and its token-classification
        pipeline, with the tokenizer saved beside) loads."""
        hf.save(path, self.hf_config(), hf.classifier_to_hf(self.state_dict(), self.encoder.config.num_layers))

    def hf_config(self) -> dict:
        """config.json's contents: the encoder's HF config plus the head's labels and dropout."""
        return {
            **self.encoder.config.to_hf(),
            "architectures": ["BertForTokenClassification"],
            "id2label": {str(i): label for i, label in enumerate(self.labels)},
            "label2id": {label: i for i, label in enumerate(self.labels)},
            "classifier_dropout": self.dropout.p,
        }
