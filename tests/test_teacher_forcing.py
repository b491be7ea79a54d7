"""Teacher-forced [LK] vectors of given spans (onegen.teacher_forcing): the same as decoding's, windows, errors."""
import numpy as np
import pytest
from tiny import tiny_model, tiny_tokenizer

from onegen.chunking import Window, sentence_windows
from onegen.data import marked_target
from onegen.inference import annotate, default_window_tokens
from onegen.model import OneGen
from onegen.prompts import mention_prompt
from onegen.teacher_forcing import check_spans, embed_spans

NAMES = ["Germany", "France", "Paris", "Peter Blackburn", "Brussels"]
SHORT = "Yesterday Germany beat France in Paris."
LONG = "Yesterday Germany beat France in Paris. Reports from Peter Blackburn in Brussels. The weather was fine and nobody complained."
WINDOW_TOKENS = 20  # LONG: two windows sharing its second sentence


@pytest.fixture(scope="module")
def tiny_onegen():
    tokenizer = tiny_tokenizer()
    return OneGen(tiny_model(len(tokenizer) + 3, seed=0), tokenizer, device="cpu")


def name_spans(text):
    return sorted((text.index(n), text.index(n) + len(n)) for n in NAMES if n in text)


def windows_of(onegen, text):
    return sentence_windows(text, WINDOW_TOKENS, lambda s: len(onegen.tokenizer(s, add_special_tokens=False).input_ids))


def steer(onegen, texts):
    """A forward hook that makes the random model write, window by window, the training target of its text
    with NAMES marked, token for token: +100 on the logits of each token that follows the current input token
    in one of those targets (the copy rule settles which where several do). Only the choices are steered; the
    hidden states, and so the [LK] vectors, stay the network's."""
    tokenizer, follows = onegen.tokenizer, {}
    for text in texts:
        for w in windows_of(onegen, text):
            marked = [s for s in name_spans(text) if w.start <= s[0] and s[1] <= w.end]
            prompt = tokenizer(mention_prompt(tokenizer, text[w.start:w.end]), add_special_tokens=False).input_ids
            target = tokenizer(marked_target(text, marked, w), add_special_tokens=False).input_ids
            ids = prompt[-1:] + target + [tokenizer.eos_token_id]  # the prompt's last token picks the first
            for a, b in zip(ids, ids[1:]):
                follows.setdefault(a, set()).add(b)

    def hook(module, args, kwargs, output):
        input_ids = kwargs["input_ids"][:, -output.logits.shape[1]:]  # (B, k): the slots whose logits were kept
        for token, nexts in follows.items():
            rows, cols = (input_ids == token).nonzero(as_tuple=True)
            for n in nexts:
                output.logits[rows, cols, n] += 100.0
        return output

    return onegen.model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("decoder", ["copy", "greedy"])
def test_teacher_forced_vectors_of_the_spans_annotate_found_are_annotate_s_vectors(tiny_onegen, decoder):
    texts = [SHORT, LONG]
    first, second = windows_of(tiny_onegen, LONG)  # "Peter Blackburn" from the first, "Brussels" from the second
    assert second.start < first.end and len(windows_of(tiny_onegen, SHORT)) == 1
    handle = steer(tiny_onegen, texts)
    try:
        found = annotate(tiny_onegen, texts, max_window_tokens=WINDOW_TOKENS, decoder=decoder)
    finally:
        handle.remove()
    assert [[(m.start, m.end) for m in a.mentions] for a in found] == [name_spans(t) for t in texts]
    forced = embed_spans(tiny_onegen, texts, [[(m.start, m.end) for m in a.mentions] for a in found],
                         batch_size=3, max_window_tokens=WINDOW_TOKENS)
    for a, vectors in zip(found, forced):
        assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
        np.testing.assert_allclose(vectors, np.stack([m.vector for m in a.mentions]), atol=1e-4)


def test_batching_and_span_order_do_not_change_the_vectors(tiny_onegen):
    texts = [LONG, "", SHORT]
    spans = [name_spans(LONG)[::-1], [], name_spans(SHORT)]
    together = embed_spans(tiny_onegen, texts, spans, batch_size=8, max_window_tokens=WINDOW_TOKENS)
    for t, text in enumerate(texts):
        alone = embed_spans(tiny_onegen, [text], [spans[t]], batch_size=1, max_window_tokens=WINDOW_TOKENS)[0]
        np.testing.assert_allclose(together[t], alone, atol=1e-5)
    assert together[1].shape == (0, tiny_onegen.hidden_size)
    np.testing.assert_allclose(together[0][::-1], embed_spans(tiny_onegen, [LONG], [name_spans(LONG)],
                                                               max_window_tokens=WINDOW_TOKENS)[0], atol=1e-5)


def test_a_span_no_window_contains_is_embedded_from_the_window_holding_most_of_it_widened(tiny_onegen):
    text = "Germany beat France in Paris. Peter Blackburn reports from Brussels."
    windows = sentence_windows(text, 12, lambda s: len(tiny_onegen.tokenizer(s, add_special_tokens=False).input_ids),
                               overlap_sentences=0)
    assert len(windows) == 2 and windows[0].end < text.index("Peter")
    crossing = (text.index("Paris"), text.index("Blackburn") + len("Blackburn"))  # "Paris. Peter Blackburn"
    (vectors,) = embed_spans(tiny_onegen, [text], [[crossing]], max_window_tokens=12)
    (first_window,) = embed_spans(tiny_onegen, [text[: crossing[1]]], [[crossing]], max_window_tokens=10_000)
    assert vectors.shape == (1, tiny_onegen.hidden_size)
    assert windows[1].start - crossing[0] < crossing[1] - windows[1].start  # more of it in the second window
    widened = Window(crossing[0], windows[1].end)
    (second,) = embed_spans(tiny_onegen, [text[widened.start:]], [[(0, crossing[1] - widened.start)]],
                            max_window_tokens=10_000)
    np.testing.assert_allclose(vectors, second, atol=1e-5)
    assert not np.allclose(vectors, first_window, atol=1e-3)


def test_bad_spans_are_a_clear_error():
    texts = ["Paris.", "Rome."]
    with pytest.raises(ValueError, match=r"text 1: span \(3, 9\) is not a \(start, end\)"):
        check_spans(texts, [[(0, 5)], [(3, 9)]])
    with pytest.raises(ValueError, match=r"text 0: span \(2, 2\)"):
        check_spans(texts, [[(2, 2)], []])
    with pytest.raises(ValueError, match=r"text 0: spans \(0, 3\) and \(2, 5\) overlap"):
        check_spans(texts, [[(2, 5), (0, 3)], []])
    with pytest.raises(ValueError, match="one list per text"):
        check_spans(texts, [[]])


def test_default_window_budget_is_annotate_s(tiny_onegen, monkeypatch):
    import onegen.teacher_forcing as tf

    seen = []
    monkeypatch.setattr(tf, "sentence_windows", lambda text, budget, count: seen.append(budget) or [Window(0, len(text))])
    embed_spans(tiny_onegen, [SHORT], [name_spans(SHORT)])
    assert seen == [default_window_tokens(tiny_onegen)]


@pytest.mark.slow
def test_on_the_default_model_teacher_forced_vectors_are_annotate_s():
    """No steering: the trained default writes its targets in the tokens it was trained on."""
    onegen = OneGen.from_pretrained(None, device="cpu")
    texts = ["Germany beat France 2-1 in Paris on Sunday.", "Peter Blackburn reports from Brussels. The European "
             "Commission said on Thursday it disagreed with German advice to consumers to shun British lamb."]
    found = annotate(onegen, texts, max_new_tokens=120, max_window_tokens=24)  # the second text: two windows
    assert all(a.mentions for a in found)
    forced = embed_spans(onegen, texts, [[(m.start, m.end) for m in a.mentions] for a in found], max_window_tokens=24)
    for a, vectors in zip(found, forced):
        np.testing.assert_allclose(vectors, np.stack([m.vector for m in a.mentions]), atol=1e-4)
