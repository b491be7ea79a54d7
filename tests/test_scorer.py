"""GERBIL A2KB/D2KB scoring rules, one test per rule with hand-computed counts."""
import logging

import pytest

from eval.scorer import score
from kb.ids import Redirects
from onegen.spans import Document, Mention

TEXT = "Paris and France met Berlin in Rome."  # Paris 0-5, France 10-16, Berlin 21-27, Rome 31-35


def A(start, end, entity):
    return Mention(start, end, TEXT[start:end], entity)


def doc(doc_id, *annotations):
    return Document(doc_id, TEXT, list(annotations))


def counts(report, cls="inkb"):
    micro = getattr(report, cls).micro
    return micro.tp, micro.fp, micro.fn


def test_strong_match_needs_same_span_and_entity():
    gold = [doc("d", A(0, 5, "Paris"), A(10, 16, "France"))]
    report = score(gold, {"d": [A(0, 5, "Paris"), A(10, 15, "France")]})  # second span is one char short
    assert counts(report) == (1, 1, 1)
    assert report.inkb.micro.precision == 0.5 and report.inkb.micro.recall == 0.5 and report.inkb.micro.f1 == 0.5


def test_right_span_wrong_entity_is_one_fn_and_one_fp():
    gold = [doc("d", A(0, 5, "Paris"))]
    assert counts(score(gold, {"d": [A(0, 5, "Paris,_Texas")]})) == (0, 1, 1)


def test_entity_on_gold_nil_span_is_inkb_fp_and_ee_fn():
    gold = [doc("d", A(21, 27, None))]
    report = score(gold, {"d": [A(21, 27, "Berlin")]})
    assert counts(report, "inkb") == (0, 1, 0)
    assert counts(report, "ee") == (0, 0, 1)


def test_nil_on_nil_span_is_ee_tp_and_nil_on_entity_span_is_ee_fp():
    gold = [doc("d", A(21, 27, None), A(0, 5, "Paris"))]
    report = score(gold, {"d": [A(21, 27, None), A(0, 5, None)]})
    assert counts(report, "ee") == (1, 1, 0)
    assert counts(report, "inkb") == (0, 0, 1)


def test_each_gold_matched_at_most_once():
    gold = [doc("d", A(0, 5, "Paris"))]
    assert counts(score(gold, {"d": [A(0, 5, "Paris"), A(0, 5, "Paris")]})) == (1, 1, 0)  # duplicate is an FP
    # weak: one prediction overlapping two gold mentions of the same entity matches only the first
    gold = [doc("d", A(0, 5, "Paris"), A(10, 16, "Paris"))]
    assert counts(score(gold, {"d": [A(3, 12, "Paris")]}, match="weak")) == (1, 0, 1)


def test_weak_match_accepts_overlap_not_adjacency():
    gold = [doc("d", A(0, 5, "Paris"), A(10, 16, "France"), A(21, 27, "Berlin"))]
    pred = {"d": [A(0, 9, "Paris"), A(12, 14, "France"), A(27, 30, "Berlin")]}  # overlap, inside, only touching
    assert counts(score(gold, pred, match="weak")) == (2, 1, 1)
    assert counts(score(gold, pred, match="strong")) == (0, 3, 3)


def test_micro_sums_counts_and_macro_averages_documents():
    gold = [doc("d1", A(0, 5, "Paris")), doc("d2", A(10, 16, "France")), doc("d3")]
    pred = {"d1": [A(0, 5, "Paris"), A(31, 35, "Rome")], "d2": [], "d3": []}
    report = score(gold, pred)
    assert counts(report) == (1, 1, 1)  # d1: TP + FP, d2: FN, d3: nothing
    assert report.inkb.micro.f1 == pytest.approx(0.5)
    # per document F1: d1 2/3 (P 1/2, R 1), d2 0, d3 1 (no gold, no prediction)
    assert report.inkb.macro.f1 == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert report.inkb.macro.precision == pytest.approx((0.5 + 0 + 1) / 3)
    assert report.inkb.macro.recall == pytest.approx((1 + 0 + 1) / 3)
    assert report.documents == 3


def test_empty_document_scores_one():
    report = score([doc("empty")], {})
    assert (report.inkb.macro.f1, report.inkb.micro.f1, report.ee.macro.f1) == (1.0, 1.0, 1.0)
    # a document with no gold but a prediction scores 0
    report = score([doc("empty")], {"empty": [A(0, 5, "Paris")]})
    assert (report.inkb.macro.f1, counts(report)) == (0.0, (0, 1, 0))


def test_missing_and_unknown_prediction_documents(caplog):
    gold = [doc("d1", A(0, 5, "Paris")), doc("d2", A(10, 16, "France"))]
    with caplog.at_level(logging.WARNING, logger="eval.scorer"):
        report = score(gold, {"d1": [A(0, 5, "Paris")], "other": [A(0, 5, "Paris")]})
    assert counts(report) == (1, 0, 1)  # d2 has no entry: scored as empty; "other" ignored
    assert report.ignored_predictions == ["other"]
    assert "not in the gold" in caplog.text


def test_d2kb_only_gold_spans_and_missing_is_nil():
    gold = [doc("d", A(0, 5, "Paris"), A(10, 16, "France"), A(21, 27, None), A(31, 35, "Rome"))]
    pred = {"d": [A(0, 5, "Paris"), A(22, 27, "Berlin"), A(31, 35, "Rome,_Georgia")]}
    report = score(gold, pred, task="d2kb")
    # Paris TP; France no prediction -> NIL prediction: InKB FN + EE FP; "erlin" not a gold span: ignored,
    # so the gold NIL gets a NIL prediction: EE TP; Rome wrong entity: InKB FN + FP
    assert counts(report, "inkb") == (1, 1, 2)
    assert counts(report, "ee") == (1, 1, 0)
    # the same predictions in A2KB: "erlin" is an InKB FP and the NIL gold an EE FN
    a2kb = score(gold, pred)
    assert counts(a2kb, "inkb") == (1, 2, 2)
    assert counts(a2kb, "ee") == (0, 0, 1)


def test_ids_normalised_and_redirected_on_both_sides(tmp_path):
    table = tmp_path / "redirects.tsv"
    table.write_text("Paris,_France\tParis\nUSA\tUnited_States\n", encoding="utf-8")
    gold = [doc("d", A(0, 5, "Paris,_France"), A(10, 16, "United_States"))]
    pred = {"d": [A(0, 5, "http://dbpedia.org/resource/Paris"), A(10, 16, "USA")]}
    assert counts(score(gold, pred)) == (0, 2, 2)
    assert counts(score(gold, pred, redirects=Redirects.from_tsv(table))) == (2, 0, 0)


def test_to_dict_shape_and_table():
    report = score([doc("d", A(0, 5, "Paris"), A(21, 27, None))], {"d": [A(0, 5, "Paris")]})
    d = report.to_dict()
    assert set(d) == {"inkb", "ee", "documents"}
    for cls in ("inkb", "ee"):
        assert set(d[cls]) == {"micro", "macro"}
        assert set(d[cls]["micro"]) == {"precision", "recall", "f1", "tp", "fp", "fn"}
        assert set(d[cls]["macro"]) == {"precision", "recall", "f1"}
    assert d["inkb"]["micro"]["tp"] == 1 and d["ee"]["micro"]["fn"] == 1 and d["documents"] == 1
    table = report.format_table()
    assert "InKB" in table and "EE" in table and "1.0000" in table


def test_bad_options():
    with pytest.raises(ValueError, match="strong, weak"):
        score([], {}, match="exact")
    with pytest.raises(ValueError, match="a2kb, d2kb"):
        score([], {}, task="el")
