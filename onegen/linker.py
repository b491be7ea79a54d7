"""`onegen.Linker`: find, embed and link the entity mentions of texts, in this process (no Ray).

    from onegen import Linker
    linker = Linker.from_pretrained()              # the trained default over the bundled sample KB
    docs = linker(["Marie Curie was born in Warsaw."])   # -> [Document(doc_id="0", text, mentions)]

One model pass finds and embeds the mentions, the entity index is searched, and each mention is linked or
left NIL by `onegen.decide` (DESIGN section 3). With `name_candidates`, the entities a mention's surface refers to
by the alias prior (its table's links and the KB's names) that the search missed are scored against the mention's
vector and join its candidates (`add_name_candidates`). A built index folder is loaded as it is; a KB JSONL uses
the index cached for it by the link job when there is one, else a small KB (up to SMALL_KB_ENTITIES) is
encoded here and searched in memory (`ExactSearch`); a bigger one needs an index built first
(`python jobs/build_index.py`).
Mentions (`mentions`, by default the model's linker_config.json): the model's own ("model"), the name
spans of the linker's spaCy NER ("ner", onegen.ner) or both ("union": the NER's spans that overlap none of
the model's); a caller with spans of its own links exactly those ("given") or adds them to the model's
("union" with `spans`); with `title_spans`, a union span that is a KB title replaces the model's mentions
inside it (onegen.titles), and with `split_spans`, union spans inside a model mention that is no KB title
replace it, and a KB title two neighbouring mentions spell ("Long Beach, California") replaces them. A span the model did
not mark gets the model's own [LK] vector by teacher forcing (onegen.teacher_forcing): the window is written
as the model would write it with the span marked, in one forward pass, no decoding.
The functions below are the shared core: training scores a model through `link_texts`, and the link
job's replicas run `Linker.embed`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from kb.lookup import VectorsById
from onegen.decide import AliasPrior, PopularityPrior, choose, short_form_links
from onegen.indexes import SAMPLE_KB, cached_index_dir, ensure_index, popularity_prior, require_kb
from onegen.linker_config import LinkerConfig, model_config
from onegen.spans import Annotated, Candidate, Document, EmbeddedMention, Mention
from onegen.titles import Titles, joined_titles, kb_names

LOG = logging.getLogger(__name__)

SMALL_KB_ENTITIES = 50_000  # a KB up to this size is encoded in process and searched in memory
MENTIONS = ("model", "ner", "given", "union")  # which mentions a Linker links (module docstring)


class ExactSearch:
    """Exact cosine top-k over in-memory L2-normalised vectors; the retriever for small KBs."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray):
        if len(ids) != len(vectors):
            raise ValueError(f"number of ids and vectors must be the same, got {len(ids)} and {len(vectors)}")
        self.ids = np.asarray(ids, dtype=object)  # (N,)
        self.vectors = np.asarray(vectors, dtype=np.float32)  # (N, D)
        self._by_id: VectorsById | None = None  # for `score`, built on first use

    def __len__(self) -> int:
        return len(self.ids)

    def score(self, queries: np.ndarray, wanted: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Per query (Q, D), {entity id: cosine} of each of its `wanted` ids in the KB (kb.lookup)."""
        if self._by_id is None:
            self._by_id = VectorsById(self.ids, self.vectors)
        return self._by_id.score(queries, wanted)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """D (Q, k) cosine scores, I (Q, k) entity ids, best first (None and -inf past the KB size)."""
        k_found = min(k, len(self.ids))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)  # (Q, k)
        ids = np.full((len(queries), k), None, dtype=object)  # (Q, k)
        if k_found:
            sims = queries.astype(np.float32) @ self.vectors.T  # (Q, N)
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k_found]  # (Q, k_found)
            scores[:, :k_found] = np.take_along_axis(sims, top, axis=1)
            ids[:, :k_found] = self.ids[top]
        return scores, ids


def with_candidates(spans: Sequence, scores: np.ndarray, ids: np.ndarray) -> list[Mention]:
    """Undecided mentions (entity_id None) from spans (anything with start, end, surface) and their search
    results: scores (M, k), ids (M, k), best first; index padding (empty ids) dropped."""
    return [Mention(s.start, s.end, s.surface, candidates=[Candidate(e, float(c)) for e, c in zip(row_ids, row_scores) if e],
                    source=getattr(s, "source", None))
            for s, row_ids, row_scores in zip(spans, ids, scores)]


def add_name_candidates(mentions: list[Mention], queries: np.ndarray, retriever, prior: AliasPrior | None,
                        limit: int) -> list[Mention]:
    """The retrieved `mentions` (their vectors: `queries` (M, D)), each with the entities its surface refers to
    (`prior.entities`: up to `limit`, likeliest first) that retrieval missed, scored by `retriever.score`, among its
    candidates (best first). Retrieval ranks by the vectors alone; an entity named by the mention can rank lower
    than top-k yet win once the priors count."""
    if not limit or prior is None or not mentions:
        return mentions
    wanted = []
    for m in mentions:
        found = {c.entity_id for c in m.candidates}
        wanted.append([e for e in prior.entities(m.surface, limit) if e not in found])
    if not any(wanted):
        return mentions
    scores = retriever.score(queries, wanted)
    return [m if not named else dataclasses.replace(m, candidates=sorted(
                m.candidates + [Candidate(e, s) for e, s in named.items()], key=lambda c: -c.score))
            for m, named in zip(mentions, scores)]


def search_mentions(mentions: Sequence[EmbeddedMention], retriever, top_k: int) -> list[Mention]:
    """The top-k entities of each embedded mention through `retriever.search` (undecided Mentions)."""
    if not mentions:
        return []
    queries = np.stack([m.vector for m in mentions])  # (M, D), L2-normalised
    scores, ids = retriever.search(queries, top_k)  # (M, k), (M, k)
    return with_candidates(mentions, scores, ids)


def retrieve_texts(onegen, texts: list[str], retriever, *, top_k: int = 10, batch_size: int = 8) -> list[list[Mention]]:
    """Annotate `texts` with `onegen` and search the top-k entities of each mention through `retriever.search`."""
    return [search_mentions(annotated.mentions, retriever, top_k) for annotated in onegen(texts, batch_size=batch_size)]


def decide_mentions(mentions: list[Mention], *, nil_threshold: float, alias_prior: AliasPrior | None = None,
                    popularity: PopularityPrior | None = None, given_nil_threshold: float | None = None,
                    short_forms: bool = False, name_weight: float = 0.0) -> list[Mention]:
    """One text's retrieved mentions, each with its entity chosen by `decide` (None: NIL) and the cosine of
    the chosen (for NIL, the best) candidate as its score; candidates kept. A span the model was given
    (source "ner" or "given") is NIL under `given_nil_threshold` (None: `nil_threshold`); a surface that is a
    candidate's title adds `name_weight` to its evidence (`onegen.decide.decide`); with `short_forms`, NIL
    short forms of linked mentions are linked (`onegen.decide.short_form_links`). The same as `settle_mentions`
    of `choose_mentions`."""
    return settle_mentions(mentions, choose_mentions(mentions, alias_prior=alias_prior, popularity=popularity,
                                                     name_weight=name_weight),
                           nil_threshold=nil_threshold, given_nil_threshold=given_nil_threshold, short_forms=short_forms)


def choose_mentions(mentions: list[Mention], *, alias_prior: AliasPrior | None = None,
                    popularity: PopularityPrior | None = None, name_weight: float = 0.0) -> list[tuple]:
    """Each mention's best-ranked candidate with its cosine and its evidence against NIL (`onegen.decide.choose`):
    what the priors decide, before any NIL threshold."""
    return [choose([c.entity_id for c in m.candidates], [c.score for c in m.candidates], m.surface,
                   alias_prior=alias_prior, popularity=popularity, name_weight=name_weight) for m in mentions]


def settle_mentions(mentions: list[Mention], choices: list[tuple], *, nil_threshold: float,
                    given_nil_threshold: float | None = None, short_forms: bool = False) -> list[Mention]:
    """`decide_mentions` from the mentions' choices (`choose_mentions`): each linked to its choice where the evidence
    reaches the threshold of its source, else NIL; then the short forms."""
    entity_ids = []
    for m, (best_id, _, evidence) in zip(mentions, choices, strict=True):
        given = given_nil_threshold is not None and m.source in ("ner", "given")
        entity_ids.append(best_id if evidence >= (given_nil_threshold if given else nil_threshold) else None)
    own = list(entity_ids)
    if short_forms:
        entity_ids = short_form_links([m.surface for m in mentions], entity_ids,
                                      [[c.entity_id for c in m.candidates] for m in mentions])
    out = []
    for m, entity_id, mine, (_, cosine, _) in zip(mentions, entity_ids, own, choices):
        if entity_id != mine:  # linked as a short form: the score is that candidate's cosine
            cosine = next(c.score for c in m.candidates if c.entity_id == entity_id)
        out.append(Mention(m.start, m.end, m.surface, entity_id, cosine if np.isfinite(cosine) else None, m.candidates,
                           m.source))
    return out


def link_texts(onegen, texts: list[str], retriever, *, top_k: int = 10, nil_threshold: float,
               alias_prior: AliasPrior | None = None, popularity: PopularityPrior | None = None,
               batch_size: int = 8) -> list[list[Mention]]:
    """Annotate `texts` with `onegen` and link each mention through `retriever.search` and `decide`."""
    return [decide_mentions(mentions, nil_threshold=nil_threshold, alias_prior=alias_prior, popularity=popularity)
            for mentions in retrieve_texts(onegen, texts, retriever, top_k=top_k, batch_size=batch_size)]


class Linker:
    """A OneGen model over an entity index: `linker(texts)` -> documents with linked mentions.

    Build it with `Linker.from_pretrained`; `save_pretrained(dir)` writes what loads it back.
    `mentions` (see the module docstring; None: `config.mentions`) is the default of `link`'s.
    """

    def __init__(self, onegen, search, config: LinkerConfig, *, popularity: PopularityPrior | None = None,
                 batch_size: int = 8, model: str | None = None, mentions: str | None = None,
                 titles: Titles | None = None):
        self.onegen = onegen  # onegen.model.OneGen
        self.search = search  # ExactSearch or kb.index.EntityIndex: search(vectors (Q, D), k) -> (D, I); None: embed only
        self.config = config  # decision settings (config.index / .kb / .aliases: what is searched)
        # p(entity | surface) from config.aliases and the KB's names (`titles`), weighted by config.alias_weight
        self.alias_prior = AliasPrior.load(config.aliases, titles, weight=config.alias_weight,
                                           nil_weight=config.alias_nil_weight)
        self.popularity = popularity  # KB-popularity prior, weighted by config.popularity_weight (None: off)
        self.batch_size = batch_size  # texts per model batch
        self.model = model  # the model reference it was loaded from (None: the trained default)
        self.mentions = _check_mentions(mentions or config.mentions)  # which mentions `link` links unless told
        self._ner = None  # the NER of mentions "ner" and "union" without spans (onegen.ner.NerSpans), loaded on first use
        # the KB's names (onegen.titles.Titles) with config.title_spans or .split_spans (`_given_spans`); None:
        # given spans only fill the gaps between the model's
        self.titles = titles if config.title_spans or config.split_spans else None

    @classmethod
    def from_pretrained(cls, model: str | None = None, index: str | None = None, kb: str | None = None,
                        device: str | None = None, *, batch_size: int = 8, build_index: bool = False,
                        **overrides) -> Linker:
        """Load a model (None: the trained default; a folder written by `save_pretrained`; any name
        `OneGen.from_pretrained` takes) and the entities it links to.

        Args:
            index: a built index folder (python jobs/build_index.py), loaded as it is.
            kb: a KB JSONL: the index the link job cached for it if any, else up to SMALL_KB_ENTITIES
                entities encoded here and searched in memory; a bigger one without a cached index is
                refused (`build_index=True` builds it into the cache with Ray, once).
                With neither: what the model's linker_config.json records, else the bundled sample KB.
            device: "cpu", "cuda" or None (CUDA when available).
            overrides: LinkerConfig settings (nil_threshold, given_nil_threshold, short_forms, alias_weight,
                alias_nil_weight, popularity_weight, name_weight, mention_bias, top_k, name_candidates, aliases, redirects, mentions, ner_model,
                title_spans, split_spans) that win over the model's linker_config.json; None values are ignored. `mentions`
                ("model", "ner" or "union") is what `link` links by default. With alias_weight above 0, the alias
                prior counts the KB's names (its ids' titles, and the `redirects` table's names) as one link each.
        """
        from onegen.model import OneGen
        from onegen.ner import check_ner_model

        config = model_config(model).replace(**overrides)
        if _check_mentions(config.mentions) == "given":
            raise ValueError("mentions='given' links the spans a call passes: pass it to the call, not to from_pretrained")
        if config.mentions != "model":
            check_ner_model(config.ner_model)  # before the model loads: a missing spaCy model fails fast
        if index is not None or kb is not None:  # the one given replaces what the model's config recorded
            config.index, config.kb = index, kb
        # absolute, so that save_pretrained records files that load from anywhere
        config.index, config.kb, config.aliases, config.redirects = (
            str(Path(p).expanduser().resolve()) if p else None
            for p in (config.index, config.kb, config.aliases, config.redirects))
        for table, path in (("alias", config.aliases), ("redirects", config.redirects)):
            if path and not Path(path).is_file():  # before the model loads
                raise FileNotFoundError(f"{table} table not found: {path}")
        onegen = OneGen.from_pretrained(model, device=device)
        kb_file = None if config.index is not None else Path(config.kb) if config.kb else SAMPLE_KB
        if kb_file is None:
            search, popularity = _load_index(onegen, Path(config.index), config.popularity_weight)
        else:
            search, popularity = _kb_search(onegen, kb_file, model, config.popularity_weight, build_index)
        LOG.info("linking with %s against %d entities", onegen.fingerprint()["model"], len(search))
        titles = (kb_names(_search_ids(search), config.redirects, _search_aliases(search, kb_file))
                  if config.alias_weight or config.title_spans or config.split_spans else None)
        return cls(onegen, search, config, popularity=popularity, batch_size=batch_size, model=model, titles=titles)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model as OneGen saves it and linker_config.json (settings, index or KB, alias table)
        so that `Linker.from_pretrained(directory)` links the same way."""
        self.onegen.save_pretrained(directory)
        self.config.save(directory)

    def __call__(self, texts: str | Sequence, spans: Sequence[Sequence[tuple[int, int]]] | None = None,
                 mentions: str | None = None) -> list[Document]:
        """Link texts: a string, a list of strings (doc ids "0", "1", ...), of (doc_id, text) pairs or of
        Documents. Every mention has start, end, surface, entity_id (None: NIL), score and candidates.
        `spans` and `mentions`: as `link`'s (for a single string, `spans` is still one list per text)."""
        if isinstance(texts, str):
            texts = [texts]
        docs = [d if isinstance(d, Document) else Document(str(i), d) if isinstance(d, str) else Document(*d)
                for i, d in enumerate(texts)]
        linked = self.link([d.text for d in docs], spans, mentions)
        return [Document(d.doc_id, d.text, found) for d, found in zip(docs, linked)]

    def link(self, texts: list[str], spans: Sequence[Sequence[tuple[int, int]]] | None = None,
             mentions: str | None = None) -> list[list[Mention]]:
        """One list of linked mentions per text, in text order (eval/linkers.py's Linker protocol).

        Args:
            spans: per text, (start, end) char spans to link as well (e.g. an NER's entities); the surface
                of one is text[start:end]. A span outside its text, empty or overlapping another is a ValueError.
            mentions: "model" (the model's own; no spans), "ner" (the linker's NER's spans), "given" (only
                `spans`) or "union" (the model's plus `spans`, else the NER's, that overlap none of them);
                None: this linker's `mentions`.
        """
        return [self.decide(found) for found in self.retrieve(texts, spans, mentions)]

    def embed(self, texts: list[str], spans: Sequence[Sequence[tuple[int, int]]] | None = None,
              mentions: str | None = None, batch_size: int | None = None, span_source: str = "given",
              windows: Sequence[Sequence] | None = None) -> list[Annotated]:
        """The model side: each text's mentions with their [LK] vectors, in text order (`spans` and
        `mentions` as `link`'s). The model's own are decoded with this linker's mention bias; a given span
        is embedded by teacher forcing and recorded with `span_source` as its source (the link job's NER
        stage: "ner"). The link job's replicas run this. `windows`: each text's windows (onegen.chunking.
        Window) cut beforehand, for decoding and teacher forcing alike (a machine without spaCy)."""
        from onegen.teacher_forcing import check_spans, embed_spans

        mentions = _check_mentions(self.mentions if mentions is None else mentions)
        batch_size = batch_size or self.batch_size
        if spans is not None and mentions in ("model", "ner"):
            raise ValueError(f"spans are linked only with mentions='given' or 'union', not {mentions!r}")
        if mentions == "model":
            return self._decode(texts, batch_size, windows)
        source = span_source
        if spans is None:
            if mentions == "given":
                raise ValueError("mentions='given' links the spans you pass: give spans (one list per text)")
            spans, source = self.ner(texts), "ner"
        check_spans(texts, spans)
        spans = [sorted(tuple(s) for s in text_spans) for text_spans in spans]
        out = self._decode(texts, batch_size, windows) if mentions == "union" else [Annotated(text) for text in texts]
        given = [self._given_spans(text_spans, annotated, join=mentions != "given")
                 for text_spans, annotated in zip(spans, out)]
        vectors = embed_spans(self.onegen, texts, given, batch_size=batch_size, windows=windows,
                              also_marked=[[(m.start, m.end) for m in annotated.mentions] for annotated in out])
        for annotated, text_spans, text_vectors in zip(out, given, vectors):
            forced = [EmbeddedMention(s, e, annotated.text[s:e], v, source) for (s, e), v in zip(text_spans, text_vectors)]
            annotated.mentions = sorted(annotated.mentions + forced, key=lambda m: m.start)
        return out

    def _given_spans(self, spans: list[tuple[int, int]], annotated: Annotated, join: bool = False) -> list[tuple[int, int]]:
        """The given spans of one text to embed: those that overlap none of the model's mentions; with
        `config.title_spans`, a KB title that holds model mentions whole and cuts none, which it replaces; with
        `config.split_spans`, those inside a model mention that is no KB title, which they replace, and then, with
        `join` too, a KB title that two neighbouring mentions so far spell together ("Long Beach" and "California":
        `onegen.titles.joined_titles`), which replaces them. Replaced mentions are dropped from `annotated.mentions`."""
        given, replaced = [], set()
        for start, end in spans:
            overlapping = [m for m in annotated.mentions if start < m.end and m.start < end]
            inside = [m for m in overlapping if start <= m.start and m.end <= end and (m.start, m.end) != (start, end)]
            if not overlapping:
                given.append((start, end))
            elif (self.titles is not None and self.config.title_spans and len(inside) == len(overlapping)
                  and annotated.text[start:end] in self.titles):
                given.append((start, end))
                replaced.update(id(m) for m in inside)
        if self.titles is not None and self.config.split_spans:
            for m in annotated.mentions:
                held = [(s, e) for s, e in spans if m.start <= s and e <= m.end and (s, e) != (m.start, m.end)]
                if held and id(m) not in replaced and m.surface not in self.titles:
                    given += held
                    replaced.add(id(m))
        annotated.mentions = [m for m in annotated.mentions if id(m) not in replaced]
        if join and self.titles is not None and self.config.split_spans:
            joined = joined_titles(annotated.text, given + [(m.start, m.end) for m in annotated.mentions], self.titles)

            def within(start: int, end: int) -> bool:
                return any(j <= start and end <= k for j, k in joined)

            given = [(s, e) for s, e in given if not within(s, e)] + joined
            annotated.mentions = [m for m in annotated.mentions if not within(m.start, m.end)]
        return sorted(given)

    def ner(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """The name spans of `config.ner_model` in each text (onegen.ner.NerSpans, tidied), loaded on first use."""
        if self._ner is None:
            from onegen.ner import NerSpans

            self._ner = NerSpans(self.config.ner_model, tidy=True)
        return self._ner(texts)

    def _decode(self, texts: list[str], batch_size: int, windows: Sequence[Sequence] | None = None) -> list[Annotated]:
        """The model's own mentions, decoded with this linker's mention bias (over `windows` when given)."""
        options = {"mention_bias": self.config.mention_bias} if self.config.mention_bias else {}
        if windows is not None:
            options["windows"] = windows
        return self.onegen(texts, batch_size=batch_size, **options)

    def retrieve(self, texts: list[str], spans: Sequence[Sequence[tuple[int, int]]] | None = None,
                 mentions: str | None = None) -> list[list[Mention]]:
        """The mentions of each text with their top-k candidates, before NIL and the priors (entity_id None);
        `spans` and `mentions` as `link`'s."""
        if self.search is None:
            raise ValueError("this Linker has no index to search (built for embedding only); load one with Linker.from_pretrained")
        return [self.candidates(annotated) for annotated in self.embed(texts, spans, mentions)]

    def candidates(self, annotated: Annotated) -> list[Mention]:
        """One text's embedded mentions with their candidates (entity_id None): the top-k retrieved, and with
        `config.name_candidates` the entities their surfaces name that retrieval missed (`add_name_candidates`)."""
        retrieved = search_mentions(annotated.mentions, self.search, self.config.top_k)
        if not retrieved:
            return retrieved
        queries = np.stack([m.vector for m in annotated.mentions])  # (M, D)
        return add_name_candidates(retrieved, queries, self.search, self.alias_prior, self.config.name_candidates)

    def decide(self, mentions: list[Mention]) -> list[Mention]:
        """One text's retrieved mentions linked with this linker's NIL threshold and priors."""
        return decide_mentions(mentions, nil_threshold=self.config.nil_threshold, alias_prior=self.alias_prior,
                               popularity=self.popularity, given_nil_threshold=self.config.given_nil_threshold,
                               short_forms=self.config.short_forms, name_weight=self.config.name_weight)


def _search_ids(search) -> Sequence[str]:
    """Every entity id a search holds: an in-memory KB's, or a built index's (read from its folder)."""
    from kb.index import stored_ids

    return search.ids if isinstance(search, ExactSearch) else stored_ids(search.directory)


def _search_aliases(search, kb_file: Path | None) -> Iterator[tuple[str, str]]:
    """The KB's (alias, entity id) pairs of a search: read from its KB file when it has one (an in-memory KB,
    or the index cached for that very file), else those stored with the built index given (none from one
    built before aliases were stored)."""
    from kb.index import stored_aliases
    from kb.jsonl import iter_aliases

    return iter_aliases(kb_file) if kb_file is not None else stored_aliases(search.directory)


def _check_mentions(mentions: str) -> str:
    if mentions not in MENTIONS:
        raise ValueError(f"mentions must be one of {MENTIONS}, got {mentions!r}")
    return mentions


def _load_index(onegen, directory: Path, popularity_weight: float, built_from: Path | None = None):
    """A built index folder (refused when built by another model) and the popularity prior stored with it
    (for an older index, read from `built_from`, the KB file it was built from, when known)."""
    from kb.index import EntityIndex

    search = EntityIndex.load(directory, expect=onegen.fingerprint(), expect_dim=onegen.hidden_size)
    return search, popularity_prior(directory, popularity_weight, built_from)


def _kb_search(onegen, kb_file: Path, model: str | None, popularity_weight: float, build_index: bool):
    """A KB JSONL: its cached index when the index job built one, else encoded here when small, else (with
    `build_index`) built into the cache with Ray."""
    from kb.files import sha256_file
    from kb.jsonl import iter_kb
    from kb.manifest import MANIFEST_NAME

    require_kb(kb_file)
    fingerprint = onegen.fingerprint()
    directory = cached_index_dir(fingerprint, sha256_file(kb_file), kb_file.stem)
    if (directory / MANIFEST_NAME).is_file():  # keyed by the KB's sha256: built from this very file
        return _load_index(onegen, directory, popularity_weight, kb_file)
    entities = list(islice(iter_kb(kb_file), SMALL_KB_ENTITIES + 1))
    if len(entities) <= SMALL_KB_ENTITIES:
        LOG.info("encoding the %d entities of %s in memory", len(entities), kb_file)
        search = ExactSearch([e.id for e in entities], onegen.embed_entities(entities))
        popularity = PopularityPrior.from_kb(kb_file, weight=popularity_weight) if popularity_weight else None
        return search, popularity
    if not build_index:
        raise FileNotFoundError(
            f"KB {kb_file} has more than {SMALL_KB_ENTITIES} entities and no built index: build one with "
            f"`python jobs/build_index.py --kb {kb_file} --out DIR{f' --model {model}' if model else ''}` "
            f"and pass index=DIR (or build_index=True to build it into the cache with Ray)")
    return _load_index(onegen, ensure_index(kb_file, model, fingerprint), popularity_weight, kb_file)
