"""The alias table: how often a mention string refers to an entity (`mention<TAB>entity<TAB>count`).

One reader for every user: the baseline linker (most frequent entity of a string), the NIL decision
(p(entity | surface) as a prior) and the training-data builder (same-alias hard negatives).
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


QUALIFIER = re.compile(r"(.+?) \([^()]*\)")  # "Paris (band)": the title before its parenthesised qualifier


def normalise_surface(surface: str) -> str:
    """The key a surface form is looked up under when case and spacing may differ."""
    return " ".join(surface.casefold().split())


def title_names(entity_id: str) -> tuple[str, ...]:
    """The names a canonical id spells, normalised (`normalise_surface`): its title ("Paris_(band)":
    "paris (band)"), and that title without its parenthesised qualifier ("paris")."""
    title = entity_id.replace("_", " ")
    qualified = QUALIFIER.fullmatch(title)
    return (normalise_surface(title),) + ((normalise_surface(qualified.group(1)),) if qualified else ())


def ranked_by_count(counts: dict[str, float]) -> list[str]:
    """Entity ids by count, most frequent first; ties by id so the order is deterministic."""
    return sorted(counts, key=lambda e: (-counts[e], e))


@dataclass
class AliasTable:
    """Alias counts, by the mention string as written and by its normalised form."""

    counts: dict[str, dict[str, float]]  # mention string -> entity id -> count
    folded: dict[str, dict[str, float]] = field(init=False)  # normalise_surface(mention) -> entity id -> summed count
    source: str = ""  # where the table came from, for messages

    def __post_init__(self):
        folded: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for mention, by_entity in self.counts.items():
            for entity, count in by_entity.items():
                folded[normalise_surface(mention)][entity] += count
        self.folded = {m: dict(c) for m, c in folded.items()}

    @classmethod
    def from_tsv(cls, path: str | Path) -> AliasTable:
        """Read `mention<TAB>entity<TAB>count` lines (no header; `#` lines are comments)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"alias table not found: {path} (expected mention<TAB>entity<TAB>count, "
                "e.g. shared/data/kb/aida_train_aliases.tsv)"
            )
        counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        with path.open(encoding="utf-8", newline="") as handle:
            for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row or row == [""] or row[0].startswith("#"):
                    continue
                if len(row) != 3:
                    raise ValueError(f"{path}:{line_no}: expected mention<TAB>entity<TAB>count, got {len(row)} fields: {row!r}")
                mention, entity, count = row
                try:
                    value = float(count)
                except ValueError:
                    raise ValueError(f"{path}:{line_no}: count must be a number, got {count!r}") from None
                if value < 0 or not math.isfinite(value):
                    raise ValueError(f"{path}:{line_no}: count must be finite and >= 0, got {count!r}")
                counts[mention][entity] += value
        return cls({m: dict(c) for m, c in counts.items()}, source=str(path))

    def entities(self, mention: str) -> list[str]:
        """Entities the exact mention string refers to, most frequent first."""
        return ranked_by_count(self.counts.get(mention, {}))

    def most_frequent(self, mention: str) -> str | None:
        """The most frequent entity of the exact string, else of its case/space-insensitive form, else None."""
        ranked = self.entities(mention) or ranked_by_count(self.folded.get(normalise_surface(mention), {}))
        return ranked[0] if ranked else None

    def links(self, surface: str) -> dict[str, float]:
        """Entity id -> count of the surface's case/space-insensitive form; empty when unknown."""
        return self.folded.get(normalise_surface(surface), {})

    def probability(self, surface: str, entity_id: str) -> float:
        """p(entity | surface) over the case/space-insensitive form; 0 when unknown."""
        by_entity = self.links(surface)
        total = sum(by_entity.values())
        return by_entity.get(entity_id, 0.0) / total if total > 0 else 0.0
