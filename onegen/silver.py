"""Training text outside AIDA's genre: silver documents from the KB's own descriptions, and case variants.

A KB description is an encyclopedic sentence or two about its entity ("'Aiea High School is a public,
co-educational ... high school of the Hawaii State Department of Education"). As a training document:
- the described entity's name (its title without a trailing "(disambiguation)") links to it wherever it
  occurs: a free gold link;
- another name links only where exactly one KB entity has it as its title, with no disambiguation, and
  it starts with a capital ("Hawaii State Department of Education"), a one-word name only when it is no
  common word, and the alias table never links it elsewhere (`unambiguous_names`); the longest name
  wins, left to right;
- a description that shares a run of SHINGLE_WORDS words with an evaluation document is dropped (so is
  one shorter than that), so that no evaluation text is trained on.

Casing: AIDA's headlines are upper case, most corpora's text is not. `case_variants` copies a seeded
share of the documents upper- or lower-cased, mentions kept, so that marking a name depends less on
its case.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from kb.aliases import AliasTable
from kb.entity import Entity
from onegen.spans import Document, Mention

SHINGLE_WORDS = 8  # a description sharing this many consecutive words with an evaluation text is dropped
MAX_NAME_TOKENS = 8  # longest name looked up, in tokens
COMMON_WORD_COUNT = 5  # a word the descriptions use this often in lower case is a common word, not a name
# dates are never linked in the benchmarks' annotations (nor by the baseline's NER labels)
DATE_WORDS = frozenset("monday tuesday wednesday thursday friday saturday sunday january february march april may june "
                       "july august september october november december".split())
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)$")


def entity_name(title: str) -> str:
    """What a text calls an entity: its title without a trailing disambiguation ("Paris (mythology)" -> "Paris")."""
    return _DISAMBIGUATION.sub("", title).strip()


def unambiguous_names(entities: Sequence[Entity], aliases: AliasTable | None = None) -> dict[str, str]:
    """Name -> entity id, for the capitalised names exactly one entity's title has, and has without a
    disambiguation ("German (parish)" alone does not make "German" its name: the title says it is not the
    only German), and that the alias table, if given, never links elsewhere ("Russian" -> Russia).
    A one-word name is left out when its lower-case form is a word of the descriptions ("New", "School"),
    it is a date word, or it has under three letters."""
    owners: dict[str, list[Entity]] = {}
    for entity in entities:
        name = entity_name(entity.title)
        if name[:1].isupper():
            owners.setdefault(name, []).append(entity)
    words = Counter(w for entity in entities for w in _WORD.findall(entity.description or ""))

    def common(name: str) -> bool:
        return len(name) < 3 or name.lower() in DATE_WORDS or words[name.lower()] >= COMMON_WORD_COUNT

    def elsewhere(name: str, entity_id: str) -> bool:
        return aliases is not None and any(other != entity_id for other in aliases.entities(name))

    return {name: found[0].id for name, found in owners.items()
            if len(found) == 1 and found[0].title == name and not (_WORD.fullmatch(name) and common(name))
            and not elsewhere(name, found[0].id)}


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive lower-cased words of `text`."""
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def link_names(text: str, names: dict[str, str], described: tuple[str, str] | None = None) -> list[Mention]:
    """The names of `text` linked, longest first, left to right: `described` (name, entity id) wherever it
    occurs, other names by `names` (name -> entity id)."""
    tokens = list(_TOKEN.finditer(text))
    mentions, i = [], 0
    while i < len(tokens):
        for j in range(min(len(tokens), i + MAX_NAME_TOKENS) - 1, i - 1, -1):  # longest span first
            start, end = tokens[i].start(), tokens[j].end()
            surface = text[start:end]
            entity_id = described[1] if described and surface == described[0] else names.get(surface)
            if entity_id is not None:
                mentions.append(Mention(start, end, surface, entity_id))
                i = j
                break
        i += 1
    return mentions


def silver_documents(entities: Sequence[Entity], exclude: Iterable[str] = (),
                     aliases: AliasTable | None = None) -> tuple[list[Document], int]:
    """(one silver Document per usable KB description, the number dropped for overlapping `exclude`,
    the evaluation texts). Descriptions under SHINGLE_WORDS words are not used; other names are linked
    by `unambiguous_names(entities, aliases)`."""
    names = unambiguous_names(entities, aliases)
    held_out = set().union(*(shingles(text) for text in exclude))
    docs, dropped = [], 0
    for entity in entities:
        own = shingles(entity.description or "")
        if not own:
            continue
        if own & held_out:
            dropped += 1
            continue
        mentions = link_names(entity.description, names, (entity_name(entity.title), entity.id))
        docs.append(Document(f"silver:{entity.id}", entity.description, mentions))
    return docs, dropped


def case_variants(docs: Sequence[Document], fraction: float, seed: int = 0) -> list[Document]:
    """Copies of a seeded `fraction` of `docs`, alternately upper- and lower-cased, mentions kept (a text
    whose length the case changes, as "ß" -> "SS", is left out)."""
    rng = random.Random(seed)
    chosen = [doc for doc in docs if rng.random() < fraction]
    out = []
    for n, doc in enumerate(chosen):
        case, change = ("upper", str.upper) if n % 2 == 0 else ("lower", str.lower)
        text = change(doc.text)
        if len(text) != len(doc.text):
            continue
        mentions = [Mention(m.start, m.end, text[m.start:m.end], m.entity_id) for m in doc.mentions]
        out.append(Document(f"{doc.doc_id}#{case}", text, mentions))
    return out

