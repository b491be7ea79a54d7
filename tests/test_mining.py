"""Hard negatives mined with the model: teacher-forced [LK] vectors, then the top non-gold entities."""
import numpy as np
import pytest
import torch

from kb.entity import Entity
from kb.ids import Redirects
from onegen.data import OneGenExample, build_examples
from onegen.linker import ExactSearch
from onegen.mining import mention_vectors, mine_negatives
from onegen.model import OneGen, add_onegen_tokens, last_hidden
from tiny import annotated_document, tiny_model, tiny_tokenizer

KB = {e.id: e for e in [
    Entity("Germany", "Germany", "Country in Central Europe."),
    Entity("Germany_national_football_team", "Germany national football team", "Men's football team."),
    Entity("France", "France", "Country in Western Europe."),
    Entity("France_national_football_team", "France national football team", "Men's football team."),
    Entity("Paris", "Paris", "Capital of France."),
    Entity("Berlin", "Berlin", "Capital of Germany."),
    Entity("Rhine", "Rhine", "River."),
]}


@pytest.fixture(scope="module")
def onegen():
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    add_onegen_tokens(model, tokenizer)
    return OneGen(model, tokenizer, device="cpu")


@pytest.fixture(scope="module")
def examples(onegen):
    docs = [
        annotated_document("a", "Germany beat France in Paris. Berlin is on no river.",
                           [("Germany", "Germany_national_football_team"), ("France", "France_national_football_team"),
                            ("Paris", "Paris"), ("Berlin", "Berlin")]),
        annotated_document("b", "The Rhine flows past Germany.", [("Rhine", "Rhine"), ("Germany", "Germany")]),
    ]
    return build_examples(docs, KB, onegen.tokenizer, onegen.token_ids, num_negatives=2)


def example(entities, anchors, negatives) -> OneGenExample:
    """An example with only what mining reads: its mentions' entities, anchors and negatives."""
    n = len(entities)
    return OneGenExample(doc_id="d", start=0, end=1, input_ids=[0] * n, labels=[0] * n, link_positions=list(range(n)),
                         link_entities=entities, anchors=anchors, negatives=negatives)


def search_ranking(rankings: list[list[str]]):
    """An exact search whose i-th query (the i-th basis vector) ranks entities as rankings[i]."""
    ids = sorted({e for r in rankings for e in r})
    vectors = np.zeros((len(ids), len(rankings)), dtype=np.float32)
    for q, ranked in enumerate(rankings):
        for rank, e in enumerate(ranked):
            vectors[ids.index(e), q] = 1.0 - 0.1 * rank
    queries = np.eye(len(rankings), dtype=np.float32)
    return ExactSearch(ids, vectors).search, [queries]


def test_mention_vectors_are_the_states_at_each_lk_read_alone(onegen, examples):
    onegen.model.train()
    vectors = mention_vectors(onegen, examples, batch_size=2)  # examples of different lengths padded together
    assert onegen.model.training  # its mode is given back
    onegen.model.eval()
    assert [len(v) for v in vectors] == [len(ex.link_positions) for ex in examples]
    for ex, v in zip(examples, vectors):
        with torch.no_grad():
            ids = torch.tensor([ex.input_ids])
            alone = last_hidden(onegen.model, ids, torch.ones_like(ids))[0, ex.link_positions]  # (L, D)
        np.testing.assert_allclose(v, torch.nn.functional.normalize(alone, dim=-1).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_negatives_are_the_top_ranked_entities_that_are_not_gold_then_the_own_ones():
    ex = example(["Paris", "Rhine"], anchors=[0], negatives=[["Berlin", "Bonn", "Rhine"]])
    search, vectors = search_ranking([["Paris_Hilton", "Paris", "Paris,_Texas", "Berlin"], ["Rhine", "Rhein"]])
    [mined], report = mine_negatives([ex], vectors, search, num_negatives=3, top_k=2)
    assert mined.anchors == [0]
    assert mined.negatives == [["Paris_Hilton", "Berlin", "Bonn"]]  # the mined one, then its own without repeats
    assert ex.negatives == [["Berlin", "Bonn", "Rhine"]]  # the input is not changed
    assert (report.mentions, report.gold_first, report.gold_in_top_k, report.mined) == (2, 1, 2, 1)


def test_a_redirect_of_the_gold_entity_is_never_a_negative():
    ex = example(["Paris"], anchors=[0], negatives=[["Berlin", "Bonn"]])
    search, vectors = search_ranking([["Paris,_France", "Paris", "Lyon", "Nice"]])
    redirects = Redirects({"Paris,_France": "Paris"})
    [mined], report = mine_negatives([ex], vectors, search, num_negatives=2, canonical=redirects.resolve)
    assert mined.negatives == [["Lyon", "Nice"]]
    assert report.gold_first == 1  # the redirect ranked first counts as the gold entity


def test_every_mention_becomes_an_anchor_with_mined_negatives():
    ex = example(["Paris", "Rhine", "Berlin"], anchors=[1], negatives=[["Bonn", "Lyon"]])
    search, vectors = search_ranking([["Lyon", "Paris"], ["Rhein", "Rhine"], ["Berlin", "Bonn"]])
    [kept], _ = mine_negatives([ex], vectors, search, num_negatives=2, top_k=2)
    assert kept.anchors == [1] and kept.negatives == [["Rhein", "Bonn"]]
    [every], _ = mine_negatives([ex], vectors, search, num_negatives=2, top_k=2, every_mention=True)
    assert every.anchors == [0, 1, 2]
    assert every.negatives == [["Lyon"], ["Rhein", "Bonn"], ["Bonn"]]  # the collator fills short lists at random


def test_mined_negatives_of_a_real_model_are_its_own_closest_wrong_entities(onegen, examples):
    ids = sorted(KB)
    search = ExactSearch(ids, onegen.embed_entities([KB[i] for i in ids])).search
    vectors = mention_vectors(onegen, examples)
    mined, report = mine_negatives(examples, vectors, search, num_negatives=2, every_mention=True)
    assert report.mentions == 6
    for ex, v in zip(mined, vectors):
        for k, negatives in zip(ex.anchors, ex.negatives):
            scores, ranked = search(v[k:k + 1], len(ids))
            assert negatives == [e for e in ranked[0] if e != ex.link_entities[k]][:2]


def test_vectors_that_do_not_fit_the_examples_are_refused():
    ex = example(["Paris", "Rhine"], anchors=[0], negatives=[["Berlin"]])
    search, vectors = search_ranking([["Paris"]])
    with pytest.raises(ValueError, match="2 linked mentions but 1 vectors"):
        mine_negatives([ex], vectors, search, num_negatives=1)
    with pytest.raises(ValueError, match="one vector array per example"):
        mine_negatives([ex, ex], vectors, search, num_negatives=1)
