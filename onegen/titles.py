"""The names of a KB's entities: the titles their ids spell, and the names redirects and the KB's aliases give them.

Three users ask about them:
- An NER span that is a KB title ("Brigham Young University") is a better mention than the pieces the
  model marked inside it ("Brigham", "Young", "University"): `onegen.Linker.embed` (mentions "union",
  `title_spans`) lets such a span replace them (`text in titles`). With `split_spans`, so does a title that
  two neighbouring mentions spell together ("Long Beach" and "California", "OFK" and "Kikinda": `joined_titles`).
- The alias prior (`onegen.decide.AliasPrior`) counts each name as one link of its entity, so that a
  mention written as an entity's name is evidence for it, shared among the entities of that name
  (`count`, `names`).
- Name candidates (`onegen.linker.add_name_candidates`): the entities a mention's surface names join the ones
  retrieval found (`entities`).
A full Wikipedia KB has millions of names and every linker holds them, so they are kept as sorted 64-bit
hashes, each with the row of the entity it names (16 bytes a name), and the ids as one UTF-8 buffer.
"""
from __future__ import annotations

import hashlib
import logging
import time
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kb.aliases import normalise_surface, title_names
from kb.ids import read_redirects
from kb.jsonl import iter_aliases, iter_kb

LOG = logging.getLogger(__name__)

MEMO_SIZE = 100_000  # answers of `count` and of `names` remembered, each


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _count(hashes: np.ndarray, key: int) -> int:
    start, end = _range(hashes, key)
    return end - start


def _range(hashes: np.ndarray, key: int) -> tuple[int, int]:
    """The slice of the sorted `hashes` equal to `key`."""
    key = np.uint64(key)
    return int(np.searchsorted(hashes, key, side="left")), int(np.searchsorted(hashes, key, side="right"))


def _sorted_pairs(hashes: array, rows: array) -> tuple[np.ndarray, np.ndarray]:
    """(name hash, entity row) pairs, each once, sorted by hash: two parallel arrays."""
    pairs = np.unique(np.stack([np.frombuffer(hashes, dtype=np.uint64),
                                np.frombuffer(rows, dtype=np.int64).astype(np.uint64)], axis=1), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].astype(np.int64)


class Titles:
    """The names of a KB's entities, compared case and spacing aside: the titles of their ids, with and without
    their parenthesised qualifiers (`kb.aliases.title_names`), and their other names: those of redirects to them
    and the KB's `aliases` of them. Each name knows the entities it names (`entities`)."""

    def __init__(self, entity_ids: Sequence[str], titles: tuple[np.ndarray, np.ndarray],
                 others: tuple[np.ndarray, np.ndarray]):
        # row -> entity id, as one UTF-8 buffer and each id's end in it (compact for millions of ids; no pyarrow on
        # the lent GPU machine)
        encoded = [entity_id.encode("utf-8") for entity_id in entity_ids]
        self._ids = b"".join(encoded)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        # a title name's hash once per entity it names, sorted, and that entity's row
        self.hashes, self.title_rows = titles
        # an other name's hash once per entity it names (none of that entity's titles), sorted, and the entity's row
        self.other_names, self.other_rows = others
        self._counts: dict[str, int] = {}  # memo of `count`
        self._names: dict[tuple[str, str], bool] = {}  # memo of `names`

    @classmethod
    def from_ids(cls, entity_ids: Iterable[str], redirects: Iterable[tuple[str, str]] = (),
                 aliases: Iterable[tuple[str, str]] = ()) -> Titles:
        """The names of these canonical entity ids, with those of the `redirects` (from id, to id) pairs whose
        target is one of them (`kb.ids.read_redirects`, streamed: a full Wikipedia's table is never held) and
        the `aliases` (name, entity id) pairs of the KB (`kb.index.stored_aliases`, streamed too)."""
        entity_ids = list(entity_ids)
        title_hashes, title_rows = array("Q"), array("q")
        for row, entity_id in enumerate(entity_ids):
            for name in title_names(entity_id):
                title_hashes.append(_hash(name))
                title_rows.append(row)
        row_of = {entity_id: row for row, entity_id in enumerate(entity_ids)}
        redirected = ((title_names(source), target) for source, target in redirects if target in row_of)
        aliased = (((normalise_surface(alias),), entity_id) for alias, entity_id in aliases if entity_id in row_of)
        other_hashes, other_rows = array("Q"), array("q")
        for group in (redirected, aliased):
            for found, target in group:
                own = title_names(target)
                for name in found:
                    if name and name not in own:
                        other_hashes.append(_hash(name))
                        other_rows.append(row_of[target])
        return cls(entity_ids, _sorted_pairs(title_hashes, title_rows), _sorted_pairs(other_hashes, other_rows))

    def __contains__(self, text: str) -> bool:
        """Whether the text is an entity's title (redirect names aside)."""
        return _count(self.hashes, _hash(normalise_surface(text))) > 0

    def count(self, text: str) -> int:
        """How many entities the text names, as a title, a redirect or an alias."""
        key = normalise_surface(text)
        if key not in self._counts:
            if len(self._counts) >= MEMO_SIZE:  # a long job meets many surfaces: forget rather than grow
                self._counts.clear()
            hashed = _hash(key)
            self._counts[key] = _count(self.hashes, hashed) + _count(self.other_names, hashed)
        return self._counts[key]

    def entities(self, text: str) -> list[str]:
        """The entities the text names (as `count` counts them): those it is a title of, then the others."""
        hashed = _hash(normalise_surface(text))
        rows = [self.title_rows[slice(*_range(self.hashes, hashed))],
                self.other_rows[slice(*_range(self.other_names, hashed))]]
        return [self._entity(row) for row in np.concatenate(rows)]

    def names(self, text: str, entity_id: str) -> bool:
        """Whether the text is one of the entity's names: a title its id spells, a redirect's to it or an alias."""
        pair = (normalise_surface(text), entity_id)
        if pair not in self._names:
            if len(self._names) >= MEMO_SIZE:
                self._names.clear()
            rows = self.other_rows[slice(*_range(self.other_names, _hash(pair[0])))]
            self._names[pair] = (pair[0] in title_names(entity_id)
                                 or any(self._entity(row) == entity_id for row in rows))
        return self._names[pair]

    def _entity(self, row: int) -> str:
        start = self._ends[row - 1] if row else 0
        return self._ids[start:self._ends[row]].decode("utf-8")


# What `split_spans` does, as a link job's manifest records it: since 2026-12-05 it joins titles too, so an output
# whose manifest says True (split spans without joined titles) is not continued with it
SPLIT_SPANS_RULE = "with joined titles"


def joined_titles(text: str, spans: Iterable[tuple[int, int]], titles: Titles) -> list[tuple[int, int]]:
    """The spans that join two neighbouring spans of a text, apart by nothing but spaces and at most a comma (no line
    break: a table's rows are not one name), and are a KB title as written ("Long Beach, California"; "Long Beach ,
    California" is none), left to right, none overlapping another. A span that cuts across one (overlaps it without
    lying inside it) rules it out."""
    ordered = sorted(set(spans))
    joined: list[tuple[int, int]] = []
    for (start, first_end), (second_start, end) in zip(ordered, ordered[1:]):
        if (first_end > second_start or text[first_end:second_start].replace(" ", "") not in ("", ",")
                or text[start:end] not in titles or (joined and joined[-1][1] > start)):
            continue
        if all(start <= s and e <= end for s, e in ordered if s < end and start < e):
            joined.append((start, end))
    return joined


def kb_names(entity_ids: Iterable[str], redirects: str | Path | None = None,
             aliases: Iterable[tuple[str, str]] = ()) -> Titles:
    """The names of a KB's entities, with those of the `from<TAB>to` redirects table at `redirects` when given
    and the KB's `aliases` (name, entity id) pairs."""
    started = time.perf_counter()
    names = Titles.from_ids(entity_ids, read_redirects(redirects) if redirects else (), aliases)
    LOG.info("the KB's names: %d from titles, %d from aliases and %s (%.1f s)", len(names.hashes),
             len(names.other_names), redirects or "no redirects table", time.perf_counter() - started)
    return names


def kb_file_names(kb_file: str | Path, redirects: str | Path | None = None) -> Titles:
    """The names of a KB JSONL's entities (`kb_names`): their titles and aliases, read in two streamed passes,
    and the names of the `redirects` table when given."""
    return kb_names((entity.id for entity in iter_kb(kb_file)), redirects, iter_aliases(kb_file))
