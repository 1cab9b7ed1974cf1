"""The question-answering head against `transformers.BertForQuestionAnswering`: start and end logits both ways on
tiny random configs and on the real MiniLM, the loss, and strict loading."""

import pytest
import torch

from minitransformers import Encoder, EncoderConfig, Tokenizer
from minitransformers.errors import InputError
from minitransformers.model import QuestionAnswering, TokenClassifier
from conftest import TINY_CONFIGS, random_batch


def random_qa(config: EncoderConfig) -> QuestionAnswering:
    model = QuestionAnswering(Encoder(config)).eval()
    torch.nn.init.normal_(model.qa_outputs.bias, std=0.1)  # a zero bias would hide a dropped or swapped one
    return model


def hf_qa(config: EncoderConfig, transformers):
    """A random BertForQuestionAnswering; LayerNorms, biases and the head randomised so they are tested."""
    model = transformers.BertForQuestionAnswering(transformers.BertConfig(**config.to_hf(), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias") or name.startswith("qa_outputs."):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.1)
    return model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "tanh"])
def test_against_hf_bert_for_question_answering(tmp_path, config, impl, transformers):
    hf = hf_qa(config, transformers)
    hf.save_pretrained(tmp_path)
    ours = QuestionAnswering.from_pretrained(tmp_path, attn_impl=impl).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        start, end = ours(ids, attention_mask=mask, token_type_ids=types)
    assert start.shape == end.shape == (4, 11)
    assert (start - expected.start_logits).abs().max() <= 1e-5
    assert (end - expected.end_logits).abs().max() <= 1e-5


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=["gelu", "gelu_new", "tanh"])
def test_save_pretrained_loads_in_transformers_with_same_logits_and_loss(tmp_path, config, transformers):
    ours = random_qa(config)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, types = random_batch(config)
    starts, ends = torch.tensor([0, 3, 10, 40]), torch.tensor([2, 3, 50, 1])  # 50 and 40 lie past T = 11: ignored
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=starts, end_positions=ends)
        start, end = ours(ids, attention_mask=mask, token_type_ids=types)
    assert (start - expected.start_logits).abs().max() <= 1e-5 and (end - expected.end_logits).abs().max() <= 1e-5
    assert abs(QuestionAnswering.loss(start, end, starts, ends).item() - expected.loss.item()) <= 1e-5


def test_minilm_both_ways(tmp_path, minilm_dir, transformers):
    """A new head on the real MiniLM: ours saved and read by transformers, and transformers' saved and read by ours."""
    batch = Tokenizer.from_pretrained(minilm_dir)(["Where is the tower?", "Who wrote it?"], ["The tower is in Paris.", "It was written by a friend of hers in 1902."])
    ours = QuestionAnswering.from_encoder(minilm_dir).eval()
    torch.nn.init.normal_(ours.qa_outputs.bias, std=0.1)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.BertForQuestionAnswering.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        hf_reads_ours = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()(**batch)
        ours_reads_hf = QuestionAnswering.from_pretrained(tmp_path / "theirs").eval()(**batch)
        expected = theirs(**batch)
        for mine, hf_logits in zip(ours(**batch), (hf_reads_ours.start_logits, hf_reads_ours.end_logits)):
            assert (mine - hf_logits).abs().max() <= 1e-5
        for mine, hf_logits in zip(ours_reads_hf, (expected.start_logits, expected.end_logits)):
            assert (mine - hf_logits).abs().max() <= 1e-5
    assert ours.encoder.pooler is None  # BertForQuestionAnswering has no pooler; MiniLM's is left out
    pretrained = Encoder.from_pretrained(minilm_dir).state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in ours.encoder.state_dict().items())


def test_save_load_round_trip_keeps_logits(tmp_path):
    config = TINY_CONFIGS[0]
    model = random_qa(config)
    model.save_pretrained(tmp_path)
    loaded = QuestionAnswering.from_pretrained(tmp_path).eval()
    ids, mask, types = random_batch(config)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(ids, mask, types), loaded(ids, mask, types)))


def test_refuses_a_folder_without_the_qa_head(tmp_path):
    config = TINY_CONFIGS[0]
    Encoder(config).save_pretrained(tmp_path / "encoder")
    TokenClassifier(Encoder(config), 2).save_pretrained(tmp_path / "ner")
    for folder in ("encoder", "ner"):
        with pytest.raises(InputError, match="no qa_outputs"):
            QuestionAnswering.from_pretrained(tmp_path / folder)


def test_refuses_a_head_of_the_wrong_shape(tmp_path):
    from minitransformers.io.safetensors import load_file, save_file

    random_qa(TINY_CONFIGS[0]).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["qa_outputs.weight"] = torch.randn(3, 32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(InputError, match=r"qa_outputs.weight: checkpoint \(3, 32\), model \(2, 32\)"):
        QuestionAnswering.from_pretrained(tmp_path)
