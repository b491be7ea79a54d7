"""annotate(): windows, batching, alignment, de-duplication across windows, vectors, token counts."""
import re

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

import onegen.inference as inference
from onegen.decoding import Decoded
from onegen.inference import _Candidate, annotate, merge_window_mentions
from onegen.model import OneGen
from onegen.tokens import CONTINUE, LINK, MENTION_CLOSE, MENTION_OPEN, mark

NAMES = ["Germany", "France", "Paris", "Brussels", "Peter Blackburn"]
SENTENCES = [
    "Germany beat France 2-1 in Paris.",
    "Peter Blackburn reports from Brussels.",
    "The weather was fine and nobody complained.",
]


@pytest.fixture(scope="module")
def tiny_onegen():
    tokenizer = tiny_tokenizer()
    return OneGen(tiny_model(len(tokenizer) + 3, seed=0), tokenizer, device="cpu")


def _surface_vector(surface: str, dim: int) -> torch.Tensor:
    """A distinct, unnormalised state per surface string."""
    g = torch.Generator().manual_seed(sum(map(ord, surface)))
    return 3.0 * torch.randn(dim, generator=g)


def _scripted_copy_decode(model, token_ids, prompts, drafter, **kw):
    """Stands in for the decoder: a perfect marked copy of each window with NAMES marked."""
    out = []
    for source in drafter.sources:
        marked, states = source, []
        for name in sorted(NAMES, key=source.find):
            if name in source:
                marked = marked.replace(name, mark(name), 1)
                states.append(_surface_vector(name, model.config.hidden_size))
        tokens = drafter.tokenizer(marked, add_special_tokens=False).input_ids
        positions = [i for i, t in enumerate(tokens) if t == token_ids.link]
        out.append(Decoded(tokens, positions, torch.stack(states) if states else torch.zeros(0, model.config.hidden_size)))
    return out


def test_mentions_of_overlapping_windows_are_placed_once(tiny_onegen, monkeypatch):
    monkeypatch.setattr(inference, "copy_decode", _scripted_copy_decode)
    long_text = " ".join(SENTENCES * 6)  # many windows, each sentence shared by two windows
    texts = [long_text, "", "   ", SENTENCES[0]]
    results = annotate(tiny_onegen, texts, batch_size=3, max_window_tokens=24)
    for text, result in zip(texts, results):
        expected = sorted((i, i + len(n)) for n in NAMES for i in _find_all(text, n))
        assert [(m.start, m.end) for m in result.mentions] == expected
        for m in result.mentions:
            assert text[m.start : m.end] == m.surface
            assert m.vector.dtype == np.float32 and np.isclose(np.linalg.norm(m.vector), 1.0)
            want = _surface_vector(m.surface, m.vector.shape[0]).numpy()
            np.testing.assert_allclose(m.vector, want / np.linalg.norm(want), rtol=1e-5)
    assert results[1].generated_tokens == 0 and results[2].mentions == []
    assert results[0].generated_tokens > results[3].generated_tokens > 0


def test_precomputed_windows_give_the_same_mentions_without_segmenting(tiny_onegen, monkeypatch):
    monkeypatch.setattr(inference, "copy_decode", _scripted_copy_decode)
    texts = [" ".join(SENTENCES * 3), SENTENCES[1]]
    count = lambda s: len(tiny_onegen.tokenizer(s, add_special_tokens=False).input_ids)  # noqa: E731
    windows = [inference.sentence_windows(t, 24, count) for t in texts]
    want = annotate(tiny_onegen, texts, max_window_tokens=24)

    def no_segmenting(*args, **kwargs):
        raise AssertionError("annotate cut windows although they were given")

    monkeypatch.setattr(inference, "sentence_windows", no_segmenting)
    got = annotate(tiny_onegen, texts, windows=windows)
    assert [[(m.start, m.end) for m in a.mentions] for a in got] == [[(m.start, m.end) for m in a.mentions] for a in want]
    assert len(got[0].mentions) == 15  # 5 names, 3 times
    with pytest.raises(ValueError, match="one list per text"):
        annotate(tiny_onegen, texts, windows=windows[:1])


def test_a_link_spelled_with_ordinary_tokens_loses_only_its_own_mention(tiny_onegen, monkeypatch):
    """The model may write the characters `[LK]` as plain tokens: no vector comes with them, so that
    mention stays unlinked, and the window's other mentions keep their own vectors."""
    tokenizer, link = tiny_onegen.tokenizer, tiny_onegen.token_ids.link
    plain_link = [t for piece in ("[", "LK", "]") for t in tokenizer(piece, add_special_tokens=False).input_ids]
    assert link not in plain_link and tokenizer.decode(plain_link) == "[LK]"

    def decode(model, token_ids, prompts, drafter, **kw):
        (decoded,) = _scripted_copy_decode(model, token_ids, prompts, drafter, **kw)
        first = decoded.tokens.index(link)  # Germany's [LK], written as ordinary tokens instead
        tokens = decoded.tokens[:first] + plain_link + decoded.tokens[first + 1 :]
        shift = len(plain_link) - 1
        return [Decoded(tokens, [p + shift for p in decoded.link_positions[1:]], decoded.link_states[1:])]

    monkeypatch.setattr(inference, "copy_decode", decode)
    (result,) = annotate(tiny_onegen, [SENTENCES[0]])
    assert [m.surface for m in result.mentions] == ["France", "Paris"]
    want = _surface_vector("France", result.mentions[0].vector.shape[0]).numpy()
    np.testing.assert_allclose(result.mentions[0].vector, want / np.linalg.norm(want), rtol=1e-5)


def _find_all(text, needle):
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


def test_merge_keeps_the_copy_farthest_from_a_window_edge():
    near = _Candidate(10, 15, np.ones(2, np.float32), edge_distance=1)
    far = _Candidate(10, 15, np.zeros(2, np.float32), edge_distance=40)
    overlapping = _Candidate(12, 20, np.zeros(2, np.float32), edge_distance=3)
    other = _Candidate(30, 35, np.zeros(2, np.float32), edge_distance=0)
    assert merge_window_mentions([near, overlapping, far, other]) == [far, other]


@pytest.mark.parametrize("constrain", [True, False])
def test_copy_and_greedy_decoders_give_the_same_annotation(tiny_onegen, constrain):
    texts = [SENTENCES[0], " ".join(SENTENCES), "", SENTENCES[1], SENTENCES[2]]  # 4 windows, 2 in flight: 2 join
    copy = annotate(tiny_onegen, texts, batch_size=2, max_new_tokens=12, constrain=constrain)
    greedy = annotate(tiny_onegen, texts, batch_size=2, max_new_tokens=12, decoder="greedy", constrain=constrain)
    assert [a.marked for a in copy] == [a.marked for a in greedy]
    written = [a.marked.replace(LINK + CONTINUE, "").replace(MENTION_OPEN, "").replace(MENTION_CLOSE, "") for a in copy]
    copied = [text.startswith(re.sub(r"<[/A-Z]*$", "", w)) for text, w in zip(texts, written)]  # cut: markup unfinished
    assert all(copied) if constrain else not all(copied)  # a random model writes its own text unless held to the source
    assert [a.generated_tokens for a in copy] == [a.generated_tokens for a in greedy]
    assert copy[0].generated_tokens == 12 and copy[2].generated_tokens == 0
    with pytest.raises(ValueError, match="decoder must be one of"):
        annotate(tiny_onegen, texts, decoder="beam")


def test_a_50k_word_text_is_annotated(tiny_onegen):
    words = " ".join(SENTENCES).split()
    text = " ".join(words[i % len(words)] for i in range(50_000))
    (result,) = annotate(tiny_onegen, [text], batch_size=8, max_window_tokens=1000, max_new_tokens=1)
    windows = result.generated_tokens  # one token per window
    assert windows >= 50_000 * 1.2 / 1000  # every window was decoded (>= 1.2 tokens per word)
    assert all(text[m.start : m.end] == m.surface for m in result.mentions)


@pytest.mark.slow
def test_default_model_annotates_a_sentence():
    onegen = OneGen.from_pretrained(None, device="cpu")
    texts = ["Germany beat France 2-1 in Paris on Sunday.", "Peter Blackburn reports from Brussels."]
    copy = annotate(onegen, texts, max_new_tokens=80)
    greedy = annotate(onegen, texts, max_new_tokens=80, decoder="greedy")
    assert [a.marked for a in copy] == [a.marked for a in greedy]
    for text, a in zip(texts, copy):
        assert a.generated_tokens > 0 and a.marked
        assert all(text[m.start : m.end] == m.surface and m.vector.shape == (onegen.hidden_size,) for m in a.mentions)
    assert {"Germany", "France", "Paris"} <= {m.surface for m in copy[0].mentions}  # the trained default marks them


@pytest.mark.slow
def test_a_mention_bias_marks_the_names_the_default_model_half_believes():
    onegen = OneGen.from_pretrained(None, device="cpu")
    text = "Andre Joubert and Gail Devers met KeyCorp officials in Hubei on Labour Day."
    (plain,) = annotate(onegen, [text], max_new_tokens=120)
    (biased,) = annotate(onegen, [text], max_new_tokens=120, mention_bias=2.0)
    (greedy,) = annotate(onegen, [text], max_new_tokens=120, mention_bias=2.0, decoder="greedy")
    assert {"Gail Devers", "KeyCorp", "Labour Day"}.isdisjoint(m.surface for m in plain.mentions)
    assert {"Gail Devers", "KeyCorp", "Hubei", "Labour Day"} <= {m.surface for m in biased.mentions}
    assert all(text[m.start : m.end] == m.surface for m in biased.mentions)
    assert biased.marked == greedy.marked  # both decoders apply the bias alike
    with pytest.raises(ValueError, match="needs the copy rule"):
        annotate(onegen, [text], mention_bias=2.0, constrain=False)
