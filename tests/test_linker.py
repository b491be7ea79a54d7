"""The OneGen linker: retrieval + NIL decision over annotated mentions, and the eval/ entry end to end."""
import json

import numpy as np
import pytest

from eval.types import Annotation
from kb.entity import Entity
from kb.index import EntityIndex
from link_fakes import ENTITIES, fake_annotate, vector
from onegen.decide import AliasPrior
from onegen.default_model import DEFAULT_MENTION_BIAS
from onegen.linker import ExactSearch, OneGenLinker, link_texts


class FakeOneGen:
    """Capitalised words as mentions with hashed vectors (tests/link_fakes.py)."""

    def __call__(self, texts, batch_size=8):
        return fake_annotate(texts)


def kb_search(names=ENTITIES):
    return ExactSearch(names, np.stack([vector(n) for n in names]))


def test_exact_search_ranks_by_cosine_and_pads_past_the_kb():
    search = kb_search(["Paris", "Rome"])
    scores, ids = search.search(np.stack([vector("Rome")]), k=3)
    assert list(ids[0]) == ["Rome", "Paris", None]
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 1] < 1.0 and scores[0, 2] == -np.inf
    with pytest.raises(ValueError, match="ids and vectors must be the same"):
        ExactSearch(["a"], np.zeros((2, 4), np.float32))


def test_link_texts_links_known_mentions_and_leaves_unknown_ones_nil():
    text = "Paris is in France, not in Narnia."
    (annotations,) = link_texts(FakeOneGen(), [text], kb_search(), nil_threshold=0.9)
    assert annotations == [Annotation(0, 5, "Paris", "Paris"), Annotation(12, 18, "France", "France"),
                           Annotation(27, 33, "Narnia", None)]
    assert all(text[a.start:a.end] == a.surface for a in annotations)
    assert link_texts(FakeOneGen(), ["no capitals here", ""], kb_search(), nil_threshold=0.0) == [[], []]


def test_link_texts_alias_prior_reranks_candidates(tmp_path):
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("Paris\tFrance\t10\n", encoding="utf-8")
    prior = AliasPrior.from_tsv(aliases, weight=5.0)
    (annotations,) = link_texts(FakeOneGen(), ["Paris"], kb_search(), nil_threshold=-1.0, alias_prior=prior)
    assert annotations[0].entity_id == "France"


def test_popularity_prior_is_stored_in_the_index_and_needs_no_kb_file(tmp_path, caplog):
    """A cluster node may lack the KB file an index was built from: the prior comes from the index."""
    from onegen.pipeline.linking import popularity_prior

    vectors = np.stack([vector("Paris"), vector("Rome")])
    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text("{}\n")
    built = {"path": str(kb_file), "sha256": "0" * 64}
    index = EntityIndex.build(tmp_path / "index", ["Paris", "Rome"], vectors, fingerprint={"model": "m"}, kb=built,
                              popularity=[50, 0])
    kb_file.unlink()

    prior = popularity_prior(tmp_path / "index", 0.3)
    assert (prior.weight, prior.score("Paris"), prior.score("Rome")) == (0.3, pytest.approx(1.0), 0.0)
    index.update(["Rome", "Milan"], np.stack([vector("Rome"), vector("Milan")]), popularity=[500, 5])
    prior = popularity_prior(tmp_path / "index", 0.3)  # a replaced entity's popularity is replaced, a new one added
    assert prior.score("Rome") == pytest.approx(1.0) and 0 < prior.score("Milan") < prior.score("Paris") < 1.0
    assert popularity_prior(tmp_path / "index", 0.0) is None  # off
    assert not caplog.records


def test_an_index_built_before_popularity_was_stored_reads_its_kb_files_with_one_warning(tmp_path, caplog):
    from kb.files import sha256_file
    from onegen.pipeline.linking import popularity_prior

    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text(json.dumps({"id": "Paris", "popularity": 50}) + "\n" + json.dumps({"id": "Rome"}) + "\n")
    vectors = np.stack([vector("Paris"), vector("Rome")])
    built = {"path": str(kb_file), "sha256": sha256_file(kb_file)}
    EntityIndex.build(tmp_path / "index", ["Paris", "Rome"], vectors, fingerprint={"model": "m"}, kb=built)
    EntityIndex.build(tmp_path / "no-kb", ["Paris", "Rome"], vectors, fingerprint={"model": "m"})

    prior = popularity_prior(tmp_path / "index", 0.3)
    assert (prior.weight, prior.score("Paris"), prior.score("Rome")) == (0.3, pytest.approx(1.0), 0.0)
    assert [r.message for r in caplog.records] == [
        f"the index {tmp_path / 'index'} stores no popularity (built before it was stored): read it from its KB files; "
        "rebuild the index to store it"]
    caplog.clear()
    assert popularity_prior(tmp_path / "no-kb", 0.3) is None
    kb_file.write_text(json.dumps({"id": "Rome", "popularity": 50}) + "\n")  # changed since the build
    assert popularity_prior(tmp_path / "index", 0.3) is None
    assert len(caplog.records) == 2 and all("no popularity prior" in r.message for r in caplog.records)
    assert "gone or changed" in caplog.records[1].message


def test_onegen_linker_end_to_end_on_a_tiny_model(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen

    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(tmp_path / "model")
    onegen = OneGen.from_pretrained(str(tmp_path / "model"))
    entities = [Entity("Paris", "Paris", "Capital of France."), Entity("Rome", "Rome", "Capital of Italy.")]
    EntityIndex.build(tmp_path / "index", [e.id for e in entities], onegen.embed_entities(entities),
                      fingerprint=onegen.fingerprint())
    linker = OneGenLinker(model=str(tmp_path / "model"), index=str(tmp_path / "index"), nil_threshold=-1.0)
    texts = ["Paris and Rome.", ""]
    out = linker.link(texts)
    assert len(out) == 2 and out[1] == []
    for annotation in out[0]:  # a random model marks whatever it marks; every span must be exact and linked
        assert texts[0][annotation.start:annotation.end] == annotation.surface
        assert annotation.entity_id in {"Paris", "Rome"}

    def recorded(linker):  # the options the linker decodes with
        calls = []
        linker.onegen = lambda texts, **options: calls.append(options) or []
        linker.retrieve(["Paris."])
        return calls

    assert recorded(linker) == [{"batch_size": 8, "mention_bias": DEFAULT_MENTION_BIAS}]  # the product's decoding
    unbiased = OneGenLinker(model=str(tmp_path / "model"), index=str(tmp_path / "index"), mention_bias=0.0)
    assert recorded(unbiased) == [{"batch_size": 8}]  # the model's own choice


@pytest.mark.ray
def test_onegen_linker_builds_the_index_of_a_kb_once_starting_ray_itself(tmp_path, monkeypatch):
    """`eval/run_gerbil.py run --linker onegen --kb KB` in a new process, the model's identity cached by an
    earlier run: no Ray is running when the index is built on first use; a second linker finds it cached."""
    import ray
    from tiny import tiny_model, tiny_tokenizer

    import onegen.index_build
    from onegen.model import OneGen

    monkeypatch.setenv("ONEGEN_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(tmp_path / "model")
    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text("".join(json.dumps({"id": name, "title": name, "description": f"{name} is a city.",
                                           "popularity": popularity}) + "\n"
                               for name, popularity in (("Paris", 100), ("Rome", 10), ("Berlin", 0))), encoding="utf-8")
    try:
        onegen.index_build.model_identity(str(tmp_path / "model"))  # cached by the model's files, as after an earlier run
        ray.shutdown()  # the identity came from a Ray task
        linker = OneGenLinker(model=str(tmp_path / "model"), kb=str(kb_file), nil_threshold=-1.0, popularity_weight=0.3)
        assert len(linker.index) == 3
        assert linker.popularity.score("Paris") == pytest.approx(1.0) and linker.popularity.score("Berlin") == 0.0
        text = "Paris, Rome and Berlin."
        for annotation in linker.link([text])[0]:
            assert text[annotation.start:annotation.end] == annotation.surface
            assert annotation.entity_id in {"Paris", "Rome", "Berlin"}

        def rebuild(config):
            raise AssertionError(f"the cached index was built again into {config.out}")

        monkeypatch.setattr(onegen.index_build, "build_index", rebuild)
        assert len(OneGenLinker(model=str(tmp_path / "model"), kb=str(kb_file)).index) == 3
    finally:
        ray.shutdown()
