"""Batches of OneGen examples: mention sequences and entity sequences packed for ONE forward pass.

Rows 0..B-1 of a batch are the mention sequences (prompt + marked target). The entity sequences
(`entity_sequence(...)` ending in `[SE]`) of the batch's anchors, their positives then their negatives,
each entity once however many anchors use it, are packed back to back into the rows after them
(first-fit, longest first), each sequence with positions restarting at 0, so that `packed_last_hidden`
gives every sequence the states it would have alone. All rows are right-padded to the longest sequence
of the batch (never to a fixed length): an entity sequence (~60 tokens) no longer fills a whole row of
the mention length (several hundred), which used to make most of a batch padding. Entity sequences
carry CE labels too (DESIGN: "CE also covers the entity descriptions"), except their first token, which
nothing in its own sequence predicts.

Shared prefixes (`share_prefix=True`, the default): the mention rows' longest common prefix (the chat
template and instruction) and the entity sequences' (their "Represent the entity ..." line) are cut off
into `prefix_ids`, forwarded once by `compute_loss` (`onegen.shared_prefix`); the rows hold the rest,
positions continuing after their prefix. A label inside a prefix, or on the first token after it, is
predicted by a prefix state: it moves to `prefix_targets` with the number of sequences it stands for,
so the loss is the same as without sharing.

Negatives: each anchor keeps its example's hard negatives except any that is the positive of an
anchor of the batch (it would push apart a pair the loss pulls together); those are replaced by random
KB entities, drawn from a generator seeded by `seed` and the batch's examples, so a batch is the same
whatever the call order or the data-loader worker.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from kb.entity import Entity
from onegen.data import OneGenExample
from onegen.loss import IGNORE_INDEX
from onegen.model import ENTITY_MAX_TOKENS, TokenIds
from onegen.prompts import entity_input_ids
from onegen.shared_prefix import shared_prefix_length


@dataclass
class OneGenBatch:
    """One training batch; B mention rows then P packed entity rows (R = B + P), E entity sequences,
    A anchors, K negatives per anchor."""

    input_ids: torch.Tensor  # (R, T) long, right-padded with the pad id
    attention_mask: torch.Tensor  # (R, T) long, 1 on real tokens (of any sequence)
    position_ids: torch.Tensor  # (R, T) long, restarting at 0 at each sequence; padding continues the last one
    labels: torch.Tensor  # (R, T) long, IGNORE_INDEX (-100) on padding, prompts, tokens after [LK], sequence starts
    anchor_positions: torch.Tensor  # (A, 2) long: (row, column) of each anchor's [LK]
    entity_positions: torch.Tensor  # (E, 2) long: (row, column) of each entity sequence's last [SE]
    positives: torch.Tensor  # (A,) long: entity index (0..E-1) of each anchor's gold entity
    negatives: torch.Tensor  # (A, K) long: entity indices of each anchor's negatives
    entity_ids: list[str]  # (E,) KB id of each entity sequence
    prefix_ids: torch.Tensor  # (P,) long: the mention rows' shared prefix, then the entity sequences'; empty when none
    prefix_positions: torch.Tensor  # (P,) long: positions in each prefix, restarting at 0 where the second starts
    prefix_spans: torch.Tensor  # (R, 2) long: [start, end) of the prefix columns each row's sequences continue
    prefix_targets: torch.Tensor  # (N, 3) long: (prefix column, the token its state predicts, how many sequences)
    tokens: int  # tokens of all the batch's sequences, each prefix counted once per sequence that has it

    def to(self, device) -> OneGenBatch:
        """The batch with every tensor on `device`."""
        return OneGenBatch(
            **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        )


class OneGenCollator:
    """Turns a list of `OneGenExample` into a `OneGenBatch` (a `collate_fn` for torch DataLoader)."""

    def __init__(
        self,
        tokenizer,
        token_ids: TokenIds,
        entities: Mapping[str, Entity],
        *,
        num_negatives: int = 4,
        seed: int = 0,
        entity_max_tokens: int = ENTITY_MAX_TOKENS,
        share_prefix: bool = True,
    ):
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.entities = entities
        self.num_negatives = num_negatives
        self.seed = seed
        self.entity_max_tokens = entity_max_tokens  # as OneGen.embed_entities truncates them
        self.share_prefix = share_prefix
        self.entity_pool = sorted(entities)  # replacement negatives are drawn from this fixed order
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither pad_token nor eos_token; set tokenizer.pad_token before collating")
        self.pad_id = pad
        self._entity_ids: dict[str, list[int]] = {}  # entity id -> token ids of its sequence

    def __call__(self, examples: Sequence[OneGenExample]) -> OneGenBatch:
        rng = random.Random(f"{self.seed}:" + "|".join(f"{ex.doc_id}:{ex.start}" for ex in examples))
        # (row, column of its [LK], gold entity, hard negatives) of every anchor of the batch
        anchors = [(row, ex.link_positions[k], ex.link_entities[k], negs)
                   for row, ex in enumerate(examples) for k, negs in zip(ex.anchors, ex.negatives)]
        positive_ids = [entity for _, _, entity, _ in anchors]
        batch_positives = set(positive_ids)
        negative_ids = [self._negatives(negs, batch_positives, rng) for _, _, _, negs in anchors]
        entity_ids = list(dict.fromkeys(positive_ids + [e for negs in negative_ids for e in negs]))
        index = {e: i for i, e in enumerate(entity_ids)}

        entity_seqs = [self._entity_tokens(e) for e in entity_ids]
        entity_labels = [[IGNORE_INDEX] + seq[1:] for seq in entity_seqs]  # the first token has nothing before it
        sequences = [(ex.input_ids, ex.labels) for ex in examples] + list(zip(entity_seqs, entity_labels))
        cuts = [0, 0]  # shared prefix length of the mention rows, of the entity sequences
        if self.share_prefix:  # the mention prefix ends within the prompt, so every [LK] stays in its row
            prompt = min(next((j for j, lab in enumerate(ex.labels) if lab != IGNORE_INDEX), len(ex.labels)) for ex in examples)
            cuts = [min(shared_prefix_length([ex.input_ids for ex in examples]), prompt),
                    shared_prefix_length(entity_seqs)]
        kinds = [0] * len(examples) + [1] * len(entity_seqs)  # which prefix each sequence continues
        offsets = [0, cuts[0]]  # first prefix column of each kind
        targets: Counter = Counter()  # (prefix column, token) -> sequences whose label that prefix state predicts
        rests = []  # (tokens, labels) of each sequence after its prefix
        for (ids, lab), kind in zip(sequences, kinds):
            cut = cuts[kind]
            for j in range(1, cut + 1) if cut else ():
                if lab[j] != IGNORE_INDEX:
                    targets[(offsets[kind] + j - 1, lab[j])] += 1
            rests.append((ids[cut:], ([IGNORE_INDEX] + lab[cut + 1:]) if cut else lab))

        T = max((len(ids) for ids, _ in rests), default=0)
        packed = _pack([ids for ids, _ in rests[len(examples):]], T)  # per packed row, the entity indices in it
        R = len(examples) + len(packed)
        input_ids = torch.full((R, T), self.pad_id, dtype=torch.long)  # (R, T)
        attention_mask = torch.zeros((R, T), dtype=torch.long)  # (R, T)
        position_ids = torch.zeros((R, T), dtype=torch.long)  # (R, T)
        labels = torch.full((R, T), IGNORE_INDEX, dtype=torch.long)  # (R, T)
        entity_positions = [(0, 0)] * len(entity_ids)  # (row, column) of each entity's last [SE]

        def place(row: int, col: int, ids: list[int], lab: list[int], first_position: int) -> None:
            n = len(ids)
            input_ids[row, col:col + n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, col:col + n] = 1
            labels[row, col:col + n] = torch.tensor(lab, dtype=torch.long)
            position_ids[row, col:] = torch.arange(T - col) + first_position  # padding continues its positions

        for row in range(len(examples)):
            place(row, 0, *rests[row], first_position=cuts[0])
        for p, members in enumerate(packed):
            row, col = len(examples) + p, 0
            for i in members:
                ids, lab = rests[len(examples) + i]
                place(row, col, ids, lab, first_position=cuts[1])
                last_entity = max(j for j, t in enumerate(ids) if t == self.token_ids.entity)
                entity_positions[i] = (row, col + last_entity)
                col += len(ids)
        spans = [(0, cuts[0])] * len(examples) + [(cuts[0], cuts[0] + cuts[1])] * len(packed)
        prefix_ids = (examples[0].input_ids[:cuts[0]] if cuts[0] else []) + (entity_seqs[0][:cuts[1]] if cuts[1] else [])
        return OneGenBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            anchor_positions=torch.tensor([[row, col - cuts[0]] for row, col, _, _ in anchors],
                                          dtype=torch.long).reshape(-1, 2),  # (A, 2)
            entity_positions=torch.tensor(entity_positions, dtype=torch.long).reshape(-1, 2),  # (E, 2)
            positives=torch.tensor([index[e] for e in positive_ids], dtype=torch.long),  # (A,)
            negatives=torch.tensor([[index[e] for e in negs] for negs in negative_ids],
                                   dtype=torch.long).reshape(-1, self.num_negatives),  # (A, K)
            entity_ids=entity_ids,
            prefix_ids=torch.tensor(prefix_ids, dtype=torch.long),  # (P,)
            prefix_positions=torch.cat([torch.arange(cuts[0]), torch.arange(cuts[1])]),  # (P,)
            prefix_spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2),  # (R, 2)
            prefix_targets=torch.tensor([[c, t, n] for (c, t), n in sorted(targets.items())],
                                        dtype=torch.long).reshape(-1, 3),  # (N, 3)
            tokens=sum(len(ids) for ids, _ in sequences),
        )

    def _negatives(self, candidates: list[str], batch_positives: set[str], rng: random.Random) -> list[str]:
        """The anchor's first `num_negatives` usable negatives, random KB entities filling the rest."""
        chosen = []
        for e in candidates:
            if e not in batch_positives and e in self.entities and e not in chosen:
                chosen.append(e)
        chosen = chosen[: self.num_negatives]
        if len(self.entity_pool) - len(batch_positives) < self.num_negatives:
            raise ValueError(
                f"the KB has {len(self.entity_pool)} entities, {len(batch_positives)} of them positives of this batch: "
                f"too few for {self.num_negatives} negatives per anchor; use smaller batches or fewer negatives"
            )
        while len(chosen) < self.num_negatives:
            e = self.entity_pool[rng.randrange(len(self.entity_pool))]
            if e not in batch_positives and e not in chosen:
                chosen.append(e)
        return chosen

    def _entity_tokens(self, entity_id: str) -> list[int]:
        """Token ids of an entity's sequence (cached), as `OneGen.embed_entities` reads them."""
        if entity_id not in self._entity_ids:
            entity = self.entities[entity_id]
            self._entity_ids[entity_id] = entity_input_ids(
                self.tokenizer, entity.title, entity.description, max_length=self.entity_max_tokens
            )
        return self._entity_ids[entity_id]


def _pack(seqs: Sequence[list[int]], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `seqs` grouped into rows of at most `capacity` tokens (deterministic)."""
    rows: list[list[int]] = []
    room: list[int] = []  # tokens left in each row
    for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i)):
        r = next((r for r, free in enumerate(room) if free >= len(seqs[i])), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= len(seqs[i])
    return rows
