"""Entity or NIL for one mention, from its retrieved candidates (DESIGN section 3, "decide").

The retrieval score is the cosine between the mention's `[LK]` vector and an entity's `[SE]`
vector. An optional alias prior p(entity | surface), read from a `mention<TAB>entity<TAB>count`
table, re-ranks the retrieved candidates; it never adds a candidate retrieval did not find.
NIL is decided on the cosine of the chosen candidate, so the threshold keeps one meaning
with or without a prior.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def normalise_surface(surface: str) -> str:
    """The key a surface form is looked up under: case-folded, inner whitespace collapsed."""
    return " ".join(surface.casefold().split())


@dataclass
class AliasPrior:
    """p(entity | mention surface) from alias counts."""

    probabilities: dict[str, dict[str, float]]  # normalised surface -> entity id -> p(entity | surface)
    weight: float = 0.2  # added to the cosine as weight * p when ranking candidates
    source: str = field(default="")  # where the table came from, for messages

    @classmethod
    def from_tsv(cls, path: str | Path, *, weight: float = 0.2) -> AliasPrior:
        """Read a `mention<TAB>entity<TAB>count` table (no header; `#` lines are comments)."""
        counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        with open(path, encoding="utf-8", newline="") as handle:
            for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) != 3:
                    raise ValueError(
                        f"{path}:{line_no}: expected 3 tab-separated fields (mention, entity, count), got {len(row)}: {row!r}"
                    )
                mention, entity, count = row
                try:
                    value = float(count)
                except ValueError:
                    raise ValueError(f"{path}:{line_no}: count must be a number, got {count!r}") from None
                if value < 0 or not math.isfinite(value):
                    raise ValueError(f"{path}:{line_no}: count must be finite and >= 0, got {count!r}")
                counts[normalise_surface(mention)][entity] += value
        probabilities = {}
        for surface, by_entity in counts.items():
            total = sum(by_entity.values())
            if total > 0:
                probabilities[surface] = {entity: c / total for entity, c in by_entity.items()}
        return cls(probabilities=probabilities, weight=weight, source=str(path))

    def probability(self, surface: str, entity_id: str) -> float:
        """p(entity | surface); 0 when the surface or the pair is unknown."""
        return self.probabilities.get(normalise_surface(surface), {}).get(entity_id, 0.0)


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
