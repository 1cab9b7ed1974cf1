"""Sentence embeddings and semantic search, through the library and the CLI."""

import json

import pytest
import torch
from conftest import cli_error

from minitransformers import Encoder, Tokenizer
from minitransformers.cli import main
from minitransformers.model import mean_pool
from minitransformers.sentence import embed, search


TEXTS = ["A man is playing a guitar.", "The cat sleeps.", "Stock markets fell sharply on Monday after the report.", "Hi"]


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))


def test_embed_matches_transformers_mean_pooling_in_input_order(minilm_dir, transformers):
    encoder, tok = Encoder.from_pretrained(minilm_dir), Tokenizer.from_pretrained(minilm_dir)
    ours = embed(encoder, tok, TEXTS, batch_size=2)  # batches are length-sorted inside; order must come back
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    batch = tok(TEXTS)
    with torch.no_grad():
        want = torch.nn.functional.normalize(mean_pool(hf(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
    assert ours.shape == (4, 384)
    assert (ours - want).abs().max() <= 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-6)


def test_search_returns_topk_by_cosine():
    corpus = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    query = corpus[[3]] + 0.01 * torch.randn(1, 8)
    scores, indices = search(torch.nn.functional.normalize(query, dim=-1), corpus, k=3)
    assert indices[0, 0] == 3 and scores.shape == (1, 3) and (scores[0, :-1] >= scores[0, 1:]).all()


def test_cli_embed_prints_one_unit_json_vector_per_text(minilm_dir, capsys):
    main(["embed", "--model", str(minilm_dir), *TEXTS[:2]])
    lines = capsys.readouterr().out.strip().splitlines()
    vectors = torch.tensor([json.loads(line) for line in lines])
    assert vectors.shape == (2, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_cli_search_ranks_the_related_line_first(minilm_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The weather is sunny today.\nA chef is cooking pasta in the kitchen.\nThe orchestra performed a symphony.\n")
    main(["search", "--model", str(minilm_dir), "--corpus", str(corpus), "--top-k", "2", "--json", "someone is preparing food"])
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [h["line"] for h in hits][0] == 2 and len(hits) == 2 and hits[0]["score"] > hits[1]["score"]


@pytest.mark.parametrize("command", ["fetch", "embed", "search"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_cli_error_names_the_missing_model_folder(tmp_path, capsys):
    assert "config.json" in cli_error(["embed", "--model", str(tmp_path / "nope"), "x"], capsys)
