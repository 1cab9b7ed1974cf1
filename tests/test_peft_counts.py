"""Parameter counts equal their closed form for a BERT-base config.

Each closed form is written from the method's paper and BERT's architecture (Devlin et al. 2019: L = 12,
H = 768, FFN F = 3072, vocabulary V = 30522, P = 512 positions, 2 token types), never from the code under test.
One BERT-base SequenceClassifier (2 labels, pooling "pooler", ~110M parameters) is built once, on CPU, and
each test prepares its own deep copy.

A quantized base counts its logical weights (out × in per layer, as peft counts a bitsandbytes 4-bit weight),
so the QLoRA count equals the float model's: on a tiny classifier, and on MiniLM where it is fetched.
"""

import copy

import pytest
import torch

from minitransformers import Encoder, EncoderConfig
from minitransformers.config import SIZES
from minitransformers.model import SequenceClassifier
from minitransformers.peft.adapters import add_adapters
from minitransformers.peft.bitfit import add_bitfit
from minitransformers.peft.common import count_parameters, mark_only_trainable, parameter_summary
from minitransformers.peft.lora import add_lora
from minitransformers.peft.prompts import add_prefix_tuning, add_prompt_tuning
from minitransformers.peft.qlora import ALL_LINEAR, add_qlora
from minitransformers.quant.qlinear import quantize_model

L, H, F, V, P, TYPES = 12, 768, 3072, 30522, 512, 2
C = 2  # labels
CLASSIFIER = H * C + C  # W (C, H), b (C,): Devlin et al. section 4.1
POOLER = H * H + H  # tanh(W h_CLS + b): with pooling "pooler" the head pools through it, so it trains with it
HEAD = CLASSIFIER + POOLER
BERT_BASE = 109_482_240  # bert-base-uncased's BertModel (encoder and pooler), as transformers counts it


@pytest.fixture(scope="module")
def bert_base() -> SequenceClassifier:
    config = EncoderConfig(**SIZES["base"])
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (L, H, F)
    assert (config.vocab_size, config.max_position_embeddings, config.type_vocab_size) == (V, P, TYPES)
    return SequenceClassifier(Encoder(config), C)


@pytest.fixture
def model(bert_base) -> SequenceClassifier:
    return copy.deepcopy(bert_base)


def test_full_fine_tuning_trains_bert_base_and_the_classifier(model):
    """Devlin et al. 2019, section 3 and Figure 2: embeddings, then L post-LN layers, then the pooler."""
    embeddings = (V + P + TYPES) * H + 2 * H  # word, position, token-type tables; LayerNorm γ, β
    attention = 4 * (H * H + H)  # W_Q, W_K, W_V, W_O and their biases
    ffn = H * F + F + F * H + H  # W_1, b_1, W_2, b_2
    per_layer = attention + ffn + 2 * 2 * H  # two LayerNorms, γ and β
    assert embeddings + L * per_layer + POOLER == BERT_BASE
    assert count_parameters(model.encoder) == BERT_BASE
    assert count_parameters(model) == count_parameters(model, trainable_only=False) == BERT_BASE + CLASSIFIER


def test_head_only_trains_the_classifier_and_the_pooler_it_pools_through(model):
    assert model.pooling == "pooler"  # SequenceClassifier's default: BertForSequenceClassification's head
    assert count_parameters(mark_only_trainable(model)) == HEAD


def test_lora_r8_on_query_and_value_trains_2_L_2_H_r_plus_the_head(model):
    """Hu et al. 2021, section 4.1: B A with A (r, H) and B (H, r); on W_q and W_v of every layer (section 7.1)."""
    r = 8
    lora = 2 * L * 2 * H * r  # two matrices per layer, each A and B of r·H
    assert count_parameters(add_lora(model, r=r, targets=("query", "value"))) == lora + HEAD
    # Table 2 gives RoBERTa-base (L = 12, H = 768, as here) 0.3M LoRA parameters, the head not counted.
    assert lora == 294_912 and round(lora / 1e6, 1) == 0.3


def test_houlsby_adapters_train_two_bottlenecks_per_layer_every_layernorm_and_the_head(model):
    """Houlsby et al. 2019, section 2.1 and Figure 2: two adapters per layer, each W_down (m, H), b_down (m),
    W_up (H, m), b_up (H); the caption trains "the layer normalization parameters" too. adapters.py trains
    every LayerNorm, γ and β: the embeddings' and each layer's attention_norm and ffn_norm."""
    m = H // 16  # reduction_factor 16: m = 48
    adapter = H * m + m + m * H + H
    layernorms = (1 + 2 * L) * 2 * H
    assert count_parameters(add_adapters(model, "houlsby", reduction_factor=16)) == L * 2 * adapter + layernorms + HEAD
    # The figures in adapters.py's docstring: 1.6% of the encoder, 38,400 LayerNorm parameters.
    assert (L * 2 * adapter, layernorms) == (1_789_056, 38_400)
    assert round(100 * L * 2 * adapter / BERT_BASE, 1) == 1.6


def test_pfeiffer_adapters_train_one_bottleneck_per_layer_and_the_head(model):
    """Pfeiffer et al. 2021 (AdapterFusion), section 3; MAD-X eq. 1: one adapter per layer, after the FFN.
    The LayerNorms stay frozen."""
    m = H // 16
    adapter = H * m + m + m * H + H
    assert count_parameters(add_adapters(model, "pfeiffer", reduction_factor=16)) == L * adapter + HEAD
    assert L * adapter == 894_528 and round(100 * L * adapter / BERT_BASE, 1) == 0.8  # adapters.py's docstring


def test_prompt_tuning_trains_n_H_plus_the_head(model):
    """Lester et al. 2021, section 2: P ∈ R^{n×H} prepended to the word vectors."""
    n = 20
    assert count_parameters(add_prompt_tuning(model, n)) == n * H + HEAD


def test_prefix_tuning_trains_n_2_H_L_plus_the_head(model):
    """Li & Liang 2021, section 4.2: n key rows and n value rows of size H in every layer."""
    n = 20
    assert count_parameters(add_prefix_tuning(model, n, reparameterize=False)) == n * 2 * H * L + HEAD


def test_prefix_tuning_through_the_mlp_trains_p_prime_and_the_mlp_plus_the_head(model):
    """Li & Liang 2021, section 4.3: P = MLP(P'), P' (n, H), MLP = Linear(H, d) → tanh → Linear(d, 2·L·H)."""
    n, d = 20, H
    mlp = (H * d + d) + (d * 2 * L * H + 2 * L * H)
    assert count_parameters(add_prefix_tuning(model, n, reparameterize=True, projection_dim=d)) == n * H + mlp + HEAD


def test_bitfit_trains_every_bias_and_the_classifier(model):
    """Ben Zaken et al. 2022, section 3.1: every bias term of the model, per layer b_q, b_k, b_v, b_m1, b_LN1,
    b_m2 (size F), b_m3, b_LN2; outside the layers the embeddings' LayerNorm β and the pooler's b. Then "the
    task-specific classification layer", W and b: the pooler's weight is pretrained, not a bias, and stays frozen."""
    per_layer = 3 * H + H + H + F + H + H  # b_q, b_k, b_v; b_m1; b_LN1; b_m2; b_m3; b_LN2
    biases = L * per_layer + H + H  # the embeddings' LayerNorm β, the pooler's b
    assert count_parameters(add_bitfit(model)) == biases + CLASSIFIER
    assert biases == 102_912 and round(100 * biases / BERT_BASE, 3) == 0.094  # bitfit.py's docstring


# --- a quantized base counts its logical weights -------------------------------------------------------------------


TINY = EncoderConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=24)


def counts(model) -> tuple[int, int]:
    return count_parameters(model), count_parameters(model, trainable_only=False)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_the_qlora_count_equals_the_float_models_on_a_tiny_classifier(pooling):
    """QLoRA stores the base weights as packed NF4 buffers, not Parameters; counted as out × in weights each, the
    QLoRA model counts what the float model under the same LoRA counts, and its base what the float model counts."""
    torch.manual_seed(0)
    base = SequenceClassifier(Encoder(TINY), 3, pooling=pooling)
    float_total = count_parameters(base, trainable_only=False)
    lora, qlora = add_lora(copy.deepcopy(base), r=4, targets=ALL_LINEAR), add_qlora(copy.deepcopy(base), r=4)
    assert counts(qlora) == counts(lora)
    lora_matrices = sum(p.numel() for n, p in qlora.named_parameters() if "lora_" in n)
    assert count_parameters(qlora, trainable_only=False) - lora_matrices == float_total
    assert parameter_summary(qlora) == parameter_summary(lora)


@pytest.mark.parametrize("method", ["int8", "nf4", "w8a8", "prune2:4"])
def test_every_quantized_linear_counts_out_times_in_weights_plus_its_bias(method):
    model = SequenceClassifier(Encoder(TINY), 3)
    total = count_parameters(model, trainable_only=False)
    quantize_model(model, method)
    assert count_parameters(model, trainable_only=False) == total


def test_the_qlora_count_equal_to_the_float_models_on_minilm(minilm_dir):
    """finetune --method qlora on MiniLM (22.7M parameters) printed 12,428,930 before: the packed weights were
    left out. With the default pooling, LoRA r = 8 on every linear: 331,776 LoRA parameters, plus the pooler
    and the classifier."""
    base = SequenceClassifier.from_encoder(minilm_dir, 2)
    assert count_parameters(base, trainable_only=False) == 22_713_986
    qlora = add_qlora(copy.deepcopy(base))
    lora = add_lora(base, targets=ALL_LINEAR)
    assert counts(qlora) == counts(lora) == (331_776 + 147_840 + 770, 22_713_986 + 331_776)
