"""Entity or NIL for one mention, from its retrieved candidates (DESIGN section 3, "decide").

The retrieval score is the cosine between the mention's `[LK]` vector and an entity's `[SE]`
vector. The candidates are those retrieval found, and, with name candidates (`onegen.linker.add_name_candidates`),
the entities the alias prior below says the surface refers to, with their cosines too. Two optional priors
re-rank the candidates; neither adds one:
- an alias prior p(entity | surface): the counts of a `mention<TAB>entity<TAB>count` table, if one is
  given, and the KB's own names (`onegen.titles.Titles`: the title each id spells, with or without its
  parenthesised qualifier, the KB's aliases of it and the names of redirects to it), each counting as one link of its entity, so
  a mention written as a name shared by n entities gives each of them 1/n without a table;
- a popularity prior, log(1 + popularity) / log(1 + the KB's largest popularity), from the KB
  JSONL's `popularity` field (e.g. Wikipedia in-links), which the index stores: between close
  candidates, the better known entity is the likelier referent.
NIL is decided on the chosen candidate's evidence: its cosine plus two pieces of evidence that the
mention is that entity, and that the entity is in the KB, which count for the ranking too. One is the
alias prior's term (a surface that annotated text linked to the entity, or one of its names), weighted for NIL
apart from ranking where the prior says so (`AliasPrior.nil_weight`: a known name is stronger evidence that the
mention is in the KB than that it beats a candidate with a closer cosine); the other a
name bonus, added when the mention's surface is the candidate's own title (`is_title_of`: the Wikipedia
title its canonical id spells, with or without a parenthesised qualifier, case-insensitively), however many
entities share it (off in the default: the names in the alias prior do better). Popularity only ranks. Then,
within one text, `short_form_links` gives a NIL mention whose words are part of a longer linked mention
("Yeltsin" after "Boris Yeltsin") that mention's entity, when retrieval found it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.aliases import AliasTable, normalise_surface, ranked_by_count, title_names
from kb.jsonl import iter_kb
from onegen.titles import Titles

# Generic defaults (onegen.linker_config.LinkerConfig) of the NIL threshold (cosine plus alias and name terms below: NIL) and the
# priors' weights. A model's own settings travel with it in linker_config.json: the bundled default's
# (onegen/default_adapter) were picked on AIDA testa by bench/gpu_score.py, which writes them for any model.
# (Its popularity weight, 0.1, is under testa's best, 0.3, which cost 3 to 7 F1 on OKE, MSNBC and AQUAINT.)
DEFAULT_NIL_THRESHOLD = 0.75
DEFAULT_PRIOR_WEIGHT = 0.2
DEFAULT_POPULARITY_WEIGHT = 0.1
WORD = re.compile(r"\w+")


@dataclass
class AliasPrior:
    """p(entity | mention surface), weighted for re-ranking, from an alias table's counts and the KB's names: each
    name of an entity (a title its id spells, a redirect's: `onegen.titles.Titles`) counts as one link of it, so a
    mention written as a name is evidence for the entities of that name, shared among them."""

    table: AliasTable | None = None  # alias counts (None: the names alone)
    weight: float = DEFAULT_PRIOR_WEIGHT  # added to the cosine as weight * p when ranking candidates
    names: Titles | None = None  # the KB's names (None: the table alone)
    nil_weight: float | None = None  # weight of p in the evidence NIL is decided on (None: `weight`)

    @classmethod
    def from_tsv(cls, path: str | Path, *, weight: float = DEFAULT_PRIOR_WEIGHT, names: Titles | None = None) -> AliasPrior:
        """Read a `mention<TAB>entity<TAB>count` table (kb.aliases.AliasTable)."""
        return cls(AliasTable.from_tsv(path), weight, names)

    @classmethod
    def load(cls, aliases: str | Path | None, names: Titles | None, *, weight: float,
             nil_weight: float | None = None) -> AliasPrior | None:
        """The prior of an alias table file and the KB's names, either of them None; None when `weight` is 0
        or both are."""
        if not weight or (aliases is None and names is None):
            return None
        return cls(AliasTable.from_tsv(aliases) if aliases else None, weight, names, nil_weight)

    def terms(self, surface: str, entity_id: str) -> tuple[float, float]:
        """(ranking term, NIL-evidence term) of the pair: p(entity | surface) times `weight` and `nil_weight`."""
        p = self.probability(surface, entity_id)
        return self.weight * p, (self.weight if self.nil_weight is None else self.nil_weight) * p

    def probability(self, surface: str, entity_id: str) -> float:
        """p(entity | surface); 0 when the surface or the pair is unknown."""
        by_entity = self.table.links(surface) if self.table else {}
        count, total = by_entity.get(entity_id, 0.0), sum(by_entity.values())
        if self.names is not None:
            count += self.names.names(surface, entity_id)
            total += self.names.count(surface)
        return count / total if total > 0 else 0.0

    def entities(self, surface: str, limit: int) -> list[str]:
        """Up to `limit` entities the surface refers to (the table's links, the entities it is a name of), the
        likeliest first (`probability`; ties by id)."""
        counts = dict(self.table.links(surface)) if self.table else {}
        for entity_id in self.names.entities(surface) if self.names is not None else ():
            counts[entity_id] = counts.get(entity_id, 0.0) + 1
        return ranked_by_count(counts)[:limit]


@dataclass
class PopularityPrior:
    """How well known each entity is, in [0, 1], weighted for re-ranking."""

    scores: dict[str, float]  # entity id -> log(1 + popularity) / log(1 + max popularity); absent: 0
    weight: float = DEFAULT_POPULARITY_WEIGHT  # added to the cosine as weight * score when ranking candidates

    @classmethod
    def from_kb(cls, *paths: str | Path, weight: float = DEFAULT_POPULARITY_WEIGHT) -> PopularityPrior:
        """Read the `popularity` of every entity of KB JSONL files, a later file's line winning (a KB
        without the field gives all zeros)."""
        counts = {entity.id: entity.popularity for path in paths for entity in iter_kb(path)}
        return cls.from_counts(counts, weight=weight)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], *, weight: float = DEFAULT_POPULARITY_WEIGHT) -> PopularityPrior:
        """The prior of entity id -> popularity (as an index stores it, `kb.index.stored_popularity`)."""
        counts = {entity_id: count for entity_id, count in counts.items() if count > 0}
        top = math.log1p(max(counts.values(), default=0))
        return cls({entity_id: math.log1p(count) / top for entity_id, count in counts.items()}, weight)

    def score(self, entity_id: str) -> float:
        """The entity's popularity in [0, 1]; 0 when unknown."""
        return self.scores.get(entity_id, 0.0)


def is_title_of(surface: str, entity_id: str) -> bool:
    """Whether the surface (case and spacing aside) is one of the names the id spells (`title_names`)."""
    return normalise_surface(surface) in title_names(entity_id)


def choose(
    candidate_ids: Sequence[str | None],
    candidate_scores: Sequence[float],
    surface: str,
    *,
    alias_prior: AliasPrior | None = None,
    popularity: PopularityPrior | None = None,
    name_weight: float = 0.0,
) -> tuple[str | None, float, float]:
    """The best-ranked candidate of one mention: (its id, its cosine, its evidence against NIL), before any threshold.

    Candidates are ranked by cosine (+ weight * p(entity | surface) with an alias prior, + weight *
    popularity score with a popularity prior, + `name_weight` when the surface is the candidate's title,
    `is_title_of`). The evidence is the best one's cosine plus its name term and its alias term (weighted by the
    prior's `nil_weight`; not popularity). Empty ids (padding from a short index) are skipped; no candidate ->
    (None, -inf, -inf).
    """
    if len(candidate_ids) != len(candidate_scores):
        raise ValueError(f"candidate_ids and candidate_scores differ in length: {len(candidate_ids)} != {len(candidate_scores)}")
    best_id, best_cosine, best_evidence, best_rank = None, -math.inf, -math.inf, -math.inf
    for entity_id, cosine in zip(candidate_ids, candidate_scores):
        if not entity_id:
            continue
        named = float(cosine) + (name_weight if name_weight and is_title_of(surface, entity_id) else 0.0)
        alias_rank, alias_evidence = alias_prior.terms(surface, entity_id) if alias_prior else (0.0, 0.0)
        rank, evidence = named + alias_rank, named + alias_evidence
        if popularity:
            rank += popularity.weight * popularity.score(entity_id)
        if rank > best_rank:
            best_id, best_cosine, best_evidence, best_rank = entity_id, float(cosine), evidence, rank
    return best_id, best_cosine, best_evidence


def decide(
    candidate_ids: Sequence[str | None],
    candidate_scores: Sequence[float],
    surface: str,
    *,
    nil_threshold: float,
    alias_prior: AliasPrior | None = None,
    popularity: PopularityPrior | None = None,
    name_weight: float = 0.0,
) -> tuple[str | None, float]:
    """Pick the linked entity of one mention, or None (NIL): the best-ranked candidate (`choose`) with its cosine,
    or None with that cosine when its evidence is below `nil_threshold`; no candidate -> (None, -inf)."""
    best_id, cosine, evidence = choose(candidate_ids, candidate_scores, surface, alias_prior=alias_prior,
                                       popularity=popularity, name_weight=name_weight)
    return (best_id, cosine) if best_id is not None and evidence >= nil_threshold else (None, cosine)


def short_form_links(surfaces: Sequence[str], entity_ids: Sequence[str | None],
                     candidates: Sequence[Sequence[str]]) -> list[str | None]:
    """The entity ids of one text's mentions after linking short forms: a NIL mention whose words (case
    folded) are a contiguous part of a longer mention's takes that mention's entity when all such longer
    linked mentions agree on it and it is among the NIL mention's own candidates; the others are kept."""
    words = [[w.casefold() for w in WORD.findall(surface)] for surface in surfaces]
    out = list(entity_ids)
    for i, (short, entity_id) in enumerate(zip(words, entity_ids)):
        if entity_id is not None or not short:
            continue
        longer = {e for long, e in zip(words, entity_ids) if e is not None and len(long) > len(short)
                  and any(long[j:j + len(short)] == short for j in range(len(long) - len(short) + 1))}
        if len(longer) == 1 and (found := next(iter(longer))) in candidates[i]:
            out[i] = found
    return out
