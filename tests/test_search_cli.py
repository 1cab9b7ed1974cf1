"""`search --json` names each hit by its line in the corpus file, blank lines counted."""

import json

from minitransformers.cli import main


def test_search_json_reports_the_files_line_numbers_across_blank_lines(tiny, tmp_path, capsys):  # noqa: F811
    lines = ["the film was great", "", "awful plot and a really poor story", "   ", "", "love the actor", "a bad movie"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    main(["search", "--model", str(tiny / "model"), "--corpus", str(corpus), "--device", "cpu", "--top-k", "4", "--json", "love the actor"])
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(hits) == 4 and all(lines[hit["line"] - 1] == hit["text"] for hit in hits)
    assert (hits[0]["line"], hits[0]["score"]) == (6, 1.0)  # the query itself, on line 6 of the file
