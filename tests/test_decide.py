"""decide(): entity or NIL from retrieved candidates, with optional alias and popularity priors and a name bonus."""
import json
import math

import pytest

from onegen.decide import AliasPrior, PopularityPrior, decide, is_title_of, short_form_links
from onegen.titles import Titles


def prior(tmp_path, rows: str, weight=0.2) -> AliasPrior:
    path = tmp_path / "aliases.tsv"
    path.write_text(rows, encoding="utf-8")
    return AliasPrior.from_tsv(path, weight=weight)


def test_best_candidate_above_threshold_is_linked():
    assert decide(["Paris", "Paris_Hilton"], [0.8, 0.6], "Paris", nil_threshold=0.5) == ("Paris", pytest.approx(0.8))


def test_best_candidate_below_threshold_is_nil_with_its_score():
    entity, score = decide(["Paris"], [0.3], "Paris", nil_threshold=0.5)
    assert entity is None and score == pytest.approx(0.3)


def test_no_candidates_and_padding_ids_give_nil():
    assert decide([], [], "x", nil_threshold=0.0) == (None, -math.inf)
    assert decide([None, ""], [0.9, 0.9], "x", nil_threshold=0.0) == (None, -math.inf)


def test_alias_prior_reranks_close_candidates(tmp_path):
    table = prior(tmp_path, "paris\tParis_Hilton\t1\nParis\tParis\t9\n# comment\n")
    ids, scores = ["Paris_Hilton", "Paris"], [0.72, 0.70]
    assert decide(ids, scores, "Paris", nil_threshold=0.5)[0] == "Paris_Hilton"
    assert decide(ids, scores, "  PARIS ", nil_threshold=0.5, alias_prior=table) == ("Paris", pytest.approx(0.70))
    assert table.probability("paris", "Paris") == pytest.approx(0.9)


def test_alias_prior_never_adds_candidates_and_counts_against_nil(tmp_path):
    table = prior(tmp_path, "paris\tParis\t3\nparis\tParis_Hilton\t1\n", weight=0.2)
    assert decide(["Lyon"], [0.9], "Paris", nil_threshold=0.5, alias_prior=table) == ("Lyon", pytest.approx(0.9))
    # NIL is decided on the cosine plus weight * p(entity | surface): 0.40 + 0.2 * 0.75 = 0.55
    assert decide(["Paris"], [0.4], "Paris", nil_threshold=0.5, alias_prior=table) == ("Paris", pytest.approx(0.4))
    assert decide(["Paris"], [0.4], "Paris", nil_threshold=0.56, alias_prior=table) == (None, pytest.approx(0.4))
    assert decide(["Paris"], [0.4], "Paris", nil_threshold=0.5) == (None, pytest.approx(0.4))  # no prior: the cosine
    # a rarer sense gets less: 0.40 + 0.2 * 0.25 = 0.45
    assert decide(["Paris_Hilton"], [0.4], "Paris", nil_threshold=0.5, alias_prior=table)[0] is None


def test_the_kb_names_count_as_one_link_each_and_share_a_surface_among_its_entities(tmp_path):
    names = Titles.from_ids(["Paris", "Paris_(band)", "New_York_City"], [("Big_Apple", "New_York_City")])
    alone = AliasPrior(None, 0.2, names)
    assert alone.probability("Paris", "Paris") == alone.probability("paris", "Paris_(band)") == pytest.approx(0.5)
    assert alone.probability("Big Apple", "New_York_City") == pytest.approx(1.0)
    assert alone.probability("Paris", "New_York_City") == alone.probability("Lyon", "Paris") == 0.0
    # with a table its counts join them: (3 + 1) / (3 + 2) for Paris, 1 / 5 for the band
    both = prior(tmp_path, "Paris\tParis\t3\n")
    both.names = names
    assert both.probability("Paris", "Paris") == pytest.approx(0.8) and both.probability("Paris", "Paris_(band)") == pytest.approx(0.2)
    # a mention written as a redirect's name clears NIL on the alias term: 0.45 + 0.2 * 1.0 = 0.65
    assert decide(["New_York_City"], [0.45], "Big Apple", nil_threshold=0.6, alias_prior=alone)[0] == "New_York_City"
    assert decide(["New_York_City"], [0.45], "Big Apple", nil_threshold=0.6)[0] is None


def test_the_alias_prior_can_weigh_more_against_nil_than_for_ranking():
    """nil_weight: a surface known to name the entity lifts it over the NIL threshold without re-ranking anything."""
    names = Titles.from_ids(["John_C._Kornblum", "Paris", "Paris_Hilton"], [("John_Kornblum", "John_C._Kornblum")])
    ranking_only = AliasPrior(None, 0.1, names)
    against_nil = AliasPrior(None, 0.1, names, nil_weight=0.3)
    # 0.6 + 0.1 * 1.0 = 0.7 is NIL under 0.75; 0.6 + 0.3 * 1.0 = 0.9 is not
    assert decide(["John_C._Kornblum"], [0.6], "John Kornblum", nil_threshold=0.75, alias_prior=ranking_only)[0] is None
    assert decide(["John_C._Kornblum"], [0.6], "John Kornblum", nil_threshold=0.75,
                  alias_prior=against_nil) == ("John_C._Kornblum", pytest.approx(0.6))
    # ranking keeps the weight 0.1: Paris_Hilton 0.80 beats Paris 0.65 + 0.1, whatever the NIL weight
    assert decide(["Paris_Hilton", "Paris"], [0.80, 0.65], "Paris", nil_threshold=0.0, alias_prior=against_nil)[0] == "Paris_Hilton"
    assert decide(["John_C._Kornblum"], [0.6], "Kornblum", nil_threshold=0.75, alias_prior=against_nil)[0] is None  # no name
    assert AliasPrior.load(None, names, weight=0.1, nil_weight=0.3).nil_weight == 0.3


def test_the_entities_a_surface_refers_to_come_likeliest_first_up_to_a_limit(tmp_path):
    names = Titles.from_ids(["Paris", "Paris_(band)", "Paris_Hilton", "Rome"], [("Paris_H.", "Paris_Hilton")])
    both = prior(tmp_path, "Paris\tParis_Hilton\t3\nparis\tNot_in_the_KB\t1\n")
    both.names = names
    # Paris_Hilton 3 links, Not_in_the_KB 1 (the table's), Paris 1 and Paris_(band) 1 (names): ties by id
    assert both.entities("Paris", 10) == ["Paris_Hilton", "Not_in_the_KB", "Paris", "Paris_(band)"]
    assert both.entities("PARIS", 2) == ["Paris_Hilton", "Not_in_the_KB"] and both.entities("Lyon", 5) == []
    assert AliasPrior(None, 0.2, names).entities("Paris H.", 5) == ["Paris_Hilton"]  # names alone
    assert prior(tmp_path, "Paris\tParis\t2\n").entities("Paris", 5) == ["Paris"]  # a table alone


def test_alias_prior_load_needs_a_weight_and_a_table_or_names(tmp_path):
    names = Titles.from_ids(["Paris"])
    assert AliasPrior.load(None, names, weight=0.0) is None and AliasPrior.load(None, None, weight=0.2) is None
    assert AliasPrior.load(None, names, weight=0.2).probability("Paris", "Paris") == 1.0
    with pytest.raises(FileNotFoundError, match="alias table not found"):
        AliasPrior.load(tmp_path / "missing.tsv", names, weight=0.2)


@pytest.mark.parametrize("rows, message", [("a\tb\n", "expected mention<TAB>entity<TAB>count"), ("a\tb\tmany\n", "must be a number"),
                                           ("a\tb\t-1\n", ">= 0")])
def test_bad_alias_table_names_the_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message) as err:
        prior(tmp_path, rows)
    assert ":1:" in str(err.value)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        decide(["a"], [], "a", nil_threshold=0.0)


def write_kb(path, popularity: dict) -> str:
    path.write_text("".join(json.dumps({"id": e} | ({"popularity": p} if p is not None else {})) + "\n"
                            for e, p in popularity.items()), encoding="utf-8")
    return str(path)


def test_popularity_prior_is_log_popularity_over_the_kb_maximum(tmp_path):
    kb = write_kb(tmp_path / "kb.jsonl", {"Paris": 1000, "Paris_Hilton": 10, "Lyon": None, "Nowhere": 0})
    prior = PopularityPrior.from_kb(kb, weight=0.3)
    assert prior.score("Paris") == pytest.approx(1.0)
    assert prior.score("Paris_Hilton") == pytest.approx(math.log(11) / math.log(1001))
    assert prior.score("Lyon") == prior.score("Nowhere") == prior.score("not in the KB") == 0.0
    # a later file's line wins, and the maximum moves with it
    update = write_kb(tmp_path / "update.jsonl", {"Paris_Hilton": 100_000})
    assert PopularityPrior.from_kb(kb, update).score("Paris_Hilton") == pytest.approx(1.0)
    assert PopularityPrior.from_kb(write_kb(tmp_path / "plain.jsonl", {"Paris": None})).scores == {}


def test_popularity_prior_reranks_close_candidates_but_nil_stays_on_the_cosine(tmp_path):
    prior = PopularityPrior.from_kb(write_kb(tmp_path / "kb.jsonl", {"Paris": 1000, "Paris_Hilton": 10}), weight=0.3)
    ids, scores = ["Paris_Hilton", "Paris"], [0.72, 0.70]
    assert decide(ids, scores, "Paris", nil_threshold=0.5)[0] == "Paris_Hilton"
    assert decide(ids, scores, "Paris", nil_threshold=0.5, popularity=prior) == ("Paris", pytest.approx(0.70))
    assert decide(["Paris_Hilton", "Paris"], [0.9, 0.3], "Paris", nil_threshold=0.5, popularity=prior)[0] == "Paris_Hilton"
    assert decide(ids, scores, "Paris", nil_threshold=0.71, popularity=prior) == (None, pytest.approx(0.70))
    assert decide(["Lyon"], [0.6], "Paris", nil_threshold=0.5, popularity=prior)[0] == "Lyon"  # never adds Paris


@pytest.mark.parametrize("surface, entity_id, is_title", [
    ("Paris", "Paris", True), ("  PARIS ", "Paris", True), ("Paris", "Paris_(band)", True),  # qualifier dropped
    ("Paris (band)", "Paris_(band)", True), ("New  York City", "New_York_City", True),
    ("Paris", "Paris_Hilton", False), ("band", "Paris_(band)", False), ("Hilton", "Paris_Hilton", False),
    ("Springfield", "Springfield,_Illinois", False), ("Gore", "Al_Gore", False)])
def test_a_surface_is_the_title_its_id_spells_with_or_without_a_qualifier(surface, entity_id, is_title):
    assert is_title_of(surface, entity_id) is is_title


def test_the_name_weight_ranks_the_entity_named_by_the_surface_first_and_counts_against_nil():
    ids, scores = ["Paris_Hilton", "Paris_(band)"], [0.72, 0.70]
    assert decide(ids, scores, "Paris", nil_threshold=0.5)[0] == "Paris_Hilton"
    assert decide(ids, scores, "Paris", nil_threshold=0.5, name_weight=0.05) == ("Paris_(band)", pytest.approx(0.70))
    assert decide(ids, scores, "Hilton", nil_threshold=0.5, name_weight=0.05)[0] == "Paris_Hilton"  # no title matches
    # NIL is decided on the cosine plus the name bonus: 0.70 + 0.05 clears 0.74, 0.72 alone would not
    assert decide(ids, scores, "Paris", nil_threshold=0.74, name_weight=0.05) == ("Paris_(band)", pytest.approx(0.70))
    assert decide(ids, scores, "Paris", nil_threshold=0.76, name_weight=0.05) == (None, pytest.approx(0.70))
    assert decide(ids, scores, "Hilton", nil_threshold=0.74, name_weight=0.05) == (None, pytest.approx(0.72))
    assert decide(["Lyon"], [0.6], "Paris", nil_threshold=0.5, name_weight=1.0)[0] == "Lyon"  # never adds Paris


def test_a_nil_short_form_takes_its_long_forms_entity_when_retrieval_found_it():
    surfaces = ["Boris Yeltsin", "YELTSIN", "Yeltsin", "Boris", "Lebed", "Boris Yeltsin's"]
    linked = ["Boris_Yeltsin", None, None, None, None, "Boris_Yeltsin"]
    candidates = [["Boris_Yeltsin"], ["Yeltsin_(film)", "Boris_Yeltsin"], ["Yeltsin_(film)"], ["Boris_Yeltsin"],
                  ["Boris_Yeltsin"], ["Boris_Yeltsin"]]
    assert short_form_links(surfaces, linked, candidates) == [
        "Boris_Yeltsin",  # linked mentions are kept
        "Boris_Yeltsin",  # words compared case-folded
        None,  # the long form's entity was not retrieved for it
        "Boris_Yeltsin",  # any contiguous part
        None,  # not part of a longer linked mention
        "Boris_Yeltsin"]


def test_a_short_form_of_two_entities_stays_nil_and_a_linked_one_keeps_its_entity():
    surfaces = ["George Washington", "Washington", "Washington Post", "Post"]
    linked = ["George_Washington", None, "The_Washington_Post", "Postage"]
    candidates = [["George_Washington"], ["George_Washington", "The_Washington_Post"], ["The_Washington_Post"],
                  ["Postage", "The_Washington_Post"]]
    assert short_form_links(surfaces, linked, candidates) == linked
