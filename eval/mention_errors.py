"""Where mention detection loses links: each gold link's span against the spans a system marked.

    python eval/mention_errors.py --candidates out/cpu/candidates-main.jsonl.gz [--ner] [--datasets a,b]

The spans come from a candidates file (`onegen-gerbil run --linker onegen --candidates FILE`: every
mention the model marked, linked or not); with `--ner` the spaCy NER spans that `--mentions ner` links
(onegen.ner) are classed too, and the union that `--mentions union` links (NER spans that overlap none
of the model's).
Each gold link (a gold annotation with an entity) falls in one class:

- exact: a span with its start and end (the only spans that A2KB's strong match can count);
- not marked: no span overlaps it;
- in pieces or shorter: every overlapping span lies inside it ("Cambridge" + "United");
- longer or shifted: an overlapping span reaches outside it ("President Boris Yeltsin").

`spurious` counts spans that overlap no gold annotation at all (NIL gold included): each one, if linked,
costs precision. Mention classes do not depend on the KB the candidates were retrieved from, so a run
against a small KB (fast) gives them.

A second table splits the model's exact spans by what the run decided (the file records it), with
redirects applied as the scorer does:

- linked right: the true positives of strong match;
- wrong entity, gold in top-k: the priors or the cosine ranked another candidate first;
- NIL, gold in top-k: the chosen candidate's cosine was under the NIL threshold;
- gold not retrieved: the gold entity is not among the top-k candidates.

`links elsewhere` counts links on spans that are no gold link's exact span (false positives with the
wrong entities). This half means something only for a run against the evaluation KB. With `--redecide`
the candidates are decided again with a model's settings (its linker_config.json, as `onegen-gerbil run
--linker onegen --model M` decides: DATA_DIR's alias table and KB popularity), so one decoding serves
every change of settings.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from collections.abc import Sequence

from pathlib import Path

from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from kb.ids import Redirects, canonical_id
from onegen.spans import Document, Mention

CLASSES = ("exact", "not marked", "in pieces or shorter", "longer or shifted")
LINK_CLASSES = ("linked right", "wrong entity, gold in top-k", "NIL, gold in top-k", "gold not retrieved")


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


def link_class(gold_entity: str, mention: Mention, redirects: Redirects) -> str:
    """The class (one of LINK_CLASSES) of a gold link whose exact span the run marked as `mention`."""
    gold = _resolved(gold_entity, redirects)
    if mention.entity_id is not None and _resolved(mention.entity_id, redirects) == gold:
        return "linked right"
    if gold not in {_resolved(c.entity_id, redirects) for c in mention.candidates}:
        return "gold not retrieved"
    return "NIL, gold in top-k" if mention.entity_id is None else "wrong entity, gold in top-k"


def _resolved(entity_id: str | None, redirects: Redirects) -> str | None:
    """An entity id as the scorer compares it: canonical, then redirected."""
    entity_id = canonical_id(entity_id) if entity_id else None
    return redirects.resolve(entity_id) if entity_id else None


def link_split(docs: Sequence[Document], mentions: dict[str, list[Mention]], redirects: Redirects) -> dict[str, int]:
    """Counts per class (LINK_CLASSES) of the gold links the run marked exactly, plus `gold links`, `exact`
    and `links elsewhere` (links on spans that are no gold link's exact span)."""
    counts = dict.fromkeys(("gold links", "exact", *LINK_CLASSES, "links elsewhere"), 0)
    for doc in docs:
        by_span = {(m.start, m.end): m for m in mentions.get(doc.doc_id, [])}
        gold_links = {(g.start, g.end): g.entity_id for g in doc.mentions if g.entity_id is not None}
        counts["gold links"] += len(gold_links)
        for span, entity_id in gold_links.items():
            if span in by_span:
                counts["exact"] += 1
                counts[link_class(entity_id, by_span[span], redirects)] += 1
        counts["links elsewhere"] += sum(m.entity_id is not None and span not in gold_links for span, m in by_span.items())
    return counts


def read_candidates(path: str | Path) -> dict[str, dict[str, list[Mention]]]:
    """dataset -> doc id -> every mention of a candidates file (with the run's decision when the file records
    it); a file cut off mid-run gives what it holds, with a warning."""
    out: dict[str, dict[str, list[Mention]]] = defaultdict(dict)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        try:
            for line in f:
                row = json.loads(line)
                out[row["dataset"]][row["doc_id"]] = [Mention.from_dict(m) for m in row["mentions"]]
        except (EOFError, json.JSONDecodeError):
            print(f"{Path(path).name} ends early (its run was cut off): kept {sum(map(len, out.values()))} documents "
                  f"of {', '.join(out)}", file=sys.stderr)
    return dict(out)


def has_decisions(path: str | Path) -> bool:
    """Whether a candidates file records each mention's decision (files before 2026-12-03 do not)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if mentions := json.loads(line)["mentions"]:
                return "entity_id" in mentions[0]
    return False


def spans_of(mentions: dict[str, list[Mention]]) -> dict[str, list[tuple[int, int]]]:
    """doc id -> the (start, end) of each mention."""
    return {doc_id: [(m.start, m.end) for m in found] for doc_id, found in mentions.items()}


def format_row(name: str, system: str, counts: dict[str, int]) -> str:
    """One Markdown table row: counts with the share of gold links for the classes."""
    gold = counts["gold links"] or 1
    cells = [f"{counts[c]} ({100 * counts[c] / gold:.1f}%)" for c in CLASSES]
    return f"| {name} | {system} | {counts['gold links']} | " + " | ".join(cells) + f" | {counts['spans']} | {counts['spurious']} |"


def format_link_row(name: str, counts: dict[str, int]) -> str:
    """One Markdown row of the disambiguation table, with the share of gold links."""
    gold = counts["gold links"] or 1
    cells = [f"{counts[c]} ({100 * counts[c] / gold:.1f}%)" for c in ("exact", *LINK_CLASSES)]
    return f"| {name} | {counts['gold links']} | " + " | ".join(cells) + f" | {counts['links elsewhere']} |"


def load_redirects(path: str | None, data_dir: str) -> Redirects:
    """The redirects table at `path`, else DATA_DIR/kb/redirects.tsv when present, else none."""
    default = Path(data_dir) / "kb" / "redirects.tsv"
    if path is None and not default.is_file():
        return Redirects.empty()
    return Redirects.from_tsv(path or default)


def redecided(found: dict[str, dict[str, list[Mention]]], model: str | None, data_dir: str,
              redirects: str | None = None) -> dict[str, dict[str, list[Mention]]]:
    """The candidates decided again with the settings of `model`'s linker_config.json (None: the trained
    default's), the alias table, names and popularity of DATA_DIR/kb's entities and the `redirects` table
    (None: DATA_DIR/kb/redirects.tsv when present), as `onegen-gerbil run --linker onegen` decides."""
    from onegen.decide import PopularityPrior
    from onegen.linker import Linker
    from onegen.linker_config import model_config
    from onegen.titles import kb_file_names

    kb = Path(data_dir) / "kb"
    redirects = redirects or (str(kb / "redirects.tsv") if (kb / "redirects.tsv").is_file() else None)
    config = model_config(model).replace(aliases=str(kb / "aida_train_aliases.tsv"), redirects=redirects)
    popularity = PopularityPrior.from_kb(kb / "entities.jsonl", weight=config.popularity_weight) if config.popularity_weight else None
    names = (kb_file_names(kb / "entities.jsonl", redirects)
             if config.alias_weight and (kb / "entities.jsonl").is_file() else None)
    linker = Linker(None, None, config, popularity=popularity, titles=names)  # deciding needs no model and no index
    return {name: {doc_id: linker.decide(mentions) for doc_id, mentions in docs.items()} for name, docs in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", required=True, help="candidates file of `onegen-gerbil run --candidates`")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: every one in the file)")
    parser.add_argument("--ner", action="store_true", help="also class the spaCy NER spans (as --mentions ner links them: onegen.ner) and the union")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="data bundle (default: %(default)s)")
    parser.add_argument("--redirects", help="redirects table (default: DATA_DIR/kb/redirects.tsv when present)")
    parser.add_argument("--redecide", action="store_true",
                        help="decide the candidates again with --model's settings instead of the decisions the file records")
    parser.add_argument("--model", help="with --redecide: the model whose linker_config.json decides (default: the trained default)")
    args = parser.parse_args(argv)
    found = read_candidates(args.candidates)
    names = args.datasets.split(",") if args.datasets else list(found)
    if missing := [n for n in names if n not in found]:
        print(f"error: {args.candidates} has no documents of {', '.join(missing)}", file=sys.stderr)
        return 2
    ner = None
    if args.ner:
        from eval.linkers import NerSpans

        ner = NerSpans(tidy=True)
    datasets = {name: load_dataset(name, args.data_dir) for name in names}
    print("| set | spans | gold links | " + " | ".join(CLASSES) + " | spans marked | spurious |")
    print("|---|---|---" + "|---" * len(CLASSES) + "|---|---|")
    for name, docs in datasets.items():
        systems = {"OneGen": spans_of(found[name])}
        if ner is not None:
            ner_spans = dict(zip([d.doc_id for d in docs], ner([d.text for d in docs])))
            systems["NER"] = ner_spans
            systems["union"] = {d.doc_id: union(systems["OneGen"].get(d.doc_id, []), ner_spans[d.doc_id]) for d in docs}
        for system, spans in systems.items():
            print(format_row(name, system, split(docs, spans)))
    if args.redecide:
        found = redecided(found, args.model, args.data_dir, args.redirects)
    elif not has_decisions(args.candidates):
        print(f"{args.candidates} records no decisions (written before 2026-12-03): no disambiguation table "
              f"(--redecide decides them)", file=sys.stderr)
        return 0
    redirects = load_redirects(args.redirects, args.data_dir)
    print()
    print("| set | gold links | exact spans | " + " | ".join(LINK_CLASSES) + " | links elsewhere |")
    print("|---|---|---" + "|---" * len(LINK_CLASSES) + "|---|")
    for name, docs in datasets.items():
        print(format_link_row(name, link_split(docs, found[name], redirects)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
