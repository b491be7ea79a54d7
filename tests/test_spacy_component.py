"""The spaCy component "onegen_linker": entity spans with kb_id_ and scores from onegen.Linker, batching, NER spans, config."""
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import spacy
from confection import ConfigValidationError
from test_linker import tiny  # noqa: F401  (the tiny random-weight model and three-city KB fixture)

import onegen.spacy_component  # noqa: F401  (registers the factory; installed, the entry point does)
from onegen.linker import Linker
from onegen.spacy_component import make_onegen_linker
from onegen.spans import Candidate, Mention

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["Paris and Rome.", "Berlin is big.", "Marie Curie was born in Warsaw.", ""]


def tiny_options(tiny):
    return {"model": str(tiny / "model"), "kb": str(tiny / "kb.jsonl"), "device": "cpu", "nil_threshold": 0.35}


def test_on_a_blank_pipeline_the_ents_are_what_the_linker_returns(tiny):  # noqa: F811
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("onegen_linker", config=tiny_options(tiny))
    assert pipe._linker is None  # loaded on the first doc
    expected = Linker.from_pretrained(**tiny_options(tiny))(TEXTS)
    found = 0
    for doc, linked in zip((nlp(text) for text in TEXTS), expected):
        assert len(doc.ents) == len(linked.mentions)  # this model's mentions do not overlap
        for ent, m in zip(doc.ents, linked.mentions):
            assert (ent.start_char, ent.end_char, ent.label_) == (m.start, m.end, "ENTITY")  # on token bounds here
            assert ent.kb_id_ == (m.entity_id or "NIL") and ent._.onegen_score == pytest.approx(m.score, abs=1e-5)
            ids, scores = zip(*ent._.onegen_candidates)  # one text per call here, a padded batch there: float noise
            assert ids == tuple(c.entity_id for c in m.candidates)
            assert scores == pytest.approx([c.score for c in m.candidates], abs=1e-5)
            found += 1
    assert found  # a random model marks whatever it marks, but something


class CountingLinker:
    """A linker stand-in: fixed mentions per text, and the batches it was called with."""

    def __init__(self, mentions):
        self.mentions = mentions  # text -> list[Mention]
        self.calls = []  # the texts of each call
        self.given = []  # the spans and mentions setting of each call

    def link(self, texts, spans=None, mentions=None):
        self.calls.append(list(texts))
        self.given.append((spans, mentions))
        return [self.mentions.get(text, []) for text in texts]


def paris(text):
    start = text.index("Paris")
    return Mention(start, start + 5, "Paris", "Paris", 0.9, [Candidate("Paris", 0.9), Candidate("Rome", 0.2)])


def test_nlp_pipe_makes_one_linker_call_per_batch():
    texts = [f"Paris, day {i}." for i in range(5)]
    nlp = spacy.blank("en")
    nlp.add_pipe("onegen_linker").linker = linker = CountingLinker({t: [paris(t)] for t in texts})
    docs = list(nlp.pipe(texts, batch_size=2))
    assert linker.calls == [texts[0:2], texts[2:4], texts[4:]]
    assert [[(e.text, e.kb_id_, e._.onegen_score) for e in d.ents] for d in docs] == [[("Paris", "Paris", 0.9)]] * 5
    assert docs[0].ents[0]._.onegen_candidates == [("Paris", 0.9), ("Rome", 0.2)]


def test_after_an_ner_its_spans_the_model_does_not_cover_are_kept():
    text = "Anna met Paris Hilton in Rome with the UN."
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")  # the NER: Anna PERSON, Paris Hilton PERSON, Rome GPE, UN ORG
    ruler.add_patterns([{"label": "PERSON", "pattern": "Anna"}, {"label": "GPE", "pattern": "Rome"},
                        {"label": "PERSON", "pattern": "Paris Hilton"}, {"label": "ORG", "pattern": "UN"}])
    rome = text.index("Rome")  # the model: "Paris" (inside the NER's "Paris Hilton"), "Rome" (NIL), "ro" (partial)
    nlp.add_pipe("onegen_linker").linker = CountingLinker({text: [
        paris(text), Mention(rome, rome + 4, "Rome", None, 0.1), Mention(rome + 1, rome + 3, "om", "Rome", 0.5)]})
    doc = nlp(text)
    assert nlp.get_pipe("onegen_linker").linker.given == [([[(0, 4), (9, 21), (25, 29), (39, 41)]], "union")]
    assert [(e.text, e.label_, e.kb_id_, e._.onegen_score) for e in doc.ents] == [
        ("Anna", "PERSON", "", None),  # not covered: kept as the NER set it
        ("Paris", "ENTITY", "Paris", 0.9),  # overlaps the NER's "Paris Hilton": the model's span replaces it
        ("Rome", "GPE", "NIL", 0.1),  # the same tokens as an NER span: its label kept; NIL
        ("UN", "ORG", "", None)]  # "om" widened to "Rome" overlaps the earlier "Rome": dropped


def test_entities_set_before_the_pipe_are_linked_and_keep_their_label(tiny):  # noqa: F811
    text = "Marie Curie was born in Warsaw."
    linker = Linker.from_pretrained(**tiny_options(tiny) | {"nil_threshold": -1.0})  # no NIL: every span gets an id
    (own,) = linker.link([text])
    start, end = next(w.span() for w in re.finditer(r"\w+", text) if not any(w.start() < m.end and m.start < w.end() for m in own))
    nlp = spacy.blank("en")
    docs = {}
    for mentions in ("union", "ner", "model"):
        nlp.add_pipe("onegen_linker", name=mentions, config={"mentions": mentions}).linker = linker
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label="PERSON")]  # an NER's entity the model did not mark
        docs[mentions] = nlp.get_pipe(mentions)(doc)
        nlp.remove_pipe(mentions)
    entity = {m: next(e for e in doc.ents if e.start_char == start) for m, doc in docs.items()}
    for linked in ("union", "ner"):
        assert (entity[linked].label_, entity[linked]._.onegen_score is not None) == ("PERSON", True)
        ids, scores = zip(*entity[linked]._.onegen_candidates)
        assert set(ids) == {"Paris", "Rome", "Berlin"} and entity[linked].kb_id_ in ids  # no NIL at -1
    assert (entity["model"].label_, entity["model"].kb_id_, entity["model"]._.onegen_score) == ("PERSON", "", None)
    assert [(e.start_char, e.end_char) for e in docs["ner"].ents] == [(start, end)]
    assert len(docs["union"].ents) == len(docs["model"].ents) == len(own) + 1  # the model's own added as before


def test_an_unknown_mentions_choice_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"onegen_linker: mentions must be one of \['model', 'ner', 'union'\], got 'all'") as err:
        spacy.blank("en").add_pipe("onegen_linker", config={"mentions": "all"})
    assert "\n" not in str(err.value)


def test_a_bad_config_key_is_refused_when_the_pipe_is_added():
    nlp = spacy.blank("en")
    with pytest.raises(ConfigValidationError, match=r"onegen_linker -> nil_treshold\tunexpected argument"):
        nlp.add_pipe("onegen_linker", config={"nil_treshold": 0.5})
    with pytest.raises(ConfigValidationError, match=r"onegen_linker -> top_k\t.*'ten' is not <class 'int'>"):
        nlp.add_pipe("onegen_linker", config={"top_k": "ten"})


def test_the_entry_point_names_the_factory_and_a_pipeline_config_round_trips_without_loading():
    module, attr = entry_points()["spacy_factories"]["onegen_linker"].split(":")
    assert getattr(importlib.import_module(module), attr) is make_onegen_linker
    nlp = spacy.blank("en")
    nlp.add_pipe("onegen_linker", config={"nil_threshold": 0.5, "top_k": 3})
    again = spacy.util.load_model_from_config(nlp.config)  # what spacy.load does with a saved pipeline's config
    pipe = again.get_pipe("onegen_linker")
    assert (pipe.load_options["nil_threshold"], pipe.load_options["top_k"], pipe._linker) == (0.5, 3, None)


def entry_points():
    """pyproject.toml's entry points: group -> name -> "module:attr"."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]


def test_spacy_finds_the_factory_by_its_entry_point_without_an_import(tmp_path):
    """A distribution on the path whose entry_points.txt is pyproject's, as `pip install .` writes it (the
    checkout's own install predates the entry point)."""
    dist_info = tmp_path / "onegen_el_entry_points-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: onegen-el-entry-points\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in names.items())
        for group, names in entry_points().items()))
    script = ("import sys, spacy; pipe = spacy.blank('en').add_pipe('onegen_linker'); "
              "print(type(pipe).__module__, 'onegen.spacy_component' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["onegen.spacy_component", "True"]  # spaCy imported the module through the entry point
