"""How well a model ranks gold entities over the whole KB, and what its training negatives leave out.

    python bench/ranking.py [--model DIR] [--kb KB.jsonl] [--train-examples 200] [--testa-examples 100]
                            [--loss-examples 24]

Reads sampled training windows of AIDA train and testa as training reads them (marked gold mentions,
teacher-forced, `onegen.mining.mention_vectors`), searches the KB's index (built once per model and KB
and cached, as `eval/run_gerbil.py` does) and prints, per split, how often the gold entity comes first
and in the top 32. Then the retrieval loss on AIDA train batches twice, side by side: with the
negatives the data builder draws (alias table, titles, random) and with the ones the model itself
ranks highest (`onegen.mining.mine_negatives`, what `bench/gpu_run.py --mine-negatives` trains on).
A model that ranks its own training data poorly while its loss on the built negatives is small has
nothing left to learn from them. Runs on CPU: 14 min for the defaults on 2 cores, once the index exists.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from eval.corpora import DEFAULT_DATA_DIR, load_dataset
from eval.run_gerbil import format_table
from kb.ids import Redirects
from kb.index import EntityIndex
from kb.jsonl import read_kb
from onegen.collate import OneGenCollator
from onegen.data import build_examples, read_alias_table
from onegen.mining import mention_vectors, mine_negatives
from onegen.model import OneGen
from onegen.indexes import ensure_index
from onegen.train_step import compute_loss

NUM_NEGATIVES = 4  # as training draws them (onegen.training.TrainConfig)
TOP_K = 32
LOSS_BATCH = 4


@torch.no_grad()
def retrieval_loss(onegen: OneGen, collator: OneGenCollator, examples, kind: str) -> float:
    """Mean retrieval loss (`onegen.train_step.compute_loss`) over batches of `examples`, eval mode."""
    onegen.model.eval()
    batches = [collator(examples[s:s + LOSS_BATCH]) for s in range(0, len(examples), LOSS_BATCH)]
    losses = [compute_loss(onegen.model, batch, onegen.token_ids, kind=kind).retrieval.item() for batch in batches]
    return float(np.mean(losses))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="OneGen model folder (default: the bundled default)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--kb", type=Path, default=None, help="KB JSONL (default: DATA_DIR/kb/entities.jsonl)")
    parser.add_argument("--train-examples", type=int, default=200, help="AIDA train windows sampled")
    parser.add_argument("--testa-examples", type=int, default=100, help="AIDA testa windows sampled")
    parser.add_argument("--loss-examples", type=int, default=24, help="AIDA train windows the losses are taken on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kb_file = args.kb or args.data_dir / "kb" / "entities.jsonl"
    torch.manual_seed(args.seed)
    onegen = OneGen.from_pretrained(args.model)
    index = EntityIndex.load(ensure_index(kb_file, args.model, onegen.fingerprint()), expect=onegen.fingerprint())
    entities = {e.id: e for e in read_kb(kb_file).entities}
    redirects = Redirects.from_tsv(args.data_dir / "kb" / "redirects.tsv")
    aliases = read_alias_table(args.data_dir / "kb" / "aida_train_aliases.tsv")
    rng = random.Random(args.seed)

    def sample(split: str, n: int):
        examples = build_examples(load_dataset(split, args.data_dir), entities, onegen.tokenizer, onegen.token_ids,
                                  aliases=aliases, num_negatives=NUM_NEGATIVES, seed=args.seed)
        return rng.sample(examples, min(n, len(examples)))

    def mine(examples):
        return mine_negatives(examples, mention_vectors(onegen, examples), index.search, num_negatives=NUM_NEGATIVES,
                              top_k=TOP_K, canonical=redirects.resolve)

    rows = []
    for split, n in (("aida-train", args.train_examples), ("aida-testa", args.testa_examples)):
        _, report = mine(sample(split, n))
        rows.append([split, n, report.mentions, f"{report.gold_first_rate:.3f}",
                     f"{report.gold_in_top_k / max(report.mentions, 1):.3f}"])
    print(f"gold mentions read teacher-forced, searched over the {len(index)} entities of {kb_file}")
    print(format_table(["split", "windows", "mentions", "gold first", f"gold in top {TOP_K}"], rows))

    built = sample("aida-train", args.loss_examples)
    mined, _ = mine(built)
    collator = OneGenCollator(onegen.tokenizer, onegen.token_ids, entities, num_negatives=NUM_NEGATIVES, seed=args.seed)
    rows = [[kind, *(f"{retrieval_loss(onegen, collator, examples, kind):.3f}" for examples in (built, mined))]
            for kind in ("infonce", "bpr")]
    print(f"\nretrieval loss on {len(built)} AIDA train windows ({LOSS_BATCH} per batch), same anchors")
    print(format_table(["loss", "built negatives", "mined negatives"], rows))


if __name__ == "__main__":
    main()
