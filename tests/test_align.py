"""Marked mentions map back to source offsets, through malformed markup and a drifting copy."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from onegen.align import align_mentions, parse_marked
from onegen.tokens import CONTINUE, LINK, MENTION_CLOSE, MENTION_OPEN, mark

SOURCE = "Germany beat France 2-1 in Paris on Sunday, said coach Joachim Low."
GOLD = ["Germany", "France", "Paris", "Joachim Low"]


def _marked(source: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for start, end in spans:
        out += [source[pos:start], mark(source[start:end])]
        pos = end
    out.append(source[pos:])
    return "".join(out)


def _gold_spans(source=SOURCE, surfaces=GOLD):
    return [(source.index(s), source.index(s) + len(s)) for s in surfaces]


def _spans(mentions):
    return [(m.start, m.end) for m in mentions]


def test_exact_copy_recovers_every_span_and_link():
    found = align_mentions(SOURCE, _marked(SOURCE, _gold_spans()))
    assert _spans(found) == _gold_spans()
    assert [m.surface for m in found] == GOLD
    assert [m.link_index for m in found] == [0, 1, 2, 3]


def test_drifted_copies_still_place_the_mentions():
    drifts = {
        "spacing": "Germany  beat <M>France</M> 2 - 1 in <M>Paris</M> on Sunday ,said coach <M>Joachim Low</M>.",
        "changed word": "Germany defeated <M>France</M> 2-1 in <M>Paris</M> on Monday, said coach <M>Joachim Low</M>.",
        "dropped word": "Germany <M>France</M> 2-1 in <M>Paris</M> Sunday, said <M>Joachim Low</M>.",
        "inserted word": "Germany easily beat <M>France</M> 2-1 in lovely <M>Paris</M> on Sunday, said coach <M>Joachim Low</M>.",
        "case": "GERMANY BEAT <M>FRANCE</M> 2-1 IN <M>paris</M> ON SUNDAY, SAID COACH <M>JOACHIM LOW</M>.",
    }
    for name, text in drifts.items():
        marked = text.replace("<M>", MENTION_OPEN).replace("</M>", MENTION_CLOSE + LINK + CONTINUE)
        found = align_mentions(SOURCE, marked)
        assert [m.surface for m in found] == ["France", "Paris", "Joachim Low"], name
        assert [m.link_index for m in found] == [0, 1, 2], name


def test_a_drifted_mention_is_snapped_to_whole_source_words():
    marked = SOURCE.replace("Joachim Low", mark("Joachim Lowe"))
    (found,) = align_mentions(SOURCE, marked)
    assert found.surface == "Joachim Low"


def test_malformed_markup():
    o, c = MENTION_OPEN, MENTION_CLOSE
    marked = f"{c}Germany beat {o}France{c} 2-1 in {o}Paris{c} [LK]{CONTINUE} on {LINK} Sunday, said {o}coach {o}Joachim Low{c}{LINK}. {o}"
    found = align_mentions(SOURCE, marked)
    assert [m.surface for m in found] == ["France", "Paris", "Joachim Low"]
    assert [m.link_index for m in found] == [None, 0, 2]  # no [LK] after France; the stray one counts


def test_unplaceable_mentions_are_dropped():
    marked = SOURCE + " " + mark("Zxqvw Bnmkj")
    assert align_mentions(SOURCE, marked) == []
    assert align_mentions("", mark("Paris")) == []
    assert align_mentions(SOURCE, SOURCE) == []


def test_parse_removes_every_marker():
    plain, mentions = parse_marked(_marked(SOURCE, _gold_spans()))
    assert plain == SOURCE
    assert [plain[m.start : m.end] for m in mentions] == GOLD


WORDS = st.text(alphabet="abcdeXYZ\u00e9\u4e2d0-.,'", min_size=1, max_size=8)
SEPARATORS = st.sampled_from([" ", " ", " ", "\n", ", ", "  "])


@st.composite
def marked_texts(draw):
    """(source, sorted non-overlapping spans on word boundaries)."""
    words = draw(st.lists(WORDS, min_size=1, max_size=25))
    seps = [draw(SEPARATORS) for _ in words]
    source, bounds = "", []
    for word, sep in zip(words, seps):
        bounds.append((len(source), len(source) + len(word)))
        source += word + sep
    source = source.rstrip()
    chosen = sorted(draw(st.sets(st.integers(0, len(words) - 1), max_size=len(words))))
    spans, i = [], 0
    for k in chosen:  # a span covers 1-2 consecutive words
        if k < i:
            continue
        last = min(k + draw(st.integers(0, 1)), len(words) - 1)
        spans.append((bounds[k][0], bounds[last][1]))
        i = last + 2  # leave a gap word so spans never touch
    return source, spans


def _drift(text: str, rng: random.Random) -> str:
    """One random copy error: spacing, a changed/dropped/inserted word, or case."""
    words = text.split(" ")
    i = rng.randrange(len(words))
    kind = rng.choice(["space", "change", "drop", "insert", "case"])
    if kind == "space":
        words[i] = words[i] + " "
    elif kind == "change":
        words[i] = "".join(rng.choice("qwrtz") for _ in words[i])
    elif kind == "drop" and len(words) > 1:
        del words[i]
    elif kind == "insert":
        words.insert(i, "inserted")
    else:
        words[i] = words[i].upper()
    return " ".join(words)


@settings(max_examples=150, deadline=None)
@given(marked_texts())
def test_property_exact_copy_recovers_all_spans(case):
    source, spans = case
    found = align_mentions(source, _marked(source, spans))
    assert _spans(found) == spans
    assert [m.link_index for m in found] == list(range(len(spans)))


@settings(max_examples=150, deadline=None)
@given(marked_texts(), st.integers(0, 2**32), st.integers(1, 4))
def test_property_drifted_copy_emits_only_consistent_spans(case, seed, n_drifts):
    source, spans = case
    rng = random.Random(seed)
    pieces, pos = [], 0  # drift the text between and inside mentions, keep the markup
    for start, end in spans:
        pieces += [_drift(source[pos:start], rng) if source[pos:start].strip() else source[pos:start],
                   MENTION_OPEN + _drift(source[start:end], rng) + MENTION_CLOSE + LINK + CONTINUE]
        pos = end
    pieces.append(source[pos:])
    for _ in range(n_drifts):
        pieces[-1] = _drift(pieces[-1], rng) if pieces[-1].strip() else pieces[-1]
    found = align_mentions(source, "".join(pieces))
    assert len(found) <= len(spans)
    for m in found:
        assert 0 <= m.start < m.end <= len(source)
        assert source[m.start : m.end] == m.surface
        assert m.surface == m.surface.strip()
        assert m.link_index is not None and 0 <= m.link_index < len(spans)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
