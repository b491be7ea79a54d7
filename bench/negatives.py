"""Mined against built negatives at the same budget: which teaches the model to rank better?

    python -m bench.negatives [--model DIR] [--train-examples 120] [--eval-examples 80] [--shortlist 16]
                              [--lr 1e-4] [--loss infonce]

(run from the repository root: it imports bench.gpu_run)

Continues training the model (LoRA, as `bench/gpu_run.py --init` does) on the same seeded sample of AIDA
train windows twice, one pass each, same seed, same steps: once with the negatives the data builder
draws (alias table, titles, random), once with the ones the model itself ranks highest over the whole
KB (`onegen.mining`, what `--mine-negatives` trains on). Then reads sampled AIDA testa windows
teacher-forced (`onegen.mining.mention_vectors`) and prints, for the model before and after each run,
how often the gold entity ranks first among a fixed shortlist per mention: the starting model's top
`--shortlist` entities over the whole KB plus the gold one. For the starting model that equals its
top-1 over the whole KB; a trained model is only re-ranked inside the shortlist (embedding the whole
KB again takes 50 min on 2 cores, the shortlist a few). Made for CPU, where a whole epoch (8 hours)
does not fit: it says whether mining is the right next GPU call, not what an epoch of it reaches.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.gpu_run import Trainer
from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from eval.run_gerbil import format_table
from kb.ids import Redirects
from kb.index import EntityIndex
from kb.jsonl import read_kb
from onegen.data import build_examples, read_alias_table
from onegen.default_model import DEFAULT_MODEL_NAME
from onegen.mining import mention_vectors, mine_negatives
from onegen.model import OneGen
from onegen.pipeline.linking import ensure_index
from onegen.training import TrainConfig

DEFAULT_ADAPTER = Path(__file__).resolve().parent.parent / "onegen" / "default_adapter"
NUM_NEGATIVES = 4  # as training draws them (onegen.training.TrainConfig)
MINE_TOP_K = 32


def shortlist_gold_first(onegen: OneGen, examples, shortlists: list[list[str]], gold: list[str],
                         entities: dict, canonical) -> float:
    """Share of mentions whose gold entity the model ranks first inside its shortlist (gold included)."""
    ids = sorted({e for s in shortlists for e in s})
    row = {e: i for i, e in enumerate(ids)}
    onegen.model.eval()
    kb_vectors = onegen.embed_entities([entities[e] for e in ids])  # (S, D)
    queries = np.concatenate([v for v in mention_vectors(onegen, examples) if len(v)])  # (M, D)
    right = 0
    for q, shortlist, g in zip(queries, shortlists, gold):
        scores = kb_vectors[[row[e] for e in shortlist]] @ q
        right += canonical(shortlist[int(np.argmax(scores))]) == canonical(g)
    return right / len(gold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_ADAPTER, help="LoRA model folder to start from")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train-examples", type=int, default=120, help="AIDA train windows trained on")
    parser.add_argument("--eval-examples", type=int, default=80, help="AIDA testa windows ranked")
    parser.add_argument("--shortlist", type=int, default=16, help="entities per mention re-ranked")
    parser.add_argument("--loss", choices=["bpr", "infonce"], default="infonce")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--retrieval-weight", type=float, default=TrainConfig.retrieval_weight,
                        help="weight of the retrieval loss next to the language-model loss's 1 (default: %(default)s)")
    parser.add_argument("--runs", default="start,built,mined",
                        help="which rows to train and rank: start (no training), built, mined (default: %(default)s)")
    parser.add_argument("--save", type=Path, default=None,
                        help="write the mined run's model here, as jobs/train.py writes its output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = set(args.runs.split(",")) - {"start", "built", "mined"}
    if unknown:
        parser.error(f"unknown --runs {sorted(unknown)}: choose among start, built, mined")
    kb_file = args.data_dir / "kb" / "entities.jsonl"
    started = time.perf_counter()
    onegen = OneGen.from_pretrained(str(args.model))
    index = EntityIndex.load(ensure_index(kb_file, str(args.model), onegen.fingerprint()), expect=onegen.fingerprint())
    entities = {e.id: e for e in read_kb(kb_file).entities}
    canonical = Redirects.from_tsv(args.data_dir / "kb" / "redirects.tsv").resolve
    alias_file = args.data_dir / "kb" / "aida_train_aliases.tsv"
    aliases = read_alias_table(alias_file)
    rng = random.Random(args.seed)

    def sample(split: str, n: int):
        examples = build_examples(load_dataset(split, args.data_dir), entities, onegen.tokenizer, onegen.token_ids,
                                  aliases=aliases, num_negatives=NUM_NEGATIVES, seed=args.seed)
        return rng.sample(examples, min(n, len(examples)))

    built = sample("aida-train", args.train_examples)
    mined, report = mine_negatives(built, mention_vectors(onegen, built), index.search, num_negatives=NUM_NEGATIVES,
                                   top_k=MINE_TOP_K, canonical=canonical)
    evaluation = sample("aida-testa", args.eval_examples)
    vectors = mention_vectors(onegen, evaluation)
    gold = [e for ex in evaluation for e in ex.link_entities]
    _, top = index.search(np.concatenate([v for v in vectors if len(v)]), args.shortlist)  # (M, k)
    shortlists = [list(dict.fromkeys([*(e for e in row if e), g])) for row, g in zip(top, gold)]
    before = float(np.mean([canonical(row[0]) == canonical(g) for row, g in zip(top, gold)]))
    print(f"{len(built)} train windows, {report.mentions} mentions, start model gold first {report.gold_first_rate:.3f}"
          f" over the KB; {len(evaluation)} testa windows, {len(gold)} mentions ({time.perf_counter() - started:.0f} s)",
          flush=True)
    del onegen

    config = TrainConfig(train=str(args.data_dir), kb=str(kb_file), output=str(args.save or ""), aliases=str(alias_file),
                         base=DEFAULT_MODEL_NAME,
                         loss=args.loss, lr=args.lr, retrieval_weight=args.retrieval_weight,
                         batch_size=1, epochs=1, seed=args.seed, num_negatives=NUM_NEGATIVES,
                         # a window of a results table has a hundred anchors, each with its entity rows: without
                         # recomputing activations one such window took the process past 23 GB (killed, seed 1)
                         gradient_checkpointing=True)
    rows = [["start model (its index)", "", "", f"{before:.3f}", ""]]
    # the start model loaded as training loads it, not trained: checks the shortlist ranking against the index's
    runs = {"start": ("start model, re-embedded", None), "built": ("built negatives", built),
            "mined": ("mined negatives", mined)}
    for name, examples in (runs[r] for r in args.runs.split(",")):
        trainer = Trainer(replace(config, mine_negatives=examples is mined), examples or built, entities,
                          torch.device("cpu"), init=args.model)
        metrics = trainer.epoch() if examples else {"train_retrieval": float("nan"), "step": 0, "epoch_seconds": 0}
        rate = shortlist_gold_first(trainer.onegen, evaluation, shortlists, gold, entities, canonical)
        rows.append([name, f"{metrics['train_retrieval']:.3f}", metrics["step"], f"{rate:.3f}",
                     f"{metrics['epoch_seconds']:.0f}"])
        print(format_table(["run", "train retrieval loss", "steps", "testa gold first (shortlist)", "train s"], rows),
              flush=True)
        if args.save and examples is mined:
            trainer.save(args.save, {"train_docs": len({ex.doc_id for ex in mined}), "train_examples": len(mined),
                                     "train_tokens": sum(len(ex.input_ids) for ex in mined),
                                     "train_mentions": report.mentions, "kb_entities": len(entities)})
        trainer.free()
    print(f"\n{args.loss}, lr {args.lr}, retrieval weight {args.retrieval_weight}, batch 1, one pass; "
          f"shortlist: start model's top {args.shortlist} + gold; "
          f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
