"""Soft prompts (peft/prompts.py): prompt tuning and prefix tuning against peft on BERT, and their invariants:
padding, the packed path, what trains, initialisation, gradients, saving, and merging the prefix MLP."""

import copy
import dataclasses
import math

import pytest
import torch
from tokenizers import models

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.model import SequenceClassifier
from minitransformers.model.attention import padding_bias
from minitransformers.peft.common import count_parameters, disabled, load_trainable_state_dict, trainable_state_dict
from minitransformers.peft.prompts import PrefixMLP, PrefixTable, add_prefix_tuning, add_prompt_tuning, merge_prefix, remove_prompt_tuning
from minitransformers.text.tokenizer import SPECIAL_TOKENS, add_bert_template, bert_pipeline
from conftest import copy_prefix_to_peft, random_batch


CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24, type_vocab_size=3)
N = 5  # virtual tokens
METHODS = {
    "prompt": lambda model: add_prompt_tuning(model, N),
    "prefix": lambda model: add_prefix_tuning(model, N, reparameterize=False),
    "prefix_mlp": lambda model: add_prefix_tuning(model, N, projection_dim=12),
}


def classifier(config=CONFIG, pooling="pooler") -> SequenceClassifier:
    model = SequenceClassifier(Encoder(config), 3, pooling=pooling).eval()
    torch.nn.init.normal_(model.classifier.bias, std=0.1)
    return model


def hidden_states(model, ids, mask=None, types=None):
    """All positions the encoder computes: (B, n + T, H) with a prompt, (B, T, H) with a prefix."""
    encoder = model.encoder
    return encoder.forward_with_prompt(ids, mask, types) if hasattr(encoder, "forward_with_prompt") else encoder(ids, mask, types)


def peft_bert(model, tmp_path, peft_config, impl="eager"):
    """`transformers.BertModel` loaded from our encoder's folder (saved before wrapping), wrapped by peft."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")
    peft = pytest.importorskip("peft", reason="peft is not installed; pip install the test extra")
    model.encoder.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation=impl).eval()
    return peft.get_peft_model(hf, peft_config).eval()


# ---------------------------------------------------------------------------------------------------------------
# Against peft and transformers


def test_prompt_tuning_matches_peft_over_all_positions(tmp_path, peft):
    ours = classifier()
    theirs = peft_bert(ours, tmp_path, peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=N))
    add_prompt_tuning(ours, N, init="random")
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.encoder.prompt)
    ids, mask, _ = random_batch(CONFIG)  # peft drops token_type_ids for prompt learning, so none here
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden_states(ours, ids, mask)
    assert hidden.shape == expected.shape == (4, N + 11, CONFIG.hidden_size)
    assert (hidden - expected).abs().max() <= 1e-5


def test_prompt_has_token_type_0_and_the_real_tokens_keep_theirs(tmp_path, transformers):
    """Against BertModel given [P; E_word[x]] as inputs_embeds, types [0; s] and mask [1; m]."""
    ours = add_prompt_tuning(classifier(), N)
    remove_prompt_tuning(copy.deepcopy(ours)).encoder.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, types = random_batch(CONFIG)
    ones, zeros = torch.ones(4, N, dtype=torch.long), torch.zeros(4, N, dtype=torch.long)
    with torch.no_grad():
        embeds = torch.cat([ours.encoder.prompt.expand(4, N, -1), hf.embeddings.word_embeddings(ids)], dim=1)
        expected = hf(inputs_embeds=embeds, attention_mask=torch.cat([ones, mask], 1), token_type_ids=torch.cat([zeros, types], 1)).last_hidden_state
        assert (hidden_states(ours, ids, mask, types) - expected).abs().max() <= 1e-5


def test_peft_classifier_pools_the_first_virtual_token_and_ours_the_real_cls(tmp_path, transformers, peft):
    ours = classifier()
    ours.save_pretrained(tmp_path)
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=N)).eval()
    add_prompt_tuning(ours, N)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.encoder.prompt)
    ids, mask, _ = random_batch(CONFIG)
    head = lambda state: ours.classifier(ours.encoder.pooler.dense(state).tanh())  # noqa: E731  pooler, then W
    with torch.no_grad():
        full = hidden_states(ours, ids, mask)  # (B, n + T, H)
        assert (theirs(input_ids=ids, attention_mask=mask).logits - head(full[:, 0])).abs().max() <= 1e-5
        assert (ours(ids, mask) - head(full[:, N])).abs().max() <= 1e-6
        assert torch.equal(ours.encoder(ids, mask), full[:, N:])


def tiny_tokenizer() -> Tokenizer:
    words = ["the", "movie", "was", "great", "terrible", "film", "a", "plot", "##s", "!"]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    return Tokenizer(add_bert_template(bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]"))))


@pytest.mark.parametrize("text", ["great!", "the movie was a great film with plots"], ids=["repeated", "cut"])
def test_text_init_picks_the_texts_rows_as_peft_does(tmp_path, text, peft):
    ours, tok = classifier(), tiny_tokenizer()
    tok.save_pretrained(tmp_path)  # beside config.json, so that AutoTokenizer reads it
    theirs = peft_bert(ours, tmp_path, peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=N, prompt_tuning_init="TEXT", prompt_tuning_init_text=text, tokenizer_name_or_path=str(tmp_path)))
    add_prompt_tuning(ours, N, init="text", init_text=text, tokenizer=tok)
    ids = tok.encode([text])[0][0]  # [CLS] … [SEP]
    ids = (ids * N)[:N]
    assert torch.equal(ours.encoder.prompt, ours.encoder.embeddings.word.weight[ids])
    assert torch.equal(ours.encoder.prompt, theirs.prompt_encoder["default"].embedding.weight)


def test_vocab_init_copies_rows_of_the_word_embeddings_and_random_init_is_the_papers_range():
    model = add_prompt_tuning(classifier(), 8, init="vocab")
    prompt, words = model.encoder.prompt, model.encoder.embeddings.word.weight
    matches = (prompt[:, None, :] == words[None, :, :]).all(-1)  # (n, V)
    assert matches.any(1).all() and prompt.data_ptr() != words.data_ptr()
    with torch.no_grad():
        prompt.add_(1.0)
    assert not (prompt[:, None, :] == words[None, :, :]).all(-1).any()  # a copy: the vocabulary is untouched
    random = add_prompt_tuning(classifier(), 8, init="random").encoder.prompt
    assert random.abs().max() <= 0.5 and random.std() > 0.2  # U(-0.5, 0.5) has std 0.29


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("reparameterize", [False, True], ids=["table", "mlp"])
def test_prefix_tuning_matches_peft(tmp_path, reparameterize, impl, peft):
    """peft passes the prefix as past_key_values, and BERT then gives the real tokens positions n … n+T−1; peft
    adds n to the position_ids it is given, so positions −n … T−n−1 bring them back to ours, 0 … T−1."""
    ours = classifier(dataclasses.replace(CONFIG, attn_impl=impl))
    config = peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=N, prefix_projection=reparameterize, encoder_hidden_size=12)
    theirs = peft_bert(ours, tmp_path, config)
    add_prefix_tuning(ours, N, reparameterize=reparameterize, **({"projection_dim": 12} if reparameterize else {}))
    prefix, encoder = ours.encoder.prefix, theirs.prompt_encoder["default"]
    copy_prefix_to_peft(prefix, encoder, reparameterize)
    ids, mask, _ = random_batch(CONFIG)
    positions = torch.arange(11)[None] - N
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        hidden = hidden_states(ours, ids, mask)
    assert hidden.shape == expected.shape == (4, 11, CONFIG.hidden_size)
    assert (hidden - expected).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Invariants


@pytest.mark.parametrize("method", METHODS)
def test_padding_does_not_change_real_token_outputs(method):
    model = METHODS[method](classifier(pooling="mean"))
    ids, mask, types = random_batch(CONFIG)
    with torch.no_grad():
        batch, logits = model.encoder(ids, mask, types), model(ids, mask, types)
        for row, length in enumerate(mask.sum(1).tolist()):
            alone = model.encoder(ids[row : row + 1, :length], None, types[row : row + 1, :length])
            assert (batch[row, :length] - alone[0]).abs().max() <= 1e-5
            assert (logits[row] - model(ids[row : row + 1, :length], None, types[row : row + 1, :length])[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_unpad_path_equals_padded_path(method):
    padded = METHODS[method](classifier(pooling="mean"))
    packed = copy.deepcopy(padded)
    packed.encoder.config.unpad = True  # the copy's config: packed runs the dense layers on real tokens only
    assert not padded.encoder.config.unpad
    ids, mask, types = random_batch(CONFIG, B=5, T=9)
    real = mask.bool()
    with torch.no_grad():
        assert (padded.encoder(ids, mask, types) - packed.encoder(ids, mask, types))[real].abs().max() <= 1e-5
        assert (padded(ids, mask, types) - packed(ids, mask, types)).abs().max() <= 1e-5


def expected_count(method, pooling):
    H, L, K = CONFIG.hidden_size, CONFIG.num_layers, 3
    head = K * H + K + (H * H + H if pooling == "pooler" else 0)
    method_count = {
        "prompt": N * H,
        "prefix": N * 2 * H * L,
        "prefix_mlp": N * H + (H * 12 + 12) + (12 * L * 2 * H + L * 2 * H),  # P', Linear(H, d), Linear(d, L·2·H)
    }[method]
    return method_count + head


@pytest.mark.parametrize("pooling", ["pooler", "cls"])
@pytest.mark.parametrize("method", METHODS)
def test_only_the_method_and_the_head_train_and_their_count_is_the_formula(method, pooling):
    model = METHODS[method](classifier(pooling=pooling))
    word = "prompt" if method == "prompt" else "prefix"
    head = ("classifier.", "encoder.pooler.") if pooling == "pooler" else ("classifier.",)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if word in name or name.startswith(head)}
    assert any(word in name for name in trainable)
    assert count_parameters(model) == expected_count(method, pooling)
    assert len(model.state_dict()) == len(dict(model.named_parameters()))  # no module is registered twice


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_the_method_and_a_step_leaves_the_base_unchanged(method):
    model = METHODS[method](classifier(pooling="cls")).train()
    base = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    before = trainable_state_dict(model)
    ids, mask, types = random_batch(CONFIG)
    torch.nn.functional.cross_entropy(model(ids, mask, types), torch.tensor([0, 1, 2, 1])).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == p.requires_grad, name
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters() if p.requires_grad)
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_state_dict_round_trip_gives_the_same_logits(method):
    base = classifier()
    trained = METHODS[method](copy.deepcopy(base))
    with torch.no_grad():  # as if trained: every saved tensor differs from a fresh preparation's
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    again = load_trainable_state_dict(METHODS[method](copy.deepcopy(base)), trainable_state_dict(trained))
    ids, mask, types = random_batch(CONFIG)
    with torch.no_grad():
        assert torch.equal(trained(ids, mask, types), again(ids, mask, types))


def test_merge_prefix_leaves_outputs_unchanged_and_gives_the_table_layout():
    base = classifier()
    model = METHODS["prefix_mlp"](copy.deepcopy(base))
    ids, mask, types = random_batch(CONFIG)
    with torch.no_grad():
        before = model(ids, mask, types)
        merge_prefix(model)
        after = model(ids, mask, types)
    assert isinstance(model.encoder.prefix, PrefixTable) and model.encoder.prefix.table.shape == (2, 2, N, 32)
    assert all(layer.attention.prefix is model.encoder.prefix for layer in model.encoder.layers)
    assert (before - after).abs().max() <= 1e-6
    assert count_parameters(model) == expected_count("prefix", "pooler")
    table_model = load_trainable_state_dict(METHODS["prefix"](copy.deepcopy(base)), trainable_state_dict(model))
    with torch.no_grad():
        assert torch.equal(table_model(ids, mask, types), after)
    with pytest.raises(ValueError, match="no prefix MLP to merge"):
        merge_prefix(model)


def test_the_prefix_mlp_is_held_once_by_the_encoder():
    model = METHODS["prefix_mlp"](classifier())
    assert isinstance(model.encoder.prefix, PrefixMLP)
    assert [name for name, _ in model.named_modules() if name.endswith("prefix")] == ["encoder.prefix"]
    assert all(layer.attention.prefix is model.encoder.prefix for layer in model.encoder.layers)
    copied = copy.deepcopy(model)
    assert all(layer.attention.prefix is copied.encoder.prefix for layer in copied.encoder.layers)


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_prompt_and_input_longer_than_the_positions_fail_saying_how_to_fit():
    model = add_prompt_tuning(classifier(), 20)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 5))
    with pytest.raises(ValueError, match=r"20 virtual tokens \+ 5 input tokens = 25 positions, more than max_position_embeddings 24; truncate the input to 4 tokens"):
        model(ids)


def test_bad_options_fail_naming_the_fix():
    with pytest.raises(ValueError, match=r"unknown prompt init 'label'; use one of \('random', 'vocab', 'text'\)"):
        add_prompt_tuning(classifier(), init="label")
    with pytest.raises(ValueError, match="init 'text' needs init_text and the tokenizer"):
        add_prompt_tuning(classifier(), init="text", init_text="great")
    with pytest.raises(ValueError, match="num_virtual_tokens is 0; use at least 1"):
        add_prefix_tuning(classifier(), 0)
    with pytest.raises(ValueError, match="pass reparameterize=True or drop projection_dim"):
        add_prefix_tuning(classifier(), reparameterize=False, projection_dim=64)
    with pytest.raises(TypeError, match="expected a model with an Encoder at `.encoder`"):
        add_prompt_tuning(Encoder(CONFIG))


# ---------------------------------------------------------------------------------------------------------------
# Zero prefixes


def test_zero_prefixes_are_not_the_identity_they_scale_each_head_by_Z_over_Z_plus_n():
    """Li & Liang 2021, section 4.2: the prefix's activations are free parameters, here each layer's n keys and
    values. Setting them to zero does not give back the base model, as LoRA's B = 0 or an adapter's W_up = 0 do:
    a zero key scores q_i·0 = 0, so each of the n prefix keys still takes softmax weight e⁰ = 1 next to the real
    keys' Z_i = Σ_j exp(q_i·k_j/√d), and a zero value adds nothing. Each head's output for query i is the base's
    times Z_i / (Z_i + n) < 1: attention to the real tokens is diluted, and the logits change."""
    base = classifier()
    with torch.no_grad():
        torch.nn.init.normal_(base.classifier.weight)  # std 1, so that a change in the pooled vector shows in the logits
    model = add_prefix_tuning(copy.deepcopy(base), N, reparameterize=False)
    with torch.no_grad():
        model.encoder.prefix.table.zero_()  # P_k = P_v = 0 in every layer
    attention = model.encoder.layers[0].attention  # PrefixSelfAttention: SelfAttention with the prefix in its attend step
    ids, mask, types = random_batch(CONFIG)
    B, T = mask.shape
    x = torch.randn(B, T, CONFIG.hidden_size)  # (B, T, H)
    bias = padding_bias(mask, x.dtype)  # (B, 1, 1, T)
    heads = []  # the input of the shared output projection W_O, the heads side by side: (B, T, H) per call
    hook = attention.out.register_forward_hook(lambda module, inputs, output: heads.append(inputs[0]))
    with torch.no_grad(), disabled(model):
        attention(x, bias)  # heads[0], the prefix switched off: softmax(Q Kᵀ/√d + M) V
    with torch.no_grad():
        attention(x, bias)  # heads[1]: the same with n zero keys and n zero values in front
        hook.remove()
        y_base, y_prefix = (y.view(B, T, CONFIG.num_heads, CONFIG.head_dim).transpose(1, 2) for y in heads)  # (B, nh, T, hd)
        q, k = attention.split_heads(attention.query(x)), attention.split_heads(attention.key(x))  # (B, nh, T, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(CONFIG.head_dim) + bias  # (B, nh, T, T); padding keys get exp(min) = 0
        log_Z = scores.logsumexp(dim=-1, keepdim=True)  # (B, nh, T, 1): log Z_i, computed with the max subtracted
        ratio = 1 / (1 + N * torch.exp(-log_Z))  # Z_i / (Z_i + n·e⁰)
        assert (y_prefix - ratio * y_base).abs().max() <= 1e-6  # every query, real or padding: the mask acts on keys
        assert (y_prefix - y_base).abs().max() > 1e-2
        assert (model(ids, mask, types) - base(ids, mask, types)).abs().max() > 1e-3  # rounding alone moves them ~1e-7
