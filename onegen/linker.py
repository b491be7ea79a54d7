"""OneGen as a linker for evaluation and small jobs: one pass finds and embeds mentions, then the
entity index is searched and each mention is linked or left NIL (DESIGN section 3, in-process).

`OneGenLinker(model, kb)` is what `eval/run_gerbil.py run --linker onegen` builds. The KB's index is
built once per (model, KB) by the index-build job and cached (the link job uses the same cache);
`index=DIR` uses a built index instead. `link_texts` is the shared core, also used by training to
score a model against in-memory KB vectors through `ExactSearch`: `retrieve_texts` finds each mention's
candidates, `decide_mentions` links them, so candidates can be kept and decided again later.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from eval.types import Annotation
from onegen.decide import DEFAULT_NIL_THRESHOLD, DEFAULT_POPULARITY_WEIGHT, AliasPrior, PopularityPrior, decide
from onegen.default_model import DEFAULT_MENTION_BIAS

LOG = logging.getLogger(__name__)


class ExactSearch:
    """Exact cosine top-k over in-memory L2-normalised vectors; the retriever for small KBs."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray):
        if len(ids) != len(vectors):
            raise ValueError(f"number of ids and vectors must be the same, got {len(ids)} and {len(vectors)}")
        self.ids = np.asarray(ids, dtype=object)  # (N,)
        self.vectors = np.asarray(vectors, dtype=np.float32)  # (N, D)

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


@dataclass
class Retrieved:
    """One marked mention with its top-k entities, before `decide` picks one or NIL."""

    start: int  # code-point offsets into the text
    end: int
    surface: str
    candidates: list[tuple[str, float]]  # (entity id, cosine), best first; index padding dropped

    def to_dict(self) -> dict:
        """The mention as a row of a candidates file (`bench/gpu_score.py` reads them)."""
        return {"start": self.start, "end": self.end, "surface": self.surface,
                "candidates": [[e, round(c, 6)] for e, c in self.candidates]}

    @classmethod
    def from_dict(cls, row: dict) -> Retrieved:
        """A mention read back from a row of a candidates file."""
        return cls(row["start"], row["end"], row["surface"], [(e, float(c)) for e, c in row["candidates"]])


def retrieve_texts(onegen, texts: list[str], retriever, *, top_k: int = 10, batch_size: int = 8) -> list[list[Retrieved]]:
    """Annotate `texts` with `onegen` and search the top-k entities of each mention through `retriever.search`."""
    out = []
    for annotated in onegen(texts, batch_size=batch_size):
        if not annotated.mentions:
            out.append([])
            continue
        queries = np.stack([m.vector for m in annotated.mentions])  # (M, D), L2-normalised
        scores, ids = retriever.search(queries, top_k)  # (M, k), (M, k)
        out.append([Retrieved(m.start, m.end, m.surface, [(e, float(c)) for e, c in zip(row_ids, row_scores) if e])
                    for m, row_ids, row_scores in zip(annotated.mentions, ids, scores)])
    return out


def decide_mentions(mentions: list[Retrieved], *, nil_threshold: float = DEFAULT_NIL_THRESHOLD,
                    alias_prior: AliasPrior | None = None, popularity: PopularityPrior | None = None) -> list[Annotation]:
    """One annotation per retrieved mention: its entity chosen by `decide`, or None (NIL)."""
    out = []
    for m in mentions:
        ids, scores = zip(*m.candidates) if m.candidates else ((), ())
        entity_id, _ = decide(list(ids), list(scores), m.surface, nil_threshold=nil_threshold,
                              alias_prior=alias_prior, popularity=popularity)
        out.append(Annotation(m.start, m.end, m.surface, entity_id))
    return out


def link_texts(onegen, texts: list[str], retriever, *, top_k: int = 10, nil_threshold: float = DEFAULT_NIL_THRESHOLD,
               alias_prior: AliasPrior | None = None, popularity: PopularityPrior | None = None,
               batch_size: int = 8) -> list[list[Annotation]]:
    """Annotate `texts` with `onegen` and link each mention through `retriever.search` and `decide`."""
    return [decide_mentions(mentions, nil_threshold=nil_threshold, alias_prior=alias_prior, popularity=popularity)
            for mentions in retrieve_texts(onegen, texts, retriever, top_k=top_k, batch_size=batch_size)]


class OneGenLinker:
    """The eval/ Linker of a OneGen model over a KB (JSONL, index built and cached) or a built index."""

    def __init__(self, model: str | None = None, kb: str | None = None, index: str | None = None, batch_size: int = 8,
                 nil_threshold: float | None = None, aliases: str | None = None, top_k: int = 10,
                 popularity_weight: float | None = None, mention_bias: float | None = None):
        from kb.index import EntityIndex
        from onegen.model import OneGen
        from onegen.pipeline.linking import SAMPLE_KB, ensure_index, popularity_prior

        self.onegen = OneGen.from_pretrained(model)
        fingerprint = self.onegen.fingerprint()
        directory = Path(index) if index else ensure_index(Path(kb) if kb else SAMPLE_KB, model, fingerprint)
        self.index = EntityIndex.load(directory, expect=fingerprint, expect_dim=self.onegen.hidden_size)
        LOG.info("linking with %s against %d entities in %s", fingerprint["model"], len(self.index), directory)
        self.alias_prior = AliasPrior.from_tsv(aliases) if aliases else None
        weight = DEFAULT_POPULARITY_WEIGHT if popularity_weight is None else popularity_weight
        self.popularity = popularity_prior(directory, weight)  # from the KB files the index was built from
        self.nil_threshold = DEFAULT_NIL_THRESHOLD if nil_threshold is None else nil_threshold  # cosine below: NIL
        self.batch_size = batch_size  # texts per model batch
        self.top_k = top_k  # candidates per mention the priors may re-rank
        # logits added to opening a mention while decoding (0: the model's own choice)
        self.mention_bias = DEFAULT_MENTION_BIAS if mention_bias is None else mention_bias

    def link(self, texts: list[str]) -> list[list[Annotation]]:
        """One list of annotations per text (code-point offsets, entity id or None for NIL)."""
        return [self.decide(mentions) for mentions in self.retrieve(texts)]

    def retrieve(self, texts: list[str]) -> list[list[Retrieved]]:
        """The marked mentions of each text with their top-k candidates, before NIL and the priors."""
        onegen = partial(self.onegen, mention_bias=self.mention_bias) if self.mention_bias else self.onegen
        return retrieve_texts(onegen, texts, self.index, top_k=self.top_k, batch_size=self.batch_size)

    def decide(self, mentions: list[Retrieved]) -> list[Annotation]:
        """The annotations of one text's retrieved mentions, with this linker's NIL threshold and priors."""
        return decide_mentions(mentions, nil_threshold=self.nil_threshold, alias_prior=self.alias_prior,
                               popularity=self.popularity)
