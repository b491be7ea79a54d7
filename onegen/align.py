"""Map the mentions marked in a model's output back to character offsets of the source text.

The model re-writes its input with each mention as `<MENTION>m</MENTION>[LK][_CONTINUE_]`. The copy
can drift from the source (spacing, a changed, dropped or inserted word, changed case) and the
markup can be malformed. The method:

1. Parse. Scan the output for the four markers; everything else is the *plain copy*. A mention is
   the plain text between `<MENTION>` and the next `</MENTION>`; an `[LK]` that follows its close
   (only whitespace or `[_CONTINUE_]` between) is its link, identified by its ordinal among all
   `[LK]` of the output (the order in which the decoder returns their vectors). Malformed markup is
   tolerated: an open tag without a close is dropped (its end is unknown), a second open restarts
   the mention, a stray close or `[LK]` is ignored (a stray `[LK]` still counts in the ordinals),
   a mention with no `[LK]` has `link_index=None`.
2. Align. The plain copy is aligned to the source character by character with
   `difflib.SequenceMatcher(autojunk=False)` (both lower-cased when that keeps their lengths, so
   a change of case is not a difference). Identical copies skip this.
3. Map and snap. A mention boundary inside a matching block maps exactly. A boundary in a
   differing block maps to that block's edge in the source and is then snapped outward to word
   boundaries (a drifted word is taken whole). The span is trimmed of whitespace.
4. Check. `surface = source[start:end]`, so a span's text is always its surface. A mention is dropped
   when its span is empty, when fewer than half of its characters matched the source (it cannot be
   placed), or when it overlaps a mention placed before it.
"""
from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass

from onegen.tokens import CONTINUE, LINK, MENTION_CLOSE, MENTION_OPEN

_MARKERS = re.compile("|".join(re.escape(m) for m in (MENTION_OPEN, MENTION_CLOSE, LINK, CONTINUE)))
MIN_MATCHED = 0.5  # a mention needs at least this fraction of its characters aligned to the source


@dataclass
class AlignedMention:
    """A marked mention placed in the source text."""

    start: int  # char offset (code points) into the source
    end: int  # one past the last character
    surface: str  # source[start:end], always
    link_index: int | None  # ordinal of its [LK] among the output's [LK] tokens; None if it has none


@dataclass
class _Marked:
    """A mention in the plain copy (parse step)."""

    start: int  # offset into the plain copy
    end: int
    link_index: int | None = None


def parse_marked(marked: str) -> tuple[str, list[_Marked]]:
    """(plain copy with all markers removed, mentions in plain-copy offsets), malformed markup tolerated."""
    plain: list[str] = []
    length = 0  # characters in `plain`
    mentions: list[_Marked] = []
    open_at: int | None = None  # plain offset of an unclosed <MENTION>
    waiting: _Marked | None = None  # the last closed mention, until its [LK] or other text comes
    links = 0
    pos = 0
    for match in _MARKERS.finditer(marked):
        text = marked[pos : match.start()]
        if text:
            plain.append(text)
            length += len(text)
            if text.strip():
                waiting = None
        pos = match.end()
        marker = match.group()
        if marker == MENTION_OPEN:
            open_at, waiting = length, None
        elif marker == MENTION_CLOSE:
            if open_at is not None:
                waiting = _Marked(open_at, length)
                mentions.append(waiting)
            open_at = None
        elif marker == LINK:
            if waiting is not None and waiting.link_index is None:
                waiting.link_index = links
            waiting = None
            links += 1
    plain.append(marked[pos:])
    return "".join(plain), mentions


def _fold(a: str, b: str) -> tuple[str, str]:
    """Lower-cased copies when lower-casing keeps both lengths (offsets stay valid), else the originals."""
    la, lb = a.lower(), b.lower()
    return (la, lb) if len(la) == len(a) and len(lb) == len(b) else (a, b)


class _Alignment:
    """Character alignment of the plain copy (a) to the source (b)."""

    def __init__(self, plain: str, source: str):
        a, b = _fold(plain, source)
        if a == b:
            self.opcodes = [("equal", 0, len(a), 0, len(b))] if a else []
        else:
            self.opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
        self.starts = [op[1] for op in self.opcodes]  # plain offset where each opcode starts

    def _op(self, i: int):
        k = bisect.bisect_right(self.starts, i) - 1
        return self.opcodes[max(k, 0)]

    def start(self, i: int) -> tuple[int, bool]:
        """(source offset of plain character i, exact?)."""
        tag, i1, _, j1, j2 = self._op(i)
        return (j1 + i - i1, True) if tag == "equal" else (j1, False)

    def end(self, i: int) -> tuple[int, bool]:
        """(source offset one past the source character of plain character i - 1, exact?)."""
        tag, i1, _, j1, j2 = self._op(i - 1)
        return (j1 + i - i1, True) if tag == "equal" else (j2, False)

    def matched(self, i: int, j: int) -> int:
        """Characters of plain[i:j] inside matching blocks."""
        return sum(max(0, min(j, i2) - max(i, i1)) for tag, i1, i2, _, _ in self.opcodes if tag == "equal")


def _is_word(ch: str) -> bool:
    return ch.isalnum()


def align_mentions(source: str, marked: str) -> list[AlignedMention]:
    """The mentions marked in `marked` (a model's output for `source`) with offsets into `source`.

    See the module docstring for the method. Spans come back in source order, non-overlapping, each
    with `source[start:end] == surface` and no surrounding whitespace.
    """
    plain, mentions = parse_marked(marked)
    if not mentions:
        return []
    alignment = _Alignment(plain, source)
    placed: list[AlignedMention] = []
    for m in mentions:
        if m.end <= m.start or not plain[m.start : m.end].strip():
            continue
        if alignment.matched(m.start, m.end) < MIN_MATCHED * (m.end - m.start):
            continue
        start, exact_start = alignment.start(m.start)
        end, exact_end = alignment.end(m.end)
        if not exact_start:
            while 0 < start < len(source) and _is_word(source[start - 1]) and _is_word(source[start]):
                start -= 1
        if not exact_end:
            while 0 < end < len(source) and _is_word(source[end - 1]) and _is_word(source[end]):
                end += 1
        while start < end and source[start].isspace():
            start += 1
        while end > start and source[end - 1].isspace():
            end -= 1
        if start >= end or any(start < p.end and p.start < end for p in placed):
            continue
        placed.append(AlignedMention(start, end, source[start:end], m.link_index))
    return sorted(placed, key=lambda p: p.start)
