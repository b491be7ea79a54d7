"""The KB entity: one line of the KB JSONL."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Entity:
    """One KB entity (DESIGN section 4: the KB JSONL contract)."""

    id: str  # canonical id: English Wikipedia title in URL form, e.g. "United_Kingdom"
    title: str  # human title, e.g. "United Kingdom"
    description: str = ""  # short description; empty means the title is used
    aliases: list[str] = field(default_factory=list)  # other names the entity goes by
    popularity: int = 0  # e.g. Wikipedia in-links; 0 when unknown
