"""The names of a KB's entities: the titles their ids spell, and the names redirects and the KB's aliases give them.

Two users ask about them:
- An NER span that is a KB title ("Brigham Young University") is a better mention than the pieces the
  model marked inside it ("Brigham", "Young", "University"): `onegen.Linker.embed` (mentions "union",
  `title_spans`) lets such a span replace them (`text in titles`).
- The alias prior (`onegen.decide.AliasPrior`) counts each name as one link of its entity, so that a
  mention written as an entity's name is evidence for it, shared among the entities of that name
  (`count`, `names`).
A full Wikipedia KB has millions of names and every model replica holds them, so they are kept as sorted
64-bit hashes: 8 bytes a name.
"""
from __future__ import annotations

import hashlib
import logging
import time
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kb.aliases import normalise_surface, title_names
from kb.ids import read_redirects
from kb.jsonl import iter_aliases, iter_kb

LOG = logging.getLogger(__name__)

MEMO_SIZE = 100_000  # answers of `count` and of `names` remembered, each


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _sorted(hashes: Iterable[int]) -> np.ndarray:
    return np.sort(np.fromiter(hashes, dtype=np.uint64))


def _count(hashes: np.ndarray, key: int) -> int:
    key = np.uint64(key)
    return int(np.searchsorted(hashes, key, side="right") - np.searchsorted(hashes, key, side="left"))


class Titles:
    """The names of a KB's entities, compared case and spacing aside: the titles of their ids, with and without
    their parenthesised qualifiers (`kb.aliases.title_names`), and their other names: those of redirects to them
    and the KB's `aliases` of them."""

    def __init__(self, hashes: np.ndarray, other_names: np.ndarray | None = None,
                 other_pairs: np.ndarray | None = None):
        self.hashes = np.sort(np.asarray(hashes, dtype=np.uint64))  # a title name's hash, once per entity it names
        empty = np.zeros(0, dtype=np.uint64)
        # an other name's hash, once per entity it names (none of that entity's titles)
        self.other_names = empty if other_names is None else np.sort(np.asarray(other_names, dtype=np.uint64))
        # hashes of (other name, entity id) pairs, for `names`
        self.other_pairs = empty if other_pairs is None else np.sort(np.asarray(other_pairs, dtype=np.uint64))
        self._counts: dict[str, int] = {}  # memo of `count`
        self._names: dict[tuple[str, str], bool] = {}  # memo of `names`

    @classmethod
    def from_ids(cls, entity_ids: Iterable[str], redirects: Iterable[tuple[str, str]] = (),
                 aliases: Iterable[tuple[str, str]] = ()) -> Titles:
        """The names of these canonical entity ids, with those of the `redirects` (from id, to id) pairs whose
        target is one of them (`kb.ids.read_redirects`, streamed: a full Wikipedia's table is never held) and
        the `aliases` (name, entity id) pairs of the KB (`kb.index.stored_aliases`, streamed too)."""
        entity_ids = list(entity_ids)
        titles = _sorted(_hash(name) for entity_id in entity_ids for name in title_names(entity_id))
        known = set(entity_ids) if redirects else set()
        redirected = ((title_names(source), target) for source, target in redirects if target in known)
        aliased = (((normalise_surface(alias),), entity_id) for alias, entity_id in aliases)
        names, pairs = array("Q"), array("Q")
        for group in (redirected, aliased):
            for found, target in group:
                own = title_names(target)
                for name in found:
                    if name and name not in own:
                        names.append(_hash(name))
                        pairs.append(_hash(f"{name}\t{target}"))
        pairs_found, first = np.unique(np.frombuffer(pairs, dtype=np.uint64), return_index=True)
        return cls(titles, np.frombuffer(names, dtype=np.uint64)[first], pairs_found)  # each (name, entity) once

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

    def names(self, text: str, entity_id: str) -> bool:
        """Whether the text is one of the entity's names: a title its id spells, a redirect's to it or an alias."""
        pair = (normalise_surface(text), entity_id)
        if pair not in self._names:
            if len(self._names) >= MEMO_SIZE:
                self._names.clear()
            self._names[pair] = (pair[0] in title_names(entity_id)
                                 or _count(self.other_pairs, _hash(f"{pair[0]}\t{entity_id}")) > 0)
        return self._names[pair]


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
