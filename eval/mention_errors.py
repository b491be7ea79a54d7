"""Where mention detection loses links: each gold link's span against the spans a system marked.

    python eval/mention_errors.py --candidates out/cpu/candidates-main.jsonl.gz [--ner] [--datasets a,b]

The spans come from a candidates file (`onegen-gerbil run --linker onegen --candidates FILE`: every
mention the model marked, linked or not); with `--ner` the baseline's spaCy NER spans are classed too,
and the union the OneGen linker's `--mentions union` links (NER spans that overlap none of the model's).
Each gold link (a gold annotation with an entity) falls in one class:

- exact: a span with its start and end (the only spans that A2KB's strong match can count);
- not marked: no span overlaps it;
- in pieces or shorter: every overlapping span lies inside it ("Cambridge" + "United");
- longer or shifted: an overlapping span reaches outside it ("President Boris Yeltsin").

`spurious` counts spans that overlap no gold annotation at all (NIL gold included): each one, if linked,
costs precision. Mention classes do not depend on the KB the candidates were retrieved from, so a run
against a small KB (fast) gives them; disambiguation (right span, wrong entity) needs the evaluation KB.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from collections.abc import Sequence

from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from onegen.spans import Document

CLASSES = ("exact", "not marked", "in pieces or shorter", "longer or shifted")


def span_class(gold: tuple[int, int], spans: Sequence[tuple[int, int]]) -> str:
    """The class (one of CLASSES) of a gold span among marked spans."""
    start, end = gold
    overlapping = [(s, e) for s, e in spans if s < end and start < e]
    if (start, end) in overlapping:
        return "exact"
    if not overlapping:
        return "not marked"
    if all(start <= s and e <= end for s, e in overlapping):
        return "in pieces or shorter"
    return "longer or shifted"


def union(model: Sequence[tuple[int, int]], ner: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The model's spans plus the NER spans that overlap none of them (`--mentions union`)."""
    return sorted(set(model) | {(s, e) for s, e in ner if not any(s < me and ms < e for ms, me in model)})


def split(docs: Sequence[Document], spans: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
    """Counts per class of the gold links of `docs`, plus `gold links`, `spans` and `spurious`."""
    counts = dict.fromkeys(("gold links", *CLASSES, "spans", "spurious"), 0)
    for doc in docs:
        marked = spans.get(doc.doc_id, [])
        gold_spans = [(m.start, m.end) for m in doc.mentions]
        for m in doc.mentions:
            if m.entity_id is not None:
                counts["gold links"] += 1
                counts[span_class((m.start, m.end), marked)] += 1
        counts["spans"] += len(marked)
        counts["spurious"] += sum(not any(s < ge and gs < e for gs, ge in gold_spans) for s, e in marked)
    return counts


def read_candidate_spans(path: str) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """dataset -> doc id -> the (start, end) of every mention in a candidates file."""
    out: dict[str, dict[str, list[tuple[int, int]]]] = defaultdict(dict)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out[row["dataset"]][row["doc_id"]] = [(m["start"], m["end"]) for m in row["mentions"]]
    return dict(out)


def format_row(name: str, system: str, counts: dict[str, int]) -> str:
    """One Markdown table row: counts with the share of gold links for the classes."""
    gold = counts["gold links"] or 1
    cells = [f"{counts[c]} ({100 * counts[c] / gold:.1f}%)" for c in CLASSES]
    return f"| {name} | {system} | {counts['gold links']} | " + " | ".join(cells) + f" | {counts['spans']} | {counts['spurious']} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", required=True, help="candidates file of `onegen-gerbil run --candidates`")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: every one in the file)")
    parser.add_argument("--ner", action="store_true", help="also class the baseline's spaCy NER spans and the union")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="data bundle (default: %(default)s)")
    args = parser.parse_args(argv)
    model_spans = read_candidate_spans(args.candidates)
    names = args.datasets.split(",") if args.datasets else list(model_spans)
    if missing := [n for n in names if n not in model_spans]:
        print(f"error: {args.candidates} has no documents of {', '.join(missing)}", file=sys.stderr)
        return 2
    ner = None
    if args.ner:
        from eval.linkers import NerSpans

        ner = NerSpans()
    print("| set | spans | gold links | " + " | ".join(CLASSES) + " | spans marked | spurious |")
    print("|---|---|---" + "|---" * len(CLASSES) + "|---|---|")
    for name in names:
        docs = load_dataset(name, args.data_dir)
        systems = {"OneGen": model_spans[name]}
        if ner is not None:
            found = dict(zip([d.doc_id for d in docs], ner([d.text for d in docs])))
            systems["NER"] = found
            systems["union"] = {d.doc_id: union(systems["OneGen"].get(d.doc_id, []), found[d.doc_id]) for d in docs}
        for system, spans in systems.items():
            print(format_row(name, system, split(docs, spans)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
