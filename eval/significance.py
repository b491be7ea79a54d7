"""Whether a difference in InKB micro-F1 is more than chance: resampling over documents (scipy.stats).

Two systems' counts on the same gold documents (`eval.scorer.document_counts`) are compared document by document,
as entity-linking evaluations do (neleval's `significance`; Koehn 2004 for the bootstrap):
- a paired bootstrap: the documents drawn with replacement, both systems scored on the same draw; the percentile
  interval of F1(b) - F1(a);
- a paired permutation test (approximate randomisation): each document's two outputs swapped with probability 1/2;
  the two-sided p-value, twice the smaller share of permutations whose difference is at least as far from 0 on one
  side as the one measured.
One system's own interval (`f1_interval`) is the bootstrap of its F1 alone.

`shipping_verdict` applies the project's rule for replacing a default (a model, a stage or a setting) on the dev sets.

Micro-F1 is not a mean of per-document values: the statistic sums the drawn documents' TP, FP and FN first. So what
scipy resamples are document indices into a table of counts, and each document's counts move together.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from eval.scorer import Counts

CONFIDENCE = 0.95
RESAMPLES = 9999
ALPHA = 0.05  # a difference is beyond chance under this p-value (and with an interval that excludes 0)
BATCH = 1000  # resamples per statistic call: memory is BATCH x documents x 3 counts


@dataclass(frozen=True)
class Comparison:
    """System b against system a on the same documents (`compare`)."""

    documents: int
    f1_a: float
    f1_b: float
    low: float  # the interval of f1_b - f1_a at `confidence`
    high: float
    p_value: float  # paired permutation test, two-sided
    confidence: float
    resamples: int

    @property
    def difference(self) -> float:
        return self.f1_b - self.f1_a

    def beyond_chance(self, alpha: float = ALPHA) -> int:
        """+1 where b is above a beyond chance, -1 where below, else 0: both the interval and the permutation
        test must say so (the interval excludes 0 and p < alpha), as they can disagree near the edge."""
        if self.p_value >= alpha:
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def micro_f1(counts: np.ndarray) -> np.ndarray:
    """Micro-F1 of summed (TP, FP, FN) on the last axis, GERBIL's convention: no TP and no errors -> 1, no TP -> 0."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / (2 * tp + fp + fn)
    return np.where(tp > 0, f1, np.where(fp + fn == 0, 1.0, 0.0))


def count_table(counts: Sequence[Counts]) -> np.ndarray:
    """The (documents, 3) array of TP, FP, FN."""
    return np.array([(c.tp, c.fp, c.fn) for c in counts], dtype=np.int64).reshape(-1, 3)


def compare(counts_a: Sequence[Counts], counts_b: Sequence[Counts], *, confidence: float = CONFIDENCE,
            resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """System b's micro-F1 against system a's on the same documents (the same order): the paired bootstrap's
    interval of the difference and the paired permutation test's p-value."""
    if len(counts_a) != len(counts_b):
        raise ValueError(f"the systems were counted on different documents: {len(counts_a)} against {len(counts_b)}")
    check(len(counts_a), confidence, resamples)
    n = len(counts_a)
    table = np.concatenate([count_table(counts_a), count_table(counts_b)])  # rows n..2n-1: system b

    def difference(a_rows: np.ndarray, b_rows: np.ndarray, axis: int = -1) -> np.ndarray:
        return f1_of_rows(table, b_rows, axis) - f1_of_rows(table, a_rows, axis)

    samples = (np.arange(n), np.arange(n, 2 * n))
    interval = stats.bootstrap(samples, difference, paired=True, vectorized=True, n_resamples=resamples,
                               batch=BATCH, confidence_level=confidence, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    test = stats.permutation_test(samples, difference, permutation_type="samples", vectorized=True,
                                  n_resamples=resamples, batch=BATCH, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    f1_a, f1_b = (float(micro_f1(table[rows].sum(axis=0))) for rows in samples)
    return Comparison(n, f1_a, f1_b, float(interval.low), float(interval.high), float(test.pvalue), confidence,
                      resamples)


def f1_interval(counts: Sequence[Counts], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                seed: int = 0) -> tuple[float, float]:
    """The bootstrap percentile interval of one system's micro-F1 over its documents."""
    check(len(counts), confidence, resamples)
    table = count_table(counts)
    result = stats.bootstrap((np.arange(len(counts)),), lambda rows, axis=-1: f1_of_rows(table, rows, axis),
                             vectorized=True, n_resamples=resamples, batch=BATCH, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def f1_of_rows(table: np.ndarray, rows: np.ndarray, axis: int) -> np.ndarray:
    """Micro-F1 of the counts of `rows` (indices into `table`, resamples along the other axes) summed along `axis`."""
    return micro_f1(table[np.moveaxis(rows, axis, -1)].sum(axis=-2))


def check(documents: int, confidence: float, resamples: int) -> None:
    """Clear errors for what resampling cannot do."""
    if documents < 2:
        raise ValueError(f"resampling needs at least 2 documents, got {documents}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def shipping_verdict(objective_a: float, objective_b: float,
                     comparisons: Mapping[str, Mapping[str, Comparison]]) -> list[str]:
    """Why B may not replace A on the dev sets; empty: it may. `comparisons`: dev set -> way of scoring (e.g. with
    the alias table, with the KB's names alone) -> B against A. The rule asks three things, so that a gain on one dev
    set, or a gain of the mean that no set shows beyond chance, is not taken for one that will hold elsewhere:
    1. B's dev objective (the tune's) is above A's;
    2. no dev figure is lower beyond chance;
    3. every dev set is higher beyond chance in at least one way of scoring it."""
    reasons = []
    if objective_b <= objective_a:
        reasons.append(f"the dev objective does not rise ({100 * objective_a:.2f} -> {100 * objective_b:.2f})")
    for name, ways in comparisons.items():
        reasons += [f"{name} ({way}) is lower beyond chance ({100 * c.difference:+.2f}, p {c.p_value:.4f})"
                    for way, c in ways.items() if c.beyond_chance() < 0]
        if not any(c.beyond_chance() > 0 for c in ways.values()):
            reasons.append(f"{name} is higher beyond chance in no way of scoring it ("
                           + ", ".join(f"{way} {100 * c.difference:+.2f}, p {c.p_value:.4f}" for way, c in ways.items()) + ")")
    return reasons
