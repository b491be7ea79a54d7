"""Build here what `bench/gpu_run.py` needs on a lent GPU machine, where spaCy and Ray are absent
(DESIGN section 10): the OneGen training examples of AIDA train, the KB, and the evaluation documents
with their sentence windows already cut.

    python bench/gpu_prepare.py [--out .gpu/data] [--data-dir ../shared/data] [--max-length 1024]

Writes into OUT (a folder git ignores: it holds Reuters-derived AIDA text, which must not be committed):
- train.jsonl.gz: one `OneGenExample` per line (`dataclasses.asdict`), built by onegen.training.prepare_data
  with the alias table as hard-negative source, exactly as `jobs/train.py` builds them (a recipe stage's
  `train_examples` sample is drawn from them on the GPU machine); with `--silver-docs`/`--case-augment`
  also silver and case-variant documents, as `jobs/train.py --silver-docs N --silver-exclude DATA_DIR` adds;
- kb.jsonl.gz: the evaluation KB (DESIGN section 4 lines);
- redirects.tsv: the title redirects, so that mined negatives (`mine_negatives`, stage 6 of the recipe)
  never hold a redirect of the gold entity;
- eval.jsonl.gz: {"dataset", "doc_id", "text", "windows": [[start, end], ...], "ner_spans": [[start, end], ...]}
  per evaluation document, windows as `onegen.inference.annotate` would cut them for the default model, name
  spans as the linker's NER finds them (`--mentions ner|union`: `Linker.ner`, the default spaCy model);
- config.json: the TrainConfig of the main run (paths as on this machine, for the model card) and sizes.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from eval.corpora import AIDA_FILE, DEFAULT_DATA_DIR, dataset_names, load_dataset, load_dataset_file
from onegen.chunking import sentence_windows
from onegen.default_model import DEFAULT_MODEL_NAME
from onegen.inference import default_window_tokens
from onegen.linker_config import LinkerConfig
from onegen.model import OneGen
from onegen.ner import NerSpans
from onegen.training import TrainConfig, prepare_data

EVAL_DATASETS_SKIPPED = ("aida-train",)  # trained on


def write_jsonl_gz(path: Path, rows) -> int:
    """Write dicts as gzipped JSON lines; returns the number of lines."""
    n = 0
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu/data"), help="output folder (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="data bundle (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per training example (default: %(default)s)")
    parser.add_argument("--limit-docs", type=int, default=None, help="keep this many documents per eval set (smoke runs)")
    parser.add_argument("--silver-docs", type=int, default=0,
                        help="also this many KB descriptions as training documents, none sharing text with an "
                             "evaluation set of --data-dir (onegen.silver; default: none)")
    parser.add_argument("--case-augment", type=float, default=0.0,
                        help="also this share of the training documents upper- or lower-cased (default: none)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    kb_file = args.data_dir / "kb" / "entities.jsonl"
    config = TrainConfig(train=str(args.data_dir / AIDA_FILE), kb=str(kb_file), output="adapter",
                         aliases=str(args.data_dir / "kb" / "aida_train_aliases.tsv"),
                         redirects=str(args.data_dir / "kb" / "redirects.tsv"), max_length=args.max_length,
                         silver_docs=args.silver_docs, silver_exclude=str(args.data_dir), case_augment=args.case_augment)
    onegen = OneGen.from_pretrained(DEFAULT_MODEL_NAME, device="cpu")
    evaluation = [name for name in dataset_names(args.data_dir) if name not in EVAL_DATASETS_SKIPPED]
    held_out = [doc.text for name in evaluation for doc in load_dataset(name, args.data_dir)] if args.silver_docs else []
    data = prepare_data(config, load_dataset_file(config.train, config.split), onegen.tokenizer, onegen.token_ids,
                        held_out=held_out)
    write_jsonl_gz(args.out / "train.jsonl.gz", map(asdict, data.examples))
    with kb_file.open("rb") as src, gzip.open(args.out / "kb.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copyfile(config.redirects, args.out / "redirects.tsv")

    window_tokens = default_window_tokens(onegen)

    def count_tokens(s: str) -> int:
        return len(onegen.tokenizer(s, add_special_tokens=False).input_ids)

    ner = NerSpans(LinkerConfig().ner_model, tidy=True)  # as Linker.ner finds them

    def eval_rows():
        for name in evaluation:
            docs = load_dataset(name, args.data_dir)[: args.limit_docs]
            data.sizes[f"eval_docs_{name}"] = len(docs)
            for doc, names in zip(docs, ner([doc.text for doc in docs])):
                windows = sentence_windows(doc.text, window_tokens, count_tokens) if doc.text.strip() else []
                yield {"dataset": name, "doc_id": doc.doc_id, "text": doc.text,
                       "windows": [[w.start, w.end] for w in windows], "ner_spans": [list(span) for span in names]}

    write_jsonl_gz(args.out / "eval.jsonl.gz", eval_rows())
    (args.out / "config.json").write_text(json.dumps({"train_config": asdict(config), "sizes": data.sizes,
                                                      "window_tokens": window_tokens}, indent=1))
    print(json.dumps(data.sizes, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
