"""Document and annotation types shared by the dataset readers, the scorer and the linkers."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Annotation:
    """One entity mention: a character span of a document and the entity it refers to."""

    start: int  # first character, Python str index (Unicode code points) into Document.text
    end: int  # one past the last character
    surface: str  # Document.text[start:end]
    entity_id: str | None  # canonical KB id (Wikipedia title in URL form), None for NIL


@dataclass
class Document:
    """A text with its gold (or predicted) annotations, sorted by (start, end)."""

    doc_id: str  # AIDA doc id ("1163testb SOCCER") or NIF context URI
    text: str
    annotations: list[Annotation] = field(default_factory=list)
