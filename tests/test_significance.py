"""eval.significance: intervals and a p-value for a difference in InKB micro-F1, resampled over documents."""
import dataclasses
import random

import numpy as np
import pytest

from eval.scorer import ClassScores, Counts
from eval.significance import Comparison, compare, count_table, f1_interval, micro_f1, shipping_verdict


def random_counts(n: int, seed: int) -> list[Counts]:
    rng = random.Random(seed)
    return [Counts(rng.randint(0, 6), rng.randint(0, 3), rng.randint(0, 3)) for _ in range(n)]


def test_micro_f1_follows_the_scorers_convention():
    per_doc = random_counts(200, seed=1) + [Counts(0, 0, 0), Counts(0, 2, 0), Counts(0, 0, 1)]
    for c in per_doc:  # one document at a time, the empty ones included
        assert micro_f1(count_table([c])[0]) == pytest.approx(c.prf()[2])
    assert micro_f1(count_table(per_doc).sum(axis=0)) == pytest.approx(ClassScores.from_documents(per_doc).micro.f1)


def test_the_same_system_twice_differs_by_nothing():
    counts = random_counts(40, seed=2)
    result = compare(counts, counts, resamples=999)
    assert result.difference == 0 and (result.low, result.high) == (0, 0) and result.p_value == 1


def test_a_system_better_on_every_document_is_significant_and_order_flips_the_sign():
    a = random_counts(40, seed=3)
    b = [Counts(c.tp + 1, c.fp, max(c.fn - 1, 0)) for c in a]  # one more right link in every document
    result = compare(a, b, resamples=999)
    micro = ClassScores.from_documents
    assert (result.f1_a, result.f1_b) == pytest.approx((micro(a).micro.f1, micro(b).micro.f1))
    assert 0 < result.low <= result.difference <= result.high and result.p_value < 0.01
    flipped = compare(b, a, resamples=999)
    assert flipped.difference == pytest.approx(-result.difference) and flipped.high < 0
    assert flipped.p_value == pytest.approx(result.p_value, abs=0.01)


def test_a_difference_in_one_document_is_no_evidence():
    a = random_counts(50, seed=4)
    b = list(a)
    b[7] = Counts(a[7].tp + 1, a[7].fp, a[7].fn)
    result = compare(a, b, resamples=999)
    # swapping that one document's outputs only flips the sign: half the permutations are as extreme either way
    assert result.difference > 0 and result.p_value > 0.9
    assert result.low == 0 < result.high  # most draws keep document 7 or not, never a loss


def test_documents_move_with_all_their_counts():
    # micro-F1 sums counts before dividing: b links a long document right and loses short ones, so its micro-F1 is
    # higher though most of its documents are worse; resampling rows apart would not see that
    a = [Counts(0, 0, 50)] + [Counts(1, 0, 0)] * 9
    b = [Counts(50, 0, 0)] + [Counts(0, 1, 1)] * 9
    result = compare(a, b, resamples=999, seed=5)
    assert result.f1_b > result.f1_a and result.difference == pytest.approx(result.f1_b - result.f1_a)
    assert np.mean([c.prf()[2] for c in b]) < np.mean([c.prf()[2] for c in a])


def test_interval_of_one_system_holds_its_f1_and_narrows_with_more_documents():
    few, many = random_counts(20, seed=6), random_counts(2000, seed=6)
    widths = []
    for counts in (few, many):
        low, high = f1_interval(counts, resamples=999)
        assert low <= ClassScores.from_documents(counts).micro.f1 <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
    assert f1_interval(few, resamples=999, seed=1) != f1_interval(few, resamples=999, seed=2)
    assert f1_interval(few, resamples=999, seed=1) == f1_interval(few, resamples=999, seed=1)


@pytest.mark.parametrize("a, b, options, message", [
    (random_counts(3, 0), random_counts(4, 0), {}, "different documents: 3 against 4"),
    (random_counts(1, 0), random_counts(1, 0), {}, "at least 2 documents"),
    (random_counts(5, 0), random_counts(5, 0), {"confidence": 95}, "confidence must be between 0 and 1"),
    (random_counts(5, 0), random_counts(5, 0), {"resamples": 0}, "resamples must be at least 1"),
])
def test_what_resampling_cannot_do_is_refused(a, b, options, message):
    with pytest.raises(ValueError, match=message):
        compare(a, b, **options)


def test_beyond_chance_needs_the_test_and_the_interval_to_agree():
    a = random_counts(40, seed=3)
    b = [Counts(c.tp + 1, c.fp, max(c.fn - 1, 0)) for c in a]
    assert compare(a, b, resamples=999).beyond_chance() == 1
    assert compare(b, a, resamples=999).beyond_chance() == -1
    assert compare(a, a, resamples=999).beyond_chance() == 0
    edge = Comparison(documents=40, f1_a=0.70, f1_b=0.71, low=-0.001, high=0.02, p_value=0.04, confidence=0.95,
                      resamples=999)  # p under 0.05 but the interval holds 0
    assert edge.beyond_chance() == 0
    assert dataclasses.replace(edge, low=0.001).beyond_chance() == 1
    assert dataclasses.replace(edge, low=0.001, p_value=0.06).beyond_chance() == 0


def comparison(difference: float, p_value: float) -> Comparison:
    """B - A = `difference`, with an interval around it that excludes 0 exactly when p < 0.05."""
    half = abs(difference) * (0.5 if p_value < 0.05 else 2)
    return Comparison(documents=100, f1_a=0.7, f1_b=0.7 + difference, low=difference - half, high=difference + half,
                      p_value=p_value, confidence=0.95, resamples=999)


def test_the_shipping_rule_asks_every_dev_set_to_gain_and_none_to_lose():
    gains = {"testa": {"table": comparison(0.01, 0.001), "names only": comparison(0.002, 0.4)},
             "oke": {"table": comparison(0.003, 0.3), "names only": comparison(0.01, 0.01)}}
    assert shipping_verdict(0.750, 0.756, gains) == []
    # the objective must rise
    assert shipping_verdict(0.756, 0.756, gains) == ["the dev objective does not rise (75.60 -> 75.60)"]
    # a loss beyond chance on any figure refuses it, even with a gain on the same set the other way
    lost = gains | {"oke": {"table": comparison(0.02, 0.001), "names only": comparison(-0.01, 0.02)}}
    assert shipping_verdict(0.750, 0.756, lost) == ["oke (names only) is lower beyond chance (-1.00, p 0.0200)"]
    # a gain of the mean carried by one dev set alone is not enough
    one_set = gains | {"oke": {"table": comparison(0.001, 0.99), "names only": comparison(0.0096, 0.12)}}
    assert shipping_verdict(0.750, 0.756, one_set) == [
        "oke is higher beyond chance in no way of scoring it (table +0.10, p 0.9900, names only +0.96, p 0.1200)"]
