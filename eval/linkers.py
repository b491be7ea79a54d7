"""Pluggable linkers for `run_gerbil.py run|serve`: the TextLinker protocol, a registry and the spaCy baseline.

A linker maps texts to annotations with code-point offsets and canonical entity ids (None = NIL).
`get_linker("baseline")` is spaCy NER + an alias prior from AIDA train + exact KB-title match;
`get_linker("onegen")` is `onegen.Linker`, imported on demand (its `mentions` "ner" and "union" link the
baseline's NER spans too, `onegen.ner`).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable, Protocol

from eval.corpora import DEFAULT_DATA_DIR
from onegen.spans import Mention
from kb.aliases import AliasTable
from kb.entity import Entity
from kb.jsonl import iter_kb
from onegen.ner import NAME_LABELS, SPACY_MODEL, NerSpans

DEFAULT_ALIASES = DEFAULT_DATA_DIR / "kb" / "aida_train_aliases.tsv"  # mention<TAB>entity<TAB>count, AIDA train gold
DEFAULT_KB = DEFAULT_DATA_DIR / "kb" / "entities.jsonl"  # {id, title, description, popularity} per line


class TextLinker(Protocol):
    """Finds and links the entity mentions of each text."""

    def link(self, texts: list[str]) -> list[list[Mention]]:
        """One list of mentions per text, sorted by start; code-point offsets, entity_id None for NIL."""
        ...


def read_title_index(path: str | Path) -> dict[str, str]:
    """KB title or id -> entity id; when several entities share a key the most popular one wins."""
    best: dict[str, Entity] = {}  # title or id -> most popular entity with it
    for entity in iter_kb(path):
        for key in {entity.id, entity.title}:
            if key not in best or (entity.popularity, entity.id) > (best[key].popularity, best[key].id):
                best[key] = entity
    return {key: entity.id for key, entity in best.items()}


class BaselineLinker:
    """spaCy NER mentions (`NerSpans`) linked by the AIDA-train alias prior, falling back to an exact KB
    title/id match.

    Mentions with no match are emitted with entity_id None (NIL): GERBIL's InKB scores ignore predicted
    NILs (same InKB numbers either way), and the EE (NIL) class gets credit for them.
    """

    def __init__(self, aliases: str | Path = DEFAULT_ALIASES, kb: str | Path = DEFAULT_KB, model: str = SPACY_MODEL,
                 batch_size: int = 32, labels: frozenset[str] = NAME_LABELS):
        self.aliases = AliasTable.from_tsv(aliases)  # AIDA-train alias counts
        self.titles = read_title_index(kb)  # exact KB title / id -> entity id
        self.ner = NerSpans(model, batch_size, labels)

    def entity_for(self, mention: str) -> str | None:
        """Alias prior (exact, then case-insensitive), then exact KB title or id, else None (NIL)."""
        return self.aliases.most_frequent(mention) or self.titles.get(mention)

    def link(self, texts: list[str]) -> list[list[Mention]]:
        """Annotate each text: its NER name mentions, each linked by `entity_for`."""
        return [[Mention(start, end, text[start:end], self.entity_for(text[start:end])) for start, end in spans]
                for text, spans in zip(texts, self.ner(texts))]


def _onegen_linker(model: str | None = None, kb: str | None = None, **options) -> TextLinker:
    """`onegen.Linker.from_pretrained(model, kb=kb, **options)`, imported only when asked for; a big KB's
    index is built into the cache (with Ray) on first use."""
    try:
        module = importlib.import_module("onegen.linker")
        cls = module.Linker
    except (ImportError, AttributeError) as e:
        raise ImportError(f"the 'onegen' linker needs onegen.Linker, which cannot be imported ({e}); "
                          f"use --linker baseline until the OneGen linker is installed") from e
    return cls.from_pretrained(model, kb=kb, build_index=True, **options)


# linker name -> factory taking the linker's keyword options
LINKERS: dict[str, Callable[..., TextLinker]] = {"baseline": BaselineLinker, "onegen": _onegen_linker}
LINKER_NAMES = tuple(LINKERS)


def linker_options(name: str) -> tuple[str, ...] | None:
    """Keyword options the named linker accepts, or None when its factory does not say (it takes **options)."""
    params = inspect.signature(LINKERS[name]).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params)


def get_linker(name: str, **options) -> TextLinker:
    """Build the named linker; options set to None are left at the linker's defaults."""
    if name not in LINKERS:
        raise ValueError(f"unknown linker {name!r}; choose one of: {', '.join(LINKER_NAMES)}")
    options = {k: v for k, v in options.items() if v is not None}
    accepted = linker_options(name)
    if accepted is not None and (unknown := sorted(set(options) - set(accepted))):
        raise ValueError(f"linker {name!r} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    return LINKERS[name](**options)
