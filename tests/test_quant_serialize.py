"""Saving and loading quantized classifiers (quant/serialize.py): save -> load gives bit-identical logits for every
method, config.json is the one save_pretrained writes, the folder's size against fp32, and broken folders fail
with the reason. The tiny classifier of test_qlinear.py; fresh random data."""

import json

import pytest
import torch

from minitransformers.io.safetensors import load_file, save_file
from minitransformers.model import SequenceClassifier
from minitransformers.quant.prune import prune_ffn_neurons, prune_heads
from minitransformers.quant.qlinear import METHODS, QuantizedLinear, quantize_model
from minitransformers.quant.serialize import load_quantized, save_quantized
from conftest import CSR_WARNING, LINEARS, ragged_batch, small_classifier

CASES = [(m, {}) for m in METHODS] + [("int4", {"group_size": 64, "symmetric": False}), ("nf4", {"double_quant": True})]


def folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


@pytest.mark.filterwarnings(CSR_WARNING)
@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}{''.join(f'-{k}={v}' for k, v in o.items())}" for m, o in CASES])
def test_save_then_load_gives_identical_logits(tmp_path, method, options):
    model = small_classifier()
    quantize_model(model, method, **options)
    save_quantized(model, tmp_path, method, options)
    loaded = load_quantized(tmp_path).eval()
    ids_mask = ragged_batch()
    with torch.no_grad():
        assert torch.equal(loaded(*ids_mask), model(*ids_mask))
    layers = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == LINEARS and all(type(m) is type(model.get_submodule(n)) and m.layout == model.get_submodule(n).layout for n, m in layers.items())
    assert all(torch.equal(t, model.state_dict()[k]) and t.dtype == model.state_dict()[k].dtype for k, t in loaded.state_dict().items())


def test_a_structurally_pruned_then_quantized_model_reloads_its_narrower_layers(tmp_path):
    model = small_classifier()
    prune_heads(model, {0: [0]})  # of 2
    prune_ffn_neurons(model, {i: [0, 3] for i in range(len(model.encoder.layers))})
    quantize_model(model, "int8")
    save_quantized(model, tmp_path, "int8")
    loaded = load_quantized(tmp_path).eval()
    assert [layer.attention.num_heads for layer in loaded.encoder.layers] == [layer.attention.num_heads for layer in model.encoder.layers]
    ids_mask = ragged_batch()
    with torch.no_grad():
        assert torch.equal(loaded(*ids_mask), model(*ids_mask))


def test_quantization_json_records_method_options_and_modules(tmp_path):
    model = small_classifier()
    quantize_model(model, "int4", group_size=64)
    save_quantized(model, tmp_path, "int4", {"group_size": 64})
    saved = json.loads((tmp_path / "quantization.json").read_text())
    assert saved["method"] == "int4" and saved["options"] == {"group_size": 64}
    assert len(saved["modules"]) == LINEARS and "classifier" not in saved["modules"]
    up = saved["modules"]["encoder.layers.0.ffn.up"]
    assert up == {"class": "WeightOnlyLinear", "layout": {"shape": [512, 128], "format": "uniform", "bits": 4, "block_size": [1, 64], "symmetric": True}}


def test_config_json_is_the_one_save_pretrained_writes(tmp_path):
    model = small_classifier()
    model.save_pretrained(tmp_path / "fp32")
    quantize_model(model, "nf4")
    save_quantized(model, tmp_path / "nf4", "nf4")
    assert (tmp_path / "nf4" / "config.json").read_text() == (tmp_path / "fp32" / "config.json").read_text()


def test_nf4_folder_is_under_a_fifth_of_the_fp32_folder(tmp_path):
    """Linear weights are 95% of this model's 429k parameters. Measured folder / fp32 folder: int8 0.30, int4 0.18,
    nf4 0.19, nf4 with double quantization 0.18, kmeans4 0.17, prune2:4 0.56, prune50 1.00 (stays dense); the
    embeddings, LayerNorms, biases and classifier stay fp32."""
    model = small_classifier()
    model.save_pretrained(tmp_path / "fp32")
    quantize_model(model, "nf4")
    save_quantized(model, tmp_path / "nf4", "nf4")
    ratio = folder_bytes(tmp_path / "nf4") / folder_bytes(tmp_path / "fp32")
    assert 0.15 < ratio < 0.2


def test_from_pretrained_on_a_quantized_folder_says_it_is_not_an_hf_checkpoint(tmp_path):
    model = small_classifier()
    quantize_model(model, "int8")
    save_quantized(model, tmp_path, "int8")
    with pytest.raises(FileNotFoundError, match="quantized.safetensors"):
        SequenceClassifier.from_pretrained(tmp_path)


def test_a_missing_tensor_is_named(tmp_path):
    model = small_classifier()
    quantize_model(model, "nf4", double_quant=True)
    save_quantized(model, tmp_path, "nf4", {"double_quant": True})
    tensors = load_file(tmp_path / "quantized.safetensors")
    del tensors["encoder.layers.1.ffn.down.absmax_scale"]
    save_file(tensors, tmp_path / "quantized.safetensors")
    with pytest.raises(ValueError, match=r"encoder.layers.1.ffn.down: .*absmax_scale"):
        load_quantized(tmp_path)


def test_saving_an_unquantized_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="call quantize_model"):
        save_quantized(small_classifier(), tmp_path, "int8")
