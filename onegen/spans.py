"""The span and document types every part speaks: gold data, the linker, the link job's rows, the
scorer and the NIF service. Offsets are Python str indices (Unicode code points)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Candidate:
    """One entity retrieved for a mention."""

    entity_id: str  # canonical KB id
    score: float  # cosine between the mention's [LK] vector and the entity's [SE] vector


@dataclass
class Mention:
    """One entity mention: a span of a document, the entity it refers to and the candidates it was chosen from.

    Gold mentions have no score and no candidates; a retrieved mention not yet decided has
    `entity_id` None and its candidates set.
    """

    start: int  # first character, Python str index (code points) into Document.text
    end: int  # one past the last character; text[start:end] == surface
    surface: str
    entity_id: str | None = None  # canonical KB id (Wikipedia title in URL form), None for NIL
    score: float | None = None  # cosine of the chosen candidate (of the best one for NIL); None: not linked by a model
    # top-k retrieved, and the entities its surface names that retrieval missed (onegen.linker.add_name_candidates), best first
    candidates: list[Candidate] = field(default_factory=list)
    source: str | None = None  # who marked the span: "model" (decoded), "ner" or "given" (teacher-forced); None: gold

    def to_dict(self) -> dict:
        """The mention as a row of a candidates file (`eval/run_gerbil.py run --candidates`, read by
        `bench/gpu_score.py` and `eval/mention_errors.py`): span, who marked it, the run's decision (entity
        id or None) and candidates as [entity id, cosine] pairs."""
        return {"start": self.start, "end": self.end, "surface": self.surface, "source": self.source,
                "entity_id": self.entity_id, "candidates": [[c.entity_id, round(c.score, 6)] for c in self.candidates]}

    @classmethod
    def from_dict(cls, row: dict) -> Mention:
        """A mention read back from a row of a candidates file (entity_id None in files without decisions,
        source None in files older than the field)."""
        return cls(row["start"], row["end"], row["surface"], row.get("entity_id"),
                   candidates=[Candidate(e, float(c)) for e, c in row["candidates"]], source=row.get("source"))

    def to_row(self) -> dict:
        """The mention as a row of the link job's `mentions` column (onegen.pipeline.outputs.MENTION_TYPE)."""
        return {"start": self.start, "end": self.end, "surface": self.surface, "entity_id": self.entity_id,
                "score": self.score, "candidates": [{"entity_id": c.entity_id, "score": c.score} for c in self.candidates],
                "source": self.source}


@dataclass
class Document:
    """A text with its gold or predicted mentions, sorted by (start, end)."""

    doc_id: str  # AIDA doc id ("1163testb SOCCER"), NIF context URI, or "0", "1", ... for a linker's plain texts
    text: str
    mentions: list[Mention] = field(default_factory=list)


# The model's per-mention output. It stays apart from onegen.spans.Mention because it carries the
# [LK] vector: the linker searches with the vector, then keeps an onegen.spans.Mention.
@dataclass
class EmbeddedMention:
    """A mention found by the model, aligned to the source text, with its retrieval vector."""

    start: int  # char offset (code points) into the source text
    end: int  # one past the last character; text[start:end] == surface always
    surface: str
    vector: np.ndarray  # (D,) float32, L2-normalised hidden state at the mention's [LK] token
    source: str = "model"  # who marked the span: "model" (decoded), "ner" or "given" (teacher-forced)


@dataclass
class Annotated:
    """One input text after a OneGen pass."""

    text: str
    mentions: list[EmbeddedMention] = field(default_factory=list)
    marked: str = ""  # the model's raw output (marked-up copy of the text), for debugging
    generated_tokens: int = 0  # tokens the model produced for this text
