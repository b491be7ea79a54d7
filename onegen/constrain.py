"""Constrained decoding of the mention-detection output: the source text, byte for byte, with markup.

The model is trained to write its window's text back with each mention marked as
`<MENTION>m</MENTION>[LK][_CONTINUE_]`, then EOS (onegen.data). A small model does not always copy:
in score tables it writes names of its own, repeats a line, or emits `[SE]` and loops, and the
mentions it marks there cannot be aligned to the source. `CopyRule` keeps every output inside that
grammar, as generative linkers constrain their decoders to the input (GENRE, De Cao et al. 2021):
at each step the next token must continue the source, open or close a mention (`<` starts the markup; a mention neither starts nor ends with whitespace),
write `[LK]` right after `</MENTION>` (markup never goes between two ASCII letters or digits), `[_CONTINUE_]` right after `[LK]`, or end the output (EOS) once
only whitespace of the source is left. Of the allowed tokens the model's most likely one is taken
(`pick`), so the model still decides where mentions are; it can no longer leave the source.

Tokens are matched as bytes (a token may hold part of a UTF-8 character), from the tokenizer's
byte-level (GPT-2 style) or SentencePiece (`▁`, `<0xNN>`) vocabulary (`token_bytes`).
"""
from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from onegen.tokens import MENTION_CLOSE, MENTION_OPEN

LOG = logging.getLogger(__name__)

OPEN, CLOSE = MENTION_OPEN.encode(), MENTION_CLOSE.encode()
LT = OPEN[0]  # both markup strings start with "<"
FREE, EXPECT_LINK, EXPECT_CONTINUE = 0, 1, 2  # what the next token may be: text, only [LK], only [_CONTINUE_]
PROBE = "Zürich , 1996-08-30 :\n\tBjörn <b> said \"Ça va\" — 東京 ."  # a round trip every mapped vocabulary must pass


@dataclass(frozen=True)
class Position:
    """Where a decoded prefix stands in the grammar of one source."""

    expect: int  # FREE, EXPECT_LINK or EXPECT_CONTINUE
    # every way of reading the prefix so far (a "<" may be copied or open markup), each a tuple
    # (source bytes copied, inside a mention, markup bytes written so far, source bytes at the mention's start)
    readings: frozenset[tuple[int, bool, int, int]]


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer) -> tuple[bytes | None, ...]:
    """The bytes each token id writes; None for added and special tokens (never plain text).
    Raises ValueError for a vocabulary that is neither byte-level BPE nor SentencePiece."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = set(tokenizer.added_tokens_decoder)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    sentencepiece = re.compile(r"<0x([0-9A-Fa-f]{2})>")

    def byte_level(piece: str) -> bytes | None:
        return bytes(byte_of[c] for c in piece) if all(c in byte_of for c in piece) else None

    def sentence_piece(piece: str) -> bytes:
        match = sentencepiece.fullmatch(piece)
        return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode()

    probe = tokenizer(PROBE, add_special_tokens=False).input_ids
    for convert in (byte_level, sentence_piece):
        table = tuple(None if i in added or piece is None else convert(piece) for i, piece in enumerate(pieces))
        written = [table[i] for i in probe]
        if None not in written and b"".join(written).lstrip(b" ") == PROBE.encode():
            return table
    raise ValueError(f"cannot map the tokens of {type(tokenizer).__name__} to bytes (neither byte-level BPE nor "
                     "SentencePiece): decode without the copy rule")


class CopyRule:
    """The outputs allowed for each source: the source with mention markup (module doc)."""

    def __init__(self, tokens: Sequence[bytes | None], sources: Sequence[str], link: int, cont: int, eos: set[int],
                 mention_bias: float = 0.0):
        self.tokens = tokens  # bytes of each token id (token_bytes)
        self.sources = [s.encode() for s in sources]
        self.link, self.cont, self.eos = link, cont, eos
        self.mention_bias = mention_bias  # logits added to a token that opens a mention when picking (pick)

    @classmethod
    def for_tokenizer(cls, tokenizer, sources: Sequence[str], link: int, cont: int, eos: set[int],
                      mention_bias: float = 0.0) -> CopyRule | None:
        """The rule of `sources`, or None (with a warning) when the vocabulary cannot be read as bytes."""
        try:
            return cls(token_bytes(tokenizer), sources, link, cont, eos, mention_bias)
        except ValueError as err:
            LOG.warning("%s", err)
            return None

    def rows(self, rows: slice) -> CopyRule:
        """The rule of `rows` of the sources, numbered from 0."""
        rule = copy.copy(self)
        rule.sources = self.sources[rows]
        return rule

    def start(self, row: int) -> tuple[int, Position]:
        """The state of row `row` (its source) before any output."""
        return row, Position(FREE, frozenset({(0, False, 0, 0)}))

    def advance(self, state: tuple[int, Position], token: int) -> tuple[int, Position] | None:
        """The state after `token`, or None when the grammar does not allow it there."""
        row, at = state
        source = self.sources[row]
        if at.expect == EXPECT_LINK:
            return (row, Position(EXPECT_CONTINUE, at.readings)) if token == self.link else None
        if at.expect == EXPECT_CONTINUE:
            return (row, Position(FREE, at.readings)) if token == self.cont else None
        if token in self.eos:
            done = any(not inside and not markup and not source[pos:].strip() for pos, inside, markup, _ in at.readings)
            return (row, at) if done else None
        text = self.tokens[token] if 0 <= token < len(self.tokens) else None
        if not text:
            return None
        readings = at.readings
        for byte in text:
            readings = frozenset(r for reading in readings for r in _step(source, reading, byte))
            if not readings:
                return None
        closed = [r for r in readings if r[2] == len(CLOSE) and r[1]]
        if closed:  # "</MENTION>" written: [LK] comes next
            pos, _, _, _ = closed[0]
            return row, Position(EXPECT_LINK, frozenset({(pos, False, 0, pos)}))
        return row, Position(FREE, readings)

    def pick(self, state: tuple[int, Position], ranked: Sequence[int], logits: Callable[[], torch.Tensor]) -> int:
        """The most likely allowed token: the first allowed one of `ranked` (the top few ids, best
        first), else the best allowed one of the full `logits` (V,) (rarely needed, and costlier).

        With a `mention_bias`, an allowed token of `ranked` that opens a mention wins when its logit plus
        the bias reaches the best allowed token's: the model marks more of what it half-believes is a
        mention (recall for precision; the NIL threshold drops the links it cannot support).
        """
        expect = state[1].expect
        if expect != FREE:
            return self.link if expect == EXPECT_LINK else self.cont
        best = next((token for token in ranked if self.advance(state, token) is not None), None)
        if best is None:
            best = next(token for token in torch.argsort(logits().float(), descending=True).tolist()
                        if self.advance(state, token) is not None)  # every source byte has a token: always found
        if self.mention_bias and not self._opens(state, best):
            opener = next((token for token in ranked if self._opens(state, token)), None)
            if opener is not None:
                row = logits()
                if float(row[opener]) + self.mention_bias >= float(row[best]):
                    return opener
        return best

    def _opens(self, state: tuple[int, Position], token: int) -> bool:
        """Whether `token` is allowed in `state` and starts writing `<MENTION>` outside a mention."""
        after = self.advance(state, token)
        opening = {r for r in after[1].readings if not r[1] and r[2]} if after and after[1].expect == FREE else set()
        return bool(opening) and not any(not r[1] and r[2] for r in state[1].readings)


def _step(source: bytes, reading: tuple[int, bool, int, int], byte: int) -> list[tuple[int, bool, int, int]]:
    """The readings after one more output byte (none: the byte is not allowed)."""
    pos, inside, markup, start = reading
    if inside and markup == len(CLOSE):  # "</MENTION>" is written: only [LK] may follow
        return []
    if markup:  # in the middle of "<MENTION>" or "</MENTION>"
        target = CLOSE if inside else OPEN
        if target[markup] != byte:
            return []
        if markup + 1 == len(OPEN) and not inside:
            return [(pos, True, 0, pos)]
        return [(pos, inside, markup + 1, start)]
    out = []
    if pos < len(source) and source[pos] == byte:
        out.append((pos + 1, inside, 0, start))
    # markup, never inside a word: a mention opens before a byte that is not whitespace, and closes after
    # one, having covered some
    if byte == LT and not _inside_word(source, pos) and (
        (inside and pos > start and not source[pos - 1 : pos].isspace())
        or (not inside and pos < len(source) and not source[pos : pos + 1].isspace())
    ):
        out.append((pos, inside, 1, start))
    return out


def _inside_word(source: bytes, pos: int) -> bool:
    """Whether `pos` falls between two ASCII letters or digits (a mention never starts or ends there:
    the model once marked "Pay", "n", "e" of "Payne" as three mentions)."""
    return 0 < pos < len(source) and chr(source[pos - 1]).isalnum() and chr(source[pos]).isalnum() \
        and source[pos - 1] < 0x80 and source[pos] < 0x80
