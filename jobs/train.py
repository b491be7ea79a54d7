"""Fine-tune a OneGen entity linker with Ray Train: `python jobs/train.py --train FILE --kb KB.jsonl --output DIR`.

LoRA (default, r=16) or full fine-tuning of any causal LM on annotated documents (AIDA TSV split or
NIF), with per-epoch checkpoints, evaluation on an AIDA split (testa) and resume after a crash.
The output folder loads with `OneGen.from_pretrained(DIR)`. Connects to the cluster in RAY_ADDRESS,
else starts a local one. The library code is onegen/training.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onegen.default_model import DEFAULT_MODEL_NAME
from onegen.loss import RETRIEVAL_KINDS
from onegen.training import STRATEGIES, TrainConfig, train

DEFAULTS = TrainConfig(train="", kb="", output="")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--train", required=True, help="training documents: AIDA TSV or NIF file")
    add("--split", default=DEFAULTS.split, help="AIDA split of --train (default train; 'all' for every document)")
    add("--kb", required=True, help="KB JSONL: positives and negatives are drawn from it")
    add("--aliases", default=None, help="mention<TAB>entity<TAB>count table for same-alias hard negatives")
    add("--mine-negatives", action="store_true",
        help="before each epoch, the entities the model ranks above the gold one become the negatives (ANCE; "
             "each worker embeds the whole KB every epoch)")
    add("--base", default=DEFAULT_MODEL_NAME, help=f"base model folder or cached hub id (default {DEFAULT_MODEL_NAME})")
    add("--output", required=True, help="folder of the final model, tokenizer and model card")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", type=int, default=DEFAULTS.lora, metavar="R", help="LoRA rank (default 16)")
    mode.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    add("--lora-alpha", type=int, default=None, help="LoRA alpha (default 2 * rank)")
    add("--loss", choices=RETRIEVAL_KINDS, default=DEFAULTS.loss, help="retrieval loss (default bpr)")
    add("--init", default=None, metavar="DIR",
        help="continue training a saved model of the same kind (e.g. onegen/default_adapter with --lora 16): its "
             "weights, this run's learning-rate schedule (default: start from --base)")
    add("--retrieval-weight", type=float, default=DEFAULTS.retrieval_weight, metavar="W",
        help="weight of the retrieval loss next to the generation CE's 1 (lambda_ret, default 1); below 1 keeps "
             "more of the mention marking when the negatives are hard (--mine-negatives)")
    add("--epochs", type=int, default=DEFAULTS.epochs)
    add("--lr", type=float, default=None, help="peak learning rate (default 2e-4 LoRA, 5e-5 full)")
    add("--max-length", type=int, default=DEFAULTS.max_length, help="tokens per training example")
    add("--batch-size", type=int, default=DEFAULTS.batch_size, help="examples per worker per micro-batch")
    add("--grad-accum", type=int, default=DEFAULTS.grad_accum, help="micro-batches per optimizer step")
    add("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
        help="recompute activations in backward: far less memory for about 1.3x the compute (default: on without "
             "--use-gpu, where a batch of 4 AIDA windows with their entity rows would pass 23 GB; off with it)")
    add("--num-workers", type=int, default=DEFAULTS.num_workers, help="Ray Train workers")
    add("--cpus-per-worker", type=int, default=DEFAULTS.cpus_per_worker, help="CPU cores (torch threads) per worker")
    add("--use-gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    add("--strategy", choices=STRATEGIES, default=DEFAULTS.strategy, help="ddp replicas or fsdp shards (GPUs)")
    add("--eval", default=None, help="evaluation documents each epoch (AIDA TSV or NIF)")
    add("--eval-split", default=DEFAULTS.eval_split, help="AIDA split of --eval (default testa; 'all' for every document)")
    add("--eval-docs", type=int, default=None, help="score a seeded sample of N eval documents")
    add("--eval-kb-size", type=int, default=None,
        help="link against the eval gold entities plus random KB entities up to N (default: the whole KB)")
    add("--redirects", default=None, help="from<TAB>to redirects applied when scoring")
    add("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    add("--seed", type=int, default=DEFAULTS.seed)
    add("--resume", action="store_true", help="continue the run in --storage from its latest checkpoint")
    add("--storage", default=None, help="Ray Train checkpoint folder (default OUTPUT/ray)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed command-line arguments."""
    def split(value):
        return None if value == "all" else value

    if args.init and not Path(args.init).is_dir():
        raise ValueError(f"--init {args.init}: no such folder (a saved model: an adapter or full weights)")
    return TrainConfig(
        train=args.train, split=split(args.split), kb=args.kb, aliases=args.aliases, base=args.base, init=args.init,
        output=args.output, lora=None if args.full else args.lora, lora_alpha=args.lora_alpha, loss=args.loss,
        retrieval_weight=args.retrieval_weight,
        epochs=args.epochs, lr=args.lr, max_length=args.max_length, batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        gradient_checkpointing=not args.use_gpu if args.gradient_checkpointing is None else args.gradient_checkpointing,
        mine_negatives=args.mine_negatives, num_workers=args.num_workers,
        cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu, strategy=args.strategy,
        eval=args.eval, eval_split=split(args.eval_split) if args.eval else None, eval_docs=args.eval_docs,
        eval_kb_size=args.eval_kb_size, redirects=args.redirects, max_steps=args.max_steps, seed=args.seed,
        resume=args.resume, storage=args.storage,
    )


def main(argv: list[str] | None = None) -> None:
    try:
        config = config_from_args(parse_args(argv))
    except ValueError as e:  # a bad setting (--epochs 0, --retrieval-weight 0, ...): one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import ray

    ray.init()  # the cluster in RAY_ADDRESS, else a local one
    try:
        result = train(config)
    finally:
        ray.shutdown()
    last = result.progress.history[-1]
    print(f"model {result.output} (from {result.checkpoint}): {result.progress.epoch} epochs, {result.progress.step} steps, "
          f"last train loss {last['train_loss']:.4f}, {last['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    main()
