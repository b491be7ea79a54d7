"""bench/screen.py: marking and ranking counted apart, and clear errors before any model is loaded."""
import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bench.screen import main, marking_and_ranking, screen_candidates
from onegen.spans import Candidate, Document, Mention
from onegen.indexes import SAMPLE_KB

TEXT = "Paris met Berlin and Rome in Oslo."


def mention(start, end, *entities):
    return Mention(start, end, TEXT[start:end], candidates=[Candidate(e, 0.9) for e in entities])


def test_marking_and_ranking_counts_exact_spans_and_ranks_only_spans_every_run_marks():
    gold = [Document("d", TEXT, [Mention(0, 5, "Paris", "Paris"), Mention(10, 16, "Berlin", "Berlin"),
                                 Mention(21, 25, "Rome", "Rome"), Mention(29, 33, "Oslo", None)])]
    runs = {
        "a": {"d": [mention(0, 5, "Paris_(old)", "Lyon"), mention(10, 16, "Bonn", "Berlin")]},
        "b": {"d": [mention(0, 5, "Lyon", "Paris"), mention(21, 25, "Rome"), mention(29, 33, "Oslo"),
                    mention(10, 13, "Berlin")]},  # Oslo is NIL in the gold; "Ber" is not Berlin's span
    }
    redirects = {"Paris_(old)": "Paris"}
    out = marking_and_ranking(gold, runs, lambda e: redirects.get(e, e))
    assert out["a"]["marked"] == 2 and out["b"]["marked"] == 4
    assert out["a"]["exact_span"] == pytest.approx(2 / 3)  # Paris, Berlin of three InKB links
    assert out["b"]["exact_span"] == pytest.approx(2 / 3)  # Paris, Rome
    # only Paris is marked by both runs: a ranks it first through the redirect, b second
    assert out["a"]["common_spans"] == out["b"]["common_spans"] == 1
    assert (out["a"]["top1"], out["a"]["top10"]) == (1.0, 1.0)
    assert (out["b"]["top1"], out["b"]["top10"]) == (0.0, 1.0)


def test_a_reference_without_the_dataset_is_refused_before_loading_a_model(tmp_path, capsys):
    reference = tmp_path / "candidates.jsonl.gz"
    with gzip.open(reference, "wt") as f:
        f.write(json.dumps({"dataset": "aida-testb", "doc_id": "x", "mentions": []}) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-model"), "--reference", str(reference)])
    assert exit_.value.code == 2
    assert "holds no aida-testa documents" in capsys.readouterr().err


@pytest.mark.parametrize("args, error", [(["--docs", "0"], "--docs must be at least 1"),
                                         ([], "no candidates file at")])
def test_bad_arguments_are_one_line(tmp_path, capsys, args, error):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "m", "--reference", str(tmp_path / "missing.jsonl.gz"), *args])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


class RecordingModel:
    """Stands in for OneGen: embeds entities as one-hot rows and marks "Paris" in every text, recording
    the keyword arguments each decoding call gets."""

    def __init__(self):
        self.calls = []

    def embed_entities(self, entities):
        return np.eye(len(entities), 4, dtype=np.float32)

    def __call__(self, texts, batch_size=8, **kwargs):
        self.calls.append(kwargs)
        paris = SimpleNamespace(start=0, end=5, surface="Paris", vector=np.array([0, 1, 0, 0], np.float32))
        return [SimpleNamespace(mentions=[paris]) for _ in texts]


@pytest.mark.parametrize("bias, passed", [(0.0, {}), (1.5, {"mention_bias": 1.5})])
def test_the_screen_decodes_with_the_mention_bias_asked_for_and_searches_only_the_given_entities(bias, passed):
    model = RecordingModel()
    docs = [Document(f"d{i}", TEXT, []) for i in range(3)]
    out = screen_candidates(model, docs, ["Germany", "France", "Atlantis"], SAMPLE_KB, batch_size=2,
                            mention_bias=bias)
    assert model.calls == [passed, passed]  # two batches of at most two documents
    assert set(out) == {"d0", "d1", "d2"}
    # the KB order is France, Germany (Atlantis is not in it): the vector picks Germany first
    assert [c.entity_id for c in out["d0"][0].candidates] == ["Germany", "France"]
