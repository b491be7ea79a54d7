"""The spaCy pipeline component "onegen_linker": `onegen.Linker` as a pipe that sets linked entity spans.

    import spacy, onegen.spacy_component              # the import registers it (so does the entry point)
    nlp = spacy.blank("en")
    nlp.add_pipe("onegen_linker", config={"kb": "kb.jsonl", "nil_threshold": 0.8})
    [(e.text, e.kb_id_, e._.onegen_score) for e in nlp("Marie Curie was born in Warsaw.").ents]

Config keys are `Linker.from_pretrained`'s arguments (model, index, kb, device, batch_size) and its
LinkerConfig overrides (nil_threshold, given_nil_threshold, short_forms, alias_weight, alias_nil_weight, popularity_weight,
name_weight, mention_bias, top_k, name_candidates, aliases, redirects, title_spans, split_spans); None takes the model's linker_config.json. An unknown key is refused by
spaCy's config validation when the pipe is added. The Linker (the model and its entity index) is loaded
lazily, on the first doc, so adding the pipe or loading a pipeline config is cheap.

`mentions` says what is linked when the doc already has entities (e.g. from an NER before this pipe):
"union" (default) the model's own mentions plus the existing entities that overlap none of them,
"ner" only the existing entities, "model" only the model's own (existing entities are left as they
are). An existing entity is linked with the model's own retrieval (`onegen.Linker` with given spans:
its [LK] vector by teacher forcing) and keeps its label.

Each linked mention becomes an entity span: character offsets widened to whole tokens
(`doc.char_span(..., alignment_mode="expand")`), label `label` ("ENTITY") or the label of an existing
entity with exactly the same tokens, `kb_id_` the entity id or "NIL" when the linker left it NIL,
`span._.onegen_score` the cosine of the chosen (for NIL the best) candidate and
`span._.onegen_candidates` the top-k as (entity_id, score) pairs, best first.
Overlaps: a model span overlapping an earlier one is dropped (text order); an existing entity
overlapping a model span is replaced by it; existing entities left unlinked (mentions="model") are
kept as they were (`kb_id_` untouched, `_.onegen_score` None).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch

from onegen.ner import MENTION_SOURCES
from onegen.spans import Mention

NIL = "NIL"  # kb_id_ of a mention the linker left NIL ("" stays: an entity this component did not link)
DEFAULT_LABEL = "ENTITY"  # label of a model mention no existing entity spans exactly

Span.set_extension("onegen_score", default=None, force=True)  # float: cosine of the chosen (NIL: best) candidate
Span.set_extension("onegen_candidates", default=None, force=True)  # list of (entity_id, score), best first


class LinkerPipe:
    """The "onegen_linker" pipe: links each doc's text with an `onegen.Linker` and sets `doc.ents`."""

    def __init__(self, name: str, load_options: dict, *, label: str = DEFAULT_LABEL, batch_size: int = 8,
                 mentions: str = "union"):
        if mentions not in MENTION_SOURCES:
            raise ValueError(f"onegen_linker: mentions must be one of {sorted(MENTION_SOURCES)}, got {mentions!r}")
        self.name = name  # the pipe's name in the pipeline
        self.load_options = load_options  # Linker.from_pretrained keyword arguments (None values: the model's)
        self.label = label  # label of a new entity span
        self.batch_size = batch_size  # docs per linker call in `pipe` (nlp.pipe's batch_size wins)
        self.mentions = mentions  # "union", "ner" or "model": what is linked (module docstring)
        self._linker = None  # onegen.Linker, loaded on first use

    @property
    def linker(self):
        """The `onegen.Linker`, loaded on first use."""
        if self._linker is None:
            from onegen.linker import Linker

            self._linker = Linker.from_pretrained(**self.load_options)
        return self._linker

    @linker.setter
    def linker(self, linker) -> None:
        self._linker = linker

    def __call__(self, doc: Doc) -> Doc:
        """Link one doc (one linker call)."""
        (mentions,) = self.link([doc])
        return set_mentions(doc, mentions, self.label)

    def pipe(self, stream: Iterable[Doc], *, batch_size: int | None = None) -> Iterator[Doc]:
        """Link docs in batches of `batch_size`: one linker call per batch."""
        for batch in minibatch(stream, size=batch_size or self.batch_size):
            for doc, mentions in zip(batch, self.link(batch)):
                yield set_mentions(doc, mentions, self.label)

    def link(self, docs: list[Doc]) -> list[list[Mention]]:
        """The linked mentions of each doc (one linker call): the existing entities' char spans are passed
        as given spans unless `mentions` is "model"."""
        texts = [doc.text for doc in docs]
        if self.mentions == "model":
            return self.linker.link(texts, mentions="model")
        spans = [[(e.start_char, e.end_char) for e in doc.ents] for doc in docs]
        return self.linker.link(texts, spans=spans, mentions=MENTION_SOURCES[self.mentions])


def mention_spans(doc: Doc, mentions: list[Mention], label: str) -> list[Span]:
    """The mentions as token spans of `doc`, in text order; one overlapping an earlier one (or widening to
    nothing but whitespace) is dropped."""
    spans: list[Span] = []
    for m in sorted(mentions, key=lambda m: (m.start, m.end)):
        span = doc.char_span(m.start, m.end, label=label, kb_id=m.entity_id or NIL, alignment_mode="expand")
        if span is None or (spans and span.start < spans[-1].end):
            continue
        span._.onegen_score = m.score
        span._.onegen_candidates = [(c.entity_id, c.score) for c in m.candidates]
        spans.append(span)
    return spans


def set_mentions(doc: Doc, mentions: list[Mention], label: str) -> Doc:
    """Set `doc.ents` to the mentions' spans plus the existing entities none of them overlaps; a mention
    spanning exactly an existing entity takes its label."""
    existing = {(e.start, e.end): e.label_ for e in doc.ents}
    spans = mention_spans(doc, mentions, label)
    for span in spans:
        span.label_ = existing.get((span.start, span.end), label)
    taken = {i for span in spans for i in range(span.start, span.end)}
    kept = [e for e in doc.ents if taken.isdisjoint(range(e.start, e.end))]
    doc.ents = sorted(spans + kept, key=lambda s: s.start)
    return doc


@Language.factory("onegen_linker", default_config={
    "model": None, "index": None, "kb": None, "device": None, "batch_size": 8, "label": DEFAULT_LABEL,
    "nil_threshold": None, "given_nil_threshold": None, "short_forms": None, "alias_weight": None,
    "alias_nil_weight": None, "popularity_weight": None, "name_weight": None, "mention_bias": None, "top_k": None, "name_candidates": None, "aliases": None,
    "redirects": None, "title_spans": None, "split_spans": None, "mentions": "union"})
def make_onegen_linker(nlp: Language, name: str, model: str | None, index: str | None, kb: str | None,
                       device: str | None, batch_size: int, label: str, nil_threshold: float | None,
                       given_nil_threshold: float | None, short_forms: bool | None, alias_weight: float | None,
                       alias_nil_weight: float | None, popularity_weight: float | None, name_weight: float | None, mention_bias: float | None,
                       top_k: int | None, name_candidates: int | None, aliases: str | None, redirects: str | None, title_spans: bool | None,
                       split_spans: bool | None, mentions: str) -> LinkerPipe:
    """The "onegen_linker" factory (see the module docstring); the Linker loads on the first doc."""
    load_options = {"model": model, "index": index, "kb": kb, "device": device, "batch_size": batch_size,
                    "nil_threshold": nil_threshold, "given_nil_threshold": given_nil_threshold,
                    "short_forms": short_forms, "alias_weight": alias_weight, "alias_nil_weight": alias_nil_weight,
                    "popularity_weight": popularity_weight, "name_weight": name_weight,
                    "mention_bias": mention_bias, "top_k": top_k, "name_candidates": name_candidates, "title_spans": title_spans,
                    "split_spans": split_spans, "aliases": aliases, "redirects": redirects}
    return LinkerPipe(name, load_options, label=label, batch_size=batch_size, mentions=mentions)
