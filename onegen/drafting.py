"""Drafts for `onegen.decoding.copy_decode`: guesses of a row's next tokens, verified by the model.

A draft never changes the output, only how many tokens one forward pass commits: the decoder keeps
the longest drafted prefix that equals the model's own greedy choices. So a drafter is judged by how
far its drafts go before the model disagrees.

The OneGen output is the source text with markup around each mention:
`... born in <MENTION>Germany</MENTION>[LK][_CONTINUE_] and ...`. `CopyDrafter` drafts that copy.
Where the model writes a markup run it is completed; the copied text comes from the source at the
offset the output has reached; and the mentions the model is likely to mark are drafted with their
markup (`guess_names`), so that a mention costs no pass of its own when the guess is right. A wrong
guess costs what a copy draft costs at a mention: the pass ends at the first disagreement.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onegen.tokens import CONTINUE, LINK, MENTION_CLOSE, MENTION_OPEN

CLOSE_RUN = MENTION_CLOSE + LINK + CONTINUE  # the markup that ends a mention, in output order

# Name guesses (Latin-script capitalisation): a name is a run of capitalised words joined by single
# spaces and name particles; function words, weekdays and months are not part of one.
NAME_PARTICLES = frozenset("al bin da das de del della den der di dos du ibn la le van von".split())
FUNCTION_WORDS = frozenset(
    "a after also an and as at before but by during for from he her his i if in it its mr mrs ms no "
    "not of on or our she so that the their then there these they this those to we when where while "
    "with you".split()
    + "monday tuesday wednesday thursday friday saturday sunday january february march april june july "
    "august september october november december".split()  # capitalised, but not what is linked
)
_TRAILING = ",.;:!?)]}\"'”’"
_POSSESSIVE = re.compile(r"['’]s$")
_WORD = re.compile(r"\S+")
_LAST_WORD = re.compile(r"\S+$")
MAX_CHANGE = 16  # at most this many new characters that are not in the source are taken as a changed word
MENTION_LOOKAHEAD = 24  # characters after a mention's start where `mention_end` looks for its name
DECLINED_SLACK = 2  # a row stops guessing where a mention starts once it declined this many more names than it marked ...
DECLINED_RATIO = 2  # ... times this


@dataclass
class _SourceState:
    """Where a row's output stands against its source text (CopyDrafter)."""

    plain_len: int = 0  # characters of the unmarked output already followed
    src_pos: int = 0  # source offset right after the followed output (a guess when not synced); -1 when lost
    synced: bool = True  # the latest output text was found in the source
    anchor: int = 0  # src_pos when the output was last synced
    name_end: int = -1  # inside a mention: source offset after the name the mention opened on


class CopyDrafter:
    """Drafts the continuation of a marked copy of each source text.

    The output so far is decoded to text. An unfinished markup run at its end (`</MEN`, `</MENTION>`,
    `[LK]`, `<`) is set aside and completed (`... </MENTION>[LK][_CONTINUE_]`, or `<MENTION>`); the other
    markers are removed to get the plain copy, which is matched against the source to find the source
    offset it has reached (re-found by searching its last characters when the copy drifts). The draft is
    the completion followed by the source text from that offset, with the guessed mentions marked
    (`guess_names=True`, see `mark_names`) and `end` (default: the tokenizer's EOS) after its last
    character, tokenised.

    When the output is not a copy of the source (the model writes a preamble, or repeats itself), the
    draft falls back to prompt lookup: the continuation of the latest earlier occurrence of the last
    few tokens in prompt + output.
    """

    def __init__(self, tokenizer, sources: Sequence[str], prompts: Sequence[Sequence[int]] | None = None,
                 *, guess_names: bool = True, end: str | None = None):
        self.tokenizer = tokenizer
        self.sources = list(sources)
        self.prompts = [list(p) for p in prompts] if prompts is not None else [[] for _ in self.sources]
        self.states = [_SourceState() for _ in self.sources]
        self.guess_names = guess_names
        self.end = (tokenizer.eos_token or "") if end is None else end  # drafted after the source's last character

    def draft(self, row: int, tokens: Sequence[int], k: int) -> list[int]:
        if k <= 0:
            return []
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        source, state = self.sources[row], self.states[row]
        partial, completion = _unfinished(text)
        _follow(source, state, _strip_markers(text[: len(text) - len(partial)]))
        if state.synced:
            _note_mention(source, state, text)
        else:
            completion += _recover(source, state, text + completion)
        if partial == "<":  # a literal `<` of the source, or the start of `<MENTION>` or `</MENTION>`
            if state.src_pos >= 0 and source.startswith("<", state.src_pos):
                state.src_pos, state.plain_len, completion = state.src_pos + 1, state.plain_len + 1, ""
            elif _inside_mention(text):
                completion = CLOSE_RUN[1:]
        rest = source[state.src_pos : state.src_pos + 8 * k] if state.src_pos >= 0 else ""
        cut_short = state.src_pos + len(rest) < len(source)  # the last word of `rest` may be cut
        if rest and self.guess_names:
            rest = mark_names(text + completion, source, state.src_pos, rest)
        if state.src_pos >= 0 and not cut_short:
            rest += self.end
        if not completion + rest:
            return _lookup(self.prompts[row] + list(tokens), k)
        ids = self.tokenizer(completion + rest, add_special_tokens=False).input_ids
        return ids[: min(k, len(ids) - 1)] if cut_short and rest else ids[:k]


def mark_names(output: str, source: str, offset: int, rest: str) -> str:
    """`rest` (the source from `offset` on, what the copy continues with) with the guessed markup.

    `output` is the marked output so far, its last markup run complete. Inside an open mention, the
    mention is guessed to end where the name it starts with ends. Outside, a mention is guessed at each
    name (`names`) that this output has not copied unmarked before, unless the output has copied
    clearly more names unmarked than it marked (the model is not marking this text).
    """
    cut, head = 0, ""
    if _inside_mention(output):
        so_far = _strip_markers(output[output.rfind(MENTION_OPEN) + len(MENTION_OPEN) :])
        start = offset - len(so_far)
        end = mention_end(source, start) if start >= 0 and source[start:offset] == so_far else -1
        if end < offset or end > offset + len(rest):
            return rest  # no guess: the mention already goes past the name, or it ends beyond the draft
        cut = end - offset
        head = rest[:cut] + CLOSE_RUN
    marked, declined = _names_so_far(output)
    if len(declined) > DECLINED_RATIO * len(marked) + DECLINED_SLACK:
        return head + rest[cut:]
    pieces, at = [head], cut
    for start, n in names(source, offset + cut, offset + len(rest)):
        name = source[start : start + n]
        if name in declined and name not in marked:
            continue
        begin, end = start - offset, start - offset + n
        pieces += [rest[at:begin], MENTION_OPEN, rest[begin:end], CLOSE_RUN if end <= len(rest) else ""]
        at = end
    pieces.append(rest[at:])
    return "".join(pieces)


def names(text: str, lo: int = 0, hi: int | None = None):
    """(start, length) of every name (`name_length`) that starts in `text[lo:hi]`, in order."""
    hi = len(text) if hi is None else hi
    after = lo
    for word in _WORD.finditer(text, lo, hi):
        i = word.start()
        if i < after or not _word_starts_at(text, i) or _continues_name(text, i):
            continue
        n = name_length(text, i)
        if n:
            yield i, n
            after = i + n


def mention_end(text: str, start: int) -> int:
    """Where a mention that starts at `start` is guessed to end: after the name there (`name_length`); when
    none starts there (`The Oval`, `the 1996 World Cup`), after the first name within a few words; else
    after the word at `start`."""
    n = name_length(text, start)
    if n:
        return start + n
    line_end = text.find("\n", start)
    for begin, n in names(text, start, min(start + MENTION_LOOKAHEAD, len(text) if line_end < 0 else line_end)):
        return begin + n
    word = _WORD.match(text, start)
    return word.end() if word else start


def name_length(text: str, start: int) -> int:
    """Characters of the capitalised name that starts at `start` in `text`; 0 when none starts there.

    A name is a run of capitalised words joined by single spaces, with name particles inside
    (`Leonardo da Vinci`) and initials (`C. Lewis`); other trailing punctuation and a possessive `'s`
    end it (`U.S.` keeps its dot), and so does a function word (`The`, `In`, in any case).
    """
    end = pos = start
    words = 0
    for match in _WORD.finditer(text, start):
        if match.start() != pos and (match.start() - pos != 1 or text[pos] != " "):
            break
        word = _name_word(match.group())
        if word.lower() in FUNCTION_WORDS:
            break  # `The Danube`, `CHINA IN SURPRISE`: a function word is not part of a name
        if word[:1].isupper():
            end, words = match.start() + len(word), words + 1
        elif not (words and word in NAME_PARTICLES):
            break
        if len(word) < len(match.group()):
            break  # punctuation or a possessive ends the name
        pos = match.end()
    return end - start


def _name_word(word: str) -> str:
    """The part of a whitespace-delimited word that can belong to a name."""
    word = _POSSESSIVE.sub("", word)
    stripped = word.rstrip(_TRAILING)
    if word.endswith(".") and ("." in stripped or (len(stripped) == 1 and stripped.isupper())):
        return stripped + "."  # an abbreviation or an initial: U.S., C.
    return stripped


def _word_starts_at(text: str, i: int) -> bool:
    return i == 0 or text[i - 1].isspace() or text[i - 1] in "(\"'“‘"


def _continues_name(text: str, i: int) -> bool:
    """Whether the word at `i` continues a name: the word before it, one space away, is a name word."""
    if i < 2 or text[i - 1] != " ":
        return False
    previous = _LAST_WORD.search(text, max(0, i - 64), i - 1)
    if previous is None:
        return False
    word = previous.group()
    return _name_word(word) == word and ((word[:1].isupper() and word.lower() not in FUNCTION_WORDS) or word in NAME_PARTICLES)


def _names_so_far(output: str) -> tuple[set[str], set[str]]:
    """(the names this output marked, the names it copied unmarked), from the marked output."""
    if _inside_mention(output):
        output = output[: output.rfind(MENTION_OPEN)]
    marked = set(re.findall(re.escape(MENTION_OPEN) + "(.*?)" + re.escape(MENTION_CLOSE), output))
    plain = re.sub(re.escape(MENTION_OPEN) + ".*?" + re.escape(CLOSE_RUN), "\n", output)
    return marked, {plain[i : i + n] for i, n in names(plain)}


def _inside_mention(output: str) -> bool:
    return output.rfind(MENTION_OPEN) > output.rfind(MENTION_CLOSE)


def _unfinished(text: str) -> tuple[str, str]:
    """(the unfinished markup run ending `text`, the text that completes it); ("", "") if none."""
    runs = [(CLOSE_RUN, n) for n in range(2, len(CLOSE_RUN))]  # `</` ... `</MENTION>[LK]`
    runs += [(LINK + CONTINUE, len(LINK))]  # a bare [LK]
    runs += [(MENTION_OPEN, n) for n in range(1, len(MENTION_OPEN))]  # `<` ... `<MENTION`
    best = ("", "")
    for run, n in runs:
        if n > len(best[0]) and text.endswith(run[:n]):
            best = (run[:n], run[n:])
    return best


def _lookup(context: list[int], k: int, sizes: tuple[int, ...] = (4, 3, 2)) -> list[int]:
    """Prompt lookup: the k tokens that followed the latest earlier occurrence of the last n tokens."""
    tokens = np.asarray(context)
    for n in sizes:
        if len(tokens) <= n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # (L - n, n), each has a successor
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start : start + k].tolist()
    return []


def _follow(source: str, state: _SourceState, plain: str) -> None:
    """Advance `state.src_pos` over the new plain characters, re-finding it when the copy drifts. When the
    new characters are nowhere in the source, the model is taken to have changed them (a word, a digit):
    the position moves on by as many characters, as a guess (`synced` False). A second drift in a row, or
    a longer one (a preamble), loses the position (-1)."""
    new = plain[state.plain_len :]
    state.plain_len = len(plain)
    if not new:
        return
    if state.src_pos >= 0 and source.startswith(new, state.src_pos):
        state.src_pos += len(new)
        state.synced = True
        state.anchor = state.src_pos
        return
    lo = max(0, state.src_pos - 2 * len(new) - 64) if state.src_pos >= 0 else 0
    for n in (32, 16, 8):
        if len(plain) < n:
            continue
        tail = plain[-n:]
        j = source.find(tail, lo)
        if j < 0:
            j = source.find(tail)
        if j >= 0:
            state.src_pos, state.synced = j + n, True
            state.anchor = state.src_pos
            return
    guess = state.synced and 0 <= state.src_pos and len(new) <= MAX_CHANGE and state.src_pos + len(new) <= len(source)
    state.src_pos = state.src_pos + len(new) if guess else -1
    state.synced = False


def _note_mention(source: str, state: _SourceState, output: str) -> None:
    """Inside a mention the synced output opened, note where the source's name there ends (`name_end`):
    where the copy goes on if the model writes another name in its place."""
    if not _inside_mention(output):
        state.name_end = -1
        return
    so_far = _strip_markers(output[output.rfind(MENTION_OPEN) + len(MENTION_OPEN) :])
    start = state.src_pos - len(so_far)
    if start >= 0 and source[start : state.src_pos] == so_far:
        state.name_end = mention_end(source, start)


def _recover(source: str, state: _SourceState, output: str) -> str:
    """Re-place a row whose copy drifted (`output`: its marked output, markup at its end completed);
    returns markup to draft before the source text.

    Inside a mention, the model is taken to copy a name from elsewhere in the source: the word-initial
    occurrence of the mention's text so far nearest the last synced position. When there is none (the
    model writes a name of its own), the mention is drafted to close now and the copy to go on after
    the source's name that the mention replaced (`name_end`), which is also where the copy is taken to
    go on once the mention has closed."""
    if _inside_mention(output):
        so_far = _strip_markers(output[output.rfind(MENTION_OPEN) + len(MENTION_OPEN) :])
        hits = [m.start() for m in re.finditer(re.escape(so_far), source) if _word_starts_at(source, m.start())] if so_far.strip() else []
        if hits:
            j = min(hits, key=lambda i: abs(i - state.anchor))
            state.src_pos, state.synced = j + len(so_far), True
            return ""
        if so_far and state.name_end >= 0:
            state.src_pos = state.name_end
            return CLOSE_RUN
        return ""
    close = output.rfind(CLOSE_RUN)
    if close >= 0 and state.name_end >= 0 and output.rfind(MENTION_OPEN) < close:
        after = _strip_markers(output[close + len(CLOSE_RUN) :])
        if source.startswith(after, state.name_end):
            state.src_pos, state.synced = state.name_end + len(after), True
        state.name_end = -1
    return ""


def _strip_markers(text: str) -> str:
    for marker in (MENTION_OPEN, MENTION_CLOSE, LINK, CONTINUE):
        text = text.replace(marker, "")
    return text
