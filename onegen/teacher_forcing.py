"""[LK] vectors of given spans by teacher forcing: the model's own retrieval for mentions it did not choose.

Each text is cut into the windows `annotate` decodes (onegen.chunking.sentence_windows, the same token
budget). A window that holds a span to embed is written as the model would write it with exactly the
given spans marked (onegen.data.marked_target, the training target), and prompt + that target go
through ONE forward pass, no decoding. The last-layer state after the final norm at each [LK] is the
span's vector, L2-normalised float32, read as decoding reads it: attention is causal, so it is the
state decoding has at that [LK] when it wrote those tokens (tests/test_teacher_forcing.py checks it
against `annotate`).

Window of a span: of the windows that contain it entirely, the one where it lies farthest from an
inner window edge (as `annotate` keeps a mention two windows found). A span no window contains (it
crosses the cut of a sentence split for length) goes to the window holding most of it, widened to
contain it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onegen.chunking import Window, sentence_windows
from onegen.data import marked_target
from onegen.inference import default_window_tokens, edge_distance
from onegen.model import last_hidden, pad_batch
from onegen.prompts import mention_prompt

Span = tuple[int, int]  # (start, end) char offsets into a text


@dataclass
class _Forced:
    """One window of one text, forwarded with its spans marked."""

    text_index: int  # which input text
    input_ids: list[int]  # prompt + marked target
    link_positions: list[int]  # index in input_ids of the [LK] of each span to embed
    span_indices: list[int]  # index of each of those spans in the text's span list


def check_spans(texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> None:
    """ValueError naming the text and span unless every span is (start, end) with 0 <= start < end <= len(text)
    and the spans of a text do not overlap; one span list per text."""
    if len(spans) != len(texts):
        raise ValueError(f"spans must give one list per text: {len(spans)} lists for {len(texts)} texts")
    for t, (text, text_spans) in enumerate(zip(texts, spans)):
        for span in text_spans:
            start, end = span
            if not (0 <= start < end <= len(text)):
                raise ValueError(f"text {t}: span {tuple(span)} is not a (start, end) with 0 <= start < end <= "
                                 f"{len(text)} (the text's length)")
        ordered = sorted(map(tuple, text_spans))
        for a, b in zip(ordered, ordered[1:]):
            if b[0] < a[1]:
                raise ValueError(f"text {t}: spans {a} and {b} overlap; give non-overlapping spans")


@torch.inference_mode()
def embed_spans(
    onegen,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    *,
    also_marked: Sequence[Sequence[Span]] | None = None,
    batch_size: int = 8,
    max_window_tokens: int | None = None,
    windows: Sequence[Sequence[Window]] | None = None,
) -> list[np.ndarray]:
    """The teacher-forced [LK] vector of each given span (module docstring).

    Args:
        onegen: a onegen.model.OneGen.
        texts: the documents.
        spans: per text, the (start, end) spans to embed; an empty list costs no forward pass.
        also_marked: per text, spans written marked in the targets too (e.g. the model's own mentions) but
            not embedded; none of all these may overlap.
        batch_size: windows per forward pass (right-padded).
        max_window_tokens: source tokens per window (default: `default_window_tokens(onegen)`, as annotate).
        windows: the windows of each text, computed beforehand as `annotate` takes them (a machine without
            spaCy); None: cut here by `sentence_windows`.
    Returns:
        Per text, (len(spans[t]), D) float32 L2-normalised vectors, in the order of spans[t].
    """
    also_marked = also_marked if also_marked is not None else [[] for _ in texts]
    if windows is not None and len(windows) != len(texts):
        raise ValueError(f"windows must give one list per text: {len(windows)} lists for {len(texts)} texts")
    check_spans(texts, [list(s) + list(m) for s, m in zip(spans, also_marked)])
    tokenizer = onegen.tokenizer
    window_tokens = max_window_tokens or default_window_tokens(onegen)

    def count_tokens(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False).input_ids)

    jobs: list[_Forced] = []
    for t, text in enumerate(texts):
        if spans[t]:
            text_windows = list(windows[t]) if windows is not None else sentence_windows(text, window_tokens, count_tokens)
            jobs += _text_jobs(onegen, t, text, [tuple(s) for s in spans[t]], [tuple(s) for s in also_marked[t]],
                               text_windows or [Window(0, len(text))])
    out = [np.zeros((len(s), onegen.hidden_size), dtype=np.float32) for s in spans]
    jobs.sort(key=lambda j: len(j.input_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked everywhere: any id works
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        ids, mask = pad_batch([j.input_ids for j in batch], pad, "right")  # (B, T), (B, T)
        hidden = last_hidden(onegen.model, ids.to(onegen.device), mask.to(onegen.device))  # (B, T, D)
        for row, job in enumerate(batch):
            vectors = hidden[row, job.link_positions].float()  # (n, D)
            out[job.text_index][job.span_indices] = torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()
    return out


def _text_jobs(onegen, t: int, text: str, spans: list[Span], also_marked: list[Span],
               windows: list[Window]) -> list[_Forced]:
    """The windows of one text that hold a span to embed, each with its prompt + marked target."""
    for start, end in spans:  # a span no window contains widens the window holding most of it
        if not any(w.start <= start and end <= w.end for w in windows):
            i = max(range(len(windows)), key=lambda i: min(end, windows[i].end) - max(start, windows[i].start))
            windows[i] = Window(min(start, windows[i].start), max(end, windows[i].end))
    last = len(windows) - 1
    chosen: dict[int, list[int]] = {}  # window index -> indices of the spans embedded from it
    for k, (start, end) in enumerate(spans):
        inside = [i for i, w in enumerate(windows) if w.start <= start and end <= w.end]
        best = max(inside, key=lambda i: edge_distance(windows[i], i > 0, i < last, start, end))
        chosen.setdefault(best, []).append(k)
    jobs = []
    for i, embedded in sorted(chosen.items()):
        w = windows[i]
        marked = sorted(s for s in spans + also_marked if w.start <= s[0] and s[1] <= w.end)
        tokenizer = onegen.tokenizer
        prompt = tokenizer(mention_prompt(tokenizer, text[w.start : w.end]), add_special_tokens=False).input_ids
        target = tokenizer(marked_target(text, marked, w), add_special_tokens=False).input_ids
        links = [len(prompt) + p for p, token in enumerate(target) if token == onegen.token_ids.link]
        if len(links) != len(marked):
            raise ValueError(f"text {t}: window {w.start}-{w.end} with {len(marked)} marked spans tokenises to "
                             f"{len(links)} [LK] tokens (does the text itself spell the OneGen tokens?)")
        jobs.append(_Forced(t, prompt + target, [links[marked.index(spans[k])] for k in embedded], embedded))
    return jobs
