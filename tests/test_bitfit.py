"""BitFit: only the bias terms and the classifier train, and one optimizer step changes nothing else."""

import pytest
import torch
import torch.nn.functional as F

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import SequenceClassifier
from minitransformers.peft.bitfit import add_bitfit
from minitransformers.peft.common import count_parameters
from conftest import random_batch

CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24)


def classifier(pooling="pooler", config=CONFIG) -> SequenceClassifier:
    return SequenceClassifier(Encoder(config), 3, pooling=pooling)


@pytest.mark.parametrize("pooling", ["pooler", "cls"])
def test_only_biases_and_classifier_train(pooling):
    model = add_bitfit(classifier(pooling))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    if pooling != "pooler":  # an unused pooler gets no gradient, so its bias does not count
        biases.discard("encoder.pooler.dense.bias")
    assert trainable == biases | {"classifier.weight"}
    assert "encoder.pooler.dense.weight" not in trainable  # the pretrained pooler keeps its weight, as in the authors' code
    per_layer = {f"encoder.layers.0.{m}.bias" for m in ("attention.query", "attention.key", "attention.value", "attention.out", "attention_norm", "ffn.up", "ffn.down", "ffn_norm")}
    assert per_layer <= trainable  # the paper's b_q, b_k, b_v, b_m1, b_LN1, b_m2, b_m3, b_LN2


def test_trainable_count_is_the_bias_sizes_plus_the_classifier():
    model = add_bitfit(classifier())
    H, L, I, K = CONFIG.hidden_size, CONFIG.num_layers, CONFIG.intermediate_size, 3
    per_layer = 3 * H + H + H + I + H + H  # b_q, b_k, b_v; b_m1; b_LN1; b_m2 (FFN up, size I); b_m3; b_LN2
    biases = L * per_layer + H + H  # the embeddings' LayerNorm and the pooler
    assert count_parameters(model) == biases + K * H + K


def test_one_step_changes_only_biases_and_the_classifier():
    model = add_bitfit(classifier()).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask, types = random_batch(CONFIG)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    F.cross_entropy(model(ids, mask, types), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)  # every weight bit-identical
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert changed <= {n for n in before if n.endswith(".bias") or n.startswith("classifier.")}
    assert {"classifier.weight", "classifier.bias", "encoder.layers.1.ffn.up.bias", "encoder.layers.0.attention.query.bias"} <= changed


def test_biases_are_eight_hundredths_of_a_percent_of_bert_large():
    """The paper's 0.08% (Table 1, BERT-large); counted on meta tensors, so nothing is allocated."""
    with torch.device("meta"):
        large = EncoderConfig(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096)
        model = add_bitfit(classifier(config=large))
    biases = count_parameters(model) - count_parameters(model.classifier)
    assert biases == 272_384
    assert round(100 * biases / count_parameters(model, trainable_only=False), 2) == 0.08
