"""Measure a change of span settings on a run's candidates, relinking only the documents whose spans it changes.

    python bench/respan.py --candidates RUN/candidates-main.jsonl.gz --index INDEX_DIR --out DIR --split-spans
    python bench/gpu_score.py --candidates DIR

The span settings (`title_spans`, `split_spans`: `onegen.Linker._given_spans`) act after decoding, on the model's
mentions and the NER's spans. A candidates file of `onegen-gerbil run --linker onegen` keeps the model's mentions
(source "model") that no title span replaced, and the NER's spans come again from the same spaCy model, so the
spans of every document under the file's settings (title spans, no split) and under the new ones are known
without decoding. The documents whose spans differ are embedded again here (every span teacher-forced, which
writes the window as the model writes it with those spans marked) and searched in INDEX_DIR, under both settings,
so the two differ by the spans alone; every other document keeps the file's candidates, which it would get
again. DIR gets candidates-main.jsonl.gz (the new settings) and candidates-baseline.jsonl.gz (the file's), for
`bench/gpu_score.py`. A 2-core CPU relinks a changed AIDA document both ways in about 7 s.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from onegen.linker import Linker
from onegen.spans import Annotated, EmbeddedMention

RUNS = ("baseline", "main")  # the file's settings, the new ones


def spans_under(linker: Linker, text: str, model_spans: list[tuple[int, int]], ner_spans: list[tuple[int, int]],
                split: bool) -> dict[tuple[int, int], str]:
    """(start, end) -> source ("model" or "ner") of a text's mentions as `linker.embed` makes them, given the model's
    spans, with `split_spans` set to `split`."""
    linker.config.split_spans = split
    annotated = Annotated(text, [EmbeddedMention(s, e, text[s:e], np.zeros(1, np.float32)) for s, e in model_spans])
    given = linker._given_spans(ner_spans, annotated, join=True)
    return {(m.start, m.end): "model" for m in annotated.mentions} | {span: "ner" for span in given}


def relink(linker: Linker, text: str, spans: dict[tuple[int, int], str]) -> list[dict]:
    """The text's mentions at exactly these spans, each embedded by teacher forcing, with its candidates and the
    decision the linker's settings make (as a candidates file records them)."""
    (annotated,) = linker.embed([text], [sorted(spans)], mentions="given")
    for m in annotated.mentions:
        m.source = spans[(m.start, m.end)]
    return [m.to_dict() for m in linker.decide(linker.candidates(annotated))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=Path, required=True, help="a run's candidates file (onegen-gerbil run --candidates)")
    parser.add_argument("--index", required=True, help="an index of the run's KB, built by the same model")
    parser.add_argument("--model", help="the model of the run (default: the trained default)")
    parser.add_argument("--out", type=Path, required=True, help="folder for candidates-main|baseline.jsonl.gz")
    parser.add_argument("--split-spans", action="store_true", help="the new settings have split_spans on")
    parser.add_argument("--datasets", help="comma-separated: only these datasets of the file (default: all)")
    parser.add_argument("--keep-baseline", action="store_true",
                        help="take the file's candidates as the baseline's instead of relinking it here (half the time; "
                             "the two then differ by the machine's numerics too, on the relinked documents)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    linker = Linker.from_pretrained(args.model, index=args.index, redirects=str(args.data_dir / "kb" / "redirects.tsv"),
                                    aliases=str(args.data_dir / "kb" / "aida_train_aliases.tsv"), title_spans=True,
                                    mentions="union", device="cpu")
    with gzip.open(args.candidates, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if args.datasets:
        wanted = set(args.datasets.split(","))
        rows = [row for row in rows if row["dataset"] in wanted]
    texts = {}
    for name in dict.fromkeys(row["dataset"] for row in rows):
        texts |= {(name, d.doc_id): d.text for d in load_dataset(name, args.data_dir)}
    keys = [(row["dataset"], row["doc_id"]) for row in rows]
    ner = dict(zip(keys, linker.ner([texts[k] for k in keys])))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {run: args.out / f"candidates-{run}.jsonl.gz" for run in RUNS}
    outputs = {run: gzip.open(path.with_suffix(".partial"), "wt", encoding="utf-8") for run, path in paths.items()}
    changed, unlike_file = 0, 0
    for row, key in zip(tqdm(rows, desc="documents", file=sys.stderr), keys):
        text = texts[key]
        model_spans = [(m["start"], m["end"]) for m in row["mentions"] if m["source"] == "model"]
        before = spans_under(linker, text, model_spans, ner[key], split=False)
        after = spans_under(linker, text, model_spans, ner[key], split=args.split_spans)
        unlike_file += before != {(m["start"], m["end"]): m["source"] for m in row["mentions"]}
        if before != after:
            changed += 1
            linker.config.split_spans = False  # the decision's settings are the file's; the spans are given
            mentions = {"baseline": row["mentions"] if args.keep_baseline else relink(linker, text, before),
                        "main": relink(linker, text, after)}
        else:
            mentions = {run: row["mentions"] for run in RUNS}
        for run in RUNS:
            outputs[run].write(json.dumps(row | {"mentions": mentions[run]}, ensure_ascii=False) + "\n")
    for run, f in outputs.items():  # whole files only: a run cut off leaves .partial ones
        f.close()
        paths[run].with_suffix(".partial").replace(paths[run])
    print(f"{len(rows)} documents: {changed} relinked {'with the new settings' if args.keep_baseline else 'both ways'}; "
          f"{unlike_file} whose spans under the file's settings "
          f"differ from the file's (NER spans not as the run had them)")


if __name__ == "__main__":
    main()
