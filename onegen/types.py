"""Outputs of OneGen inference."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Mention:
    """A mention found by the model, aligned to the source text."""

    start: int  # char offset (code points) into the source text
    end: int  # one past the last character; text[start:end] == surface always
    surface: str
    vector: np.ndarray  # (D,) float32, L2-normalised hidden state at the mention's [LK] token


@dataclass
class Annotated:
    """One input text after a OneGen pass."""

    text: str
    mentions: list[Mention] = field(default_factory=list)
    marked: str = ""  # the model's raw output (marked-up copy of the text), for debugging
    generated_tokens: int = 0  # tokens the model produced for this text
