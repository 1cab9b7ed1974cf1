"""QLoRA (peft/qlora.py): gradients through the NF4 base equal those through its dequantized fp32 copy, nothing
dequantized is saved for backward, the base stays bit-identical through training, the paper's bits per
weight on the real MiniLM, save/reload, gradient checkpointing, and merge for export. Tiny random configs,
random inputs."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from conftest import final_weights, finetune_argv, random_batch, review_batch

from minitransformers import Encoder, EncoderConfig
from minitransformers.cli import main
from minitransformers.io.safetensors import load_file
from minitransformers.kernels.int4_mm import w4a16_linear_reference
from minitransformers.model import SequenceClassifier
from minitransformers.peft.lora import LoRALinear, lora_layers
from minitransformers.peft.methods import apply_method, load_classifier
from minitransformers.peft.qlora import ALL_LINEAR, NF4Linear, add_qlora, base_memory, dequantize_base, merge_qlora
from minitransformers.quant.qlinear import WeightOnlyLinear

CONFIG = EncoderConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=24, hidden_dropout=0.1, attention_dropout=0.1)


def classifier() -> SequenceClassifier:
    """A random classifier with nonzero biases, under QLoRA with a nonzero B (B = 0 would hide the LoRA path)."""
    model = SequenceClassifier(Encoder(CONFIG), 3, pooling="mean")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    add_qlora(model, r=4)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    return model


def lora_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def saved_for_backward(fn) -> list[torch.Tensor]:
    """Every tensor autograd saves for backward while fn() runs."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


# --- one layer: the custom backward ---------------------------------------------------------------------------------


def test_gradients_through_nf4_equal_those_through_its_dequantized_fp32_copy():
    linear = nn.Linear(192, 96)
    nf4 = LoRALinear(linear, r=8, alpha=16)
    nf4.base = NF4Linear.from_linear(linear)
    with torch.no_grad():
        nf4.lora_B.normal_(std=0.1)
    fp32 = copy.deepcopy(nf4)
    fp32.base = dequantize_base(nn.Sequential(nf4.base))[0]  # nn.Linear holding Ŵ
    assert isinstance(fp32.base, nn.Linear) and not fp32.base.weight.requires_grad

    x, grad_y = torch.randn(4, 7, 192), torch.randn(4, 7, 96)
    grads = []
    for layer in (nf4, fp32):
        layer.base.bias.requires_grad_()  # frozen under QLoRA; the backward still gives its gradient when asked
        xi = x.clone().requires_grad_()
        (layer(xi) * grad_y).sum().backward()
        grads.append({"x": xi.grad, "lora_A": layer.lora_A.grad, "lora_B": layer.lora_B.grad, "bias": layer.base.bias.grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6 * grads[1][name].abs().max().item())


def test_under_autocast_nf4_computes_in_bf16_as_a_linear_over_its_dequantized_weight(monkeypatch):
    """QLoRA's bf16 compute dtype: autocast's F.linear casts x and the weight to bf16, returns bf16, and sends the
    gradient back to x in float32; the NF4 layer must do the same, and hand bf16 x to the 4-bit kernel. On CPU the
    reference's own F.linear would autocast anyway, so the kernel's dispatch is forced and watched."""
    import minitransformers.quant.qlinear as qlinear

    seen = []

    def kernel(x, w, bias):  # stands in for the CUDA kernel: records x's dtype, computes the reference
        seen.append(x.dtype)
        return w4a16_linear_reference(x, w, bias)

    monkeypatch.setattr(qlinear, "triton_runs_on", lambda *tensors: True)
    monkeypatch.setattr(qlinear, "w4a16_linear", kernel)
    linear = nn.Linear(192, 96)
    nf4 = NF4Linear.from_linear(linear)
    fp32 = dequantize_base(nn.Sequential(copy.deepcopy(nf4)))[0]  # nn.Linear holding Ŵ
    x, grad_y = torch.randn(5, 192), torch.randn(5, 96)
    outs, grads = [], []
    for layer in (nf4, fp32):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        (y.float() * grad_y).sum().backward()
        outs.append(y)
        grads.append(xi.grad)
    assert seen == [torch.bfloat16]
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16 and grads[0].dtype == torch.float32
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-2)  # bf16: 8 significant bits
    assert relative_error(grads[0], grads[1]) < 1e-2


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_nf4_layer_saves_no_dequantized_weight_for_backward():
    linear = nn.Linear(128, 256)
    x = torch.randn(3, 5, 128, requires_grad=True)
    plain = WeightOnlyLinear.from_linear(linear, "nf4", double_quant=True)  # autograd through F.linear over Ŵ
    assert any(t.shape in ((256, 128), (128, 256)) for t in saved_for_backward(lambda: plain(x)))  # Ŵ, or Ŵᵀ: what DequantizeMatmul avoids
    saved = saved_for_backward(lambda: NF4Linear.from_linear(linear)(x))
    assert saved == []  # neither Ŵ nor x: a frozen W needs neither


def test_whole_model_gradients_equal_those_over_a_dequantized_fp32_base():
    model = classifier().train()
    reference = dequantize_base(copy.deepcopy(model))
    assert not any(isinstance(m, NF4Linear) for m in reference.modules())
    ids, mask, types = random_batch(CONFIG, B=3, T=12)
    for m in (model, reference):
        torch.manual_seed(1)  # the same dropout masks
        F.cross_entropy(m(ids, mask, types), torch.tensor([0, 2, 1])).backward()
    ours, theirs = lora_grads(model), lora_grads(reference)
    assert ours.keys() == theirs.keys() and len(ours) == 4 * 6 + 2  # A, B per Linear of 2 layers (6 in an encoder layer), the head
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6 * theirs[name].abs().max().item())


def test_no_dequantized_weight_is_saved_anywhere_in_the_model():
    model = classifier().train()
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, NF4Linear)}
    ids, mask, types = random_batch(CONFIG, B=3, T=12)
    saved = saved_for_backward(lambda: model(ids, mask, types))
    assert saved and not [t.shape for t in saved if tuple(t.shape) in shapes or tuple(t.shape)[::-1] in shapes]


# --- training ---------------------------------------------------------------------------------------------------------


def test_only_lora_and_the_head_train_and_every_encoder_linear_is_nf4():
    model = classifier()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or name.startswith("classifier") for name in trainable)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linear == ["classifier"]  # the pooler too is NF4: unused under mean pooling, and frozen
    assert sum(isinstance(m, NF4Linear) for m in model.modules()) == 2 * 6 + 1  # 6 Linears a layer, and the pooler


def test_nf4_base_stays_bit_identical_through_adamw_steps():
    model = classifier().train()
    frozen = {name: t.clone() for name, t in [*model.named_buffers(), *model.named_parameters()] if not t.requires_grad}
    lora = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        ids, mask, types = random_batch(CONFIG, B=4, T=12)
        F.cross_entropy(model(ids, mask, types), torch.randint(0, 3, (4,))).backward()
        optimizer.step()
        optimizer.zero_grad()
    now = dict([*model.named_buffers(), *model.named_parameters()])
    assert any(name.endswith("absmax_codes") for name in frozen)  # the double-quantized stats are there
    assert all(torch.equal(now[name], t) for name, t in frozen.items())
    assert all(not torch.equal(now[name], t) for name, t in lora.items())


def test_gradient_checkpointing_gives_equal_gradients():
    model = classifier().train()  # dropout 0.1: the recomputed forward must replay the same masks
    checkpointed = copy.deepcopy(model)
    checkpointed.encoder.gradient_checkpointing = True
    ids, mask, types = random_batch(CONFIG, B=3, T=12)
    saved = []
    for m in (model, checkpointed):
        torch.manual_seed(2)
        saved.append(saved_for_backward(lambda: F.cross_entropy(m(ids, mask, types), torch.tensor([1, 0, 2])).backward()))
    assert len(saved[1]) < len(saved[0]) / 4  # the layers' intermediates are recomputed, not kept
    ours, theirs = lora_grads(checkpointed), lora_grads(model)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)


# --- memory, on the real MiniLM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant, bits", [(False, 4 + 32 / 64), (True, 4 + 8 / 64 + 32 / (64 * 256))], ids=["plain", "double"])
def test_minilm_base_takes_the_papers_bits_per_weight(minilm_dir, double_quant, bits):
    model = SequenceClassifier.from_encoder(minilm_dir, 2, pooling="mean")
    fp32 = base_memory(model)
    memory = base_memory(add_qlora(model, double_quant=double_quant))
    assert memory["layers"] == fp32["layers"] == 6 * 6 + 1 and memory["weights"] == fp32["weights"]
    assert fp32["bits_per_weight"] == 32 and fp32["ratio_to_bf16"] == 2
    assert memory["bits_per_weight"] == pytest.approx(bits, abs=1e-3)  # every layer's numel is a multiple of 64 · 256
    if double_quant:
        assert memory["ratio_to_bf16"] <= 0.27  # the acceptance: ≈ 4.127 / 16 = 0.258
    else:
        assert memory["ratio_to_bf16"] == pytest.approx(4.5 / 16)  # above 0.27: double quantization is what brings it under


# --- export and the CLI -----------------------------------------------------------------------------------------------


def test_merge_into_the_dequantized_base_equals_the_unmerged_model():
    model = classifier().eval()
    ids, mask, types = random_batch(CONFIG, B=3, T=12)
    with torch.no_grad():
        before = model(ids, mask, types)
        merged = merge_qlora(copy.deepcopy(model))
        after = merged(ids, mask, types)
    assert not any(isinstance(m, (NF4Linear, LoRALinear)) for m in merged.modules())
    assert isinstance(merged.encoder.layers[0].attention.query, nn.Linear)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_finetune_qlora_saves_only_the_adapter_and_reloads_to_identical_logits(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "qlora"
    main([*finetune_argv(tiny, out, "--epochs", "1", "--pooling", "cls", "--method", "qlora", "--lora-r", "4", "--gradient-checkpointing"), "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["method_options"] == {"r": 4, "alpha": 16, "dropout": 0.0, "targets": list(ALL_LINEAR), "double_quant": True}
    saved = load_classifier(out).eval()
    trained = apply_method(SequenceClassifier.from_encoder(tiny / "model", 2, "cls"), "qlora", metrics["method_options"])
    trained.load_state_dict(final_weights(out))  # every tensor at the end of training, NF4 buffers included
    rebuilt = dict(saved.named_buffers())
    assert all(torch.equal(rebuilt[name], t) for name, t in trained.named_buffers())  # quantizing again is deterministic
    b = review_batch(tiny)
    with torch.no_grad():
        torch.testing.assert_close(saved(**b), trained.eval()(**b), rtol=0, atol=0)
    with open(out / "adapter.json") as f:
        assert json.load(f)["method"] == "qlora"
    assert all("lora_" in name or name.startswith("classifier") for name in load_file(out / "adapter.safetensors"))


def test_no_double_quant_flag_keeps_float32_absmax(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "plain"
    main([*finetune_argv(tiny, out, "--max-steps", "1", "--pooling", "cls", "--method", "qlora", "--no-double-quant", "--lora-targets", "query", "value"), "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["method_options"]["double_quant"] is False and metrics["method_options"]["targets"] == ["query", "value"]
    model = load_classifier(out)
    assert all(not m.layout["double_quant"] for m in model.modules() if isinstance(m, NF4Linear))
    assert len(lora_layers(model)) == 2 * 2
