"""Canonical entity ids (DESIGN section 4) and the redirects table that normalises them.

The canonical id is the English Wikipedia title in URL form: percent-decoded, spaces to `_`,
first character upper-cased, Unicode NFC (`United_Kingdom`). Wikipedia URLs and DBpedia
resource URIs map to their title; German DBpedia titles (Reuters-128) are kept as they are.
Any other URI (`http://aksw.org/notInWiki/...`, an OKE individual) is NIL, returned as None.
"""
from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

LOG = logging.getLogger(__name__)

# URI prefixes whose remainder is a Wikipedia title (http and https both accepted)
TITLE_PREFIXES = (
    "dbpedia.org/resource/",
    "en.wikipedia.org/wiki/",
    "de.dbpedia.org/resource/",
)


def canonical_title(title: str) -> str | None:
    """Canonical form of a bare title: percent-decoded, NFC, spaces to `_`, first char upper; "" -> None."""
    title = unicodedata.normalize("NFC", unquote(title)).strip().replace(" ", "_")
    if not title:
        return None
    first = title[0].upper()
    if len(first) != 1:  # e.g. "ß".upper() == "SS": Wikipedia keeps such a first letter
        first = title[0]
    return first + title[1:]


def canonical_id(ref: str) -> str | None:
    """Canonical entity id of a Wikipedia URL, DBpedia URI or bare title; None (NIL) for any other URI."""
    ref = ref.strip()
    for scheme in ("http://", "https://"):
        if ref.startswith(scheme):
            rest = ref[len(scheme):]
            for prefix in TITLE_PREFIXES:
                if rest.startswith(prefix):
                    return canonical_title(rest[len(prefix):])
            return None
    if "://" in ref or ref.startswith("urn:"):
        return None
    return canonical_title(ref)


def read_redirects(path: str | Path) -> Iterator[tuple[str, str]]:
    """The (from id, to id) pairs of a `from<TAB>to` table (titles or URLs; quotes are title characters, not CSV
    quoting), canonical, in file order; pairs whose sides are NIL or the same id are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"redirects table not found: {path} (expected a from<TAB>to TSV file)")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated columns (from, to), got {len(parts)}: {line!r}")
            source, target = canonical_id(parts[0]), canonical_id(parts[1])
            if source is not None and target is not None and source != target:
                yield source, target


class Redirects:
    """A `from -> to` title table; `resolve` follows chains to their end and is safe on cycles."""

    def __init__(self, table: dict[str, str]):
        self.table = table  # canonical from-id -> canonical to-id
        self._resolved: dict[str, str] = {}  # memo of resolve()

    @classmethod
    def empty(cls) -> Redirects:
        """A table that maps every id to itself."""
        return cls({})

    @classmethod
    def from_tsv(cls, path: str | Path) -> Redirects:
        """Read `from<TAB>to` lines (`read_redirects`)."""
        table: dict[str, str] = {}
        for source, target in read_redirects(path):
            table.setdefault(source, target)  # the first mapping wins, as in kb/redirects.tsv
        return cls(table)

    def __len__(self) -> int:
        return len(self.table)

    def resolve(self, entity_id: str) -> str:
        """Follow redirects from `entity_id` to the end of the chain.

        On a cycle every member resolves to the smallest id of the cycle (code-point order),
        so all of them compare equal.
        """
        if entity_id in self._resolved:
            return self._resolved[entity_id]
        path = [entity_id]
        seen = {entity_id}
        current = entity_id
        while current in self.table and current not in self._resolved:
            current = self.table[current]
            if current in seen:  # cycle: the members are path[path.index(current):]
                cycle = path[path.index(current):]
                LOG.debug("redirect cycle %s", " -> ".join(cycle + [current]))
                target = min(cycle)
                break
            seen.add(current)
            path.append(current)
        else:
            target = self._resolved.get(current, current)
        for node in path:
            self._resolved[node] = target
        return target
