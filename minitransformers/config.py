"""The hyperparameters of each model family, and their HF `config.json` form.

EncoderConfig follows Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (Table/section 3: L layers, hidden size H, A heads, FFN size 4H). DecoderConfig follows the Llama
family (Touvron et al. 2023, "LLaMA", section 2.2: pre-normalisation with RMSNorm, SwiGLU, rotary embeddings;
grouped-query attention from Ainslie et al. 2023). Field names are ours and shared where they mean the same
thing; `from_hf` / `to_hf` translate to and from the keys that `transformers.BertConfig` / `LlamaConfig` write.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import InputError
from .io.hf import read_json

# HF activation names -> the GELU variant they denote. "gelu" is the exact erf form; "gelu_new" and
# "gelu_pytorch_tanh" are the tanh approximation of Hendrycks & Gimpel 2016, eq. in section 2.
GELU_APPROXIMATION = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

# Named sizes for training from scratch: the compact BERTs of Turc et al. 2019 ("Well-Read Students Learn
# Better": BERT-Tiny L=2/H=128, BERT-Mini L=4/H=256) and BERT-base; FFN 4H, 64 dimensions per head.
SIZES = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "small": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}

# Our field name -> the HF BertConfig key.
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_act": "hidden_act",
    "pad_token_id": "pad_token_id",
}


# Each numeric field's allowed range, for both configs: (low, high exclusive, whether low itself is allowed). A
# size is below 2^24 (16,777,216: 64× the largest vocabulary in use), so that no product of two sizes overflows a
# tensor's 64-bit byte count before the weights are compared with the config.
SIZE = (1, 2**24, True)
RANGES = {
    "vocab_size": SIZE, "hidden_size": SIZE, "num_layers": SIZE, "num_heads": SIZE, "num_kv_heads": SIZE,
    "intermediate_size": SIZE, "max_position_embeddings": SIZE, "type_vocab_size": SIZE, "hidden_dropout": (0, 1, True), "attention_dropout": (0, 1, True),
    "layer_norm_eps": (0, None, False), "rms_norm_eps": (0, None, False), "rope_theta": (0, None, False), "pad_token_id": (0, None, True),
}  # fmt: skip


def check_fields(config) -> None:
    """Every field of a config dataclass has its declared type (an int is not a bool, a float may be written as
    an int) and lies in RANGES; the pad token is inside the vocabulary. An InputError names the field."""
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    for f in fields(config):
        value = getattr(config, f.name)
        wanted = kinds.get(f.type)
        if wanted and (not isinstance(value, wanted) or (isinstance(value, bool) and f.type != "bool")):
            raise InputError(f"{f.name} is {value!r} ({type(value).__name__}); expected {'a number' if f.type == 'float' else f'an {f.type}' if f.type == 'int' else f'a {f.type}'}")
        if f.name in RANGES and not (isinstance(value, float) and math.isfinite(value) or isinstance(value, int)):
            raise InputError(f"{f.name} is {value!r}; expected a finite number")
        low, high, closed = RANGES.get(f.name, (None, None, True))
        if low is not None and (value < low or (value == low and not closed) or (high is not None and value >= high)):
            bounds = f"{'≥' if closed else '>'} {low}" + (f" and < {high}" if high is not None else "")
            raise InputError(f"{f.name} is {value!r}; it must be {bounds}")
    if hasattr(config, "pad_token_id") and config.pad_token_id >= config.vocab_size:
        raise InputError(f"pad_token_id {config.pad_token_id} is outside the vocabulary of {config.vocab_size} tokens")


def expect_object(hf) -> dict:
    if not isinstance(hf, dict):
        raise InputError(f"expected a JSON object of hyperparameters, found a {type(hf).__name__}")
    return hf


@contextlib.contextmanager
def naming(source):
    """Prefix an InputError raised inside with the file the config came from."""
    try:
        yield
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # an HF name: "gelu" (exact) or "gelu_new" / "gelu_pytorch_tanh" (tanh)
    pad_token_id: int = 0
    attn_impl: str = "sdpa"  # "sdpa" (fast, F.scaled_dot_product_attention) or "eager" (explicit softmax)
    unpad: bool = False  # run the dense layers on real tokens only (model/unpad.py); not part of config.json

    def __post_init__(self):
        check_fields(self)
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "each head gets hidden_size / num_heads dimensions"
            )
        if self.hidden_act not in GELU_APPROXIMATION:
            raise InputError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(GELU_APPROXIMATION)}")
        if self.attn_impl not in ("sdpa", "eager"):
            raise InputError(f"attn_impl {self.attn_impl!r} is not supported; use 'sdpa' or 'eager'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict, source: str | Path = "config.json", **overrides) -> EncoderConfig:
        """Build from an HF BERT config dict. Fails on position embeddings other than learned absolute, and on
        any key of the wrong type or range, naming `source` (the file it came from)."""
        with naming(source):
            return cls._from_hf(expect_object(hf), **overrides)

    @classmethod
    def _from_hf(cls, hf: dict, **overrides) -> EncoderConfig:
        kind = hf.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise InputError(f"position_embedding_type {kind!r} is not supported; only 'absolute' (BERT's) is")
        missing = [hf_key for hf_key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if hf_key not in hf]
        if missing:
            raise InputError(f"HF config lacks {missing}; is this a BERT config.json?")
        kwargs = {ours: hf[theirs] for ours, theirs in _HF_KEYS.items() if theirs in hf and hf[theirs] is not None}
        return cls(**{**kwargs, **overrides})

    def to_hf(self) -> dict:
        """The dict `transformers.BertConfig` reads (model_type "bert")."""
        hf = {theirs: getattr(self, ours) for ours, theirs in _HF_KEYS.items()}
        return {"architectures": ["BertModel"], "model_type": "bert", "position_embedding_type": "absolute", **hf}

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> EncoderConfig:
        path = Path(path)
        return cls.from_hf(read_json(path, "an HF config.json"), path, **overrides)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf(), indent=2) + "\n", encoding="utf-8")


# Our field name -> the HF LlamaConfig key.
_LLAMA_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "attention_dropout": "attention_dropout",
}


@dataclass
class DecoderConfig:
    """A Llama-family causal LM. Defaults: SmolLM2-135M (30 layers × 576, 9 heads sharing 3 key/value heads)."""

    vocab_size: int = 49152
    hidden_size: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3  # grouped-query attention: num_heads / num_kv_heads query heads share each K/V head
    intermediate_size: int = 1536
    max_position_embeddings: int = 8192
    rope_theta: float = 100000.0  # the base of the rotary frequencies θ_i = base^(−2i/d)
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True  # the output layer is the embedding matrix (Press & Wolf 2017)
    attention_dropout: float = 0.0
    attn_impl: str = "sdpa"  # "sdpa" (fast) or "eager" (explicit softmax); not part of config.json

    def __post_init__(self):
        check_fields(self)
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise InputError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}; each K/V head serves a whole group of query heads")
        if self.head_dim % 2:
            raise InputError(f"head_dim {self.head_dim} is odd; rotary embeddings rotate pairs of dimensions")
        if self.attn_impl not in ("sdpa", "eager"):
            raise InputError(f"attn_impl {self.attn_impl!r} is not supported; use 'sdpa' or 'eager'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict, source: str | Path = "config.json", **overrides) -> DecoderConfig:
        """Build from an HF Llama config dict (transformers 4's `rope_theta` or 5's `rope_parameters`); any key of
        the wrong type or range fails naming `source`."""
        with naming(source):
            return cls._from_hf(expect_object(hf), **overrides)

    @classmethod
    def _from_hf(cls, hf: dict, **overrides) -> DecoderConfig:
        if hf.get("model_type", "llama") != "llama":
            raise InputError(f"model_type {hf.get('model_type')!r} is not supported; DecoderConfig reads Llama configs ('llama')")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in hf]
        if missing:
            raise InputError(f"HF config lacks {missing}; is this a Llama config.json?")
        rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
        if not isinstance(rope, dict) or type(rope.get("rope_theta")) not in (int, float):
            raise InputError(f"rope_parameters / rope_theta {rope!r}: expected a number rope_theta")
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise InputError(f"rope {rope.get('rope_type')!r} / rope_scaling {hf.get('rope_scaling')} is not supported; only the plain rotary embedding ('default') is")
        for key, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if hf.get(key, supported) != supported:
                raise InputError(f"{key} {hf[key]!r} is not supported; the Llama decoder here has {key} {supported!r}")
        kwargs = {ours: hf[theirs] for ours, theirs in _LLAMA_KEYS.items() if hf.get(theirs) is not None}
        kwargs.setdefault("num_kv_heads", kwargs["num_heads"])
        config = cls(**{**kwargs, "rope_theta": float(rope["rope_theta"]), **overrides})
        if hf.get("head_dim") not in (None, config.head_dim):
            raise InputError(f"head_dim {hf['head_dim']!r} is not hidden_size / num_attention_heads ({config.head_dim}); not supported")
        return config

    def to_hf(self) -> dict:
        """The dict `transformers.LlamaConfig` reads (model_type "llama")."""
        hf = {theirs: getattr(self, ours) for ours, theirs in _LLAMA_KEYS.items()}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "head_dim": self.head_dim,
                "attention_bias": False, "mlp_bias": False, "rope_theta": self.rope_theta, **hf}  # fmt: skip
