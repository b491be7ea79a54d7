"""Training data of a run: the OneGen examples of the training documents and the KB they link to.

The documents come in already read (jobs/train.py reads them with eval.corpora), so that training
depends on no reader of evaluation formats.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from collections.abc import Sequence

from kb.aliases import AliasTable
from kb.jsonl import read_kb
from kb.entity import Entity
from onegen.data import OneGenExample, build_examples, read_alias_table
from onegen.model import TokenIds
from onegen.silver import case_variants, silver_documents
from onegen.training.config import TrainConfig


@dataclass
class TrainData:
    """What `fit` trains on."""

    examples: list[OneGenExample]  # training windows with their anchors and negatives
    entities: dict[str, Entity]  # the KB by id: positives, negatives and (mining) the searched entities
    sizes: dict = field(default_factory=dict)  # counts for the model card (train_docs, train_examples, ...)


def sample_examples(examples: Sequence[OneGenExample], config: TrainConfig) -> list[OneGenExample]:
    """A seeded sample of `config.train_examples` examples (all of them when it is None or not fewer)."""
    if config.train_examples is None or config.train_examples >= len(examples):
        return list(examples)
    return random.Random(config.seed).sample(list(examples), config.train_examples)


def example_sizes(examples: Sequence[OneGenExample], entities: dict) -> dict:
    """The model card's counts of the training data."""
    return {"train_docs": len({e.doc_id for e in examples}), "train_examples": len(examples),
            "train_tokens": sum(len(e.input_ids) for e in examples),
            "train_mentions": sum(len(e.link_entities) for e in examples), "kb_entities": len(entities)}


def prepare_data(config: TrainConfig, docs: Sequence, tokenizer, token_ids: TokenIds,
                 held_out: Sequence[str] = ()) -> TrainData:
    """The examples of annotated `docs` (onegen.data.build_examples) against `config.kb`, with
    `config.silver_docs` silver documents of KB descriptions that share no text with `held_out` (the
    evaluation texts) and `config.case_augment` case variants; sampled by `config.train_examples`;
    negatives from `config.aliases` when given."""
    entities = {e.id: e for e in read_kb(config.kb).entities}
    aliases = read_alias_table(config.aliases) if config.aliases else None
    docs, added = with_more_text(config, list(docs), entities, held_out)
    examples = build_examples(docs, entities, tokenizer, token_ids, max_length=config.max_length,
                              aliases=aliases, num_negatives=config.num_negatives, seed=config.seed)
    if not examples:
        raise ValueError(f"{config.train} (split {config.split}) gave no training examples")
    examples = sample_examples(examples, config)
    return TrainData(examples, entities, example_sizes(examples, entities) | added)


def with_more_text(config: TrainConfig, docs: list, entities: dict[str, Entity],
                   held_out: Sequence[str]) -> tuple[list, dict]:
    """`docs` plus the silver and case-variant documents the config asks for, and their counts."""
    added = {}
    if config.silver_docs:
        table = AliasTable.from_tsv(config.aliases) if config.aliases else None
        silver, dropped = silver_documents(list(entities.values()), held_out, table)
        silver = random.Random(config.seed).sample(silver, min(config.silver_docs, len(silver)))
        docs += silver
        added.update(silver_docs=len(silver), silver_dropped_as_held_out=dropped)
    if config.case_augment:
        variants = case_variants(docs, config.case_augment, config.seed)
        docs += variants
        added.update(case_variant_docs=len(variants))
    return docs, added
