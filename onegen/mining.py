"""Hard negatives mined with the model being trained: for each training mention, the entities its own
`[LK]` vector ranks highest over the whole KB, minus its gold entity (ANCE, Xiong et al. 2021).

The negatives `onegen.data` draws (same-alias entities from the alias table, then same-title ones, then
random KB entities) and the in-batch pool of InfoNCE are a few dozen entities per step, mostly easy
ones. A model can solve that task and still lose the gold entity to one it never saw as a negative:
the default adapter's in-batch retrieval loss fell to 0.07 while, searching all 77,883 KB entities, it
ranked the gold entity first for only 86% of AIDA train mentions. Mining puts exactly the entities
that beat the gold one in front of each anchor's negatives.

`mention_vectors` reads each example as training reads it (its marked target, teacher-forced, one
forward); `mine_negatives` searches them and rewrites the examples' negatives. Both are pure functions
of the model and the examples, so a trainer can mine again as the model moves (once per epoch).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from kb.entity import Entity
from onegen.data import OneGenExample
from onegen.linker import ExactSearch
from onegen.model import last_hidden, pad_batch

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (Q, D), k -> scores (Q, k), ids (Q, k)


@dataclass
class MiningReport:
    """What one mining pass found."""

    mentions: int  # linked mentions searched
    gold_first: int  # of them, those whose gold entity the model ranked first
    gold_in_top_k: int  # of them, those whose gold entity was in the top k searched
    mined: int  # negatives put in from the search (the rest kept the examples' own)

    @property
    def gold_first_rate(self) -> float:
        """Share of mentions ranked right: the model's top-1 accuracy on its training data, whole KB."""
        return self.gold_first / self.mentions if self.mentions else 0.0


@torch.inference_mode()
def mention_vectors(onegen, examples: Sequence[OneGenExample], batch_size: int = 8) -> list[np.ndarray]:
    """Per example, (L, D) float32 L2-normalised hidden states at its L `[LK]` tokens, read teacher-forced.

    The model runs in eval mode (no dropout) and is put back in the mode it was in.
    """
    model, was_training = onegen.model, onegen.model.training
    model.eval()
    pad = onegen.tokenizer.pad_token_id if onegen.tokenizer.pad_token_id is not None else onegen.tokenizer.eos_token_id
    out: list[np.ndarray] = [np.zeros((0, onegen.hidden_size), dtype=np.float32)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # similar lengths together
    try:
        for start in range(0, len(order), batch_size):
            rows = [i for i in order[start:start + batch_size] if examples[i].link_positions]
            if not rows:
                continue
            ids, mask = pad_batch([examples[i].input_ids for i in rows], pad, "right")  # (B, T)
            hidden = last_hidden(model, ids.to(onegen.device), mask.to(onegen.device))  # (B, T, D)
            for b, i in enumerate(rows):
                states = hidden[b, examples[i].link_positions].float()  # (L, D)
                out[i] = torch.nn.functional.normalize(states, dim=-1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def mine_negatives(
    examples: Sequence[OneGenExample],
    vectors: Sequence[np.ndarray],
    search: Search,
    *,
    num_negatives: int,
    top_k: int = 32,
    every_mention: bool = False,
    canonical: Callable[[str], str] = str,
) -> tuple[list[OneGenExample], MiningReport]:
    """The examples with each anchor's negatives led by the entities the search ranks above the rest.

    Args:
        examples: training examples (`onegen.data.build_examples`), with their own negatives.
        vectors: per example, (L, D) vectors of its linked mentions (`mention_vectors`).
        search: top-k search over the KB, e.g. `EntityIndex.search` or `onegen.linker.ExactSearch.search`.
        num_negatives: negatives per anchor (as the collator takes them).
        top_k: entities searched per mention; the mined negatives are the first of them that are not gold.
        every_mention: make every linked mention an anchor (one per sentence otherwise, as built).
        canonical: entity id -> canonical id (e.g. `kb.ids.Redirects.resolve`): an entity equal to
            the gold one under it is never a negative.
    Returns the new examples (the inputs are not changed) and a report. Each anchor gets
    `num_negatives`: the mined ones first, then its own, in order, without repeats.
    """
    if len(vectors) != len(examples):
        raise ValueError(f"one vector array per example expected, got {len(vectors)} for {len(examples)} examples")
    counts = [len(ex.link_positions) for ex in examples]
    for ex, v, n in zip(examples, vectors, counts):
        if len(v) != n:
            raise ValueError(f"example {ex.doc_id!r} at {ex.start}: {n} linked mentions but {len(v)} vectors")
    report = MiningReport(mentions=sum(counts), gold_first=0, gold_in_top_k=0, mined=0)
    if not report.mentions:
        return list(examples), report
    _, ids = search(np.concatenate([v for v in vectors if len(v)]), top_k)  # (Q, k) over all mentions, in order
    out, q = [], 0
    for ex, n in zip(examples, counts):
        ranked = ids[q:q + n]  # (n, k)
        q += n
        gold = [canonical(e) for e in ex.link_entities]
        for k in range(n):
            hits = [canonical(e) for e in ranked[k] if e]
            report.gold_first += bool(hits) and hits[0] == gold[k]
            report.gold_in_top_k += gold[k] in hits
        anchors = list(range(n)) if every_mention else list(ex.anchors)
        own = dict(zip(ex.anchors, ex.negatives))
        negatives = []
        for k in anchors:
            mined = [e for e in dict.fromkeys(e for e in ranked[k] if e) if canonical(e) != gold[k]][:num_negatives]
            report.mined += len(mined)
            fill = [e for e in own.get(k, []) if e not in mined]
            negatives.append((mined + fill)[:num_negatives])
        out.append(replace(ex, anchors=anchors, negatives=negatives))
    return out, report


def mine_with_model(
    onegen,
    examples: Sequence[OneGenExample],
    kb: Sequence[Entity],
    *,
    num_negatives: int,
    every_mention: bool = False,
    canonical: Callable[[str], str] = str,
    batch_size: int = 8,
    embed_batch_size: int = 32,
    make_search: Callable[[list[str], np.ndarray], Search] | None = None,
) -> tuple[list[OneGenExample], MiningReport]:
    """One mining pass with the model as it stands: embed the KB, read the examples, mine (`mine_negatives`).

    `make_search(ids, vectors)` builds the search over the KB's (N, D) vectors (default: exact cosine
    on the CPU, `onegen.linker.ExactSearch`). The KB is embedded in eval mode (no dropout); the model
    is put back in the mode it was in.
    """
    was_training = onegen.model.training
    onegen.model.eval()
    try:
        vectors = onegen.embed_entities(kb, batch_size=embed_batch_size)  # (N, D)
    finally:
        onegen.model.train(was_training)
    ids = [e.id for e in kb]
    search = make_search(ids, vectors) if make_search else ExactSearch(ids, vectors).search
    return mine_negatives(examples, mention_vectors(onegen, examples, batch_size=batch_size), search,
                          num_negatives=num_negatives, every_mention=every_mention, canonical=canonical)
