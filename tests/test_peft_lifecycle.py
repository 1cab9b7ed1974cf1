"""One lifecycle for every PEFT method, checked as peft's generic tests check it (tests/testing_common.py there):
switching the method off gives the base model's outputs, on again the adapted ones; removing it gives the base
state dict back bit for bit; merging (where the paper defines it) computes what the unmerged model computes; the
saved folder rebuilds the same model; two methods never stack silently. Then what the task model declares:
LoRA and QLoRA on a masked LM train its head and leave its tied decoder alone. Fresh random weights, perturbed
away from each method's identity initialisation so that "adapted" really differs from "base"."""

import copy
import dataclasses
from itertools import product

import pytest
import torch
from conftest import quantized_base, random_batch
from torch import nn

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import MaskedLM, SequenceClassifier
from minitransformers.peft import (
    NF4Linear, add_lora, add_qlora, disabled, merge_lora, merge_prefix, merge_qlora, remove_method, set_enabled,
)  # fmt: skip
from minitransformers.peft.common import count_parameters, head_names
from minitransformers.peft.methods import apply_method, load_classifier, method_config, save_finetuned

CONFIG = EncoderConfig(vocab_size=83, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, max_position_embeddings=40, hidden_dropout=0.0, attention_dropout=0.0)
OPTIONS = {  # small sizes for a 32-wide model; every method of `finetune --method` that inserts or opens parameters
    "lora": {"r": 4, "targets": ("query", "value", "up")}, "qlora": {"r": 4}, "houlsby": {"reduction_factor": 8},
    "pfeiffer": {"reduction_factor": 8}, "prompt": {"num_virtual_tokens": 3, "init": "random"},
    "prefix": {"num_virtual_tokens": 3}, "bitfit": None,
}  # fmt: skip
MERGES = {"lora": merge_lora, "qlora": merge_qlora, "prefix": merge_prefix}  # the methods whose paper defines a merge


def base_classifier(pooling: str = "pooler") -> SequenceClassifier:
    model = SequenceClassifier(Encoder(CONFIG), 3, pooling=pooling).eval()
    with torch.no_grad():  # nonzero biases and LayerNorms away from identity, so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(mean=1.0 if "norm.weight" in name else 0.0, std=0.1)
    return model


def prepared(base: nn.Module, method: str) -> nn.Module:
    """A copy of `base` with `method`, its own trainable parameters (not the head's) moved by noise."""
    model = apply_method(copy.deepcopy(base), method, OPTIONS[method])
    head = head_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith(head):
                p.add_(0.5 * torch.randn_like(p))
    return model.eval()


def outputs(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(*batch)


@pytest.fixture
def setup():
    base, batch = base_classifier(), random_batch(CONFIG, B=3, T=9)
    return base, batch


@pytest.mark.parametrize("method", OPTIONS)
def test_disabling_the_method_gives_the_base_outputs_and_enabling_gives_the_adapted_ones(setup, method):
    base, batch = setup
    model = prepared(base, method)
    reference = outputs(quantized_base(base) if method == "qlora" else base, batch)
    adapted = outputs(model, batch)
    assert (adapted - reference).abs().max() > 1e-3  # the method changes the function
    with disabled(model):
        assert torch.equal(outputs(model, batch), reference)
    assert torch.equal(outputs(model, batch), adapted)
    set_enabled(model, False)
    assert torch.equal(outputs(model, batch), reference)
    set_enabled(model, True)
    assert torch.equal(outputs(model, batch), adapted)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
@pytest.mark.parametrize("method", OPTIONS)
def test_removing_the_method_restores_the_base_state_dict_and_flags_bit_for_bit(setup, method, pooling):
    base = base_classifier(pooling)
    expected = quantized_base(base) if method == "qlora" else base  # QLoRA's base is the NF4 model it froze
    state, flags = expected.state_dict(), {n: p.requires_grad for n, p in base.named_parameters()}
    model = remove_method(prepared(base, method))
    assert model.state_dict().keys() == state.keys()
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])] == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {n: flags[n] for n, _ in expected.named_parameters()}
    assert [type(m) for m in model.modules()] == [type(m) for m in expected.modules()]
    assert torch.equal(outputs(model, setup[1]), outputs(expected, setup[1]))


@pytest.mark.parametrize("method", MERGES)
def test_merge_equals_unmerged(setup, method):
    base, batch = setup
    model = prepared(base, method)
    adapted = outputs(model, batch)
    merged = MERGES[method](model)
    assert (outputs(merged, batch) - adapted).abs().max() <= 1e-5


@pytest.mark.parametrize("method", OPTIONS)
def test_the_saved_folder_rebuilds_the_adapted_model(tmp_path, setup, method):
    base, batch = setup
    base.encoder.save_pretrained(tmp_path / "base")
    model = SequenceClassifier.from_encoder(tmp_path / "base", 3).eval()
    model.classifier.load_state_dict(base.classifier.state_dict())
    model = prepared(model, method)
    options = {} if OPTIONS[method] is None else dataclasses.asdict(method_config(method, OPTIONS[method]))
    save_finetuned(model, tmp_path / "run", method, options, tmp_path / "base")
    assert torch.equal(outputs(load_classifier(tmp_path / "run").eval(), batch), outputs(model, batch))


@pytest.mark.parametrize("first,second", list(product(OPTIONS, OPTIONS)))
def test_a_second_method_is_refused_naming_what_was_found_and_the_fix(first, second):
    model = apply_method(base_classifier(), first, OPTIONS[first])
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    recorded = {"houlsby": "adapters", "pfeiffer": "adapters", "prompt": "prompt_tuning", "prefix": "prefix_tuning"}.get(first, first)
    with pytest.raises(ValueError, match=rf"expected a base model without a parameter-efficient method, found SequenceClassifier prepared with {recorded}.*remove_{recorded}\(model\)"):
        apply_method(model, second, OPTIONS[second])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before  # refused before touching anything


def test_lora_on_the_output_projection_then_houlsby_adapters_is_refused_not_an_attribute_error():
    model = add_lora(base_classifier(), targets=("out",))
    with pytest.raises(ValueError, match=r"cannot add adapters: .* prepared with lora \(LoRALinear\)"):
        apply_method(model, "houlsby", {"reduction_factor": 8})


def test_bitfit_then_lora_is_refused_instead_of_refreezing_the_biases():
    model = apply_method(base_classifier(), "bitfit")
    with pytest.raises(ValueError, match="cannot add lora: .* prepared with bitfit"):
        add_lora(model)
    assert model.encoder.layers[0].attention.query.bias.requires_grad


# --- what the task model declares: the head that always trains, the weights that are tied -------------------------


def masked_lm() -> MaskedLM:
    return MaskedLM(Encoder(CONFIG, add_pooler=False)).eval()


def test_lora_on_a_masked_lm_trains_its_head_and_leaves_the_tied_embedding_frozen():
    model = add_lora(masked_lm(), r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"head.transform.weight", "head.transform.bias", "head.norm.weight", "head.norm.bias", "head.bias"}
    assert head <= trainable and not model.encoder.embeddings.word.weight.requires_grad
    H, V, L, r = CONFIG.hidden_size, CONFIG.vocab_size, CONFIG.num_layers, 4
    assert count_parameters(model) == L * 2 * r * (H + H) + (H * H + H) + 2 * H + V  # LoRA on query, value; the head's own
    ids = torch.randint(0, V, (2, 7))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model.train()(ids).flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.transform.weight" in changed and "head.bias" in changed
    assert "encoder.embeddings.word.weight" not in changed
    assert model.head.decoder.weight is model.encoder.embeddings.word.weight


def test_qlora_on_a_masked_lm_keeps_the_decoder_tied_and_unquantized():
    model = add_qlora(masked_lm(), r=4)
    decoder, embedding = model.head.decoder, model.encoder.embeddings.word
    assert type(decoder) is nn.Linear and type(model.head.transform) is nn.Linear
    assert decoder.weight is embedding.weight and decoder.weight.data_ptr() == embedding.weight.data_ptr()
    assert sum(isinstance(m, NF4Linear) for m in model.modules()) == 6 * CONFIG.num_layers  # every Linear of the layers
    assert model.head.transform.weight.requires_grad and not embedding.weight.requires_grad
