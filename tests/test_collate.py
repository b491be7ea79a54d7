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


def collate(tok, batch, seed=0, share_prefix=True):  # noqa: F811
    tokenizer, ids = tok
    return OneGenCollator(tokenizer, ids, KB, num_negatives=3, seed=seed, share_prefix=share_prefix)(batch)


@pytest.mark.parametrize("share", [False, True])
def test_mention_rows_then_entity_sequences_packed_and_padded_to_the_batch_longest(tok, examples, share):  # noqa: F811
    tokenizer, ids = tok
    for batch in (examples[:2], examples):
        out = collate(tok, batch, share_prefix=share)
        entity_seqs = [entity_input_ids(tokenizer, KB[e].title, KB[e].description, ENTITY_MAX_TOKENS)
                       for e in out.entity_ids]
        prefix = out.prefix_ids.tolist()
        (m0, m1), (e0, e1) = out.prefix_spans[0].tolist(), out.prefix_spans[len(batch)].tolist()
        cut, entity_cut = m1 - m0, e1 - e0  # tokens of each sequence that its shared prefix holds
        if share:  # the chat template + instruction, and the "Represent the entity ..." line
            assert cut > 50 and entity_cut > 10 and len(prefix) == cut + entity_cut
            assert out.prefix_positions.tolist() == list(range(cut)) + list(range(entity_cut))
            assert (out.prefix_spans[:len(batch)] == torch.tensor([0, cut])).all()
            assert (out.prefix_spans[len(batch):] == torch.tensor([cut, cut + entity_cut])).all()
        else:
            assert prefix == [] and cut == entity_cut == 0
        T = max([len(ex.input_ids) - cut for ex in batch] + [len(seq) - entity_cut for seq in entity_seqs])
        assert out.input_ids.shape == out.attention_mask.shape == out.labels.shape == out.position_ids.shape
        assert out.input_ids.shape[1] == T  # the longest sequence, not max_length
        assert out.tokens == sum(len(ex.input_ids) for ex in batch) + sum(map(len, entity_seqs))
        for r, ex in enumerate(batch):
            n = len(ex.input_ids) - cut
            assert prefix[:cut] + out.input_ids[r, :n].tolist() == ex.input_ids
            assert out.attention_mask[r].tolist() == [1] * n + [0] * (T - n)
            assert out.position_ids[r].tolist() == list(range(cut, cut + T))
            assert out.labels[r, :n].tolist() == ([IGNORE_INDEX] + ex.labels[cut + 1:] if cut else ex.labels)
            assert (out.labels[r, n:] == IGNORE_INDEX).all()
        # Each entity sequence lies whole in one packed row, positions after its prefix, labelled but for its
        # first token there (which nothing in the row predicts).
        slots = []
        for i, seq in enumerate(entity_seqs):
            r, last = out.entity_positions[i].tolist()
            c = last + 1 - (len(seq) - entity_cut)
            assert r >= len(batch) and prefix[cut:] + out.input_ids[r, c:last + 1].tolist() == seq
            assert out.position_ids[r, c:last + 1].tolist() == list(range(entity_cut, len(seq)))
            assert out.labels[r, c:last + 1].tolist() == [IGNORE_INDEX] + seq[entity_cut + 1:]
            slots += [(r, k) for k in range(c, last + 1)]
        assert len(set(slots)) == len(slots) == sum(map(len, entity_seqs)) - entity_cut * len(entity_seqs)
        packed = out.attention_mask[len(batch):]
        assert sorted(slots) == [tuple(x) for x in packed.nonzero().add(torch.tensor([len(batch), 0])).tolist()]
        assert packed.shape[0] < len(entity_seqs)  # short sequences share rows
        assert (packed.sum(1) <= T).all()


def test_labels_the_shared_prefixes_cut_off_are_counted_once_per_sequence(tok, examples):  # noqa: F811
    """Every label a prefix state predicts is in prefix_targets with the number of sequences it stands for:
    the shared batch labels as many tokens as the plain one, the same ones."""
    tokenizer, ids = tok
    plain, shared = collate(tok, examples, share_prefix=False), collate(tok, examples, share_prefix=True)
    count = shared.prefix_targets[:, 2]
    assert (plain.labels != IGNORE_INDEX).sum() == (shared.labels != IGNORE_INDEX).sum() + count.sum()
    cut = int(shared.prefix_spans[0, 1])
    entity_cut = len(shared.prefix_ids) - cut
    entity_seqs = [entity_input_ids(tokenizer, KB[e].title, KB[e].description, ENTITY_MAX_TOKENS)
                   for e in shared.entity_ids]
    want = {}  # (prefix column, token) -> count: the entity line's tokens once per entity, then each first token
    for seq in entity_seqs:
        for j in range(1, entity_cut + 1):
            want[(cut + j - 1, seq[j])] = want.get((cut + j - 1, seq[j]), 0) + 1
    assert {(c, t): n for c, t, n in shared.prefix_targets.tolist()} == want  # the mention prefix is all prompt
    assert torch.equal(shared.anchor_positions + torch.tensor([0, cut]), plain.anchor_positions)


def test_positions_point_at_link_and_last_entity_tokens(tok, examples):  # noqa: F811
    tokenizer, ids = tok
    out = collate(tok, examples)
    anchors = [(row, ex.link_entities[k]) for row, ex in enumerate(examples) for k in ex.anchors]
    assert out.anchor_positions.shape == (len(anchors), 2) == (4, 2)
    assert [r for r, _ in anchors] == out.anchor_positions[:, 0].tolist()
    assert all(out.input_ids[r, c] == ids.link for r, c in out.anchor_positions.tolist())
    assert [out.entity_ids[i] for i in out.positives.tolist()] == [e for _, e in anchors]
    assert out.entity_positions.shape == (len(out.entity_ids), 2)
    for r, c in out.entity_positions.tolist():
        assert out.input_ids[r, c] == ids.entity
        assert c + 1 == out.attention_mask.shape[1] or out.position_ids[r, c + 1] != out.position_ids[r, c] + 1 \
            or out.attention_mask[r, c + 1] == 0  # the last [SE] ends its sequence


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
