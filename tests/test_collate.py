"""OneGenCollator: per-batch padding, one packed tensor, positions, negatives, de-duplication."""
import pytest
import torch

from onegen.collate import OneGenCollator
from onegen.data import build_examples
from onegen.loss import IGNORE_INDEX
from onegen.model import ENTITY_MAX_TOKENS
from onegen.prompts import entity_input_ids
from test_data import KB, annotate, tok  # noqa: F401  (tok is a fixture)

ALIASES = {"France": ["Germany", "France_(band)"], "Germany": ["France", "Bonn"]}


@pytest.fixture(scope="module")
def examples(tok):  # noqa: F811
    tokenizer, ids = tok
    docs = [
        annotate("France beat Germany .", [("France", "France"), ("Germany", "Germany")], "a"),
        annotate("Germany lost .\nThe Rhine flows .", [("Germany", "Germany"), ("Rhine", "Rhine")], "b"),
        annotate("A much longer text about the weather in Bonn , which was grey and wet all week long .",
                 [("Bonn", "Bonn")], "c"),
        annotate("Nothing to link here .", [], "d"),
    ]
    return build_examples(docs, KB, tokenizer, ids, aliases=ALIASES, num_negatives=3)


def collate(tok, batch, seed=0):  # noqa: F811
    tokenizer, ids = tok
    return OneGenCollator(tokenizer, ids, KB, num_negatives=3, seed=seed)(batch)


def test_rows_are_mention_then_entity_sequences_padded_to_the_batch_longest(tok, examples):  # noqa: F811
    tokenizer, ids = tok
    for batch in (examples[:2], examples):
        out = collate(tok, batch)
        entity_rows = [entity_input_ids(tokenizer, KB[e].title, KB[e].description, ENTITY_MAX_TOKENS)
                       for e in out.entity_ids]
        rows = [ex.input_ids for ex in batch] + entity_rows
        assert out.input_ids.shape == out.attention_mask.shape == out.labels.shape
        assert out.input_ids.shape == (len(rows), max(map(len, rows)))  # the longest row, not max_length
        for r, row in enumerate(rows):
            n = len(row)
            assert out.input_ids[r, :n].tolist() == row
            assert out.attention_mask[r].tolist() == [1] * n + [0] * (out.input_ids.shape[1] - n)
            assert (out.labels[r, n:] == IGNORE_INDEX).all()
            expected_labels = batch[r].labels if r < len(batch) else row  # CE covers entity rows too
            assert out.labels[r, :n].tolist() == expected_labels


def test_positions_point_at_link_and_last_entity_tokens(tok, examples):  # noqa: F811
    tokenizer, ids = tok
    out = collate(tok, examples)
    anchors = [(row, ex.link_entities[k]) for row, ex in enumerate(examples) for k in ex.anchors]
    assert out.anchor_positions.shape == (len(anchors), 2) == (4, 2)
    assert [r for r, _ in anchors] == out.anchor_positions[:, 0].tolist()
    assert all(out.input_ids[r, c] == ids.link for r, c in out.anchor_positions.tolist())
    assert [out.entity_ids[i] for i in out.positives.tolist()] == [e for _, e in anchors]
    assert out.entity_positions.shape == (len(out.entity_ids), 2)
    for i, (r, c) in enumerate(out.entity_positions.tolist()):
        assert r == len(examples) + i and out.input_ids[r, c] == ids.entity
        assert c == out.attention_mask[r].sum() - 1  # the last [SE] ends the sequence
        assert (out.input_ids[r, :c] == ids.entity).sum() >= 1  # the literal '[SE]' of the instruction


def test_negatives_never_positives_of_the_batch_and_entities_deduplicated(tok, examples):  # noqa: F811
    out = collate(tok, examples)
    assert len(out.entity_ids) == len(set(out.entity_ids))
    positives = set(out.positives.tolist())
    assert out.negatives.shape == (4, 3)
    for row in out.negatives.tolist():
        assert len(set(row)) == 3 and not positives & set(row)
    # Alone, the France anchor keeps its hard negative Germany; next to a Germany anchor it loses it.
    tokenizer, ids = tok
    france, germany = build_examples([annotate("France won .", [("France", "France")], "x"),
                                      annotate("Germany won .", [("Germany", "Germany")], "y")],
                                     KB, tokenizer, ids, aliases=ALIASES, num_negatives=3)
    assert france.negatives[0][0] == "Germany"
    alone, both = collate(tok, [france]), collate(tok, [france, germany])
    assert [alone.entity_ids[i] for i in alone.negatives[0].tolist()] == france.negatives[0]
    kept = [both.entity_ids[i] for i in both.negatives[0].tolist()]
    assert "Germany" not in kept and kept[:2] == france.negatives[0][1:]
    assert len(out.entity_ids) < len(positives) + out.negatives.numel()  # shared negatives packed once


def test_batch_without_anchors(tok, examples):  # noqa: F811
    out = collate(tok, [ex for ex in examples if not ex.anchors])
    assert out.input_ids.shape[0] == 1
    assert out.anchor_positions.shape == (0, 2) and out.entity_positions.shape == (0, 2)
    assert out.positives.shape == (0,) and out.negatives.shape == (0, 3)


def test_same_batch_same_tensors_whatever_the_call_order(tok, examples):  # noqa: F811
    tokenizer, ids = tok
    collator = OneGenCollator(tokenizer, ids, KB, num_negatives=3, seed=0)
    first = collator(examples)
    collator(examples[:2])
    again = collator(examples)
    fresh = OneGenCollator(tokenizer, ids, KB, num_negatives=3, seed=0)(examples)
    for other in (again, fresh):
        assert other.entity_ids == first.entity_ids
        assert torch.equal(other.input_ids, first.input_ids) and torch.equal(other.negatives, first.negatives)


def test_a_kb_too_small_for_the_negatives_is_a_clear_error(tok, examples):  # noqa: F811
    tokenizer, ids = tok
    small = {e: KB[e] for e in ("France", "Germany", "Rhine", "Bonn", "Paris")}
    with pytest.raises(ValueError, match="too few"):
        OneGenCollator(tokenizer, ids, small, num_negatives=3)(examples)
