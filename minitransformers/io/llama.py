"""Llama checkpoints: one weight map between our decoder's names, llama.cpp's GGUF names and `transformers`' names.

    ours (model/causal_lm.py)              GGUF (llama.cpp)          transformers (LlamaForCausalLM)
    decoder.embed.weight         (V, H)    token_embd.weight         model.embed_tokens.weight
    decoder.layers.{i}.
      attention_norm.weight      (H,)      blk.{i}.attn_norm.weight  model.layers.{i}.input_layernorm.weight
      attention.query.weight     (H, H)    blk.{i}.attn_q.weight  *  model.layers.{i}.self_attn.q_proj.weight
      attention.key.weight       (Hkv, H)  blk.{i}.attn_k.weight  *  model.layers.{i}.self_attn.k_proj.weight
      attention.value.weight     (Hkv, H)  blk.{i}.attn_v.weight     model.layers.{i}.self_attn.v_proj.weight
      attention.out.weight       (H, H)    blk.{i}.attn_output.weight  model.layers.{i}.self_attn.o_proj.weight
      ffn_norm.weight            (H,)      blk.{i}.ffn_norm.weight   model.layers.{i}.post_attention_layernorm.weight
      ffn.gate.weight, ffn.up    (F, H)    blk.{i}.ffn_gate, ffn_up  model.layers.{i}.mlp.gate_proj, up_proj
      ffn.down.weight            (H, F)    blk.{i}.ffn_down.weight   model.layers.{i}.mlp.down_proj.weight
    decoder.norm.weight          (H,)      output_norm.weight        model.norm.weight
    lm_head.weight               (V, H)    output.weight             lm_head.weight       (all three absent when tied)

Hkv = num_kv_heads × head_dim. * The rotary embedding pairs dimension j of a head with j + d/2 in `transformers`
and here (model/rope.py, "rotate half"), but with j + 1 in llama.cpp (Meta's original interleaved layout). So
llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of each head of W_q and W_k,
taking the two halves (2, d/2) to interleaved pairs (d/2, 2):

    permute(w)   = w.reshape(n_head, 2, d/2, H).swapaxes(1, 2).reshape(w.shape)     row h·d + 2j + s  <-  h·d + s·d/2 + j
    unpermute(w) = w.reshape(n_head, d/2, 2, H).swapaxes(1, 2).reshape(w.shape)     (the inverse, done when reading)

with n_head = num_heads for W_q and num_kv_heads for W_k. Loading is strict, as io/hf.py's: a missing,
unexpected or mis-shaped tensor fails with the list before any tensor is dequantized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import torch

from ..errors import InputError
from .gguf import GGUFFile
from .hf import check_keys, check_layer_count, check_values

# ours -> (llama.cpp, transformers), per layer and for the whole model; each name ends in ".weight"
_LAYER = {
    "attention_norm": ("attn_norm", "input_layernorm"),
    "attention.query": ("attn_q", "self_attn.q_proj"),
    "attention.key": ("attn_k", "self_attn.k_proj"),
    "attention.value": ("attn_v", "self_attn.v_proj"),
    "attention.out": ("attn_output", "self_attn.o_proj"),
    "ffn_norm": ("ffn_norm", "post_attention_layernorm"),
    "ffn.gate": ("ffn_gate", "mlp.gate_proj"),
    "ffn.up": ("ffn_up", "mlp.up_proj"),
    "ffn.down": ("ffn_down", "mlp.down_proj"),
}
_MODEL = {"decoder.embed": ("token_embd", "model.embed_tokens"), "decoder.norm": ("output_norm", "model.norm"), "lm_head": ("output", "lm_head")}
_LAYER_PREFIX = {"gguf": "blk.{i}.", "hf": "model.layers.{i}."}
FORMATS = ("gguf", "hf")

# Buffers that older transformers checkpoints saved beside the weights; they hold no learned values.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_map(num_layers: int, tied: bool, fmt: str) -> dict[str, str]:
    """Our parameter name -> its name in `fmt` ("gguf" or "hf"); no lm_head when the output is tied to the embedding."""
    column = FORMATS.index(fmt)
    names = {f"{ours}.weight": f"{theirs[column]}.weight" for ours, theirs in _MODEL.items() if not (tied and ours == "lm_head")}
    for i in range(num_layers):
        prefix = _LAYER_PREFIX[fmt].format(i=i)
        names.update({f"decoder.layers.{i}.{ours}.weight": f"{prefix}{theirs[column]}.weight" for ours, theirs in _LAYER.items()})
    return names


def _hparams(config) -> Mapping:
    """config_from_gguf's dict, or a DecoderConfig (whose fields have the same names), as a mapping."""
    return config if isinstance(config, Mapping) else dataclasses.asdict(config)


def shapes(config) -> dict[str, tuple[int, ...]]:
    """Our parameter name -> its shape, from the hyperparameters (config_from_gguf's dict, or a DecoderConfig)."""
    c = _hparams(config)
    V, H, F = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    kv = c["num_kv_heads"] * (H // c["num_heads"])  # Hkv = num_kv_heads × head_dim
    layer = {"attention_norm": (H,), "attention.query": (H, H), "attention.key": (kv, H), "attention.value": (kv, H),
             "attention.out": (H, H), "ffn_norm": (H,), "ffn.gate": (F, H), "ffn.up": (F, H), "ffn.down": (H, F)}  # fmt: skip
    out = {"decoder.embed.weight": (V, H), "decoder.norm.weight": (H,)}
    for i in range(c["num_layers"]):
        out.update({f"decoder.layers.{i}.{name}.weight": shape for name, shape in layer.items()})
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = (V, H)
    return out


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's permutation of the rows of W_q or W_k (n_head · d, H): interleaved pairs back to halves."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (n_head, 2, d/2, H)


def config_from_gguf(f: GGUFFile) -> dict:
    """The Llama hyperparameters of a GGUF file's metadata, named as DecoderConfig's fields."""
    m = f.metadata
    if m.get("general.architecture") != "llama":
        raise InputError(f"{f.path}: general.architecture is {m.get('general.architecture')!r}; only 'llama' GGUF files are read")

    def need(key: str):
        if f"llama.{key}" not in m:
            raise InputError(f"{f.path}: metadata lacks 'llama.{key}', which a llama GGUF file has; was it written by llama.cpp?")
        return m[f"llama.{key}"]

    hidden, heads = need("embedding_length"), need("attention.head_count")
    tokens = m.get("tokenizer.ggml.tokens")
    if "llama.vocab_size" not in m and not isinstance(tokens, list):
        raise InputError(f"{f.path}: metadata lacks both 'llama.vocab_size' and 'tokenizer.ggml.tokens'; cannot tell the vocabulary size")
    config = {
        "vocab_size": m.get("llama.vocab_size", len(tokens or ())),  # llama.cpp's rule: the key, else the tokens
        "hidden_size": hidden,
        "num_layers": need("block_count"),
        "num_heads": heads,
        "num_kv_heads": m.get("llama.attention.head_count_kv", heads),  # llama.cpp's default: no grouping
        "intermediate_size": need("feed_forward_length"),
        "rope_theta": m.get("llama.rope.freq_base", 10000.0),  # llama.cpp's default base
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon"),
        "max_position_embeddings": need("context_length"),
        "tie_word_embeddings": "output.weight" not in f.tensors,
    }
    counts = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_position_embeddings")
    bad = {k: config[k] for k in counts if type(config[k]) is not int or config[k] <= 0}
    bad |= {k: config[k] for k in ("rope_theta", "rms_norm_eps") if type(config[k]) not in (int, float) or not config[k] > 0}
    if bad:
        raise InputError(f"{f.path}: hyperparameters {bad} must be positive numbers (integers but for rope_theta and rms_norm_eps)")
    config["rope_theta"], config["rms_norm_eps"] = float(config["rope_theta"]), float(config["rms_norm_eps"])
    if hidden % heads or heads % config["num_kv_heads"]:
        raise InputError(f"{f.path}: {heads} heads must divide the width {hidden}, and {config['num_kv_heads']} kv heads the heads")
    rope_dims = m.get("llama.rope.dimension_count", hidden // heads)
    if rope_dims != hidden // heads:
        raise InputError(f"{f.path}: llama.rope.dimension_count {rope_dims} is not the head size {hidden // heads}; partial rotary embeddings are not supported")
    if m.get("llama.rope.scaling.type", "none") != "none":
        raise InputError(f"{f.path}: llama.rope.scaling.type {m['llama.rope.scaling.type']!r} is not supported; only plain RoPE is")
    return config


def _expected(names: dict[str, str], config) -> dict[str, torch.Tensor]:
    """Their name -> an empty tensor of the shape our parameter has, for check_keys."""
    ours_shapes = shapes(config)
    return {theirs: torch.empty(ours_shapes[ours], device="meta") for ours, theirs in names.items()}


def _checked_gguf(f: GGUFFile) -> tuple[dict, list[tuple[str, str, int | None]]]:
    """(hyperparameters, [(our name, its GGUF name, n_head to unpermute by or None)]) after checking every name."""
    config = config_from_gguf(f)
    check_layer_count(f.tensors, config["num_layers"], f.path, "blk.", "metadata llama.block_count", fewer_ok=True)  # before a map of that many names
    names = weight_map(config["num_layers"], config["tie_word_embeddings"], "gguf")
    what = f"a {config['num_layers']}-layer Llama"
    check_keys(f.tensors, _expected(names, config), f.path, what, "is this a llama GGUF file with this metadata?")
    heads = {"attention.query.weight": config["num_heads"], "attention.key.weight": config["num_kv_heads"]}
    return config, [(ours, theirs, next((n for suffix, n in heads.items() if ours.endswith(suffix)), None)) for ours, theirs in names.items()]


def from_gguf(f: GGUFFile, dtype: torch.dtype = torch.float32) -> tuple[dict, dict[str, torch.Tensor]]:
    """(hyperparameters, our state dict) of a llama GGUF file: names checked, tensors dequantized, W_q and W_k unpermuted."""
    config, names = _checked_gguf(f)
    state = {}
    for ours, theirs, n_head in names:
        w = f.tensor(theirs)
        state[ours] = (unpermute(w, n_head) if n_head else w).to(dtype)
    check_values(f.path, state)  # a NaN scale in a block, or in an F32 tensor, is refused here
    return config, state


def blocks_from_gguf(f: GGUFFile, types: Collection[str]) -> dict[str, tuple[str, torch.Tensor]]:
    """Our name -> (ggml type, blocks) of each weight that a llama GGUF file stores in one of the block `types`, not
    dequantized: blocks is a copy of its bytes, (rows, bytes per row) uint8. Names are checked as from_gguf checks them.
    A row of W is whole blocks, so W_q's and W_k's un-permutation, a reordering of rows, moves rows of blocks as they
    are, and the blocks dequantize to exactly from_gguf's float32 weight (quant/ggml.py keeps them as a weight)."""
    out = {}
    for ours, theirs, n_head in _checked_gguf(f)[1]:
        if f.tensors[theirs].type in types:
            rows = unpermute(f.raw(theirs), n_head) if n_head else f.raw(theirs)  # (rows, bytes per row)
            out[ours] = (f.tensors[theirs].type, rows.clone(memory_format=torch.contiguous_format))  # off the file's mapping
    return out


def from_hf(hf_state: Mapping[str, torch.Tensor], config, path="state dict") -> dict[str, torch.Tensor]:
    """Rename a `transformers` LlamaForCausalLM state dict to ours, checking every name and shape against `config`
    (config_from_gguf's dict or a DecoderConfig). A tied lm_head.weight, if present, must be the embedding."""
    c = _hparams(config)
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(IGNORED_SUFFIXES)}
    if c["tie_word_embeddings"] and "lm_head.weight" in hf_state:
        head, embed = hf_state.pop("lm_head.weight"), hf_state.get("model.embed_tokens.weight")
        if embed is not None and not torch.equal(head, embed):
            raise InputError(f"{path}: lm_head.weight differs from model.embed_tokens.weight, but tie_word_embeddings is set")
    check_layer_count(hf_state, c["num_layers"], path, "model.layers.", fewer_ok=True)  # before a map of that many names
    names = weight_map(c["num_layers"], c["tie_word_embeddings"], "hf")
    check_keys(hf_state, _expected(names, c), path, f"a {c['num_layers']}-layer Llama", "is this a LlamaForCausalLM checkpoint with this config?")
    return {ours: hf_state[theirs] for ours, theirs in names.items()}


def to_hf(state: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename our state dict to `transformers`' LlamaForCausalLM names (a tied lm_head is left out, as HF saves it)."""
    c = _hparams(config)
    names = weight_map(c["num_layers"], c["tie_word_embeddings"], "hf")
    return {theirs: state[ours] for ours, theirs in names.items()}
