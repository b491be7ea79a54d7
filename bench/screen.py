"""Screen a trained model against a reference run on a few documents, before building its whole index.

    python -m bench.screen --model DIR --reference FILE [--dataset aida-testa] [--docs 100] [--mention-bias B]
                           [--output FILE]

(run from the repository root: it imports bench.gpu_score)

Embedding the 78k-entity evaluation KB for a new model takes 106 min on 2 CPU cores. This script
needs about 20 min: it embeds only the entities in the reference run's top-k for the first `--docs`
documents of `--dataset`, decodes those documents with `--model` and searches that restricted set.
The reference is a candidates file with that dataset (`eval/run_gerbil.py run --candidates`, or
`bench/gpu_run.py`), usually the shipped default's. The restriction leaves out distractors the
reference did not rank, so it can only flatter the screened model: a model that does not beat the
reference here will not beat it on the whole KB.

Prints, for the reference and the model side by side (A2KB, strong match, InKB, redirects applied):
mentions marked, the share of gold links whose exact span is marked, top-1 and top-10 over the gold
spans both runs mark, micro-F1 with the trained default's decision settings (its linker_config.json: NIL
thresholds, alias prior, popularity) and micro-F1 with no prior and no NIL. Marking and ranking are apart on
purpose: a training change can improve one and cost the other. Screen on AIDA testa (the dev set);
the test sets are for the final table only.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from functools import partial
from pathlib import Path

from bench.gpu_score import RAW, data_priors, link, read_candidates, settings_of
from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from kb.ids import Redirects, canonical_id
from eval.run_gerbil import format_table, pct
from eval.scorer import score
from onegen.spans import Document, Mention
from kb.jsonl import read_kb
from onegen.linker import ExactSearch, retrieve_texts
from onegen.linker_config import model_config
from onegen.model import OneGen

TOP_K = 10


def marking_and_ranking(gold: list[Document], runs: dict[str, dict[str, list[Mention]]],
                        canonical) -> dict[str, dict[str, float]]:
    """Per run: mentions marked, share of gold InKB links with the exact span marked, and top-1 / top-10
    over the gold InKB spans that every run marks (so the runs rank the same mentions)."""
    def entity(ref: str) -> str | None:
        ref = canonical_id(ref)
        return canonical(ref) if ref else None

    out = {name: {"marked": 0, "exact_span": 0.0, "common_spans": 0, "top1": 0.0, "top10": 0.0} for name in runs}
    gold_links = 0
    for doc in gold:
        resolved = (((a.start, a.end), entity(a.entity_id)) for a in doc.mentions if a.entity_id)
        links = {span: e for span, e in resolved if e}
        gold_links += len(links)
        spans = {name: {(m.start, m.end): [entity(c.entity_id) for c in m.candidates]
                        for m in docs.get(doc.doc_id, [])} for name, docs in runs.items()}
        common = [s for s in links if all(s in marked for marked in spans.values())]
        for name, marked in spans.items():
            row = out[name]
            row["marked"] += len(marked)
            row["exact_span"] += sum(s in marked for s in links)
            row["common_spans"] += len(common)
            row["top1"] += sum(marked[s][:1] == [links[s]] for s in common)
            row["top10"] += sum(links[s] in marked[s][:TOP_K] for s in common)
    for row in out.values():
        row["exact_span"] /= max(gold_links, 1)
        row["top1"] /= max(row["common_spans"], 1)
        row["top10"] /= max(row["common_spans"], 1)
    return out


def screen_candidates(onegen: OneGen, docs: list[Document], entity_ids: list[str], kb_file: Path,
                      batch_size: int, mention_bias: float = 0.0) -> dict[str, list[Mention]]:
    """doc id -> mentions with their top-k, the model decoding with `mention_bias` and searching only
    `entity_ids` (embedded by it)."""
    wanted = set(entity_ids)
    entities = [e for e in read_kb(kb_file).entities if e.id in wanted]
    search = ExactSearch([e.id for e in entities], onegen.embed_entities(entities))
    decode = partial(onegen, mention_bias=mention_bias) if mention_bias else onegen
    out = {}
    for start in range(0, len(docs), batch_size):
        batch = docs[start:start + batch_size]
        found = retrieve_texts(decode, [d.text for d in batch], search, top_k=TOP_K, batch_size=batch_size)
        out.update({d.doc_id: mentions for d, mentions in zip(batch, found)})
        print(f"decoded {start + len(batch)}/{len(docs)} documents", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to screen (jobs/train.py output)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="candidates file (.jsonl.gz) of the run to compare with; it must hold --dataset")
    parser.add_argument("--dataset", default="aida-testa", help="dataset screened on (default: %(default)s)")
    parser.add_argument("--docs", type=int, default=100, help="its first N documents (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mention-bias", type=float, default=model_config(None).mention_bias,
                        help="decode the model with this mention bias, as `eval/run_gerbil.py run --mention-bias` "
                             "(default: the trained default's, %(default)s; 0: the model's own choice)")
    parser.add_argument("--output", type=Path, help="also write the model's candidates here (.jsonl.gz)")
    args = parser.parse_args(argv)
    if args.docs < 1:
        parser.error(f"--docs must be at least 1, got {args.docs}")
    if not args.reference.is_file():
        parser.error(f"no candidates file at {args.reference}")
    reference = read_candidates(args.reference).get(args.dataset)
    if not reference:
        parser.error(f"{args.reference} holds no {args.dataset} documents")
    started = time.perf_counter()
    gold = [d for d in load_dataset(args.dataset, args.data_dir) if d.doc_id in reference][:args.docs]
    reference = {d.doc_id: reference[d.doc_id] for d in gold}
    entity_ids = sorted({c.entity_id for mentions in reference.values() for m in mentions for c in m.candidates})
    print(f"{len(gold)} {args.dataset} documents, {len(entity_ids)} entities in the reference's top {TOP_K}",
          file=sys.stderr, flush=True)
    kb_file = args.data_dir / "kb" / "entities.jsonl"
    screened = screen_candidates(OneGen.from_pretrained(args.model), gold, entity_ids, kb_file, args.batch_size,
                                 args.mention_bias)
    if args.output:
        with gzip.open(args.output, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"dataset": args.dataset, "doc_id": doc_id,
                                     "mentions": [m.to_dict() for m in mentions]}) + "\n"
                         for doc_id, mentions in screened.items())

    redirects = Redirects.from_tsv(args.data_dir / "kb" / "redirects.tsv")
    priors = data_priors(args.data_dir, kb_file)
    shipped = settings_of(model_config(None))
    runs = {"reference": reference, "model": screened}
    spans = marking_and_ranking(gold, runs, redirects.resolve)
    rows = []
    for name, docs in runs.items():
        f1 = score(gold, link(docs, shipped, *priors), redirects=redirects).inkb.micro.f1
        raw = score(gold, link(docs, RAW, *priors), redirects=redirects).inkb.micro.f1
        s = spans[name]
        rows.append([name, s["marked"], pct(s["exact_span"]), f"{s['top1']:.3f} / {s['top10']:.3f}", pct(f1), pct(raw)])
    print(f"{args.dataset}, first {len(gold)} documents; the model (mention bias {args.mention_bias:g}) searched "
          f"only the reference's top-{TOP_K} entities ({time.perf_counter() - started:.0f} s)")
    print(format_table(["run", "mentions marked", "gold links, exact span marked (%)",
                        f"top-1 / top-10 on the {spans['model']['common_spans']} spans both mark",
                        "F1, shipped settings", "F1, no prior or NIL"], rows))


if __name__ == "__main__":
    main()
