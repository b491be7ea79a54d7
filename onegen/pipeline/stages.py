"""The `map_batches` callables of the link job: names (an NER, with --mentions ner|union), annotate
(model replicas) and link (retrieve + decide).

They are `onegen.Linker`'s steps split over Ray: `NerStage` finds an NER's name spans on CPUs, a replica
runs `Linker.embed` (find + embed mentions, the NER's spans by teacher forcing), `LinkStep` searches the
index-shard actors, has them score the entities each surface names that the search missed (`add_name_candidates`),
and decides with the same `decide_mentions`.

Batches are Arrow tables with the columns `inputs.rows_to_table` makes. Rows whose
status is already "error" pass through untouched; a document the model (or the NER) fails on
becomes an error row instead of failing the batch, so one bad input never stops the job.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from onegen.decide import AliasPrior, PopularityPrior
from onegen.linker import add_name_candidates, decide_mentions, with_candidates
from onegen.ner import MENTION_SOURCES
from onegen.pipeline.inputs import ERROR, OK
from onegen.pipeline.outputs import MENTIONS_TYPE, TOKENS_COLUMN
from onegen.spans import Annotated, Mention

LOG = logging.getLogger(__name__)

# texts (and, with --mentions ner|union, the spans to link in each) -> one Annotated per text, in order
Annotate = Callable[..., list[Annotated]]
FindSpans = Callable[[list[str]], list[list[tuple[int, int]]]]  # texts -> (start, end) name spans per text
SPAN_TYPE = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("surface", pa.string()), ("source", pa.string())])
GIVEN_TYPE = pa.struct([("start", pa.int64()), ("end", pa.int64())])
ATTEMPTS = 2  # tries of a batch, then of each of its documents, before a document is an error row
SPANS, VECTORS = "_spans", "_vectors"  # columns passed from annotate to link, not written
GIVEN = "_given"  # column passed from the NER stage to annotate: the NER's spans, not written
# The job's own output columns, first in every part; carried-through input columns follow.
OUTPUT_COLUMNS = ["doc_id", "mentions", "status", "error", "text", "source", "source_row", "model", "index"]


class Retriever(Protocol):
    """What linking needs from an index: `kb.index.EntityIndex` or the shard-actor client."""

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """vectors (Q, D) float32 L2-normalised -> scores (Q, k) float32, entity ids (Q, k) str."""

    def score(self, vectors: np.ndarray, wanted: list[list[str]]) -> list[dict[str, float]]:
        """vectors (Q, D) -> per query, {entity id: score} of each of its wanted ids the index holds."""

    def close(self) -> None:
        """Release what serves the index (shard actors)."""


def onegen_annotator(model: str | None, batch_size: int, split_over_gpus: bool = False,
                     mention_bias: float = 0.0, mentions: str = "model", titles=None, *, title_spans: bool = True,
                     split_spans: bool = False) -> Annotate:
    """Load OneGen once (in the replica; on its GPU when it has one, its layers spread over its GPUs with
    `split_over_gpus`) and return `onegen.Linker.embed` of a Linker with no index (the job searches the shards),
    linking `mentions` ("model", "ner" or "union": onegen.ner.MENTION_SOURCES); the spans it is given are the
    NER stage's, so their mentions' source is "ner". With the KB's `titles` (onegen.titles.Titles) and
    `title_spans`, an NER span that is a title replaces the model's mentions inside it; with `split_spans`, the
    NER spans inside a model mention that is no title replace it, and a title two neighbouring mentions spell
    replaces them."""
    from onegen.linker import Linker
    from onegen.linker_config import LinkerConfig
    from onegen.model import OneGen

    onegen = OneGen.from_pretrained(model, split_over_gpus=split_over_gpus)
    config = LinkerConfig(mention_bias=mention_bias, title_spans=title_spans and titles is not None,
                          split_spans=split_spans and titles is not None)
    linker = Linker(onegen, None, config,
                    batch_size=batch_size, model=model, mentions=MENTION_SOURCES[mentions], titles=titles)
    return functools.partial(linker.embed, span_source="ner")


def vectors_column(rows: list[list[np.ndarray]]) -> pa.ListArray:
    """Per-row mention vectors as list<list<float32>>, built from one numpy buffer (no Python floats)."""
    flat = [v for row in rows for v in row]
    dim = len(flat[0]) if flat else 0
    values = np.stack(flat).astype(np.float32, copy=False).ravel() if flat else np.zeros(0, np.float32)  # (M * D,)
    per_mention = pa.ListArray.from_arrays(np.arange(0, len(values) + 1, max(dim, 1), dtype=np.int32)[: len(flat) + 1],
                                           pa.array(values, pa.float32()))  # M lists of D floats
    row_offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int32)  # (rows + 1,)
    return pa.ListArray.from_arrays(row_offsets, per_mention)


def column_vectors(column: pa.ChunkedArray) -> np.ndarray:
    """All mention vectors of a `vectors_column` column, in row order: (M, D) float32."""
    mentions = column.combine_chunks().flatten()  # list<float32>, one per mention
    values = mentions.flatten().to_numpy(zero_copy_only=False)  # (M * D,)
    return values.reshape(len(mentions), -1) if len(mentions) else values.reshape(0, 0)  # (M, D)


def per_document(run: Callable[[list], list], items: list, what: str) -> list[tuple[object, str | None]]:
    """(result, None) per item of `run(items)`. A failing batch is tried again, then one item at a time (each
    tried again too); an item that still fails gets (None, "`what` failed on this document: ...") and the
    others go on. A result list of the wrong length is a failure, never a shifted result."""
    if not items:
        return []
    try:
        return [(result, None) for result in _retried(run, items, what)]
    except Exception as err:  # noqa: BLE001 - any failure falls back to one document at a time
        LOG.warning("%s: a batch of %d documents failed twice (%s: %s); going one at a time", what, len(items),
                    type(err).__name__, err)
    results = []
    for item in items:
        try:
            results.append((_retried(run, [item], what)[0], None))
        except Exception as err:  # noqa: BLE001
            results.append((None, f"{what} failed on this document: {type(err).__name__}: {err}"))
    return results


def _retried(run: Callable[[list], list], items: list, what: str) -> list:
    for attempt in range(ATTEMPTS):
        try:
            results = run(items)
            if len(results) != len(items):
                raise RuntimeError(f"{what} returned {len(results)} results for {len(items)} documents")
            return results
        except Exception as err:  # noqa: BLE001
            if attempt + 1 == ATTEMPTS:
                raise
            LOG.warning("%s: %d documents failed (%s: %s); trying again", what, len(items), type(err).__name__, err)


def _with_statuses(batch: pa.Table, statuses: list[str], errors: list[str | None]) -> pa.Table:
    batch = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(statuses, pa.string()))
    return batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


class NerStage:
    """Actor-pool callable on CPUs: an NER's name spans of the ok rows of a batch, as the column GIVEN
    that the replicas link (--mentions ner|union)."""

    def __init__(self, make_finder: Callable[[], FindSpans]):
        self.find = make_finder()  # the NER, loaded once per actor

    def __call__(self, batch: pa.Table) -> pa.Table:
        statuses, errors = batch.column("status").to_pylist(), batch.column("error").to_pylist()
        texts = batch.column("text").to_pylist()
        todo = [i for i, s in enumerate(statuses) if s == OK]
        given = [[] for _ in statuses]
        for i, (spans, error) in zip(todo, per_document(self.find, [texts[i] for i in todo], "the NER")):
            if error is not None:
                statuses[i], errors[i] = ERROR, error
                continue
            given[i] = [{"start": start, "end": end} for start, end in spans]
        return _with_statuses(batch, statuses, errors).append_column(GIVEN, pa.array(given, pa.list_(GIVEN_TYPE)))


class AnnotateStage:
    """Actor-pool callable: holds one model replica, annotates the ok rows of a batch (and, when the batch
    has the NER stage's GIVEN column, embeds those spans too)."""

    def __init__(self, make_annotator: Callable[[], Annotate]):
        self.annotate = make_annotator()  # loaded once per replica

    def __call__(self, batch: pa.Table) -> pa.Table:
        statuses, errors = batch.column("status").to_pylist(), batch.column("error").to_pylist()
        texts = batch.column("text").to_pylist()
        given = batch.column(GIVEN).to_pylist() if GIVEN in batch.column_names else None
        todo = [i for i, s in enumerate(statuses) if s == OK]
        items = [(texts[i], None if given is None else [(g["start"], g["end"]) for g in given[i]]) for i in todo]
        spans, vectors, tokens = [[] for _ in statuses], [[] for _ in statuses], [0] * len(statuses)
        for i, (annotated, error) in zip(todo, per_document(self._annotate, items, "the model")):
            if error is not None:
                statuses[i], errors[i] = ERROR, error
                continue
            spans[i] = [{"start": m.start, "end": m.end, "surface": m.surface, "source": m.source} for m in annotated.mentions]
            vectors[i] = [np.asarray(m.vector, np.float32) for m in annotated.mentions]
            tokens[i] = annotated.generated_tokens
        batch = _with_statuses(batch, statuses, errors)
        if given is not None:
            batch = batch.drop_columns([GIVEN])
        return (batch.append_column(SPANS, pa.array(spans, pa.list_(SPAN_TYPE)))
                .append_column(VECTORS, vectors_column(vectors))
                .append_column(TOKENS_COLUMN, pa.array(tokens, pa.int64())))

    def _annotate(self, items: list[tuple[str, list | None]]) -> list[Annotated]:
        texts = [text for text, _ in items]
        if items[0][1] is None:
            return self.annotate(texts)
        return self.annotate(texts, [spans for _, spans in items])


@dataclass
class LinkStep:
    """Task callable: retrieve top-k for every mention of a batch, decide entity or NIL."""

    retriever: Retriever  # index or shard-actor client
    top_k: int  # candidates kept per mention
    nil_threshold: float  # chosen cosine + alias and name terms below which: NIL
    model_id: str  # written to every row (run metadata)
    index_id: str  # index manifest hash, written to every row
    alias_prior: AliasPrior | None = None  # p(entity | surface) re-ranking
    popularity: PopularityPrior | None = None  # KB-popularity re-ranking
    given_nil_threshold: float | None = None  # NIL threshold of the NER's spans (None: nil_threshold)
    short_forms: bool = False  # link NIL short forms of a document's linked mentions
    name_weight: float = 0.0  # evidence added when a mention's surface is a candidate's title
    name_candidates: int = 0  # entities the surface names, added when retrieval missed them (add_name_candidates)

    def __call__(self, batch: pa.Table) -> pa.Table:
        spans = [[Mention(**span) for span in row] for row in batch.column(SPANS).to_pylist()]
        vectors = column_vectors(batch.column(VECTORS))  # (Q, D), one per mention
        retrieved: list[Mention] = []  # every mention of the batch, in row order
        if len(vectors):
            scores, ids = self.retriever.search(vectors, self.top_k)  # (Q, k), (Q, k)
            retrieved = add_name_candidates(with_candidates([m for row in spans for m in row], scores, ids), vectors,
                                            self.retriever, self.alias_prior, self.name_candidates)
        mentions, q = [], 0
        for row in spans:
            decided = decide_mentions(retrieved[q:q + len(row)], nil_threshold=self.nil_threshold, alias_prior=self.alias_prior,
                                      given_nil_threshold=self.given_nil_threshold, short_forms=self.short_forms,
                                      popularity=self.popularity, name_weight=self.name_weight)
            mentions.append([m.to_row() for m in decided])
            q += len(row)
        batch = batch.drop_columns([SPANS, VECTORS])
        n = batch.num_rows
        batch = (batch.append_column("mentions", pa.array(mentions, MENTIONS_TYPE))
                 .append_column("model", pa.array([self.model_id] * n, pa.string()))
                 .append_column("index", pa.array([self.index_id] * n, pa.string())))
        return batch.select(OUTPUT_COLUMNS + [c for c in batch.column_names if c not in OUTPUT_COLUMNS])
