"""The link job's map_batches callables, called directly on Arrow batches (no Ray)."""
import numpy as np
import pyarrow as pa
import pytest

from link_fakes import ENTITIES, FakeIndex, fake_annotate, lowercase_words, vector
from onegen.decide import AliasPrior, PopularityPrior
from onegen.pipeline.inputs import Limits, RawRow, rows_to_table
from onegen.pipeline.stages import AnnotateStage, LinkStep, NerStage, column_vectors, vectors_column


def batch(texts) -> pa.Table:
    return rows_to_table("in.jsonl", [RawRow(i, f"d{i}", t, {}) for i, t in enumerate(texts)], Limits(), {}, [])


def test_vectors_round_trip_through_arrow_in_row_order():
    rows = [[vector("a"), vector("b")], [], [vector("c")]]
    column = vectors_column(rows)
    got = column_vectors(pa.chunked_array([column.slice(0, 2), column.slice(2)]))  # (3, D)
    np.testing.assert_array_equal(got, np.stack([vector("a"), vector("b"), vector("c")]))
    assert column_vectors(pa.chunked_array([vectors_column([[], []])])).shape[0] == 0


def test_a_document_the_model_keeps_failing_on_is_the_only_error_row():
    def annotate(texts):
        if any("poison" in t for t in texts):
            raise ValueError("cannot decode")
        return fake_annotate(texts)

    out = AnnotateStage(lambda: annotate)(batch(["Paris.", "poison Rome", "", "Berlin."]))
    assert out.column("status").to_pylist() == ["ok", "error", "error", "ok"]
    assert out.column("error").to_pylist()[1] == "the model failed on this document: ValueError: cannot decode"
    assert out.column("error").to_pylist()[2] == "text is empty"  # validation errors pass through untouched
    assert [[s["surface"] for s in row] for row in out.column("_spans").to_pylist()] == [["Paris"], [], [], ["Berlin"]]


def test_an_annotator_returning_the_wrong_count_is_a_failure_not_a_shifted_result():
    out = AnnotateStage(lambda: (lambda texts: []))(batch(["Paris.", "Rome."]))
    assert out.column("status").to_pylist() == ["error", "error"]
    assert "returned 0 results for 1 documents" in out.column("error").to_pylist()[1]


def test_the_ner_stage_hands_its_spans_to_the_replicas_which_embed_them_too():
    seen = []

    def annotate(texts, spans=None):  # the replica's side: Linker.embed with given spans (onegen.linker)
        seen.append(spans)
        return fake_annotate(texts, spans)

    named = NerStage(lambda: lowercase_words)(batch(["Paris flows north.", ""]))
    assert named.column("_given").to_pylist() == [[{"start": 6, "end": 11}, {"start": 12, "end": 17}], []]
    out = AnnotateStage(lambda: annotate)(named)
    assert seen == [[[(6, 11), (12, 17)]]]  # only the ok row goes to the model, with its spans
    assert "_given" not in out.column_names
    assert [[s["surface"] for s in row] for row in out.column("_spans").to_pylist()] == [["Paris", "flows", "north"], []]
    assert column_vectors(out.column("_vectors")).shape == (3, len(vector("a")))


def test_a_document_the_ner_fails_on_is_an_error_row_and_the_others_go_on():
    def ner(texts):
        if any("poison" in t for t in texts):
            raise RuntimeError("bad text")
        return lowercase_words(texts)

    out = NerStage(lambda: ner)(batch(["Paris flows.", "poison Rome"]))
    assert out.column("status").to_pylist() == ["ok", "error"]
    assert out.column("error").to_pylist()[1] == "the NER failed on this document: RuntimeError: bad text"
    assert out.column("_given").to_pylist() == [[{"start": 6, "end": 11}], []]


def test_link_step_links_above_threshold_nil_below_and_keeps_top_k():
    annotated = AnnotateStage(lambda: fake_annotate)(batch(["Paris and Normandy.", "no mentions here."]))
    out = LinkStep(FakeIndex(), top_k=3, nil_threshold=0.9, model_id="m", index_id="i")(annotated)
    assert out.column_names[:4] == ["doc_id", "mentions", "status", "error"] and "_vectors" not in out.column_names
    (paris, normandy), nothing = out.column("mentions").to_pylist()
    assert (paris["surface"], paris["entity_id"], nothing) == ("Paris", "Paris", [])
    assert paris["score"] == pytest.approx(1.0, abs=1e-5) and [c["entity_id"] for c in paris["candidates"]][0] == "Paris"
    assert len(paris["candidates"]) == 3 and normandy["entity_id"] is None and normandy["score"] < 0.9
    assert out.column("model").to_pylist() == ["m", "m"] and out.column("index").to_pylist() == ["i", "i"]


def test_link_step_gives_the_ner_spans_their_own_threshold_and_links_short_forms():
    text = "Loire joins the loire valley near paris."

    def ner(texts):  # "loire valley", "paris"
        return [[(16, 28), (34, 39)] for _ in texts]

    annotated = AnnotateStage(lambda: fake_annotate)(NerStage(lambda: ner)(batch([text])))
    index = FakeIndex(ENTITIES + ["Loire valley"])

    def linked(**options):
        out = LinkStep(index, len(index.ids), 0.9, "m", "i", **options)(annotated)
        return [(m["surface"], m["entity_id"], m["source"]) for m in out.column("mentions").to_pylist()[0]]

    assert linked() == [("Loire", None, "model"), ("loire valley", "Loire valley", "ner"), ("paris", "Paris", "ner")]
    assert linked(given_nil_threshold=1.5) == [("Loire", None, "model"), ("loire valley", None, "ner"), ("paris", None, "ner")]
    assert linked(short_forms=True) == [("Loire", "Loire valley", "model"), ("loire valley", "Loire valley", "ner"),
                                        ("paris", "Paris", "ner")]


def test_alias_prior_changes_the_choice_among_retrieved_candidates(tmp_path):
    _, ids = FakeIndex().search(vector("Normandy")[None], 3)  # (1, 3): what retrieval returns for "Normandy"
    first, second = ids[0][0], ids[0][1]
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text(f"normandy\t{second}\t5\n")
    annotated = AnnotateStage(lambda: fake_annotate)(batch(["Normandy."]))
    plain = LinkStep(FakeIndex(), 3, -1.0, "m", "i")(annotated)
    with_prior = LinkStep(FakeIndex(), 3, -1.0, "m", "i", AliasPrior.from_tsv(aliases, weight=10.0))(annotated)
    assert plain.column("mentions").to_pylist()[0][0]["entity_id"] == first
    assert with_prior.column("mentions").to_pylist()[0][0]["entity_id"] == second


def test_popularity_prior_changes_the_choice_among_retrieved_candidates():
    _, ids = FakeIndex().search(vector("Normandy")[None], 3)  # (1, 3): what retrieval returns for "Normandy"
    first, second = ids[0][0], ids[0][1]
    annotated = AnnotateStage(lambda: fake_annotate)(batch(["Normandy."]))
    known = LinkStep(FakeIndex(), 3, -1.0, "m", "i", popularity=PopularityPrior({second: 1.0}, weight=10.0))(annotated)
    assert known.column("mentions").to_pylist()[0][0]["entity_id"] == second != first


def test_the_mentions_column_is_onegen_spans_mention_field_for_field():
    from dataclasses import fields

    from onegen.pipeline.outputs import MENTION_TYPE
    from onegen.spans import Candidate, Mention

    mention = Mention(0, 5, "Paris", "Paris", 0.5, [Candidate("Paris", 0.5), Candidate("Rome", 0.25)])
    assert [f.name for f in MENTION_TYPE] == [f.name for f in fields(Mention)]
    assert pa.array([mention.to_row()], MENTION_TYPE).to_pylist() == [mention.to_row()]


def test_link_step_links_a_mention_written_as_an_entitys_title_with_the_name_weight():
    annotated = AnnotateStage(lambda: fake_annotate)(batch(["Loire flows past Paris."]))
    index = FakeIndex(ENTITIES + ["Loire_(river)"])  # the fake vectors of "Loire" and "Loire_(river)" are unrelated

    def linked(**options):
        out = LinkStep(index, len(index.ids), 0.9, "m", "i", **options)(annotated)
        return [(m["surface"], m["entity_id"]) for m in out.column("mentions").to_pylist()[0]]

    assert linked() == [("Loire", None), ("Paris", "Paris")]
    assert linked(name_weight=1.0) == [("Loire", "Loire_(river)"), ("Paris", "Paris")]


def test_link_step_adds_the_entities_a_mention_names_that_retrieval_missed_as_linker_does():
    from onegen.titles import Titles

    annotated = AnnotateStage(lambda: fake_annotate)(batch(["Loire flows past Paris.", "no mentions here."]))
    index = FakeIndex(ENTITIES + ["Loire_(river)"])  # "Loire" names it; their fake vectors are unrelated
    prior = AliasPrior(None, 2.0, Titles.from_ids(index.ids))

    def linked(**options):
        out = LinkStep(index, 1, 0.9, "m", "i", prior, **options)(annotated)
        return out.column("mentions").to_pylist()

    (loire, paris), nothing = linked(name_candidates=3)
    assert (loire["entity_id"], paris["entity_id"], nothing) == ("Loire_(river)", "Paris", [])
    cosine = float(index.vectors[-1] @ vector("Loire"))
    assert {c["entity_id"]: c["score"] for c in loire["candidates"]}["Loire_(river)"] == pytest.approx(cosine, abs=1e-5)
    assert len(loire["candidates"]) == 2 and len(paris["candidates"]) == 1  # Paris was retrieved already
    assert [m["entity_id"] for m in linked()[0]] == [None, "Paris"]  # off: only the retrieved top-1
