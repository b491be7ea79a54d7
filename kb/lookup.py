"""Entity vectors looked up by id: the cosine of a query with each entity named for it.

Retrieval finds a mention's nearest entities; a linker may also want the scores of entities it names itself
(those the mention's surface is a name of, `onegen.linker.add_name_candidates`). Every retriever answers
`score(queries, wanted)` through this: the in-memory KB's `onegen.linker.ExactSearch`, an index shard
(`kb.index.IndexShard`) and so `kb.index.EntityIndex` and the shard actors of `kb.serving`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class VectorsById:
    """(N, D) unit vectors whose row i is the entity ids[i]; the id -> row map is built on first use."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray):
        if len(ids) != len(vectors):
            raise ValueError(f"number of ids and vectors must be the same, got {len(ids)} and {len(vectors)}")
        self.ids = ids  # row -> entity id
        self.vectors = vectors  # (N, D), any float dtype, a memmap too
        self._rows: dict[str, int] | None = None  # entity id -> row

    def score(self, queries: np.ndarray, wanted: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Per query (Q, D), {entity id: cosine} for each id of its `wanted` list that is here; others are left out."""
        if len(queries) != len(wanted):
            raise ValueError(f"one list of wanted ids per query: {len(queries)} queries, {len(wanted)} lists")
        if self._rows is None:
            self._rows = {entity_id: row for row, entity_id in enumerate(self.ids)}
        out = []
        for query, ids in zip(queries, wanted):
            found = [entity_id for entity_id in dict.fromkeys(ids) if entity_id in self._rows]
            rows = np.asarray([self._rows[entity_id] for entity_id in found], dtype=np.int64)
            cosines = np.asarray(self.vectors[rows], dtype=np.float32) @ np.asarray(query, dtype=np.float32)  # (len(found),)
            out.append(dict(zip(found, cosines.tolist())))
        return out
