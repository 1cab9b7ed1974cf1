"""The Llama weight map: our names against llama.cpp's and `transformers`' for every parameter, the inverse of
llama.cpp's query/key row permutation (against the converter's code and `transformers`' reverse), the hyperparameters
of GGUF metadata, and strict loading that names each missing, unexpected or mis-shaped tensor."""

import re

import pytest
import torch

from conftest import fetched, gguf_bytes
from minitransformers.config import DecoderConfig
from minitransformers.io.gguf import read_gguf
from minitransformers.io.llama import config_from_gguf, from_gguf, from_hf, shapes, to_hf, unpermute, weight_map

TINY = dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, rope_theta=500000.0,
            rms_norm_eps=2.0**-20, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536, rope_theta=100000.0,
               rms_norm_eps=float(torch.tensor(1e-5, dtype=torch.float32)), max_position_embeddings=8192, tie_word_embeddings=True)  # fmt: skip


def llama_cpp_permute(w, n_head: int):
    """convert_hf_to_gguf.py, LlamaModel.permute, as written there (n_head = head_count, or head_count_kv for K)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_hf_state(c: dict, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    names = weight_map(c["num_layers"], c["tie_word_embeddings"], "hf")
    return {hf: torch.randn(shapes(c)[ours], generator=g) for ours, hf in names.items()}


def gguf_metadata(c: dict) -> dict:
    u32, f32 = 4, 6
    return {
        "general.architecture": (8, "llama"), "llama.vocab_size": (u32, c["vocab_size"]), "llama.context_length": (u32, c["max_position_embeddings"]),
        "llama.embedding_length": (u32, c["hidden_size"]), "llama.block_count": (u32, c["num_layers"]),
        "llama.feed_forward_length": (u32, c["intermediate_size"]), "llama.attention.head_count": (u32, c["num_heads"]),
        "llama.attention.head_count_kv": (u32, c["num_kv_heads"]), "llama.rope.freq_base": (f32, c["rope_theta"]),
        "llama.attention.layer_norm_rms_epsilon": (f32, c["rms_norm_eps"]),
        "llama.rope.dimension_count": (u32, c["hidden_size"] // c["num_heads"]),
    }  # fmt: skip


def gguf_tensors(hf_state: dict, c: dict) -> dict:
    """The tensors llama.cpp's converter writes for an HF state dict: renamed, W_q and W_k permuted, F32."""
    tensors = {}
    for ours, name in weight_map(c["num_layers"], c["tie_word_embeddings"], "gguf").items():
        w = hf_state[weight_map(c["num_layers"], c["tie_word_embeddings"], "hf")[ours]]
        if name.endswith("attn_q.weight"):
            w = llama_cpp_permute(w, c["num_heads"])
        elif name.endswith("attn_k.weight"):
            w = llama_cpp_permute(w, c["num_kv_heads"])
        tensors[name] = ("F32", list(reversed(w.shape)), w.contiguous().numpy().tobytes())
    return tensors


def tiny_gguf(tmp_path, c=TINY, edit=lambda metadata, tensors: None, seed=0):
    """A llama GGUF file converted from a random HF state dict of config `c`; `edit` may change it first."""
    hf_state = random_hf_state(c, seed)
    metadata, tensors = gguf_metadata(c), gguf_tensors(hf_state, c)
    edit(metadata, tensors)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_bytes(metadata, tensors))
    return read_gguf(path), hf_state


# ---- names ---------------------------------------------------------------------------------------------------


def test_weight_maps_name_each_parameter_in_each_format():
    gguf, hf = weight_map(1, tied=False, fmt="gguf"), weight_map(1, tied=False, fmt="hf")
    layer = ["attention_norm", "attention.query", "attention.key", "attention.value", "attention.out", "ffn_norm", "ffn.gate", "ffn.up", "ffn.down"]
    ours = ["decoder.embed.weight", "decoder.norm.weight", "lm_head.weight", *(f"decoder.layers.0.{n}.weight" for n in layer)]
    assert sorted(gguf) == sorted(hf) == sorted(ours)
    assert [gguf[k] for k in ours] == ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.0.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    ]
    assert [hf[k] for k in ours] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.0.{n}.weight"
        for n in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]
    for fmt in ("gguf", "hf"):
        tied = weight_map(30, tied=True, fmt=fmt)
        assert len(tied) == len(set(tied.values())) == 30 * 9 + 2 and "lm_head.weight" not in tied


@pytest.mark.parametrize("tied", [True, False])
def test_shapes_are_the_causal_lm_parameters(tied):
    from minitransformers.model.causal_lm import CausalLM

    config = DecoderConfig(**{**TINY, "tie_word_embeddings": tied})
    model = CausalLM(config)
    assert {name: tuple(p.shape) for name, p in model.named_parameters()} == shapes(config) == shapes({**TINY, "tie_word_embeddings": tied})


def test_hf_names_are_llama_for_causal_lm_parameters_both_ways(transformers):
    hf_config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=48, tie_word_embeddings=True)  # fmt: skip
    model = transformers.LlamaForCausalLM(hf_config)
    ours = from_hf(model.state_dict(), TINY)  # its state dict holds the tied lm_head.weight too
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes(TINY)
    assert set(to_hf(ours, TINY)) == {name for name, _ in model.named_parameters()}
    assert all(torch.equal(to_hf(ours, TINY)[name], p) for name, p in model.named_parameters())


# ---- the row permutation ----------------------------------------------------------------------------------------

PERMUTED = [(32, 4), (16, 2), (576, 9), (192, 3)]  # (rows, heads): TINY's W_q and W_k, SmolLM2's


@pytest.mark.parametrize("rows, n_head", PERMUTED)
def test_unpermute_inverts_the_llama_cpp_permutation(rows, n_head):
    w = torch.randn(rows, 24)
    assert torch.equal(unpermute(llama_cpp_permute(w, n_head), n_head), w)
    assert torch.equal(llama_cpp_permute(unpermute(w, n_head), n_head), w)
    assert not torch.equal(unpermute(w, n_head), w)
    d = rows // n_head  # row h·d + 2j + s of the GGUF tensor is row h·d + s·d/2 + j of the HF one
    h, j, s = n_head - 1, d // 2 - 1, 1
    assert torch.equal(llama_cpp_permute(w, n_head)[h * d + 2 * j + s], w[h * d + s * d // 2 + j])


@pytest.mark.parametrize("rows, n_head", PERMUTED)
def test_unpermute_matches_transformers_reverse_permutation(transformers, rows, n_head):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(rows, 24)
    heads = {"num_attention_heads": n_head * 3, "num_key_value_heads": n_head}  # W_k: transformers picks the kv heads
    theirs = LlamaTensorProcessor(config=heads).process(w.numpy(), "blk.0.attn_k.weight").weights
    assert torch.equal(unpermute(w, n_head), torch.from_numpy(theirs))
    theirs = LlamaTensorProcessor(config={**heads, "num_attention_heads": n_head}).process(w.numpy(), "blk.0.attn_q.weight").weights
    assert torch.equal(unpermute(w, n_head), torch.from_numpy(theirs))


def rope(x, pairs: str, base=10000.0):
    """RoPE on (T, n_head, d) at positions 0..T-1, rotating (j, j + d/2) ("half") or (2j, 2j + 1) ("interleaved")."""
    T, _, d = x.shape
    angle = torch.arange(T)[:, None, None] * base ** (-torch.arange(d // 2) * 2 / d)  # (T, 1, d/2)
    a, b = (x[..., : d // 2], x[..., d // 2 :]) if pairs == "half" else (x[..., 0::2], x[..., 1::2])  # (T, n_head, d/2) each
    a, b = a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()
    return torch.cat([a, b], -1) if pairs == "half" else torch.stack([a, b], -1).flatten(-2)


def test_the_permutation_makes_llama_cpp_interleaved_rope_give_the_same_attention_scores():
    n_head, d, H, T = 4, 8, 16, 5
    x, w_q, w_k = torch.randn(T, H, dtype=torch.float64), torch.randn(n_head * d, H, dtype=torch.float64), torch.randn(n_head * d, H, dtype=torch.float64)
    heads = lambda w: (x @ w.T).view(T, n_head, d)  # noqa: E731  (T, n_head, d)
    ours = torch.einsum("thd,shd->hts", rope(heads(w_q), "half"), rope(heads(w_k), "half"))  # (n_head, T, T)
    llama_cpp = torch.einsum("thd,shd->hts", *(rope(heads(llama_cpp_permute(w, n_head)), "interleaved") for w in (w_q, w_k)))
    assert torch.allclose(ours, llama_cpp, rtol=1e-12, atol=1e-12)
    unpermuted = torch.einsum("thd,shd->hts", *(rope(heads(llama_cpp_permute(w, n_head)), "half") for w in (w_q, w_k)))
    assert not torch.allclose(ours, unpermuted, atol=1e-3)  # without undoing it, the scores are wrong


# ---- GGUF files ---------------------------------------------------------------------------------------------------


def test_tiny_gguf_loads_as_the_hf_state_it_was_converted_from(tmp_path):
    f, hf_state = tiny_gguf(tmp_path)
    config, state = from_gguf(f)
    assert config == TINY
    expected = from_hf(hf_state, TINY)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    assert all(v.dtype == torch.bfloat16 for v in from_gguf(f, torch.bfloat16)[1].values())


def test_an_untied_gguf_has_an_output_tensor_and_lm_head(tmp_path):
    c = {**TINY, "tie_word_embeddings": False}
    f, hf_state = tiny_gguf(tmp_path, c)
    config, state = from_gguf(f)
    assert config == c and torch.equal(state["lm_head.weight"], hf_state["lm_head.weight"])


def remove(name):
    return lambda metadata, tensors: tensors.pop(name) if name in tensors else metadata.pop(name)


def bad_shape(metadata, tensors):
    tensors["blk.1.ffn_down.weight"] = ("F32", [48, 31], bytes(48 * 31 * 4))


STRICT = {  # case -> (edit of the tiny file, the problem the error must name)
    "missing tensor": (remove("blk.1.ffn_up.weight"), "missing keys ['blk.1.ffn_up.weight'], unexpected keys []"),
    "unexpected tensor": (lambda m, t: t.__setitem__("rope_freqs.weight", ("F32", [4], bytes(16))), "missing keys [], unexpected keys ['rope_freqs.weight']"),
    "extra layer": (lambda m, t: t.__setitem__("blk.2.attn_norm.weight", ("F32", [32], bytes(128))), "unexpected keys ['blk.2.attn_norm.weight']"),
    "mis-shaped tensor": (bad_shape, "blk.1.ffn_down.weight: checkpoint (31, 48), model (32, 48)"),
    "not llama": (lambda m, t: m.__setitem__("general.architecture", (8, "gemma3")), "general.architecture is 'gemma3'; only 'llama'"),
    "no block count": (remove("llama.block_count"), "metadata lacks 'llama.block_count'"),
    "no rms eps": (remove("llama.attention.layer_norm_rms_epsilon"), "metadata lacks 'llama.attention.layer_norm_rms_epsilon'"),
    "no vocab size": (remove("llama.vocab_size"), "lacks both 'llama.vocab_size' and 'tokenizer.ggml.tokens'"),
    "partial rotary": (lambda m, t: m.__setitem__("llama.rope.dimension_count", (4, 4)), "llama.rope.dimension_count 4 is not the head size 8"),
    "rope scaling": (lambda m, t: m.__setitem__("llama.rope.scaling.type", (8, "linear")), "llama.rope.scaling.type 'linear' is not supported"),
    "heads not dividing": (lambda m, t: m.__setitem__("llama.attention.head_count_kv", (4, 3)), "3 kv heads the heads"),
    "per-layer heads": (lambda m, t: m.__setitem__("llama.attention.head_count", (9, (4, [4, 4]))), "{'num_heads': [4, 4]} must be positive numbers"),
    "eps a string": (lambda m, t: m.__setitem__("llama.attention.layer_norm_rms_epsilon", (8, "1e-5")), "{'rms_norm_eps': '1e-5'} must be positive numbers"),
    "zero rope base": (lambda m, t: m.__setitem__("llama.rope.freq_base", (6, 0.0)), "{'rope_theta': 0.0} must be positive numbers"),
}  # fmt: skip


@pytest.mark.parametrize("case", STRICT)
def test_a_gguf_file_that_is_not_this_llama_is_refused_naming_the_problem(tmp_path, case):
    edit, problem = STRICT[case]
    f, _ = tiny_gguf(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=f"^{re.escape(str(f.path))}: .*{re.escape(problem)}"):
        from_gguf(f)


def test_head_count_kv_defaults_to_the_head_count_and_the_vocabulary_to_the_tokens(tmp_path):
    c = {**TINY, "num_kv_heads": 4}

    def edit(metadata, tensors):
        del metadata["llama.attention.head_count_kv"], metadata["llama.vocab_size"]
        metadata["tokenizer.ggml.tokens"] = (9, (8, [f"t{i}" for i in range(40)]))

    f, _ = tiny_gguf(tmp_path, c, edit=edit)
    assert config_from_gguf(f) == c


# ---- HF state dicts -------------------------------------------------------------------------------------------------


def test_hf_state_round_trips_and_ignores_rotary_buffers():
    hf_state = random_hf_state(TINY)
    ours = from_hf({**hf_state, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}, TINY)
    assert to_hf(ours, TINY).keys() == hf_state.keys()
    assert all(torch.equal(to_hf(ours, TINY)[k], v) for k, v in hf_state.items())


def test_a_tied_hf_lm_head_must_be_the_embedding():
    hf_state = random_hf_state(TINY)
    assert "lm_head.weight" not in from_hf({**hf_state, "lm_head.weight": hf_state["model.embed_tokens.weight"].clone()}, TINY)
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight, but tie_word_embeddings is set"):
        from_hf({**hf_state, "lm_head.weight": hf_state["model.embed_tokens.weight"] + 1}, TINY)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), "missing keys ['model.layers.1.mlp.up_proj.weight'], unexpected keys []"),
        (lambda s: s.__setitem__("model.layers.0.self_attn.q_proj.bias", torch.zeros(32)), "unexpected keys ['model.layers.0.self_attn.q_proj.bias']"),
        (lambda s: s.__setitem__("model.norm.weight", torch.ones(31)), "model.norm.weight: checkpoint (31,), model (32,)"),
    ],
)
def test_an_hf_state_that_is_not_this_llama_is_refused_naming_the_key(edit, problem):
    hf_state = random_hf_state(TINY)
    edit(hf_state)
    with pytest.raises(ValueError, match=re.escape(problem)):
        from_hf(hf_state, TINY, path="ckpt")


# ---- the real SmolLM2 file --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf(fetched("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_real_file_has_smollm2s_hyperparameters(smollm2):
    assert config_from_gguf(smollm2) == SMOLLM2
    assert DecoderConfig(**config_from_gguf(smollm2)).head_dim == 64  # the dict is DecoderConfig's fields


def test_real_file_loads_every_parameter_with_its_shape(smollm2):
    config, state = from_gguf(smollm2)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes(config) and len(state) == 30 * 9 + 2
    assert all(v.dtype == torch.float32 and v.sum().isfinite() for v in state.values())  # a NaN or inf anywhere would show
    assert sum(v.numel() for v in state.values()) == 134_515_008  # SmolLM2-135M, the embedding counted once
    rms = state["decoder.layers.0.attention.query.weight"].pow(2).mean().sqrt()
    assert 0.01 < rms < 1 and not torch.equal(state["decoder.layers.0.attention.query.weight"], smollm2.tensor("blk.0.attn_q.weight"))


def test_real_query_and_key_unpermute_as_transformers_does(transformers, smollm2):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    for name, n_head in (("blk.0.attn_q.weight", 9), ("blk.29.attn_k.weight", 3)):
        w = smollm2.tensor(name)
        assert torch.equal(unpermute(w, n_head), torch.from_numpy(processor.process(w.numpy(), name).weights))


@pytest.mark.slow
def test_real_file_loads_as_transformers_loads_it(transformers, smollm2):
    """transformers' own GGUF loader (gguf's dequantize, its reverse permutation, its names): every tensor equal."""
    pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    hf_config = load_gguf_checkpoint(str(smollm2.path))["config"]
    theirs = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads"}
    assert {theirs.get(k, k): v for k, v in hf_config.items() if theirs.get(k, k) in SMOLLM2} == SMOLLM2
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config))
    hf_state = load_gguf_checkpoint(str(smollm2.path), return_tensors=True, model_to_load=model)["tensors"]
    config, ours = from_gguf(smollm2)
    expected = from_hf(hf_state, config)
    assert ours.keys() == expected.keys() and len(hf_state) == 272
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
