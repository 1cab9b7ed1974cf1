"""BitFit: train only the bias terms.

Ben Zaken, Goldberg & Ravfogel 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", section 3. Every weight matrix, embedding table and LayerNorm gain stays frozen; what trains
is every bias vector and the new task classifier. In the paper's notation, for each layer ℓ:

    b_q, b_k, b_v     the query, key and value projections       (attention.query / key / value .bias)
    b_m1              the attention output projection            (attention.out.bias)
    b_LN1             the attention LayerNorm's bias β           (attention_norm.bias)
    b_m2, b_m3        the FFN's two projections                  (ffn.up.bias, ffn.down.bias)
    b_LN2             the FFN LayerNorm's bias β                 (ffn_norm.bias)

The LayerNorm biases are part of the set, as in the authors' code (benzakenelad/BitFit, glue_evaluator.py),
whose main setting trains every parameter named "bias" plus `pooler.dense.bias` and the classifier. So here the
embeddings' LayerNorm bias and the pooler's bias train too, but the pretrained pooler's weight stays frozen,
unlike in the other methods, where the pooler counts as part of the head (common.head_names). A classifier that
pools without the pooler ("cls", "mean") leaves the pooler frozen, its bias included: it gets no gradient.

Bias terms are about 0.08% of BERT-large's parameters (the paper's figure, Table 1): 272,384 of 335M here,
0.081%. On BERT-base they are 102,912 of 109.5M, 0.094%.
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from .common import attach, base_requires_grad, detach, head_names, in_head, mark_only_trainable, refuse_stacking


def add_bitfit(model: nn.Module) -> nn.Module:
    """Freeze every parameter of `model` except the bias terms and the modules to save (the classifier). BERT's
    pooler, which counts as part of the head elsewhere, trains only its bias here. Returns the model."""
    refuse_stacking(model, "bitfit")
    unused_pooler = ("encoder.pooler",) if getattr(model, "pooling", "pooler") != "pooler" else ()
    head = tuple(h for h in head_names(model) if h != "encoder.pooler")  # the authors' code: the pooler's bias only

    def trainable(name: str) -> bool:
        return in_head(name, head) or (name.endswith("bias") and not in_head(name, unused_pooler))

    frozen = base_requires_grad(model)
    if not any(trainable(n) for n, _ in model.named_parameters()):
        raise InputError(f"{type(model).__name__} has no bias terms and no modules to save, so BitFit would train nothing "
                         "(Llama-family layers have no biases); use lora, qlora or prompt tuning")
    attach(model, "bitfit", frozen, in_place={n: p for n, p in model.named_parameters() if n.endswith("bias") and trainable(n) and not in_head(n, head)})
    return mark_only_trainable(model, trainable, train_head=False)


def remove_bitfit(model: nn.Module) -> nn.Module:
    """The base model back: the pretrained biases in place again, bit for bit, and the flags as before. The
    modules to save (the new head) keep their trained values: they are not part of the base. BitFit needs no
    merge: the trained biases are the model's own."""
    return detach(model, "bitfit")
