"""The evaluation a training run scores each epoch's checkpoint with (`onegen.training.fit(evaluate=...)`).

Exact cosine top-1 linking over a closed KB (the eval documents' gold entities, plus random KB entities
up to `eval_kb_size`), no NIL threshold, then A2KB strong-match InKB micro scores (eval/scorer.py).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from eval.corpora import load_dataset_file
from kb.ids import Redirects
from eval.scorer import score
from onegen.spans import Document
from kb.entity import Entity
from onegen.linker import ExactSearch, link_texts
from onegen.training import SCORE, TrainConfig


@dataclass
class EpochEvaluation:
    """`evaluation(onegen) -> metrics`: the model's InKB micro precision/recall/F1 on `docs` over `entities`."""

    docs: list[Document]  # eval documents with gold annotations
    entities: dict[str, Entity]  # the closed KB linked against, by id
    batch_size: int = 8  # texts per annotate call
    redirects: str | None = None  # from<TAB>to redirects applied to gold and predictions

    @classmethod
    def from_config(cls, config: TrainConfig, entities: dict[str, Entity]) -> EpochEvaluation:
        """`config.eval` (split `config.eval_split`), sampled to `eval_docs`, over `eval_kb_size` of `entities`."""
        docs, linked = eval_subset(load_dataset_file(config.eval, config.eval_split), entities, config)
        return cls(docs, linked, batch_size=config.eval_batch_size, redirects=config.redirects)

    def __call__(self, onegen) -> dict:
        kb_ids = list(self.entities)
        kb_vectors = onegen.embed_entities([self.entities[i] for i in kb_ids])  # (N, D)
        predicted = link_texts(onegen, [d.text for d in self.docs], ExactSearch(kb_ids, kb_vectors), top_k=1,
                               nil_threshold=-math.inf, batch_size=self.batch_size)
        report = score(self.docs, {d.doc_id: p for d, p in zip(self.docs, predicted)},
                       redirects=Redirects.from_tsv(self.redirects) if self.redirects else None)
        micro = report.inkb.micro
        return {"eval_inkb_precision": micro.precision, "eval_inkb_recall": micro.recall, SCORE: micro.f1,
                "eval_docs": len(self.docs), "eval_predicted": sum(map(len, predicted))}


def eval_subset(docs: list[Document], entities: dict[str, Entity], config: TrainConfig):
    """The eval documents (a seeded sample of `eval_docs`) and the entities they are linked against."""
    rng = random.Random(config.seed)
    if config.eval_docs is not None and config.eval_docs < len(docs):
        keep = set(rng.sample(range(len(docs)), config.eval_docs))
        docs = [d for i, d in enumerate(docs) if i in keep]
    if config.eval_kb_size is None or config.eval_kb_size >= len(entities):
        return docs, entities
    gold = {a.entity_id for d in docs for a in d.mentions if a.entity_id in entities}
    rest = sorted(set(entities) - gold)
    fill = rng.sample(rest, max(0, config.eval_kb_size - len(gold)))
    return docs, {i: entities[i] for i in sorted(gold) + fill}
