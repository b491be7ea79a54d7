"""Sentence-aware windows: coverage, budget, overlap, exact offsets, long documents."""
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onegen.chunking import Window, sentence_spans, sentence_windows
from tiny import tiny_tokenizer


def count_words(s: str) -> int:
    return len(s.split())


def count_chars(s: str) -> int:  # about one token per 3 characters, never 0 for non-empty text
    return -(-len(s) // 3)


def assert_valid(text: str, windows: list[Window], max_tokens: int, count) -> None:
    """Windows are in order, trimmed, within budget, and cover every non-whitespace character."""
    covered = [False] * len(text)
    for prev, w in zip([None] + windows, windows):
        assert 0 <= w.start < w.end <= len(text)
        assert text[w.start:w.end] == text[w.start:w.end].strip()
        assert count(text[w.start:w.end]) <= max_tokens
        if prev is not None:
            assert w.start > prev.start and w.end > prev.end
            assert text[prev.end:w.start].strip() == ""  # only whitespace between neighbours
        for i in range(w.start, w.end):
            covered[i] = True
    assert all(c or ch.isspace() for c, ch in zip(covered, text))


WORD = st.text(alphabet="abcXYZ.!?,'\"-é0", min_size=1, max_size=12)
SEP = st.sampled_from([" ", "  ", "\n", ". ", "! ", ".\n\n", "\t"])


@st.composite
def texts(draw):
    parts = draw(st.lists(st.tuples(WORD, SEP), max_size=60))
    return draw(st.sampled_from(["", " ", "\n"])) + "".join(w + s for w, s in parts)


@settings(max_examples=150, deadline=None)
@given(texts(), st.integers(1, 30), st.integers(0, 3))
def test_windows_cover_fit_and_order(text, max_tokens, overlap):
    windows = sentence_windows(text, max_tokens, count_chars, overlap_sentences=overlap)
    assert_valid(text, windows, max_tokens, count_chars)
    assert (windows == []) == (text.strip() == "")
    given_sentences = sentence_windows(text, max_tokens, count_chars, overlap, sentences=sentence_spans(text))
    assert given_sentences == windows


@settings(max_examples=60, deadline=None)
@given(texts(), st.integers(2, 40))
def test_windows_never_split_a_sentence_that_fits(text, max_tokens):
    windows = sentence_windows(text, max_tokens, count_chars, overlap_sentences=0)
    for start, end in sentence_spans(text):
        if count_chars(text[start:end]) <= max_tokens:
            assert any(w.start <= start and end <= w.end for w in windows)


def test_overlap_shares_whole_sentences():
    sentences = [f"Sentence number {i} is here." for i in range(12)]
    text = " ".join(sentences)
    windows = sentence_windows(text, 15, count_words, overlap_sentences=1)  # 5 words a sentence: 3 fit
    assert [text[w.start:w.end] for w in windows] == [" ".join(sentences[i:i + 3]) for i in (0, 2, 4, 6, 8, 10)]
    no_overlap = sentence_windows(text, 15, count_words, overlap_sentences=0)
    assert [text[w.start:w.end] for w in no_overlap] == [" ".join(sentences[i:i + 3]) for i in (0, 3, 6, 9)]


def test_long_sentence_split_at_whitespace_and_long_word_at_characters():
    text = "one two three four five six seven eight nine ten " + "x" * 13 + " end."
    windows = sentence_windows(text, 4, count_chars, overlap_sentences=0)
    assert_valid(text, windows, 4, count_chars)
    pieces = [text[w.start:w.end] for w in windows]
    assert "one" in pieces[0] and all(p.strip() for p in pieces)
    assert "x" * 13 not in pieces  # the 13-character word (5 tokens) was cut


def test_budget_too_small_for_one_character_is_a_clear_error():
    with pytest.raises(ValueError, match="raise max_tokens"):
        sentence_windows("Hello world.", 1, lambda s: len(s) + 1)


def test_fifty_thousand_word_document_with_real_tokenizer():
    tokenizer = tiny_tokenizer()
    def count(s: str) -> int:
        return len(tokenizer(s).input_ids)

    rng = random.Random(0)
    vocab = "the of Germany said Monday Reuters market shares rose percent Bonn officials".split()
    sentences = []
    for _ in range(3000):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 30))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", " .", "!", "?"]))
    sentences.append(" ".join(rng.choice(vocab) for _ in range(2000)))  # one sentence over the budget
    text = "\n".join(sentences)
    assert len(text.split()) > 50_000
    began = time.perf_counter()
    windows = sentence_windows(text, 1024, count, overlap_sentences=1)
    elapsed = time.perf_counter() - began
    assert_valid(text, windows, 1024, count)
    assert len(windows) > 50
    print(f"50k words: {len(windows)} windows in {elapsed:.2f} s")


def test_sentences_end_at_line_breaks_and_punctuation():
    text = "EU rejects German call .\nPeter Blackburn\n\nBRUSSELS 1996-08-22\nThe Commission said so. It left."
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "EU rejects German call .", "Peter Blackburn", "BRUSSELS 1996-08-22", "The Commission said so.", "It left."
    ]
