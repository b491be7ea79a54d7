"""GERBIL A2KB / D2KB scoring (DESIGN section 5): InKB and EE classes, micro and macro P/R/F1.

Rules, as GERBIL's ClassConsideringMatchingsCounter applies them per document:
- Every annotation has a class: InKB when its entity is an id, EE (emerging entity) when NIL.
- Gold annotations are visited in (start, end) order; each takes the first not yet used
  prediction that matches it, so every gold and every prediction is matched at most once.
  A match is a true positive of the gold's class; an unmatched gold is a false negative of its
  class; an unmatched prediction is a false positive of its own class.
- Match: the spans agree (strong: same start and end; weak: the spans overlap) and the
  meanings agree (same entity id, or both NIL). So a right span with a wrong entity is one
  InKB FN and one InKB FP, and an entity predicted on a gold NIL span is an InKB FP (plus an EE FN).
- Micro scores sum TP/FP/FN over documents; macro scores are the mean of per-document
  P/R/F1. A document (or a class of it) with no TP, FP and FN scores P = R = F1 = 1, with
  TP = 0 and some FP or FN it scores 0.
- D2KB (the system is given the gold spans): predictions whose span is not exactly a gold span
  are dropped, and a gold span without any prediction counts as a NIL prediction there, as
  GERBIL gives a marking without a KB URI an emerging-entity URI. Both are then matched as above.
Entity ids on both sides go through `canonical_id` and then the redirects table.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from kb.ids import Redirects, canonical_id
from onegen.spans import Document, Mention

LOG = logging.getLogger(__name__)

MATCHES = ("strong", "weak")
TASKS = ("a2kb", "d2kb")
INKB, EE = "inkb", "ee"


@dataclass
class Counts:
    """True positives, false positives and false negatives of one class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    def prf(self) -> tuple[float, float, float]:
        """(precision, recall, F1), GERBIL's convention: no TP and no errors -> 1, no TP but errors -> 0."""
        if self.tp == 0:
            return (1.0, 1.0, 1.0) if self.fp == 0 and self.fn == 0 else (0.0, 0.0, 0.0)
        precision = self.tp / (self.tp + self.fp)
        recall = self.tp / (self.tp + self.fn)
        return precision, recall, 2 * precision * recall / (precision + recall)


@dataclass
class Micro:
    """Scores of the counts summed over all documents."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass
class Macro:
    """Mean of the per-document scores."""

    precision: float
    recall: float
    f1: float


@dataclass
class ClassScores:
    """Micro and macro scores of one class (InKB or EE)."""

    micro: Micro
    macro: Macro

    @classmethod
    def from_documents(cls, per_doc: list[Counts]) -> ClassScores:
        total = Counts()
        for counts in per_doc:
            total.add(counts)
        doc_scores = [c.prf() for c in per_doc]
        n = len(doc_scores)
        macro = Macro(*(sum(s[k] for s in doc_scores) / n for k in range(3))) if n else Macro(*Counts().prf())
        return cls(Micro(*total.prf(), total.tp, total.fp, total.fn), macro)


@dataclass
class Report:
    """The result of `score`: InKB and EE scores over `documents` gold documents."""

    inkb: ClassScores
    ee: ClassScores
    documents: int  # gold documents scored
    match: str = "strong"  # strong or weak annotation match
    task: str = "a2kb"  # a2kb or d2kb
    ignored_predictions: list[str] = field(default_factory=list)  # predicted doc ids that are not in the gold

    def to_dict(self) -> dict:
        """{"inkb": {"micro": {...}, "macro": {...}}, "ee": {...}, "documents": N} (the `--json` shape)."""
        return {"inkb": asdict(self.inkb), "ee": asdict(self.ee), "documents": self.documents}

    def format_table(self) -> str:
        """A plain-text table of both classes, micro and macro."""
        lines = [f"{self.task.upper()}, {self.match} match, {self.documents} documents",
                 f"{'class':<6} {'micro P':>8} {'micro R':>8} {'micro F1':>9} {'TP':>6} {'FP':>6} {'FN':>6}"
                 f" {'macro P':>8} {'macro R':>8} {'macro F1':>9}"]
        for name, s in (("InKB", self.inkb), ("EE", self.ee)):
            lines.append(f"{name:<6} {s.micro.precision:>8.4f} {s.micro.recall:>8.4f} {s.micro.f1:>9.4f}"
                         f" {s.micro.tp:>6} {s.micro.fp:>6} {s.micro.fn:>6}"
                         f" {s.macro.precision:>8.4f} {s.macro.recall:>8.4f} {s.macro.f1:>9.4f}")
        if self.ignored_predictions:
            lines.append(f"ignored predictions for {len(self.ignored_predictions)} documents not in the gold")
        return "\n".join(lines)


def _normalise(annotations: list[Mention], redirects: Redirects) -> list[tuple[int, int, str | None]]:
    """(start, end, canonical redirected entity or None) per annotation, sorted by span."""
    out = []
    for a in annotations:
        entity = canonical_id(a.entity_id) if a.entity_id is not None else None
        out.append((a.start, a.end, redirects.resolve(entity) if entity is not None else None))
    return sorted(out, key=lambda x: (x[0], x[1], x[2] or ""))


def _d2kb_predictions(gold: list[tuple], pred: list[tuple]) -> list[tuple]:
    """D2KB: the first prediction on each gold span, NIL where a gold span has none; others dropped."""
    by_span: dict[tuple[int, int], tuple] = {}
    for p in pred:
        by_span.setdefault((p[0], p[1]), p)
    return [by_span.get((g[0], g[1]), (g[0], g[1], None)) for g in dict.fromkeys((g[0], g[1]) for g in gold)]


def count_document(gold: list[tuple], pred: list[tuple], match: str = "strong") -> dict[str, Counts]:
    """Counts per class of one document; annotations are (start, end, entity or None) tuples."""
    counts = {INKB: Counts(), EE: Counts()}
    used = [False] * len(pred)
    for g_start, g_end, g_entity in gold:
        cls = INKB if g_entity is not None else EE
        for j, (p_start, p_end, p_entity) in enumerate(pred):
            if used[j] or p_entity != g_entity:
                continue
            if (p_start == g_start and p_end == g_end) if match == "strong" else (p_start < g_end and g_start < p_end):
                used[j] = True
                counts[cls].tp += 1
                break
        else:
            counts[cls].fn += 1
    for j, (_, _, p_entity) in enumerate(pred):
        if not used[j]:
            counts[INKB if p_entity is not None else EE].fp += 1
    return counts


def document_counts(gold: list[Document], pred: Mapping[str, list[Mention]], *, match: str = "strong",
                    task: str = "a2kb", redirects: Redirects | None = None) -> list[dict[str, Counts]]:
    """Counts per class (INKB, EE) of every gold document, in the gold's order: what `score` sums and averages,
    and what `eval.significance` resamples. Predicted documents that are not in the gold are not counted."""
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; choose one of {', '.join(MATCHES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    redirects = redirects or Redirects.empty()
    out = []
    for doc in gold:
        g = _normalise(doc.mentions, redirects)
        p = _normalise(pred.get(doc.doc_id, []), redirects)
        out.append(count_document(g, _d2kb_predictions(g, p) if task == "d2kb" else p, match))
    return out


def score(gold: list[Document], pred: Mapping[str, list[Mention]], *, match: str = "strong",
          task: str = "a2kb", redirects: Redirects | None = None) -> Report:
    """Score predictions (doc id -> annotations) against gold documents, GERBIL style (module docstring)."""
    per_doc = document_counts(gold, pred, match=match, task=task, redirects=redirects)
    gold_ids = {d.doc_id for d in gold}
    ignored = sorted(k for k in pred if k not in gold_ids)
    if ignored:
        LOG.warning("ignoring predictions for %d documents that are not in the gold, e.g. %r", len(ignored), ignored[0])
    return Report(ClassScores.from_documents([c[INKB] for c in per_doc]),
                  ClassScores.from_documents([c[EE] for c in per_doc]), len(gold), match, task, ignored)
