"""Retrieve-then-read (retrieval.py, `ask`): passages with their file and line, the on-disk index and its rebuild,
retrieval against a brute-force cosine ranking, bad corpora, and `ask` end to end with the reader faked (loading
SmolLM2 alone takes ~17 s on a small CPU)."""

import json
from types import SimpleNamespace

import pytest
import torch

from minitransformers.cli import load_model, main
from minitransformers.errors import InputError
from minitransformers.recipes import generate
from minitransformers.retrieval import answer_prompt, citations, load_index, open_index, split_passages
from minitransformers.sentence import embed

CORPUS = """the film was great and the actor was good

awful plot
and a really poor story

   
love the actor
"""


def test_passages_are_paragraphs_with_their_first_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    passages = split_passages(corpus)
    assert [(p.line, p.text) for p in passages] == [(1, "the film was great and the actor was good"), (3, "awful plot and a really poor story"), (7, "love the actor")]
    assert all(p.file == str(corpus) for p in passages)


def test_headings_title_the_passages_below_them_and_are_not_passages(tmp_path):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("intro text\n\n = Du Fu = \n\n Du Fu was a poet .\n\n = = Life = = \n\n He travelled .\n\n# Other\nmore\n")
    passages = split_passages(corpus)
    assert [(p.line, p.title, p.text) for p in passages] == [(1, "", "intro text"), (5, "Du Fu", "Du Fu was a poet ."), (9, "Du Fu", "He travelled ."), (12, "Other", "more")]
    assert passages[1].content() == "Du Fu: Du Fu was a poet ." and passages[0].content() == "intro text"
    assert "[1] Du Fu: He travelled ." in answer_prompt("q", [(0.5, passages[2])])
    only_headings = tmp_path / "h.txt"
    only_headings.write_text(" = Title = \n\n = = Section = = \n")
    with pytest.raises(InputError, match="the corpus is empty"):
        split_passages(only_headings)


def test_long_paragraphs_are_cut_into_overlapping_windows(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(f"w{i}.{j}" for j in range(5)) for i in range(5)) + "\n")  # 25 words, one a line
    passages = split_passages(corpus, words=10, overlap=3)
    assert [p.text.split()[0] for p in passages] == ["w0.0", "w1.2", "w2.4", "w4.1"]  # starts every 7 words
    assert [p.line for p in passages] == [1, 2, 3, 5]
    assert all(len(p.text.split()) <= 10 for p in passages) and passages[-1].text.split()[-1] == "w4.4"
    with pytest.raises(InputError, match="overlap"):
        split_passages(corpus, words=4, overlap=4)


def test_empty_missing_and_non_utf8_corpora_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty.txt: the corpus is empty"):
        split_passages(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond \xff line\n")
    with pytest.raises(InputError, match=r"bad.txt:2: not valid UTF-8 \(byte 0xff at column 8\)"):
        split_passages(bad)
    with pytest.raises(InputError, match="missing.txt: no such corpus file"):
        open_index(tmp_path / "missing.txt", None, None, "m")


@pytest.fixture
def encoder(tiny):
    model, tokenizer, max_length = load_model(str(tiny / "model"), "cpu", None)
    return model, tokenizer, str(tiny / "model")


def test_index_round_trip_and_rebuild_when_the_corpus_changes(tmp_path, encoder):
    model, tokenizer, path = encoder
    corpus, folder = tmp_path / "c.txt", tmp_path / "idx"
    corpus.write_text(CORPUS)
    built = open_index(corpus, model, tokenizer, path, folder, max_length=32)
    assert built.rebuilt and sorted(p.name for p in folder.iterdir()) == ["embeddings.safetensors", "index.json", "passages.jsonl"]
    again = open_index(corpus, model, tokenizer, path, folder, max_length=32)
    assert not again.rebuilt and again.passages == built.passages and torch.equal(again.embeddings, built.embeddings)
    assert torch.allclose(again.embeddings.norm(dim=-1), torch.ones(3))
    corpus.write_text(CORPUS + "\na bad movie\n")
    changed = open_index(corpus, model, tokenizer, path, folder, max_length=32)
    assert changed.rebuilt and len(changed.passages) == 4 and len(load_index(folder).passages) == 4
    assert open_index(corpus, model, tokenizer, path, folder, words=3, overlap=1, max_length=32).rebuilt  # new settings
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(InputError, match="not an index folder"):
        open_index(corpus, model, tokenizer, path, tmp_path / "other")


def test_retrieval_equals_a_brute_force_cosine_ranking(tmp_path, encoder):
    model, tokenizer, path = encoder
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{a} {b} {c}" for a in ("good", "bad", "film") for b in ("actor", "plot", "story") for c in ("was", "is")))
    index = open_index(corpus, model, tokenizer, path, tmp_path / "idx", max_length=32)
    query = embed(model, tokenizer, ["good plot", "bad actor"], max_length=32)  # (2, H)
    hits = index.retrieve(query, 5)
    texts = [p.text for p in index.passages]
    raw = embed(model, tokenizer, texts, max_length=32)
    for q, row in zip(query, hits):
        cos = torch.nn.functional.cosine_similarity(q[None], raw)  # (N,)
        order = sorted(range(len(texts)), key=lambda i: -cos[i].item())[:5]
        assert [p.text for _, p in row] == [texts[i] for i in order]
        assert [s for s, _ in row] == pytest.approx([cos[i].item() for i in order], abs=1e-5)


def test_prompt_numbers_the_passages_and_citations_are_parsed(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    passages = split_passages(corpus)
    prompt = answer_prompt("who acted?", [(0.9, passages[2]), (0.5, passages[0])])
    assert "[1] love the actor\n\n[2] the film was great" in prompt and prompt.endswith("Question: who acted?") and "[1], [2]" in prompt
    assert citations("The actor [2], loved [1][2]; see [1, 2] and [7].", k=3) == [2, 1]


class FakeReader:
    """Stands in for load_language_model / stream_text: records the rendered prompt, answers ANSWER."""

    def __init__(self, monkeypatch, answer):
        self.prompts = []
        tokenizer = SimpleNamespace(encode=lambda text: self.prompts.append(text) or [0] * len(text.split()), chat_template="chatml")
        model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192))
        monkeypatch.setattr(generate, "load_language_model", lambda path, device, dtype: (model, tokenizer))
        monkeypatch.setattr(generate, "chat_template", lambda tok, name=None: generate.ChatTemplate.named("chatml"))
        monkeypatch.setattr(generate, "generation_config", lambda config, tok, template: config)
        monkeypatch.setattr(generate, "stream_text", lambda m, tok, ids, options: iter([(answer, 1), ("", 2)]))


def test_ask_end_to_end_prints_the_answer_and_the_cited_passages(tmp_path, encoder, monkeypatch, capsys):
    _, _, path = encoder
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    reader = FakeReader(monkeypatch, " The actor is loved [1].")
    argv = ["ask", "--model", path, "--corpus", str(corpus), "--device", "cpu", "--top-k", "2", "--max-new-tokens", "4"]
    main([*argv, "--json", "love the actor"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["answer"] == "The actor is loved [1]." and result["cited"] == [1] and result["index_rebuilt"]
    assert (result["passages"][0]["line"], result["passages"][0]["score"]) == (7, 1.0) and len(result["passages"]) == 2
    assert "<|im_start|>user\n" in reader.prompts[0] and "[1] love the actor" in reader.prompts[0]
    assert (tmp_path / "c.txt.index" / "index.json").is_file()
    main([*argv, "love the actor"])
    out = capsys.readouterr().out
    assert out.startswith("The actor is loved [1].\n") and f"[1] {corpus}:7  1.0000  love the actor" in out and "[2]" not in out


@pytest.mark.parametrize("content, message", [(b"", "the corpus is empty"), (b"ok\n\xc3\x28\n", ":2: not valid UTF-8")])
def test_ask_refuses_a_bad_corpus_with_one_line(tmp_path, encoder, monkeypatch, capsys, content, message):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    FakeReader(monkeypatch, "x")
    with pytest.raises(SystemExit) as exit:
        main(["ask", "--model", encoder[2], "--corpus", str(corpus), "--device", "cpu", "q"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith(f"error: {corpus}") and message in err
