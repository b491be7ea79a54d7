"""One-pass OneGen inference: texts in, mentions with exact offsets and their [LK] vectors out.

Each text is cut into sentence-aware windows (onegen.chunking), each window becomes one mention-detection
prompt (onegen.prompts), and all windows of all texts are decoded in length order, `batch_size` at a time, by
onegen.decoding, which returns the generated tokens and the [LK] hidden states of the same pass. The
marked output of each window is aligned back to the window text (onegen.align), offsets are shifted to
the full text, and a mention seen by two overlapping windows is kept once: the same span from the
window where it lies farther from an inner window edge (more context on both sides), and of two
overlapping different spans, likewise the one farther from an edge.
"""
from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onegen.align import align_mentions
from onegen.chunking import Window, sentence_windows
from onegen.constrain import CopyRule
from onegen.decoding import Decoded, DecodeStats, copy_decode, greedy_decode
from onegen.drafting import CopyDrafter
from onegen.prompts import mention_prompt
from onegen.spans import Annotated, EmbeddedMention
from onegen.tokens import LINK

LOG = logging.getLogger(__name__)

DECODERS = ("copy", "greedy")
DEFAULT_WINDOW_TOKENS = 512  # source tokens per window
OUTPUT_TOKENS_PER_SOURCE_TOKEN = 4  # generation budget: this many tokens per source token (a score table has ...
# ... a mention every 3 or 4 tokens, each with 8 tokens of markup) ...
OUTPUT_EXTRA_TOKENS = 64  # ... plus this many


@dataclass
class _Job:
    """One window of one text, to be decoded."""

    text_index: int  # which input text
    window: Window  # its span in that text
    prompt: list[int]  # prompt token ids
    max_new_tokens: int  # generation budget
    inner_left: bool  # another window precedes it (its left edge is inside the text)
    inner_right: bool  # another window follows it


@dataclass
class _Candidate:
    """A mention found in one window, in full-text offsets."""

    start: int
    end: int
    vector: np.ndarray  # (D,) float32, L2-normalised
    edge_distance: float  # characters to the nearest inner window edge (inf when none)


def default_window_tokens(onegen) -> int:
    """DEFAULT_WINDOW_TOKENS, smaller when prompt + window + output would not fit the model's positions."""
    limit = getattr(onegen.model.config, "max_position_embeddings", None)
    if not limit:
        return DEFAULT_WINDOW_TOKENS
    fits = (limit - 256 - OUTPUT_EXTRA_TOKENS) // (1 + OUTPUT_TOKENS_PER_SOURCE_TOKEN)  # 256: prompt text
    return max(16, min(DEFAULT_WINDOW_TOKENS, fits))


def annotate(
    onegen,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_window_tokens: int | None = None,
    decoder: str = "copy",
    max_new_tokens: int | None = None,
    draft_tokens: int | None = None,
    stats: DecodeStats | None = None,
    windows: Sequence[Sequence[Window]] | None = None,
    constrain: bool = True,
    mention_bias: float = 0.0,
) -> list[Annotated]:
    """Mark and embed the entity mentions of `texts` with one decoding pass per window.

    Args:
        onegen: a onegen.model.OneGen (uses .model, .tokenizer, .token_ids).
        texts: documents of any length; empty or blank ones get no mentions.
        batch_size: windows decoded together ("copy": at most this many in flight, the next joining as one ends).
        max_window_tokens: source tokens per window (default: `default_window_tokens(onegen)`).
        decoder: "copy" (copy-speculative, fast) or "greedy" (HF generate + a second forward); same output.
        max_new_tokens: generation budget per window (default: 4 x its source tokens + 64).
        draft_tokens: most drafted tokens per verification pass ("copy"; default: by device, see `onegen.decoding`).
        stats: filled with decoding counters ("copy").
        windows: the windows of each text, computed beforehand (e.g. by `sentence_windows` on a machine
            with spaCy); None cuts them here.
        constrain: keep each output to its window's text with mention markup (onegen.constrain); False
            decodes freely (what the model writes off the source is then lost in the alignment).
        mention_bias: logits added to opening a mention where the copy rule allows one (onegen.constrain.
            CopyRule.pick): above 0 the model marks more mentions (recall for precision and speed).
    Returns:
        One Annotated per text, mentions in text order with L2-normalised float32 [LK] vectors.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if mention_bias and not constrain:
        raise ValueError("mention_bias needs the copy rule (constrain=True)")
    tokenizer = onegen.tokenizer
    window_tokens = max_window_tokens or default_window_tokens(onegen)

    def count_tokens(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False).input_ids)

    if windows is not None and len(windows) != len(texts):
        raise ValueError(f"windows must give one list per text: {len(windows)} lists for {len(texts)} texts")
    jobs: list[_Job] = []
    for t, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__} at index {t}")
        if windows is not None:
            text_windows = list(windows[t])
        else:
            text_windows = sentence_windows(text, window_tokens, count_tokens) if text.strip() else []
        for w, window in enumerate(text_windows):
            source = text[window.start : window.end]
            budget = max_new_tokens or OUTPUT_TOKENS_PER_SOURCE_TOKEN * count_tokens(source) + OUTPUT_EXTRA_TOKENS
            prompt = tokenizer(mention_prompt(tokenizer, source), add_special_tokens=False).input_ids
            jobs.append(_Job(t, window, prompt, budget, w > 0, w < len(text_windows) - 1))

    results = [Annotated(text) for text in texts]
    candidates: list[list[_Candidate]] = [[] for _ in texts]
    marked: list[list[tuple[int, str]]] = [[] for _ in texts]  # (window start, marked output) per text
    eos = set(eos_ids(onegen.model, tokenizer))
    jobs.sort(key=lambda j: len(j.prompt))
    sources = [texts[j.text_index][j.window.start : j.window.end] for j in jobs]
    for job, source, decoded in zip(jobs, sources, _decode(onegen, jobs, sources, eos, decoder, batch_size, draft_tokens, stats,
                                                         constrain, mention_bias)):
        out = _marked_text(tokenizer, decoded, eos, onegen.token_ids.link)
        results[job.text_index].generated_tokens += len(decoded.tokens)
        marked[job.text_index].append((job.window.start, out))
        candidates[job.text_index] += _window_mentions(job, source, out, decoded)
    for result, found, outputs in zip(results, candidates, marked):
        result.mentions = [
            EmbeddedMention(c.start, c.end, result.text[c.start : c.end], c.vector) for c in merge_window_mentions(found)
        ]
        result.marked = "\n".join(out for _, out in sorted(outputs, key=lambda o: o[0]))
    return results


def _decode(onegen, jobs: list[_Job], sources: list[str], eos: set[int], decoder: str, batch_size: int,
            draft_tokens: int | None, stats, constrain: bool, mention_bias: float) -> list[Decoded]:
    """Decode every window: "copy" keeps `batch_size` windows in flight (the next one joins as one
    finishes), "greedy" decodes them in batches of `batch_size`; with `constrain`, under the copy rule
    of their sources."""
    tokenizer = onegen.tokenizer
    ids = onegen.token_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked everywhere: any id works
    if not jobs:
        return []
    rule = CopyRule.for_tokenizer(tokenizer, sources, ids.link, ids.cont, eos, mention_bias) if constrain else None
    prompts = [j.prompt for j in jobs]
    budgets = [j.max_new_tokens for j in jobs]
    if decoder == "copy":
        drafter = CopyDrafter(tokenizer, sources, prompts)
        return copy_decode(onegen.model, onegen.token_ids, prompts, drafter, max_new_tokens=budgets, pad_token_id=pad,
                           eos_token_ids=sorted(eos), batch_size=batch_size, draft_tokens=draft_tokens, stats=stats,
                           prefix_cache=onegen.mention_prefix, rule=rule)
    decoded = []
    for b in range(0, len(jobs), batch_size):
        batch = slice(b, b + batch_size)
        out = greedy_decode(onegen.model, ids, prompts[batch], max_new_tokens=max(budgets[batch]),
                            pad_token_id=pad, eos_token_ids=sorted(eos), rule=rule and rule.rows(batch))
        decoded += [_truncate(d, budget) for d, budget in zip(out, budgets[batch])]
    return decoded


def eos_ids(model, tokenizer) -> list[int]:
    """The model's EOS ids (generation config) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def _truncate(decoded: Decoded, budget: int) -> Decoded:
    """`decoded` cut to its first `budget` tokens (greedy output is prefix-stable)."""
    keep = [i for i, p in enumerate(decoded.link_positions) if p < budget]
    return Decoded(decoded.tokens[:budget], [decoded.link_positions[i] for i in keep], decoded.link_states[keep])


def _marked_text(tokenizer, decoded: Decoded, eos: set[int], link_id: int) -> str:
    """The generated text with markup, EOS dropped. `[LK]` stands only where the link token is: the same
    characters written with ordinary tokens (no vector comes with them) are dropped."""
    tokens = decoded.tokens[:-1] if decoded.tokens and decoded.tokens[-1] in eos else decoded.tokens
    pieces, start = [], 0
    for end in [i for i, t in enumerate(tokens) if t == link_id] + [len(tokens)]:
        pieces.append(tokenizer.decode(tokens[start:end], skip_special_tokens=False).replace(LINK, ""))
        pieces.append(LINK if end < len(tokens) else "")
        start = end + 1
    return "".join(pieces)


def _window_mentions(job: _Job, source: str, marked: str, decoded: Decoded) -> list[_Candidate]:
    """Aligned mentions of one window that have an [LK] vector, in full-text offsets."""
    states = decoded.link_states  # (L, D)
    if marked.count(LINK) != states.shape[0]:
        LOG.warning("window at %d: %d [LK] in the text but %d vectors; its mentions are dropped",
                    job.window.start, marked.count(LINK), states.shape[0])
        return []
    found = []
    for m in align_mentions(source, marked):
        if m.link_index is None:
            continue
        vector = states[m.link_index].to(torch.float32).numpy()
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        start, end = job.window.start + m.start, job.window.start + m.end
        found.append(_Candidate(start, end, vector.astype(np.float32),
                                edge_distance(job.window, job.inner_left, job.inner_right, start, end)))
    return found


def edge_distance(window: Window, inner_left: bool, inner_right: bool, start: int, end: int) -> float:
    """Characters from the span (start, end) to the nearest inner edge of `window` (full-text offsets);
    inf when neither edge is inner (`inner_left`: another window precedes it, `inner_right`: one follows)."""
    left = start - window.start if inner_left else math.inf
    right = window.end - end if inner_right else math.inf
    return min(left, right)


def merge_window_mentions(candidates: list[_Candidate]) -> list[_Candidate]:
    """De-duplicate mentions of overlapping windows: farthest from an inner window edge first, then
    every candidate that overlaps an accepted one is dropped. Returns them in text order."""
    starts: list[int] = []  # kept spans, sorted by start (they never overlap)
    kept: list[_Candidate] = []
    for c in sorted(candidates, key=lambda c: (-c.edge_distance, c.start)):
        i = bisect.bisect_left(starts, c.start)
        if (i > 0 and kept[i - 1].end > c.start) or (i < len(kept) and kept[i].start < c.end):
            continue
        starts.insert(i, c.start)
        kept.insert(i, c)
    return kept
