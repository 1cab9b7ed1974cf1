"""The causal language model: the decoder (decoder.py) and its output layer, next-token logits (B, T, V).

Radford et al. 2018 (GPT), section 3.1: maximise Σ_t log P(x_t | x_<t), P = softmax(h_L[t − 1] W_outᵀ). With
`tie_word_embeddings` the output matrix is the embedding E itself (Press & Wolf 2017), one Parameter used twice,
as in SmolLM2; otherwise `lm_head` has its own weight (Llama 2, Llama 3 8B).

For PEFT and quantization, as the other task models: `modules_to_save` is empty (a language model has no new
head; peft's CAUSAL_LM task saves none either), and `tied_weights` names the tie, which no method may quantize,
wrap or untie. Loading and saving: io/llama.py reads `transformers`' LlamaForCausalLM folders and llama.cpp's
GGUF files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..config import DecoderConfig
from ..io import hf, llama
from ..io.gguf import GGUFFile, read_gguf
from ..quant.ggml import TYPES, GGMLQuantized
from ..quant.qlinear import WeightOnlyLinear, tied_weight_names
from .decoder import Decoder


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one .gguf in a folder; None for an HF folder."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected an HF Llama folder (config.json) or exactly one .gguf file, found {[f.name for f in found]}")
        return found[0]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .gguf file, a folder holding one, or an HF Llama folder")
    return None


def keep_gguf_blocks(model: nn.Module, f: GGUFFile) -> None:
    """Replace, in place, each nn.Linear whose weight the GGUF file stores in Q4_0 / Q4_1 / Q8_0 blocks with a
    WeightOnlyLinear over those blocks (quant/ggml.py); a tied weight (the embedding, also lm_head's) stays float."""
    tied = tied_weight_names(model)
    for name, (type_name, blocks) in llama.blocks_from_gguf(f, TYPES).items():
        module = name.removesuffix(".weight")
        linear = model.get_submodule(module)
        if isinstance(linear, nn.Linear) and name not in tied:
            model.set_submodule(module, WeightOnlyLinear.from_representation(GGMLQuantized(blocks, type_name), linear.bias))


class CausalLM(nn.Module):
    """Decoder -> lm_head: logits (B, T, V), as `transformers`' LlamaForCausalLM (`model.*` is our `decoder`)."""

    modules_to_save = ()

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.decoder.embed.weight  # E (V, H): the embedding's own Parameter
        else:
            Decoder._init_weights(self.lm_head)

    @property
    def tied_weights(self) -> dict[str, str]:
        return {"lm_head.weight": "decoder.embed.weight"} if self.config.tie_word_embeddings else {}

    def tie_weights(self) -> None:
        """Make lm_head's weight the embedding Parameter again (after anything that replaced a Parameter object)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.decoder.embed.weight

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, caches=None, cache_position=None, inputs_embeds=None, logits_to_keep: int = 0) -> torch.Tensor:
        """-> logits (B, T, V), or of the last `logits_to_keep` positions only (B, k, V): generation needs the
        last one, and the vocabulary projection is the largest matmul of a small model."""
        hidden = self.decoder(input_ids, attention_mask, position_ids, caches, cache_position, inputs_embeds)  # (B, T, H)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, k, H)
        return self.lm_head(hidden)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, quantized: bool = False, **config_overrides) -> CausalLM:
        """Load a GGUF file (or a folder holding one; its blocks dequantized to `dtype`) or an HF LlamaForCausalLM
        folder (config.json + safetensors or .bin), strictly. quantized=True (GGUF only) keeps each Linear whose
        weight is in Q4_0 / Q4_1 / Q8_0 blocks as a WeightOnlyLinear over them (`keep_gguf_blocks`): it computes
        with the same dequantized values as the float load, from 4.5 / 5 / 8.5 bits a weight instead of 16 or 32."""
        gguf = gguf_file(path)
        if quantized and gguf is None:
            raise InputError(f"{path}: quantized=True keeps a GGUF file's blocks, but this is an HF folder; load it "
                             "with quantized=False, then quantize it with quant.quantize_model")  # fmt: skip
        if gguf is not None:
            f = read_gguf(gguf)
            hparams, state = llama.from_gguf(f, dtype)
            config = DecoderConfig(**{**hparams, **config_overrides})
        else:
            config = DecoderConfig.from_hf(hf.read_config(path), Path(path) / "config.json", **config_overrides)
            state = llama.from_hf(hf.read_weights(path), config, path)
        model = cls(config).to(dtype)
        if config.tie_word_embeddings:  # one tensor under both names, as state_dict() lists it
            state["lm_head.weight"] = state["decoder.embed.weight"]
        model.load_state_dict(state)
        if quantized:
            keep_gguf_blocks(model, f)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors that `transformers.LlamaForCausalLM.from_pretrained` loads (a tied
        lm_head is left out, as transformers saves it, and "tie_word_embeddings" says to tie it)."""
        hf.save(path, self.config.to_hf(), llama.to_hf(self.state_dict(), self.config))
