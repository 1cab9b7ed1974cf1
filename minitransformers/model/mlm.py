"""BERT's masked-language-model head: from each selected token's hidden state, a distribution over the vocabulary.

Devlin et al. 2019, "BERT", section 3.1 "Task #1: Masked LM": "the final hidden vectors corresponding to the
mask tokens are fed into an output softmax over the vocabulary". The released code (run_pretraining.py;
`cls.predictions` in `transformers`' BertForMaskedLM) puts one transform before that softmax:

    logits = LayerNorm(GELU(h W_t + b_t)) Eᵀ + b

E (V, H) is the word-embedding matrix: the output layer is tied to the input embedding (Press & Wolf 2017,
"Using the Output Embedding to Improve Language Models"), one Parameter used twice, so its gradient is the sum
of both uses. Only the bias b (V,) belongs to the output side.

Paper defaults (section 3.1, appendices A.1 and A.2): 15% of tokens selected (80% [MASK], 10% random, 10%
unchanged; text/masking.py); Adam, lr 1e-4, β1 0.9, β2 0.999, weight decay 0.01, 10,000 warmup steps then linear decay;
256 sequences of 512 tokens a batch, 1M steps, dropout 0.1.

The vocabulary projection (N, H) x (H, V) is the largest matmul in the model (V = 30522 against H = 768), so
`MaskedLM.forward(..., positions=...)` runs the head only at the selected ~15% of tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GELU_APPROXIMATION, EncoderConfig
from ..io import hf
from .encoder import Encoder


class MLMHead(nn.Module):
    """h (..., H) -> logits (..., V): dense, GELU, LayerNorm, then the tied decoder Eᵀ and its own bias b."""

    def __init__(self, config: EncoderConfig, word_embeddings: nn.Embedding):
        super().__init__()
        H, V = config.hidden_size, config.vocab_size
        self.transform = nn.Linear(H, H)  # W_t (H, H), b_t (H,)
        self.approximate = GELU_APPROXIMATION[config.hidden_act]
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(H, V, bias=False)
        self.decoder.weight = word_embeddings.weight  # E (V, H): the embedding's own Parameter, not a copy
        self.bias = nn.Parameter(torch.zeros(V))  # b (V,)
        for module in (self.transform, self.norm):  # not the decoder: that would re-initialise the embedding
            Encoder._init_weights(module)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.transform(hidden), approximate=self.approximate))  # (..., H)
        return self.decoder(x) + self.bias  # (..., V)


class MaskedLM(nn.Module):
    """Encoder -> MLM head, as `transformers`' BertForMaskedLM (`bert.*` is our `encoder`, `cls.predictions` our `head`).

    For PEFT and quantization: the head always trains (`modules_to_save`), and its decoder is the word
    embedding (`tied_weights`: alias -> owner), which no method may quantize, wrap or untie."""

    modules_to_save = ("head",)
    tied_weights = {"head.decoder.weight": "encoder.embeddings.word.weight"}

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        if encoder.pooler is not None:
            encoder.pooler.requires_grad_(False)  # unused: kept only so a saved folder keeps the checkpoint's layout
        self.head = MLMHead(encoder.config, encoder.embeddings.word)

    def tie_weights(self) -> None:
        """Make the decoder's weight the word-embedding Parameter again.

        `load_state_dict` copies values into the existing Parameter, which both modules hold, so the tie survives
        it. What replaces a Parameter object (`load_state_dict(assign=True)`, a resized vocabulary) breaks it.
        """
        self.head.decoder.weight = self.encoder.embeddings.word.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, positions=None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V); with `positions`, the logits of those tokens only (N, V).

        `positions` indexes the (B, T) grid: a bool mask (B, T) such as `labels != -100`, or the (rows, cols)
        pair that `mask.nonzero(as_tuple=True)` gives. Rows come out in the order `labels[positions]` gives.
        """
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if positions is not None:
            hidden = hidden[positions]  # (N, H)
        return self.head(hidden)

    @classmethod
    def from_encoder(cls, path: str | Path, **config_overrides) -> MaskedLM:
        """A new, randomly initialised head on a pretrained encoder folder, its decoder tied to the embeddings."""
        return cls(Encoder.from_pretrained(path, **config_overrides))

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> MaskedLM:
        """Load an HF BertForMaskedLM folder (as `save_pretrained` writes it), strictly."""
        config = EncoderConfig.from_json(Path(path) / "config.json", **config_overrides)
        hf_state = hf.read_weights(path)
        hf.check_layer_count(hf_state, config.num_layers, path)
        with hf.shapes_only():  # checked against the weights before anything is allocated
            model = cls(Encoder(config, add_pooler=hf.has_pooler(hf_state)))
        state = hf.mlm_to_ours(hf_state, config.num_layers, model.state_dict(), path)
        model = hf.materialize(model)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder that `transformers.BertForMaskedLM.from_pretrained` loads with the decoder tied.

        Like `transformers`, the decoder weight is not saved: "tie_word_embeddings" tells the loader to tie it.
        """
        config = {**self.encoder.config.to_hf(), "architectures": ["BertForMaskedLM"], "tie_word_embeddings": True}
        hf.save(path, config, hf.mlm_to_hf(self.state_dict(), self.encoder.config.num_layers))
