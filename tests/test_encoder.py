"""The encoder against `transformers.BertModel`: tiny random configs, both attention paths, real MiniLM."""

import dataclasses

import pytest
import torch

from conftest import TINY_CONFIGS, hf_bert, random_batch, save_edited

from minitransformers import Encoder, EncoderConfig, Tokenizer





@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "gelu_tanh"])
def test_against_hf_bert_model(tmp_path, config, impl):
    hf = hf_bert(config)
    hf.save_pretrained(tmp_path)
    ours = Encoder.from_pretrained(tmp_path, attn_impl=impl).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = ours(ids, attention_mask=mask, token_type_ids=types)
        pooled = ours.pooler(hidden)
    real = mask.bool()  # HF and we agree on padded positions too, but only real tokens carry meaning
    assert (hidden - expected.last_hidden_state)[real].abs().max() <= 1e-5
    assert (hidden - expected.last_hidden_state).abs().max() <= 1e-5
    assert (pooled - expected.pooler_output).abs().max() <= 1e-5


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "gelu_tanh"])
def test_save_pretrained_loads_in_transformers_with_same_outputs(tmp_path, config, transformers):
    ours = Encoder(config).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert (ours(ids, mask, types) - expected).abs().max() <= 1e-5
    reloaded = Encoder.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(ours.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_sdpa_path_equals_eager_path():
    config = TINY_CONFIGS[0]
    eager = Encoder(dataclasses.replace(config, attn_impl="eager")).eval()
    sdpa = Encoder(dataclasses.replace(config, attn_impl="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    ids, mask, types = random_batch(config, B=6, T=20)
    with torch.no_grad():
        assert (eager(ids, mask, types) - sdpa(ids, mask, types)).abs().max() <= 1e-5


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fully_padded_row_gives_no_nans(impl):
    config = dataclasses.replace(TINY_CONFIGS[1], attn_impl=impl)
    model = Encoder(config).eval()
    ids, mask, types = random_batch(config)
    mask[1] = 0
    with torch.no_grad():
        hidden = model(ids, mask, types)
    assert torch.isfinite(hidden).all()


def test_padding_does_not_change_real_token_states():
    """A sequence alone and the same sequence padded inside a batch give the same states."""
    config = TINY_CONFIGS[0]
    model = Encoder(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        assert (model(ids) - model(padded, mask)[:, :7]).abs().max() <= 1e-5


def test_loads_the_encoder_of_a_model_with_a_head_from_pytorch_model_bin(tmp_path, transformers):
    """Keys under `bert.` load; the head's keys (`classifier.*`) are left out, as HF does for a BertModel."""
    config = TINY_CONFIGS[0]
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**config.to_hf())).eval()
    state = hf.state_dict()
    Encoder(config).save_pretrained(tmp_path)  # config.json
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    ours = Encoder.from_pretrained(tmp_path).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert (ours(ids, mask, types) - hf.bert(ids, mask, types).last_hidden_state).abs().max() <= 1e-5


def test_missing_key_fails_listing_it(tmp_path):
    save_edited(Encoder(TINY_CONFIGS[0]), tmp_path, lambda s: s.pop("encoder.layer.1.attention.self.value.bias"))
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.1.attention.self.value.bias'\]"):
        Encoder.from_pretrained(tmp_path)


def test_a_layer_more_than_config_json_says_fails_before_the_model_is_built(tmp_path):
    save_edited(Encoder(TINY_CONFIGS[0]), tmp_path, lambda s: s.update({"encoder.layer.2.output.dense.weight": torch.randn(3, 3)}))
    with pytest.raises(ValueError, match=r"config.json: num_hidden_layers is 2, but the weights hold 3 layers numbered 0 … 2"):
        Encoder.from_pretrained(tmp_path)


def test_unexpected_key_fails_listing_it(tmp_path):
    save_edited(Encoder(TINY_CONFIGS[0]), tmp_path, lambda s: s.update({"embeddings.extra.weight": torch.randn(3, 3)}))
    with pytest.raises(ValueError, match=r"unexpected keys \['embeddings.extra.weight'\]"):
        Encoder.from_pretrained(tmp_path)


def test_misshaped_key_fails_listing_it(tmp_path):
    save_edited(Encoder(TINY_CONFIGS[0]), tmp_path, lambda s: s.update({"pooler.dense.weight": torch.randn(32, 31)}))
    with pytest.raises(ValueError, match=r"mis-shaped keys \['pooler.dense.weight: checkpoint \(32, 31\), model \(32, 32\)'\]"):
        Encoder.from_pretrained(tmp_path)


def test_missing_weights_file_names_the_folder(tmp_path):
    TINY_CONFIGS[0].to_json(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        Encoder.from_pretrained(tmp_path)


def test_config_round_trips_through_hf_config(transformers):
    for config in TINY_CONFIGS:
        hf = transformers.BertConfig(**config.to_hf())
        assert EncoderConfig.from_hf(hf.to_dict()) == config


def test_unsupported_config_is_refused():
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported"):
        EncoderConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        EncoderConfig.from_hf({**TINY_CONFIGS[0].to_hf(), "position_embedding_type": "relative_key"})


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street while people walk by and some of them stop to listen.",
    "Hello!",
    "Transformers encode every token in the context of every other token.",
]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_matches_transformers_on_padded_real_sentences(minilm_dir, impl, transformers):
    tok = Tokenizer.from_pretrained(minilm_dir)
    batch = tok(SENTENCES)
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].size(1)] * len(SENTENCES)  # padded
    ours = Encoder.from_pretrained(minilm_dir, attn_impl=impl).eval()
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        hidden = ours(**batch)
    real = batch["attention_mask"].bool()
    assert (hidden - expected)[real].abs().max() <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_half_precision_on_cuda_is_as_accurate_as_transformers(tmp_path, dtype, impl):
    """In fp16/bf16 both implementations round; ours may drift from the fp32 result no more than HF's does."""
    config = EncoderConfig(vocab_size=1000, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_position_embeddings=128)
    hf = hf_bert(config)
    hf.save_pretrained(tmp_path)
    ours = Encoder.from_pretrained(tmp_path, attn_impl=impl).eval().cuda()
    hf = hf.cuda()
    ids, mask, types = (t.cuda() for t in random_batch(config, B=8, T=128))
    real = mask.bool()
    with torch.no_grad():
        reference = hf(ids, mask, types).last_hidden_state[real]
        hf_error = (hf.to(dtype)(ids, mask, types).last_hidden_state[real].float() - reference).abs().max()
        our_error = (ours.to(dtype)(ids, mask, types)[real].float() - reference).abs().max()
    assert torch.isfinite(our_error) and our_error <= 2 * hf_error + 1e-3



def test_shapes_only_builds_on_meta_without_initialising_and_restores_torch_nn_init():
    """hf.shapes_only: the model has shapes but no storage, torch.nn.init is a no-op inside and itself again after,
    also when the body raises; a model loaded through it equals the one loaded into a real initialised copy."""
    from minitransformers.io import hf

    init = {name: getattr(torch.nn.init, name) for name in hf.INIT_FUNCTIONS}
    with hf.shapes_only():
        model = Encoder(EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=16))
        assert all(p.is_meta for p in model.parameters())
        real = torch.ones(3, device="cpu")
        assert torch.nn.init.normal_(real) is real and real.tolist() == [1.0, 1.0, 1.0]  # skipped, whatever the device
    assert {name: getattr(torch.nn.init, name) for name in hf.INIT_FUNCTIONS} == init
    with pytest.raises(RuntimeError, match="inside"), hf.shapes_only():
        raise RuntimeError("inside")
    assert {name: getattr(torch.nn.init, name) for name in hf.INIT_FUNCTIONS} == init
    assert not torch.equal(torch.nn.init.normal_(torch.ones(3)), torch.ones(3))
