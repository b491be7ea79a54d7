"""Entity or NIL for one mention, from its retrieved candidates (DESIGN section 3, "decide").

The retrieval score is the cosine between the mention's `[LK]` vector and an entity's `[SE]`
vector. An optional alias prior p(entity | surface), read from a `mention<TAB>entity<TAB>count`
table, re-ranks the retrieved candidates; it never adds a candidate retrieval did not find.
NIL is decided on the cosine of the chosen candidate, so the threshold keeps one meaning
with or without a prior.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.aliases import AliasTable

# Cosine below which a mention is NIL, and the alias prior's weight: both picked on AIDA testa for the
# trained default (bench/gpu_score.py); another model should tune its own (eval/run_gerbil.py --nil-threshold).
DEFAULT_NIL_THRESHOLD = 0.75
DEFAULT_PRIOR_WEIGHT = 0.2


@dataclass
class AliasPrior:
    """p(entity | mention surface) from an alias table, weighted for re-ranking."""

    table: AliasTable  # alias counts
    weight: float = DEFAULT_PRIOR_WEIGHT  # added to the cosine as weight * p when ranking candidates

    @classmethod
    def from_tsv(cls, path: str | Path, *, weight: float = DEFAULT_PRIOR_WEIGHT) -> AliasPrior:
        """Read a `mention<TAB>entity<TAB>count` table (kb.aliases.AliasTable)."""
        return cls(AliasTable.from_tsv(path), weight)

    def probability(self, surface: str, entity_id: str) -> float:
        """p(entity | surface); 0 when the surface or the pair is unknown."""
        return self.table.probability(surface, entity_id)


def decide(
    candidate_ids: Sequence[str | None],
    candidate_scores: Sequence[float],
    surface: str,
    *,
    nil_threshold: float,
    alias_prior: AliasPrior | None = None,
) -> tuple[str | None, float]:
    """Pick the linked entity of one mention, or None (NIL).

    Candidates are ranked by cosine (+ prior weight * p(entity | surface) with an alias prior);
    the best one is returned with its cosine, or None with that cosine when the cosine is below
    `nil_threshold`. Empty ids (padding from a short index) are skipped; no candidate -> (None, -inf).
    """
    if len(candidate_ids) != len(candidate_scores):
        raise ValueError(f"candidate_ids and candidate_scores differ in length: {len(candidate_ids)} != {len(candidate_scores)}")
    best_id, best_cosine, best_rank = None, -math.inf, -math.inf
    for entity_id, cosine in zip(candidate_ids, candidate_scores):
        if not entity_id:
            continue
        rank = float(cosine) + (alias_prior.weight * alias_prior.probability(surface, entity_id) if alias_prior else 0.0)
        if rank > best_rank:
            best_id, best_cosine, best_rank = entity_id, float(cosine), rank
    if best_id is None or best_cosine < nil_threshold:
        return None, best_cosine
    return best_id, best_cosine
