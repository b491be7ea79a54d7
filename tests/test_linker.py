"""onegen.Linker: retrieval + NIL decision over annotated mentions, from_pretrained / save_pretrained, the eval/ entry."""
import json

import numpy as np
import pytest
import ray

from kb.entity import Entity
from kb.index import EntityIndex
from link_fakes import ENTITIES, fake_annotate, vector
from onegen.decide import AliasPrior
from onegen.linker import ExactSearch, Linker, link_texts
from onegen.linker_config import CONFIG_NAME, LinkerConfig
from onegen.spans import Document, Mention


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
    (mentions,) = link_texts(FakeOneGen(), [text], kb_search(), nil_threshold=0.9)
    assert [(m.start, m.end, m.surface, m.entity_id) for m in mentions] == [
        (0, 5, "Paris", "Paris"), (12, 18, "France", "France"), (27, 33, "Narnia", None)]
    assert all(text[m.start:m.end] == m.surface for m in mentions)
    paris, _, narnia = mentions  # the chosen (for NIL the best) cosine, and the top-k best first
    assert paris.score == pytest.approx(1.0) and paris.candidates[0].entity_id == "Paris" and len(paris.candidates) == 8
    assert narnia.score == narnia.candidates[0].score < 0.9
    assert [c.score for c in narnia.candidates] == sorted((c.score for c in narnia.candidates), reverse=True)
    assert link_texts(FakeOneGen(), ["no capitals here", ""], kb_search(), nil_threshold=0.0) == [[], []]


def test_link_texts_alias_prior_reranks_candidates(tmp_path):
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("Paris\tFrance\t10\n", encoding="utf-8")
    prior = AliasPrior.from_tsv(aliases, weight=5.0)
    (mentions,) = link_texts(FakeOneGen(), ["Paris"], kb_search(), nil_threshold=-1.0, alias_prior=prior)
    assert mentions[0].entity_id == "France"


def test_popularity_prior_is_stored_in_the_index_and_needs_no_kb_file(tmp_path, caplog):
    """A cluster node may lack the KB file an index was built from: the prior comes from the index."""
    from onegen.indexes import popularity_prior

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
    from onegen.indexes import popularity_prior

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
    # a cached index, keyed by its KB file's sha256, reads that very file
    assert popularity_prior(tmp_path / "no-kb", 0.3, built_from=kb_file).score("Paris") == pytest.approx(1.0)
    caplog.clear()
    assert popularity_prior(tmp_path / "no-kb", 0.3) is None
    kb_file.write_text(json.dumps({"id": "Rome", "popularity": 50}) + "\n")  # changed since the build
    assert popularity_prior(tmp_path / "index", 0.3) is None
    assert len(caplog.records) == 2 and all("no popularity prior" in r.message for r in caplog.records)
    assert "gone or changed" in caplog.records[1].message


CITIES = (("Paris", 100), ("Rome", 10), ("Berlin", 0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight tiny model folder (no linker_config.json) and a three-city KB."""
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(root / "model")
    (root / "kb.jsonl").write_text("".join(json.dumps({"id": n, "title": n, "description": f"{n} is a city.",
                                                       "popularity": p}) + "\n" for n, p in CITIES), encoding="utf-8")
    return root


TEXTS = ["Paris and Rome.", "Berlin is big.", ""]


def test_from_pretrained_links_a_small_kb_in_memory_without_ray(tiny):
    assert not ray.is_initialized()
    linker = Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=-1.0)
    assert isinstance(linker.search, ExactSearch) and len(linker.search) == 3
    docs = linker(TEXTS)
    assert not ray.is_initialized()
    assert [d.doc_id for d in docs] == ["0", "1", "2"] and docs[2].mentions == []
    mentions = [m for d in docs for m in d.mentions]
    assert mentions  # a random model marks whatever it marks; every span exact, linked (no NIL at -1), scored
    for doc in docs:
        for m in doc.mentions:
            assert doc.text[m.start:m.end] == m.surface and m.entity_id in {"Paris", "Rome", "Berlin"}
            assert len(m.candidates) == 3 and m.score in [c.score for c in m.candidates]
    assert linker([("a", "Paris.")])[0].doc_id == "a" and linker("Paris.")[0].text == "Paris."
    assert linker([Document("b", "Rome.")])[0].doc_id == "b"


def test_save_pretrained_round_trip_links_the_same(tiny, tmp_path):
    linker = Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=0.1, top_k=2)
    linker.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert (saved["nil_threshold"], saved["top_k"], saved["kb"]) == (0.1, 2, str(tiny / "kb.jsonl"))
    again = Linker.from_pretrained(str(tmp_path / "saved"))
    assert again(TEXTS) == linker(TEXTS)


def test_the_alias_prior_counts_the_kbs_names_and_its_redirects_and_saves_where_they_came_from(tiny, tmp_path):
    redirects = tmp_path / "redirects.tsv"
    redirects.write_text("City_of_Light\tParis\nRoma\tRome\n", encoding="utf-8")
    linker = Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), redirects=str(redirects), alias_weight=0.2)
    prior = linker.alias_prior  # no alias table given: the names alone
    assert prior.table is None and prior.weight == 0.2
    assert prior.probability("City of Light", "Paris") == prior.probability("rome", "Rome") == 1.0
    assert prior.probability("Roma", "Paris") == 0.0
    linker.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())["redirects"] == str(redirects)
    assert Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), alias_weight=0.0).alias_prior is None
    with pytest.raises(FileNotFoundError, match="redirects table not found"):
        Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), redirects=str(tmp_path / "missing.tsv"))


def test_the_alias_prior_counts_the_kbs_aliases_from_its_file_or_its_built_index(tiny, tmp_path):
    from onegen.model import OneGen

    entities = [Entity("Paris", "Paris", "Capital of France.", aliases=["Ville Lumiere"]),
                Entity("Rome", "Rome", "Capital of Italy.", aliases=["Eternal City", "Ville Lumiere"])]
    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text("".join(json.dumps(vars(e)) + "\n" for e in entities), encoding="utf-8")
    onegen = OneGen.from_pretrained(str(tiny / "model"))
    EntityIndex.build(tmp_path / "index", [e.id for e in entities], onegen.embed_entities(entities),
                      fingerprint=onegen.fingerprint(), aliases=[e.aliases for e in entities])
    for source in ({"kb": str(kb_file)}, {"index": str(tmp_path / "index")}):
        prior = Linker.from_pretrained(str(tiny / "model"), alias_weight=0.2, **source).alias_prior
        assert prior.probability("eternal city", "Rome") == 1.0 and prior.probability("Eternal City", "Paris") == 0.0
        assert prior.probability("Ville Lumiere", "Paris") == prior.probability("Ville Lumiere", "Rome") == 0.5


@pytest.fixture(scope="module")
def tiny_linker(tiny):  # ranked by the cosine alone: no alias prior
    return Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=-1.0, alias_weight=0.0)


def test_the_entities_a_mention_names_join_its_candidates_with_their_cosines_when_retrieval_missed_them(tiny):
    spans = [[(0, 5), (10, 14)]]  # "Paris", "Rome"

    def retrieved(**options):
        linker = Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=-1.0, **options)
        return linker.retrieve(TEXTS[:1], spans, mentions="given")[0], linker

    every, _ = retrieved(top_k=3)  # the whole KB: each city's cosine with each mention
    cosine = [{c.entity_id: c.score for c in m.candidates} for m in every]
    top1, _ = retrieved(top_k=1, name_candidates=0)
    named, linker = retrieved(top_k=1, name_candidates=2, alias_weight=5.0)
    for m, plain, scores, city in zip(named, top1, cosine, ["Paris", "Rome"]):
        assert m.candidates[0] == plain.candidates[0] or m.candidates[0].entity_id == city  # best first
        assert {c.entity_id for c in m.candidates} == {plain.candidates[0].entity_id, city}
        assert {c.entity_id: c.score for c in m.candidates}[city] == pytest.approx(scores[city], abs=1e-5)
        assert [c.score for c in m.candidates] == sorted((c.score for c in m.candidates), reverse=True)
    # the alias prior then links each to the city it names, wherever retrieval ranked it
    assert [m.entity_id for m in linker.link(TEXTS[:1], spans, mentions="given")[0]] == ["Paris", "Rome"]
    assert all(len(m.candidates) == 1 for m in retrieved(top_k=1, name_candidates=2, alias_weight=0.0)[0])  # no prior


SPANS = [[(10, 14), (0, 5), (6, 9)], [(0, 6)], []]  # Rome, Paris, "and" (given out of order); Berlin; none


def test_given_spans_are_linked_with_teacher_forced_vectors(tiny_linker):
    from onegen.teacher_forcing import embed_spans

    given = tiny_linker.link(TEXTS, spans=SPANS, mentions="given")
    assert [[(m.start, m.end, m.surface) for m in ms] for ms in given] == [
        [(0, 5, "Paris"), (6, 9, "and"), (10, 14, "Rome")], [(0, 6, "Berlin")], []]  # text order
    for ms, vectors in zip(given, embed_spans(tiny_linker.onegen, TEXTS, [sorted(s) for s in SPANS])):
        for m, v in zip(ms, vectors):
            scores, ids = tiny_linker.search.search(v[None], 10)
            assert [c.entity_id for c in m.candidates] == list(ids[0][:3])
            assert [c.score for c in m.candidates] == pytest.approx(scores[0][:3], abs=1e-5)
            assert m.entity_id == ids[0][0]  # no NIL at -1
    assert {m.source for ms in given for m in ms} == {"given"}
    by_default = Linker(tiny_linker.onegen, tiny_linker.search, tiny_linker.config, mentions="given")
    assert [d.mentions for d in by_default(TEXTS, spans=SPANS)] == given


def test_union_adds_the_given_spans_that_overlap_none_of_the_model_s_mentions(tiny_linker):
    own = tiny_linker.link(TEXTS)
    union = tiny_linker.link(TEXTS, spans=SPANS, mentions="union")
    added = 0
    for ms_own, ms_union, spans in zip(own, union, SPANS):
        kept = [s for s in spans if not any(s[0] < m.end and m.start < s[1] for m in ms_own)]
        assert [(m.start, m.end) for m in ms_union] == sorted([(m.start, m.end) for m in ms_own] + kept)
        linked = [m for m in ms_union if (m.start, m.end) not in kept]  # the model's own, linked as before
        assert [(m.start, m.end, m.entity_id) for m in linked] == [(m.start, m.end, m.entity_id) for m in ms_own]
        assert [m.score for m in linked] == pytest.approx([m.score for m in ms_own], abs=1e-5)  # float noise
        assert [m.source for m in ms_union] == ["given" if (m.start, m.end) in kept else "model" for m in ms_union]
        assert {m.source for m in ms_own} <= {"model"}
        added += len(kept)
    assert added  # some given span was not the model's


def test_windows_cut_beforehand_embed_as_cut_here_with_no_sentence_splitter(tiny_linker, monkeypatch):
    """A machine without spaCy (the lent GPU's) passes each text's windows; union links as it does here."""
    import onegen.inference
    import onegen.teacher_forcing
    from onegen.chunking import sentence_windows
    from onegen.inference import default_window_tokens

    budget = default_window_tokens(tiny_linker.onegen)
    windows = [sentence_windows(t, budget, lambda s: len(tiny_linker.onegen.tokenizer(s, add_special_tokens=False).input_ids))
               for t in TEXTS]
    here = tiny_linker.embed(TEXTS, SPANS, mentions="union")

    def no_splitter(*args, **kwargs):
        raise AssertionError("sentences split although the windows were given")

    for module in (onegen.inference, onegen.teacher_forcing):
        monkeypatch.setattr(module, "sentence_windows", no_splitter)
    given = tiny_linker.embed(TEXTS, SPANS, mentions="union", windows=windows)
    assert [[(m.start, m.end, m.source) for m in a.mentions] for a in given] == \
        [[(m.start, m.end, m.source) for m in a.mentions] for a in here]
    assert any(m.source == "given" for a in given for m in a.mentions)
    for a, b in zip(given, here):
        for m, n in zip(a.mentions, b.mentions):
            np.testing.assert_allclose(m.vector, n.vector, atol=1e-5)
    with pytest.raises(ValueError, match="one list per text"):
        tiny_linker.embed(TEXTS, SPANS, mentions="given", windows=windows[:1])


def test_bad_spans_and_mentions_are_clear_errors(tiny_linker):
    with pytest.raises(ValueError, match=r"text 1: span \(0, 99\) is not a \(start, end\) with 0 <= start < end <= 14"):
        tiny_linker.link(TEXTS, spans=[[], [(0, 99)], []], mentions="given")
    with pytest.raises(ValueError, match=r"text 0: span \(3, 3\)"):
        tiny_linker.link(TEXTS, spans=[[(3, 3)], [], []], mentions="union")
    with pytest.raises(ValueError, match=r"text 0: spans \(0, 5\) and \(4, 9\) overlap"):
        tiny_linker.link(TEXTS, spans=[[(0, 5), (4, 9)], [], []], mentions="given")
    with pytest.raises(ValueError, match="one list per text"):
        tiny_linker.link(TEXTS, spans=[[]], mentions="given")
    with pytest.raises(ValueError, match=r"mentions must be one of \('model', 'ner', 'given', 'union'\), got 'spacy'"):
        tiny_linker.link(TEXTS, mentions="spacy")
    with pytest.raises(ValueError, match="not 'model'"):
        tiny_linker.link(TEXTS, spans=SPANS)
    with pytest.raises(ValueError, match="not 'ner'"):  # "ner" is the linker's own NER's spans
        tiny_linker.link(TEXTS, spans=SPANS, mentions="ner")
    with pytest.raises(ValueError, match="give spans"):
        tiny_linker.link(TEXTS, mentions="given")


def test_linker_config_json_is_used_and_keyword_overrides_win(tiny, tmp_path, caplog):
    import shutil

    caplog.set_level("INFO")
    generic = Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"))
    assert generic.config == LinkerConfig(kb=str(tiny / "kb.jsonl"))  # no linker_config.json: generic, logged
    assert f"has no {CONFIG_NAME}: using the generic linker settings" in caplog.text
    shutil.copytree(tiny / "model", tmp_path / "model")
    LinkerConfig(nil_threshold=0.99, popularity_weight=0.0, mention_bias=2.0, top_k=1).save(tmp_path / "model")
    tuned = Linker.from_pretrained(str(tmp_path / "model"), kb=str(tiny / "kb.jsonl"), top_k=2)
    assert (tuned.config.nil_threshold, tuned.config.mention_bias, tuned.config.top_k, tuned.popularity) == (0.99, 2.0, 2, None)
    assert all(m.entity_id is None and len(m.candidates) == 2 for d in tuned(TEXTS) for m in d.mentions)  # all under 0.99

    def recorded(linker):  # the options the linker decodes with
        calls = []
        linker.onegen = lambda texts, **options: calls.append(options) or []
        linker.retrieve(["Paris."])
        return calls

    assert recorded(tuned) == [{"batch_size": 8, "mention_bias": 2.0}]
    assert recorded(generic) == [{"batch_size": 8}]  # mention bias 0: the model's own choice


def test_an_unknown_setting_is_a_one_line_error(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"nil_threshold": 0.5, "nil_treshold": 0.6}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) nil_treshold; expected some of: .*nil_threshold") as err:
        LinkerConfig.load(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown linker setting\(s\) threshold"):
        LinkerConfig().replace(threshold=0.5)


def test_the_linker_weighs_the_alias_prior_for_nil_with_its_alias_nil_weight():
    from onegen.spans import Candidate
    from onegen.titles import Titles

    names = Titles.from_ids(["John_C._Kornblum"], [("John_Kornblum", "John_C._Kornblum")])
    found = [Mention(0, 13, "John Kornblum", candidates=[Candidate("John_C._Kornblum", 0.6)], source="model")]
    settings = LinkerConfig(nil_threshold=0.75, alias_weight=0.1)
    assert Linker(None, None, settings, titles=names).decide(found)[0].entity_id is None  # 0.6 + 0.1
    linker = Linker(None, None, settings.replace(alias_nil_weight=0.3), titles=names)  # 0.6 + 0.3
    assert linker.decide(found)[0].entity_id == "John_C._Kornblum"


def test_the_default_adapter_ships_its_tuned_settings():
    from onegen.linker_config import model_config

    assert model_config(None) == LinkerConfig(nil_threshold=0.8, given_nil_threshold=0.9, short_forms=True, alias_weight=0.1,
                                              alias_nil_weight=0.2, popularity_weight=0.1, name_weight=0.0, mentions="union", mention_bias=1.0,
                                              top_k=10, title_spans=True, split_spans=True)
    assert LinkerConfig().mention_bias == 0.0  # a model nobody tuned decodes with its own choice


def test_from_pretrained_loads_a_built_index(tiny):
    from onegen.model import OneGen

    onegen = OneGen.from_pretrained(str(tiny / "model"))
    entities = [Entity("Paris", "Paris", "Capital of France."), Entity("Rome", "Rome", "Capital of Italy.")]
    EntityIndex.build(tiny / "index", [e.id for e in entities], onegen.embed_entities(entities),
                      fingerprint=onegen.fingerprint())
    linker = Linker.from_pretrained(str(tiny / "model"), index=str(tiny / "index"), nil_threshold=-1.0)
    assert isinstance(linker.search, EntityIndex) and not ray.is_initialized()
    for doc in linker(TEXTS):
        assert all(doc.text[m.start:m.end] == m.surface and m.entity_id in {"Paris", "Rome"} for m in doc.mentions)


def test_a_big_kb_without_a_built_index_says_how_to_build_one(tiny, monkeypatch):
    import onegen.linker

    monkeypatch.setenv("ONEGEN_CACHE", str(tiny / "cache"))
    monkeypatch.setattr(onegen.linker, "SMALL_KB_ENTITIES", 2)
    with pytest.raises(FileNotFoundError, match="more than 2 entities and no built index: build one with "
                                                "`python jobs/build_index.py --kb"):
        Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"))
    assert not ray.is_initialized()


@pytest.mark.ray
def test_the_eval_linker_builds_the_index_of_a_big_kb_once_starting_ray_itself(tiny, tmp_path, monkeypatch):
    """`eval/run_gerbil.py run --linker onegen --kb KB` with a KB over SMALL_KB_ENTITIES, the model's identity cached by
    an earlier run: no Ray is running when the index is built on first use; a second linker finds it cached."""
    import onegen.index_build
    import onegen.linker
    from eval.linkers import get_linker
    from tiny import identify_in_process

    monkeypatch.setenv("ONEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onegen.linker, "SMALL_KB_ENTITIES", 2)
    model, kb_file = str(tiny / "model"), str(tiny / "kb.jsonl")
    with monkeypatch.context() as patch:  # the identity cached by the model's files, as after an earlier run (whose
        patch.setattr(onegen.index_build, "_identify_in_ray", identify_in_process)  # Ray task found it; here, in-process)
        onegen.index_build.model_identity(model)
    assert not ray.is_initialized()
    try:
        linker = get_linker("onegen", model=model, kb=kb_file, nil_threshold=-1.0, popularity_weight=0.3)
        assert isinstance(linker.search, EntityIndex) and len(linker.search) == 3
        assert linker.popularity.score("Paris") == pytest.approx(1.0) and linker.popularity.score("Berlin") == 0.0
        text = "Paris, Rome and Berlin."
        for mention in linker.link([text])[0]:
            assert text[mention.start:mention.end] == mention.surface
            assert mention.entity_id in {"Paris", "Rome", "Berlin"}

        def rebuild(config):
            raise AssertionError(f"the cached index was built again into {config.out}")

        monkeypatch.setattr(onegen.index_build, "build_index", rebuild)
        assert len(get_linker("onegen", model=model, kb=kb_file).search) == 3
    finally:
        ray.shutdown()


@pytest.mark.parametrize("mentions", ["ner", "union"])
def test_the_linker_links_its_ners_spans_when_asked_or_when_its_config_says(tiny, tmp_path, mentions):
    """`mentions="ner"|"union"` without spans: spaCy's name spans (the baseline's NER) are linked with the
    model's teacher-forced vectors; "union" keeps the model's own mentions too. The same from the model's
    linker_config.json, from a keyword and from `onegen-gerbil run --linker onegen --mentions`."""
    import shutil

    from eval.linkers import get_linker
    from onegen.ner import NerSpans

    text = "Angela Merkel met Emmanuel Macron in Paris."
    ner = NerSpans(tidy=True)([text])[0]
    assert [text[s:e] for s, e in ner] == ["Angela Merkel", "Emmanuel Macron", "Paris"]
    shutil.copytree(tiny / "model", tmp_path / "model")
    LinkerConfig(nil_threshold=-1.0, mentions=mentions).save(tmp_path / "model")
    configured = Linker.from_pretrained(str(tmp_path / "model"), kb=str(tiny / "kb.jsonl"))
    asked = get_linker("onegen", model=str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=-1.0,
                       mentions=mentions)
    (linked,) = configured.link([text])
    spans = [(m.start, m.end) for m in linked]
    own = [(m.start, m.end) for m in configured.link([text], mentions="model")[0]]  # the model's own mentions
    assert [m.source for m in linked] == ["model" if mentions == "union" and (m.start, m.end) in own else "ner"
                                          for m in linked]
    if mentions == "ner":
        assert spans == ner
    else:
        assert set(own) <= set(spans) and set(spans) - set(own) == {s for s in ner if not any(
            s[0] < e and b < s[1] for b, e in own)}
    assert all(m.entity_id in {"Paris", "Rome", "Berlin"} and m.candidates for m in linked)
    assert asked.link([text]) == [linked]
    strict = get_linker("onegen", model=str(tiny / "model"), kb=str(tiny / "kb.jsonl"), nil_threshold=-1.0,
                        given_nil_threshold=2.0, mentions=mentions)  # what --given-nil-threshold 2 gives
    assert [(m.start, m.end, m.entity_id) for m in strict.link([text])[0]] == [
        (m.start, m.end, m.entity_id if m.source == "model" else None) for m in linked]
    assert Linker.from_pretrained(str(tmp_path / "model"), kb=str(tiny / "kb.jsonl"), mentions="model").link([text]) == [
        configured.link([text], mentions="model")[0]]  # a keyword wins over the config
    (retrieved,) = asked.retrieve([text])  # what --candidates writes, who marked each span included
    assert [(m.start, m.end) for m in retrieved] == spans and all(m.entity_id is None for m in retrieved)
    read_back = [Mention.from_dict(m.to_dict()) for m in retrieved]
    assert [(m.start, m.end, m.source, [c.entity_id for c in m.candidates]) for m in read_back] == [
        (m.start, m.end, m.source, [c.entity_id for c in m.candidates]) for m in retrieved]


def test_a_missing_ner_model_is_refused_before_the_model_loads(tiny, monkeypatch):
    import onegen.model

    monkeypatch.setattr(onegen.model.OneGen, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="spaCy model 'no_such_model' is not installed"):
        Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), mentions="union", ner_model="no_such_model")
    with pytest.raises(ValueError, match="mentions='given' links the spans a call passes"):
        Linker.from_pretrained(str(tiny / "model"), kb=str(tiny / "kb.jsonl"), mentions="given")


def test_the_eval_linker_refuses_an_unknown_mention_source(tiny):
    from eval.linkers import get_linker

    with pytest.raises(ValueError, match=r"mentions must be one of \('model', 'ner', 'given', 'union'\), got 'spacy'"):
        get_linker("onegen", model=str(tiny / "model"), kb=str(tiny / "kb.jsonl"), mentions="spacy")
