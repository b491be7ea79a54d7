"""The names of a KB's entities, as their ids spell them, for asking "is this text an entity's title?".

An NER span that is a KB title ("Brigham Young University") is a better mention than the pieces the
model marked inside it ("Brigham", "Young", "University"): `onegen.Linker.embed` (mentions "union",
`title_spans`) lets such a span replace them. A full Wikipedia KB has millions of titles and every model
replica holds them, so they are kept as sorted 64-bit hashes: 8 bytes a name.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from kb.aliases import normalise_surface
from onegen.decide import title_names


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class Titles:
    """A set of entity titles, with and without their parenthesised qualifiers (`onegen.decide.title_names`),
    compared case and spacing aside."""

    def __init__(self, hashes: np.ndarray):
        self.hashes = np.unique(np.asarray(hashes, dtype=np.uint64))  # sorted hashes of normalised names

    @classmethod
    def from_ids(cls, entity_ids: Iterable[str]) -> Titles:
        """The titles of these canonical entity ids."""
        return cls(np.fromiter((_hash(name) for entity_id in entity_ids for name in title_names(entity_id)),
                               dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, text: str) -> bool:
        key = np.uint64(_hash(normalise_surface(text)))
        i = int(np.searchsorted(self.hashes, key))
        return i < len(self.hashes) and self.hashes[i] == key
