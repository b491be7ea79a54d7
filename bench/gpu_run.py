"""One call on a lent GPU (DESIGN section 10): train the default OneGen model on AIDA train, and write
the candidates of every evaluation document, within a deadline.

    python bench/gpu_run.py --data .gpu/data --out $OUT [--epochs 4] [--lr 5e-4] [--deadline 540]

It runs where Ray, spaCy and FAISS are absent: it reads what `bench/gpu_prepare.py` built (training
examples, KB, evaluation documents with their windows), and trains in this one process with the same
pieces as `jobs/train.py` (onegen.training: the trainable model, the OneGen loss, the epoch loop, the
model card) on one GPU, bf16 autocast over float32 weights. Runs, in order, each only if the time left
allows it:

1. `main`: the default (LoRA r=16, BPR or `--loss`) for `--epochs` epochs, from scratch or from `--init`
   (an adapter saved earlier: training goes on from it, with a new learning-rate schedule); after epoch 1 its testa candidates
   (`main-e1`); at the end the adapter (OUT/adapter) and the candidates of every evaluation set. With
   `--mine-negatives`, before each epoch the model as it stands searches the whole KB for every training
   mention and the entities it ranks above the rest become the anchors' negatives (onegen.mining);
   `--every-mention` makes every linked mention an anchor, not one per sentence;
2. the ablations, one epoch each from the base model, testa candidates: `lora-infonce-e1` and
   `full-bpr-e1` by default (`--ablations`; `--epochs 0` skips the default run, so that e.g.
   `--epochs 0 --ablations lora-bpr,lora-infonce,full-infonce` compares the losses and LoRA against
   full fine-tuning at the same budget; `--retrieval-weight` applies to these runs too).

Candidates are found as `eval/run_gerbil.py run --linker onegen` finds them (onegen.inference.annotate
over the given windows, then exact cosine top-k over every KB entity's [SE] vector), computed in
float32 (TF32 matrix products) by the model loaded back from what was saved. They are written as
OUT/candidates-RUN.jsonl.gz: {"dataset", "doc_id", "mentions": [{"start", "end", "surface",
"candidates": [[entity_id, cosine], ...]}]}. `bench/gpu_score.py` then picks the NIL threshold on
testa and scores every set here. OUT/results.json records what ran, the timings and the losses.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from kb.ids import Redirects
from kb.jsonl import read_kb
from onegen.chunking import Window
from onegen.collate import OneGenCollator
from onegen.data import OneGenExample
from onegen.inference import annotate
from onegen.linker import with_candidates
from onegen.mining import mine_with_model
from onegen.model import OneGen
from onegen.training import (
    ARGS_FILE,
    CARD_FILE,
    OneGenLoss,
    Progress,
    TrainConfig,
    _hardware,
    load_trained_weights,
    make_trainable,
    optimizer_and_scheduler,
    shuffled_loader,
    train_epoch,
    write_model_card,
)

LOG = logging.getLogger("gpu_run")
TOP_K = 10
SEARCH_ROWS = 4096  # queries scored against the KB at once (a (4096, N) float32 block on the GPU)
TUNE_SET = "aida-testa"
FINAL_EVAL_GUESS = 120  # s for the final evaluation when no testa evaluation was timed (78-82 s measured on an H200)


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def first_per_set(docs: list[dict], n: int) -> list[dict]:
    """The first `n` documents of each dataset, in their order."""
    seen: Counter = Counter()
    kept = []
    for doc in docs:
        seen[doc["dataset"]] += 1
        if seen[doc["dataset"]] <= n:
            kept.append(doc)
    return kept


class Clock:
    """Seconds since start and the time left before the deadline."""

    def __init__(self, deadline: float):
        self.start = time.perf_counter()
        self.deadline = deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - self.elapsed()


class Results:
    """results.json, rewritten after every change so that a killed run still leaves it."""

    def __init__(self, path: Path, **info):
        self.path = path
        self.data = {**info, "runs": {}, "skipped": []}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def embed_kb(onegen: OneGen, entities: list, batch_size: int) -> torch.Tensor:
    """(N, D) float32 L2-normalised [SE] vectors of the KB, on the GPU."""
    return torch.from_numpy(onegen.embed_entities(entities, batch_size=batch_size)).to(onegen.device)


def exact_search(kb_ids: list[str], kb_vectors: torch.Tensor):
    """A `search(queries, k) -> (scores, ids)` over the KB vectors, on their device, in blocks of queries."""
    ids = np.asarray(kb_ids, dtype=object)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(ids))
        scores, rows = [], []
        for start in range(0, len(queries), SEARCH_ROWS):
            block = torch.from_numpy(queries[start:start + SEARCH_ROWS]).to(kb_vectors.device)
            s, i = (block @ kb_vectors.T).topk(k, dim=1)  # (Q, k)
            scores.append(s.cpu().numpy())
            rows.append(i.cpu().numpy())
        return np.concatenate(scores), ids[np.concatenate(rows)]

    return search


def in_scoring_order(docs: list[dict]) -> list[list[dict]]:
    """The documents grouped by dataset: AIDA testa (the tuning set) first, then testb, then the rest."""
    groups: dict[str, list[dict]] = {}
    for doc in docs:
        groups.setdefault(doc["dataset"], []).append(doc)
    first = [TUNE_SET, "aida-testb"]
    return sorted(groups.values(), key=lambda g: first.index(g[0]["dataset"]) if g[0]["dataset"] in first else 2)


def write_candidates(onegen: OneGen, docs: list[dict], search, path: Path, batch_size: int) -> dict:
    """Annotate `docs` over their windows, search the top-k entities of each mention, write them to `path`.

    One dataset at a time, AIDA first, each flushed once written: a call cut off in the middle still
    leaves the datasets it finished readable (`bench/gpu_score.py` reads up to where the file ends).
    """
    started = time.perf_counter()
    mentions = generated = 0
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for group in in_scoring_order(docs):
            annotated = annotate(onegen, [d["text"] for d in group], batch_size=batch_size,
                                 windows=[[Window(s, e) for s, e in d["windows"]] for d in group])
            for doc, result in zip(group, annotated):
                rows = []
                if result.mentions:
                    scores, ids = search(np.stack([m.vector for m in result.mentions]), TOP_K)  # (M, k) each
                    rows = [m.to_dict() for m in with_candidates(result.mentions, scores, ids)]
                mentions += len(rows)
                generated += result.generated_tokens
                f.write(json.dumps({"dataset": doc["dataset"], "doc_id": doc["doc_id"], "mentions": rows},
                                   ensure_ascii=False) + "\n")
            f.flush()
            LOG.info("%s: %d documents written, %.0f s", group[0]["dataset"], len(group), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    return {"docs": len(docs), "mentions": mentions, "generated_tokens": generated, "seconds": round(seconds, 1),
            "generated_tokens_per_second": round(generated / max(seconds, 1e-9))}


class Trainer:
    """One training run in this process, epoch by epoch (onegen.training's pieces, no Ray)."""

    def __init__(self, config: TrainConfig, examples: list[OneGenExample], entities: dict, device: torch.device,
                 init: Path | None = None):
        self.config = config
        self.device = device
        self.init = init
        torch.manual_seed(config.seed)
        self.onegen = OneGen.from_pretrained(config.base, device="cpu", dtype=torch.float32)
        model = make_trainable(self.onegen.model, self.onegen.token_ids, config)
        if init is not None:  # continue from a saved model of the same kind (e.g. the bundled adapter)
            load_trained_weights(model, init, lora=config.lora is not None)
        self.onegen.model = model
        self.onegen.device = device
        self.module = OneGenLoss(model, self.onegen.token_ids, config.loss, config.temperature,
                                 config.retrieval_weight).to(device)
        self.examples = examples  # as built; mining rewrites copies of them
        self.collator = OneGenCollator(self.onegen.tokenizer, self.onegen.token_ids, entities,
                                       num_negatives=config.num_negatives, seed=config.seed)
        self.loader = shuffled_loader(examples, self.collator, config)
        self.optimizer, self.scheduler = optimizer_and_scheduler(self.module, config, len(self.loader))
        self.progress = Progress(hardware=_hardware(device, 1))

    def mine(self, kb: list, embed_batch_size: int, every_mention: bool, canonical) -> dict:
        """Give the next epoch's anchors the negatives the model ranks highest now (onegen.mining)."""
        started = time.perf_counter()
        examples, report = mine_with_model(
            self.onegen, self.examples, kb, num_negatives=self.config.num_negatives, every_mention=every_mention,
            canonical=canonical, batch_size=self.config.batch_size, embed_batch_size=embed_batch_size,
            make_search=lambda ids, vectors: exact_search(ids, torch.from_numpy(vectors).to(self.device)))
        self.loader = shuffled_loader(examples, self.collator, self.config)  # same length: the schedule holds
        torch.cuda.empty_cache()
        info = {**asdict(report), "train_gold_first": round(report.gold_first_rate, 4),
                "seconds": round(time.perf_counter() - started, 1)}
        LOG.info("mined negatives: %s", info)
        return info

    def epoch(self) -> dict:
        """Train one epoch; returns its metrics (also appended to the progress history)."""
        started = time.perf_counter()
        self.loader.generator.manual_seed(self.config.seed * 1000 + self.progress.epoch)
        metrics = train_epoch(self.module, self.loader, self.optimizer, self.scheduler, self.progress, self.config,
                              self.device)
        self.progress.tokens += metrics.pop("tokens")
        self.progress.train_seconds += time.perf_counter() - started
        metrics["wall_seconds"] = self.progress.train_seconds
        self.progress.history.append(metrics)
        LOG.info("epoch %d: %s", self.progress.epoch, metrics)
        return metrics

    def save(self, folder: Path, sizes: dict) -> None:
        """The model as jobs/train.py writes its output: weights, tokenizer, training args, model card."""
        self.onegen.save_pretrained(folder)
        self.onegen.tokenizer.save_pretrained(folder)
        (folder / ARGS_FILE).write_text(json.dumps(asdict(self.config), indent=1))
        write_model_card(folder / CARD_FILE, self.config, self.progress, sizes, self.progress.history[-1],
                         driver_seconds=self.progress.train_seconds, init=self.init)

    def free(self) -> None:
        del self.module, self.optimizer, self.scheduler, self.onegen
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".gpu/data"), help="bench/gpu_prepare.py output")
    parser.add_argument("--out", type=Path, required=True, help="where the adapter, candidates and results go")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the default run (default: %(default)s)")
    parser.add_argument("--loss", choices=["bpr", "infonce"], default=None,
                        help="retrieval loss of the default run (default: bench/gpu_prepare.py's, BPR)")
    parser.add_argument("--retrieval-weight", type=float, default=1.0,
                        help="weight of every run's retrieval loss next to the CE's 1 (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, LoRA runs (default: %(default)s)")
    parser.add_argument("--full-lr", type=float, default=5e-5, help="peak learning rate, full fine-tuning")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=540, help="seconds for everything (default: %(default)s)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="windows decoded together")
    parser.add_argument("--embed-batch-size", type=int, default=512, help="entities embedded together")
    parser.add_argument("--limit-examples", type=int, default=None, help="train on this many examples (smoke runs)")
    parser.add_argument("--limit-kb", type=int, default=None, help="keep this many KB entities, gold first (smoke runs)")
    parser.add_argument("--limit-docs", type=int, default=None, help="evaluate this many documents per set (smoke runs)")
    parser.add_argument("--ablations", default="lora-infonce,full-bpr", help="comma-separated one-epoch runs")
    parser.add_argument("--mine-negatives", action="store_true",
                        help="default run: before each epoch, the model's top-ranked wrong entities become the negatives")
    parser.add_argument("--every-mention", action="store_true",
                        help="with --mine-negatives: every linked mention is an anchor (default: one per sentence)")
    parser.add_argument("--init", type=Path, default=None,
                        help="the default run starts from this saved LoRA adapter (e.g. onegen/default_adapter)")
    args = parser.parse_args(argv)
    if args.every_mention and not args.mine_negatives:
        parser.error("--every-mention needs --mine-negatives (the extra anchors get their negatives from mining)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    clock = Clock(args.deadline)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # evaluation in float32 with TF32 products
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = json.loads((args.data / "config.json").read_text())
    base_config = TrainConfig.from_dict({**prepared["train_config"], "use_gpu": device.type == "cuda",
                                         "batch_size": args.batch_size})
    examples = [OneGenExample(**e) for e in read_jsonl_gz(args.data / "train.jsonl.gz")][: args.limit_examples]
    with tempfile.TemporaryDirectory() as tmp:
        kb_file = Path(tmp) / "kb.jsonl"
        with gzip.open(args.data / "kb.jsonl.gz", "rb") as src, kb_file.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        kb = read_kb(kb_file).entities
    if args.limit_kb:
        gold = {e for ex in examples for e in ex.link_entities}
        kb = sorted(kb, key=lambda e: e.id not in gold)[: args.limit_kb]
        examples = [ex for ex in examples if set(ex.link_entities) <= {e.id for e in kb}]
    entities = {e.id: e for e in kb}
    kb_ids = [e.id for e in kb]
    docs = read_jsonl_gz(args.data / "eval.jsonl.gz")
    if args.limit_docs:
        docs = first_per_set(docs, args.limit_docs)
    testa = [d for d in docs if d["dataset"] == TUNE_SET]
    sizes = {**prepared["sizes"], "train_examples": len(examples), "kb_entities": len(kb),
             "train_tokens": sum(len(e.input_ids) for e in examples)}
    results = Results(args.out / "results.json", device=_hardware(device, 1), sizes=sizes,
                      args={k: str(v) for k, v in vars(args).items()})
    LOG.info("data: %d examples, %d entities, %d eval docs; %.0f s left", len(examples), len(kb), len(docs), clock.left())

    def evaluate(run: str, folder: Path, eval_docs: list[dict]) -> None:
        started = time.perf_counter()
        onegen = OneGen.from_pretrained(str(folder), device=device, dtype=torch.float32)
        vectors = embed_kb(onegen, kb, args.embed_batch_size)
        embed_seconds = time.perf_counter() - started
        info = write_candidates(onegen, eval_docs, exact_search(kb_ids, vectors),
                                args.out / f"candidates-{run}.jsonl.gz", args.eval_batch_size)
        results.data["runs"].setdefault(run, {})["eval"] = {**info, "embed_seconds": round(embed_seconds, 1),
                                                            "entities_per_second": round(len(kb) / embed_seconds)}
        results.save()
        LOG.info("%s evaluated: %s", run, results.data["runs"][run]["eval"])
        del onegen, vectors
        torch.cuda.empty_cache()

    def record(run: str, trainer: Trainer) -> None:
        results.data["runs"].setdefault(run, {})["train"] = {"config": asdict(trainer.config),
                                                             "history": trainer.progress.history}
        results.save()

    # 1. The default: LoRA + BPR (or --loss); --epochs 0 skips it.
    epoch_seconds = eval_seconds = None
    if args.epochs > 0:
        main_config = replace(base_config, epochs=args.epochs, lr=args.lr, loss=args.loss or base_config.loss,
                              retrieval_weight=args.retrieval_weight)
        trainer = Trainer(main_config, examples, entities, device, init=args.init)
        redirects_file = args.data / "redirects.tsv"
        canonical = Redirects.from_tsv(redirects_file).resolve if redirects_file.is_file() else str
        adapter = args.out / "adapter"
        for epoch in range(1, args.epochs + 1):
            mined = trainer.mine(kb, args.embed_batch_size, args.every_mention, canonical) if args.mine_negatives else None
            metrics = trainer.epoch()
            epoch_seconds = metrics["epoch_seconds"] + (mined["seconds"] if mined else 0)
            if mined:
                results.data["runs"].setdefault("main", {}).setdefault("mining", []).append(mined)
            record("main", trainer)
            if epoch == 1 and args.ablations:
                with tempfile.TemporaryDirectory() as tmp:
                    trainer.save(Path(tmp), sizes)
                    started = time.perf_counter()
                    evaluate("main-e1", Path(tmp), testa)
                    eval_seconds = time.perf_counter() - started
            trainer.save(adapter, sizes)  # the latest epoch's weights are always there
            # stop early when the next epoch plus the final evaluation would not fit
            final_eval = 4 * eval_seconds if eval_seconds else FINAL_EVAL_GUESS  # testa: ~1/4 of the eval tokens
            if epoch < args.epochs and clock.left() < epoch_seconds + final_eval + 30:
                results.data["skipped"].append(f"main epochs {epoch + 1}..{args.epochs}: {clock.left():.0f} s left")
                LOG.warning("stopping the default run after epoch %d: %.0f s left", epoch, clock.left())
                break
        trainer.free()
        evaluate("main", adapter, docs)

    # 2. Ablations, one epoch each, testa only.
    for name in filter(None, args.ablations.split(",")):
        lora, loss = name.split("-")
        need = (epoch_seconds or 60) * (1.5 if lora == "full" else 1.0) + (eval_seconds or 60) + 20
        if clock.left() < need:
            results.data["skipped"].append(f"{name}: needs ~{need:.0f} s, {clock.left():.0f} s left")
            results.save()
            continue
        config = replace(base_config, epochs=1, loss=loss, lora=None if lora == "full" else base_config.lora,
                         lr=args.full_lr if lora == "full" else args.lr, retrieval_weight=args.retrieval_weight)
        trainer = Trainer(config, examples, entities, device)
        seconds = trainer.epoch()["epoch_seconds"]
        record(f"{name}-e1", trainer)
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(Path(tmp), sizes)
            trainer.free()
            started = time.perf_counter()
            evaluate(f"{name}-e1", Path(tmp), testa)
        eval_seconds = time.perf_counter() - started  # the next estimates use what this run took
        epoch_seconds = seconds / (1.5 if lora == "full" else 1.0)
    results.data["seconds"] = round(clock.elapsed(), 1)
    results.save()
    LOG.info("done in %.0f s; skipped: %s", clock.elapsed(), results.data["skipped"])


if __name__ == "__main__":
    main()
