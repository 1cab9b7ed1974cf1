"""LoRA (peft/lora.py) against its equation (Hu et al. 2021, eq. 3 with α/r), its invariants (zero B is the base,
merge equals unmerged, only A, B and the head train, save/load), and against the `peft` library: our export
loads in peft, peft's adapter loads in ours, with the same logits. Tiny random configs, random inputs."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitransformers import Encoder, EncoderConfig
from minitransformers.io.safetensors import load_file
from minitransformers.model import SequenceClassifier
from minitransformers.peft.common import count_parameters
from minitransformers.peft.common import load_trainable_state_dict, trainable_state_dict
from minitransformers.peft.lora import LoRALinear, add_lora, lora_layers, merge_lora
from minitransformers.peft.peft_format import load_peft, save_peft
from conftest import random_batch


CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24)
ALL_LINEAR = ("query", "key", "value", "out", "up", "down")


def classifier(pooling="pooler") -> SequenceClassifier:
    """A random classifier whose biases are nonzero, so a dropped or swapped bias shows."""
    model = SequenceClassifier(Encoder(CONFIG), 3, pooling=pooling).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return model


def randomise_lora(model: nn.Module) -> nn.Module:
    """Nonzero B everywhere (B = 0 at init would hide any mistake in the LoRA path)."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.5)
    return model


def logits(model, batch):
    """Our model's logits, or those of a transformers / peft model, on (input_ids, attention_mask, token_type_ids)."""
    ids, mask, types = batch
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)  # by name: peft's third argument is inputs_embeds
    return getattr(out, "logits", out)


# --- the layer: the paper's equation, its initialisation, merge ---------------------------------------------------


def test_forward_equals_the_equation_h_is_Wx_plus_b_plus_alpha_over_r_BAx():
    """Reference: the paper's eq. 3 with the α/r scaling of section 4.1, computed by hand."""
    base = nn.Linear(7, 5)
    layer = LoRALinear(base, r=3, alpha=6)
    randomise_lora(layer)
    x = torch.randn(2, 4, 7)
    expected = x @ base.weight.T + base.bias + (6 / 3) * x @ layer.lora_A.T @ layer.lora_B.T  # (2, 4, 5)
    assert layer.lora_A.shape == (3, 7) and layer.lora_B.shape == (5, 3)
    assert (layer(x) - expected).abs().max() <= 1e-6


def test_dropout_acts_on_the_lora_path_only():
    """Reference: the equation's dropout(x), as loralib and peft apply it: to B A's input, never to W x."""
    layer = randomise_lora(LoRALinear(nn.Linear(6, 6), r=2, alpha=4, dropout=0.5)).train()
    x = torch.randn(3, 6)
    torch.manual_seed(3)
    h = layer(x)
    torch.manual_seed(3)
    dropped = F.dropout(x, p=0.5, training=True)  # the same mask: dropout is the only random draw
    expected = layer.base(x) + (4 / 2) * dropped @ layer.lora_A.T @ layer.lora_B.T
    assert (h - expected).abs().max() <= 1e-6


def test_initialisation_is_loralib_and_peft_A_as_nn_linear_B_zero():
    """Reference: loralib and peft initialise A like nn.Linear's weight (kaiming-uniform, a=√5) and B with zeros."""
    torch.manual_seed(1)
    layer = LoRALinear(nn.Linear(16, 8), r=4)
    torch.manual_seed(1)
    nn.Linear(16, 8)  # the base draws the same random numbers first
    reference = nn.Linear(16, 4, bias=False)
    assert torch.equal(layer.lora_A, reference.weight) and torch.equal(layer.lora_B, torch.zeros(8, 4))


def test_zero_B_leaves_the_model_output_exactly_unchanged():
    """Reference: the base model itself. B = 0 makes B A = 0, so LoRA starts at the pretrained function."""
    model, batch = classifier(), random_batch(CONFIG)
    before = logits(model, batch)
    add_lora(model, targets=ALL_LINEAR)
    assert torch.equal(logits(model, batch), before)


def test_merge_equals_unmerged_and_unmerge_restores_W():
    """Reference: the unmerged layer (the equation). W' = W + (α/r) B A gives the same outputs."""
    base = nn.Linear(24, 40)
    W = base.weight.detach().clone()
    layer = randomise_lora(LoRALinear(base, r=4, alpha=16))
    x = torch.randn(3, 5, 24)
    unmerged = layer(x)
    layer.merge()
    assert (layer(x) - unmerged).abs().max() <= 1e-5
    layer.unmerge()
    assert (layer.base.weight - W).abs().max() <= 1e-6 and (layer(x) - unmerged).abs().max() <= 1e-5


def test_merged_forward_is_one_matmul(monkeypatch):
    """Reference: section 4.1, "no additional inference latency": merged, only F.linear(x, W', b) runs."""
    layer = randomise_lora(LoRALinear(nn.Linear(8, 8), r=2))
    calls, linear = [], F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: calls.append(tuple(w.shape)) or linear(x, w, b))
    x = torch.randn(4, 8)
    layer(x)
    assert calls == [(8, 8), (2, 8), (8, 2)]  # W x, then A, then B
    calls.clear()
    layer.merge()
    layer(x)
    assert calls == [(8, 8)]


def test_merge_twice_and_unmerge_unmerged_fail():
    layer = LoRALinear(nn.Linear(8, 8), r=2)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match=r"already merged; merging again would add \(α/r\) B A twice"):
        layer.merge()


# --- add_lora on the model: which layers, which parameters train ------------------------------------------------------


@pytest.mark.parametrize(
    "targets, adapted",
    [
        (("query", "value"), ("attention.query", "attention.value")),
        (("out", "up"), ("attention.out", "ffn.up")),
        (ALL_LINEAR, ("attention.query", "attention.key", "attention.value", "attention.out", "ffn.up", "ffn.down")),
    ],
    ids=["paper", "out-up", "all"],
)
def test_add_lora_wraps_the_linear_modules_whose_names_end_with_a_target(targets, adapted):
    model = add_lora(classifier(), targets=targets)
    assert sorted(lora_layers(model)) == sorted(f"encoder.layers.{i}.{a}" for i in range(CONFIG.num_layers) for a in adapted)
    assert isinstance(model.classifier, nn.Linear) and isinstance(model.encoder.pooler.dense, nn.Linear)  # the head trains in full


def test_add_lora_with_no_matching_target_fails_naming_the_targets():
    with pytest.raises(ValueError, match=r"no nn.Linear module name ends with one of the targets \('q_proj', 'v_proj'\)"):
        add_lora(classifier(), targets=("q_proj", "v_proj"))
    with pytest.raises(ValueError, match=r"cannot add lora: expected a base model without a parameter-efficient method, found SequenceClassifier prepared with lora \(LoRALinear\).*merge_lora"):
        add_lora(add_lora(classifier()))


@pytest.mark.parametrize("pooling", ["pooler", "cls"])
def test_only_lora_and_head_train_and_their_count_is_r_times_in_plus_out(pooling):
    """Reference: section 4.1, r (in + out) parameters per adapted matrix; plus the head (peft's modules_to_save)."""
    r, H, K, L = 4, CONFIG.hidden_size, 3, CONFIG.num_layers
    model = add_lora(classifier(pooling), r=r, targets=("query", "value", "up"))
    head = K * H + K + (H * H + H if pooling == "pooler" else 0)
    assert count_parameters(model) == L * (2 * r * (H + H) + r * (H + CONFIG.intermediate_size)) + head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith(("classifier", "encoder.pooler")) for n in trainable)
    assert ("encoder.pooler.dense.weight" in trainable) == (pooling == "pooler")


def test_backward_reaches_only_lora_and_head_and_a_step_keeps_the_base():
    """Reference: the paper's premise, W frozen; peft's check that the base weights are unchanged after a step."""
    model = randomise_lora(add_lora(classifier(), r=2)).train()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids, mask, types = random_batch(CONFIG)
    F.cross_entropy(model(ids, mask, types), torch.randint(0, 3, (len(ids),))).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == p.requires_grad, name
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


# --- saving: our state dict, a merged HF folder, peft's adapter folder ------------------------------------------------


def test_trainable_state_dict_round_trip_onto_a_fresh_base_gives_the_same_logits():
    """Reference: the model that was saved; a fresh base plus add_lora with the same options plus the state."""
    base = classifier()
    model = randomise_lora(add_lora(copy.deepcopy(base), r=4, alpha=8, targets=ALL_LINEAR))
    state = trainable_state_dict(model)
    assert all("lora_" in k or k.startswith(("classifier.", "encoder.pooler.")) for k in state)
    fresh = load_trainable_state_dict(add_lora(base, r=4, alpha=8, targets=ALL_LINEAR), state)
    batch = random_batch(CONFIG)
    assert torch.equal(logits(fresh, batch), logits(model, batch))
    next(iter(lora_layers(fresh).values())).merge()
    with pytest.raises(RuntimeError, match="are merged"):
        load_trainable_state_dict(fresh, state)


def test_merge_lora_saves_a_plain_folder_that_transformers_loads_with_the_same_logits(tmp_path, transformers):
    """Reference: transformers.BertForSequenceClassification on the merged folder (peft's merge_and_unload)."""
    model = randomise_lora(add_lora(classifier(), targets=ALL_LINEAR))
    batch = random_batch(CONFIG)
    expected = logits(model, batch)
    merge_lora(model)
    assert not lora_layers(model) and not any("lora_" in k or ".base." in k for k in model.state_dict())
    model.save_pretrained(tmp_path)
    hf, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert (logits(hf.eval(), batch) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("targets", [("query", "value"), ALL_LINEAR], ids=["paper", "all"])
def test_save_peft_loads_in_peft_with_the_same_logits(tmp_path, peft, targets, transformers):
    """Reference: peft.PeftModel.from_pretrained over transformers' BertForSequenceClassification."""
    model = classifier()
    model.save_pretrained(tmp_path / "base")
    randomise_lora(add_lora(model, r=4, alpha=8, targets=targets))
    save_peft(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base", attn_implementation="eager")
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    batch = random_batch(CONFIG)
    assert (logits(theirs, batch) - logits(model, batch)).abs().max() <= 1e-5


def test_save_peft_writes_the_same_config_and_tensor_names_as_peft(tmp_path, peft, transformers):
    """Reference: what peft 0.21.2 itself writes for LoraConfig(task_type SEQ_CLS, target_modules query, value)."""
    model = classifier()
    model.save_pretrained(tmp_path / "base")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base", attn_implementation="eager")
    config = peft.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"], modules_to_save=["pooler"]
    )  # our pooler trains (pooling "pooler"), so it is a module to save
    peft.get_peft_model(hf, config).save_pretrained(tmp_path / "peft")
    save_peft(add_lora(model, r=4, alpha=8, dropout=0.1), tmp_path / "ours", base_model_name_or_path=str(tmp_path / "base"))
    theirs, ours = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "ours"))
    assert sorted(theirs.pop("target_modules")) == ours.pop("target_modules") == ["query", "value"]  # peft's order is a set's
    assert ours == theirs
    theirs, ours = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("peft", "ours"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_peft_adapter_loads_in_ours_with_the_same_logits(tmp_path, peft, transformers):
    """Reference: a LoRA model made and saved by peft (get_peft_model, SEQ_CLS), random nonzero B and head."""
    classifier().save_pretrained(tmp_path / "base")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base", attn_implementation="eager")
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=["query", "value", "attention.output.dense"])
    theirs = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad:  # lora_A, lora_B and the classifier (peft's copy of it, modules_to_save)
                p.normal_(std=0.3)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_peft(SequenceClassifier.from_pretrained(tmp_path / "base").eval(), tmp_path / "adapter")
    batch = random_batch(CONFIG)
    assert (logits(ours, batch) - logits(theirs.eval(), batch)).abs().max() <= 1e-5
    assert len(lora_layers(ours)) == 3 * CONFIG.num_layers
    assert not ours.encoder.pooler.dense.weight.requires_grad  # not in peft's modules_to_save: frozen there, so here


def test_load_peft_errors_name_the_file_and_the_problem(tmp_path):
    model = randomise_lora(add_lora(classifier()))
    save_peft(model, tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    with pytest.raises(FileNotFoundError, match=r"nowhere/adapter_config.json: missing"):
        load_peft(classifier(), tmp_path / "nowhere")
    for change, message in [
        ({"peft_type": "PREFIX_TUNING"}, "peft_type 'PREFIX_TUNING' is not supported"),
        ({"use_dora": True}, r"options \{'use_dora': True\} are not supported"),
        ({"target_modules": ["q_proj"]}, r"target_modules \['q_proj'\] match no Linear module"),
    ]:
        config_file.write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=f"adapter_config.json: {message}"):
            load_peft(classifier(), tmp_path)
    config_file.write_text(json.dumps(config))
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors: missing"):
        load_peft(classifier(), tmp_path)
    (tmp_path / "moved").rename(tmp_path / "adapter_model.safetensors")
    unexpected = r"adapter_model.safetensors: checkpoint does not match .*unexpected keys \['base_model.model.bert.pooler"
    with pytest.raises(ValueError, match=unexpected):
        load_peft(classifier(pooling="cls"), tmp_path)  # the folder's pooler has no place in a CLS-pooling model


def test_load_peft_reads_target_modules_given_as_a_regex(tmp_path):
    """Reference: peft's rule that a string target_modules is a regex matched against the whole module name."""
    base = classifier()
    model = randomise_lora(add_lora(copy.deepcopy(base)))
    save_peft(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": r".*\.self\.(query|value)"}))
    loaded, batch = load_peft(base, tmp_path), random_batch(CONFIG)
    assert sorted(lora_layers(loaded)) == sorted(lora_layers(model)) and torch.equal(logits(loaded, batch), logits(model, batch))
