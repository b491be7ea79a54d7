"""Cross-check: our InKB micro P/R/F1 (strong match) equals neleval's strong_link_match on real data.

neleval 3.1.1 imports `collections.Sequence`, removed in Python 3.10; the old names are aliased
from `collections.abc` before it is imported. neleval's strong_link_match keeps only linked
annotations on both sides (kbid not NIL) and matches (doc, start, end, kbid) sets. That is
GERBIL's InKB class: a gold NIL span predicted as an entity is an FP in both, a NIL
prediction counts in neither. NIL is mapped to neleval's "NIL" id and entities get a prefix,
so that no title starting with "NIL" is mistaken for NIL.
"""
import collections
import collections.abc
import random

import pytest

for _name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable", "Set"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

from neleval.annotation import Annotation as NelAnnotation, Candidate  # noqa: E402
from neleval.document import Document as NelDocument  # noqa: E402
from neleval.evaluate import Evaluate  # noqa: E402

from eval.aida import read_aida  # noqa: E402
from eval.nif import read_nif  # noqa: E402
from eval.scorer import score  # noqa: E402
from onegen.spans import Document, Mention  # noqa: E402

ROUNDS = 4  # perturbation rounds (seeds) per dataset


def perturb(docs: list[Document], seed: int) -> dict[str, list[Mention]]:
    """Gold annotations randomly dropped, shifted, relinked (to another gold entity or NIL) and added."""
    rng = random.Random(seed)
    entities = sorted({a.entity_id for d in docs for a in d.mentions if a.entity_id is not None})
    pred = {}
    for doc in docs:
        out = []
        for a in doc.mentions:
            r = rng.random()
            if r < 0.15:
                continue  # dropped
            start, end, entity = a.start, a.end, a.entity_id
            if r < 0.30:  # shifted by one character at either edge
                start = min(max(start + rng.choice((-1, 1)), 0), end - 1)
                end = max(min(end + rng.choice((-1, 0, 1)), len(doc.text)), start + 1)
            elif r < 0.45:  # relinked
                entity = rng.choice(entities + [None])
            elif r < 0.55 and entity is None:  # a gold NIL span linked to an entity
                entity = rng.choice(entities)
            out.append(Mention(start, end, doc.text[start:end], entity))
        for _ in range(rng.randint(0, 3)):  # added spans
            start = rng.randrange(max(len(doc.text) - 5, 1))
            end = min(start + rng.randint(1, 12), len(doc.text))
            out.append(Mention(start, end, doc.text[start:end], rng.choice(entities + [None])))
        # neleval scores sets, so an exact duplicate (span and entity) would count once there and
        # as an FP here (GERBIL); keep one of each
        pred[doc.doc_id] = list({(a.start, a.end, a.entity_id): a for a in out}.values())
    return pred


def to_neleval(doc_id: str, annotations: list[Mention]) -> NelDocument:
    return NelDocument(doc_id, [
        NelAnnotation(doc_id, a.start, a.end, [Candidate("NIL" if a.entity_id is None else "E:" + a.entity_id)])
        for a in annotations
    ])


def neleval_strong_link_match(gold: list[Document], pred: dict[str, list[Mention]]):
    pairs = [(to_neleval(d.doc_id, pred.get(d.doc_id, [])), to_neleval(d.doc_id, d.mentions)) for d in gold]
    _, overall = Evaluate.count("strong_link_match", pairs)
    return overall


@pytest.fixture(scope="module")
def datasets(shared_data):
    return {
        "reuters-128": read_nif(shared_data / "gerbil" / "reuters-128.ttl"),
        "aida-testb": read_aida(shared_data / "aida" / "AIDA-YAGO2-dataset.tsv", "testb"),
    }


@pytest.mark.parametrize("name", ["reuters-128", "aida-testb"])
def test_inkb_micro_equals_neleval_strong_link_match(datasets, name):
    gold = datasets[name]
    for seed in range(ROUNDS):
        pred = perturb(gold, seed)
        ours = score(gold, pred).inkb.micro
        theirs = neleval_strong_link_match(gold, pred)
        assert (ours.tp, ours.fp, ours.fn) == (theirs.ptp, theirs.fp, theirs.fn), f"seed {seed}"
        assert ours.precision == pytest.approx(theirs.precision, abs=1e-12)
        assert ours.recall == pytest.approx(theirs.recall, abs=1e-12)
        assert ours.f1 == pytest.approx(theirs.fscore, abs=1e-12)
        assert 0.3 < ours.f1 < 0.95  # the perturbation leaves a score far from both ends
