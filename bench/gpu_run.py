"""One call on a lent GPU (DESIGN section 10): train stages of the recipe with `onegen.training.fit`, then
write the candidates of every evaluation document.

    python bench/gpu_run.py --data .gpu/data --out $OUT [--config configs/default.toml] [--stages 1-3]
                            [--init DIR] [--mine-negatives] [--every-mention] [--loss infonce] ...

It runs where Ray, spaCy and FAISS are absent: it reads what `bench/gpu_prepare.py` built (training
examples, KB, evaluation documents with their windows) and trains in this one process, each stage as
`jobs/train.py --config ... --no-ray` would (the same `fit`; stage N into OUT/stage-N from stage N-1's
folder, or from `--init` for the first stage run; a finished stage is skipped; the recipe's last stage gets
its [linker] settings). Flags override the recipe's values for every stage run, as on jobs/train.py. Then
the last stage's model, loaded back from what was saved, finds the candidates as `eval/run_gerbil.py run
--linker onegen` does: `Linker.embed` with the model's linker_config.json (mention bias; with `mentions`
"union", the NER spans prepared there embedded by teacher forcing, title spans) over the prepared windows,
then exact cosine top-k over every KB entity's [SE] vector, in float32 (TF32 matrix products), written as
OUT/candidates-main.jsonl.gz: {"dataset", "doc_id", "mentions": [{"start", "end", "surface", "source",
"candidates": [[entity_id, cosine], ...]}]}. `--baseline DIR` then does the same for another saved model
(the shipped default, say) into OUT/candidates-baseline.jsonl.gz, for a comparison made in one call.
`--link-only --init DIR` trains nothing and writes DIR's candidates as the main run's.
`bench/gpu_score.py` then picks the decision settings on the dev sets and scores every set there.
OUT/results.json records what ran, the timings and the losses.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from eval.corpora import DEV_SETS
from jobs.train import save_linker_settings
from kb.jsonl import read_kb
from kb.lookup import VectorsById
from onegen.chunking import Window
from onegen.data import OneGenExample
from onegen.linker import Linker
from onegen.linker_config import model_config
from onegen.model import OneGen
from onegen.training import TrainConfig, TrainData, fit, is_finished, load_recipe
from onegen.training.card import command_line, portable
from onegen.training.data import example_sizes, sample_examples
from onegen.training.loop import hardware
from onegen.training.recipe import parse_stages
from onegen.titles import Titles

LOG = logging.getLogger("gpu_run")
SEARCH_ROWS = 4096  # queries scored against the KB at once (a (4096, N) float32 block on the GPU)
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


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


class GpuSearch:
    """Exact cosine top-k over the KB's L2-normalised [SE] vectors on their device, in blocks of queries
    (a Linker's `search`, as onegen.linker.ExactSearch is on the CPU)."""

    def __init__(self, ids: list[str], vectors: torch.Tensor):
        self.ids = np.asarray(ids, dtype=object)  # (N,)
        self.vectors = vectors  # (N, D) float32
        self._by_id: VectorsById | None = None  # for `score`, a CPU copy made on first use

    def __len__(self) -> int:
        return len(self.ids)

    def score(self, queries: np.ndarray, wanted: list[list[str]]) -> list[dict[str, float]]:
        """Per query, {entity id: cosine} of its wanted ids (the name candidates, `Linker.candidates`)."""
        if self._by_id is None:
            self._by_id = VectorsById(self.ids, self.vectors.cpu().numpy())
        return self._by_id.score(queries, wanted)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) cosine scores and entity ids, best first."""
        k = min(k, len(self.ids))
        scores, rows = [], []
        for start in range(0, len(queries), SEARCH_ROWS):
            block = torch.from_numpy(queries[start:start + SEARCH_ROWS]).to(self.vectors.device)
            s, i = (block @ self.vectors.T).topk(k, dim=1)  # (Q, k)
            scores.append(s.cpu().numpy())
            rows.append(i.cpu().numpy())
        return np.concatenate(scores), self.ids[np.concatenate(rows)]


def in_scoring_order(docs: list[dict]) -> list[list[dict]]:
    """The documents grouped by dataset: the dev sets the settings are tuned on first, then AIDA testb, then the rest."""
    groups: dict[str, list[dict]] = {}
    for doc in docs:
        groups.setdefault(doc["dataset"], []).append(doc)
    first = [*DEV_SETS, "aida-testb"]
    return sorted(groups.values(), key=lambda g: first.index(g[0]["dataset"]) if g[0]["dataset"] in first else len(first))


def write_candidates(linker: Linker, docs: list[dict], path: Path, batch_size: int) -> dict:
    """Embed the mentions of `docs` as `linker.embed` does over their prepared windows (and NER spans), search
    the top-k entities of each, write them to `path`.

    One dataset at a time, the dev sets first, each flushed once written: a call cut off in the middle still
    leaves the datasets it finished readable (`bench/gpu_score.py` reads up to where the file ends).
    """
    started = time.perf_counter()
    mentions = generated = 0
    with_spans = linker.mentions != "model"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for group in in_scoring_order(docs):
            spans = [[tuple(span) for span in d["ner_spans"]] for d in group] if with_spans else None
            embedded = linker.embed([d["text"] for d in group], spans, batch_size=batch_size, span_source="ner",
                                    mentions="given" if linker.mentions == "ner" else None,
                                    windows=[[Window(s, e) for s, e in d["windows"]] for d in group])
            for doc, annotated in zip(group, embedded):
                rows = [m.to_dict() for m in linker.candidates(annotated)]
                mentions += len(rows)
                generated += annotated.generated_tokens
                f.write(json.dumps({"dataset": doc["dataset"], "doc_id": doc["doc_id"], "mentions": rows},
                                   ensure_ascii=False) + "\n")
            f.flush()
            LOG.info("%s: %d documents written, %.0f s", group[0]["dataset"], len(group), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    return {"docs": len(docs), "mentions": mentions, "generated_tokens": generated, "seconds": round(seconds, 1),
            "generated_tokens_per_second": round(generated / max(seconds, 1e-9))}


def decode_model(model: Path, kb: list, titles: Titles, docs: list[dict], path: Path, device: torch.device,
                 args: argparse.Namespace) -> dict:
    """The candidates of every document by the saved `model` under its linker_config.json, written to `path`."""
    onegen = OneGen.from_pretrained(str(model), device=device, dtype=torch.float32)
    config = model_config(str(model))
    embed_started = time.perf_counter()
    vectors = torch.from_numpy(onegen.embed_entities(kb, batch_size=args.embed_batch_size)).to(device)
    embed_seconds = time.perf_counter() - embed_started
    linker = Linker(onegen, GpuSearch([e.id for e in kb], vectors), config, titles=titles)
    info = write_candidates(linker, docs, path, args.eval_batch_size)
    LOG.info("%s: %s", model, info)
    return {"model": model.name, "mentions_from": config.mentions, "mention_bias": config.mention_bias,
            "title_spans": config.title_spans, "split_spans": config.split_spans, **info, "embed_seconds": round(embed_seconds, 1),
            "entities_per_second": round(len(kb) / embed_seconds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".gpu/data"), help="bench/gpu_prepare.py output")
    parser.add_argument("--out", type=Path, required=True, help="where the stages, candidates and results go")
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="recipe (default: configs/default.toml)")
    parser.add_argument("--stages", default="-", help="stages of the recipe to run, e.g. 1-3 (default: all)")
    parser.add_argument("--init", type=Path, default=None, help="the first stage run starts from this saved model")
    parser.add_argument("--link-only", action="store_true",
                        help="train nothing: write the candidates of the --init model (and of --baseline), e.g. the "
                             "shipped default under two linker settings")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also write the candidates of this saved model (e.g. onegen/default_adapter), after the "
                             "trained one's, as candidates-baseline.jsonl.gz")
    parser.add_argument("--loss", choices=["bpr", "infonce"], default=None, help="override every stage's loss")
    parser.add_argument("--mine-negatives", action="store_true", help="mine negatives before every epoch")
    parser.add_argument("--every-mention", action="store_true", help="with --mine-negatives: every mention an anchor")
    parser.add_argument("--epochs", type=int, default=None, help="override every stage's epochs")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="end every stage run after this many optimizer steps, its schedule too (to fit a call)")
    parser.add_argument("--lr", type=float, default=None, help="override every stage's peak learning rate")
    parser.add_argument("--batch-size", type=int, default=None, help="override every stage's batch size")
    parser.add_argument("--retrieval-weight", type=float, default=None, help="override every stage's lambda_ret")
    parser.add_argument("--seed", type=int, default=None,
                        help="override every stage's seed: batch order, sampled examples, negatives (the silver "
                             "documents and case variants are bench/gpu_prepare.py's)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="windows decoded together")
    parser.add_argument("--embed-batch-size", type=int, default=512, help="entities embedded together")
    parser.add_argument("--limit-examples", type=int, default=None, help="train on this many examples (smoke runs)")
    parser.add_argument("--limit-kb", type=int, default=None, help="keep this many KB entities, gold first (smoke runs)")
    parser.add_argument("--limit-docs", type=int, default=None, help="evaluate this many documents per set (smoke runs)")
    args = parser.parse_args(argv)
    if args.link_only and args.init is None:
        parser.error("--link-only writes the candidates of the --init model: give --init DIR")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # evaluation in float32 with TF32 products
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = json.loads((args.data / "config.json").read_text())
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
    docs = read_jsonl_gz(args.data / "eval.jsonl.gz")
    if args.limit_docs:
        docs = first_per_set(docs, args.limit_docs)
    results = Results(args.out / "results.json", device=hardware(device, 1),
                      args={k: str(v) for k, v in vars(args).items()})

    # the data paths as on the machine that prepared them (for the cards); the redirects travel with the data
    given = {k: prepared["train_config"][k] for k in ("train", "kb", "aliases")}
    given.update(redirects=str(args.data / "redirects.tsv"), use_gpu=device.type == "cuda")
    flags = {"init": args.init and str(args.init), "loss": args.loss, "epochs": args.epochs, "max_steps": args.max_steps,
             "lr": args.lr,
             "batch_size": args.batch_size, "retrieval_weight": args.retrieval_weight, "seed": args.seed,
             "mine_negatives": args.mine_negatives or None, "every_mention": args.every_mention or None}
    given.update({k: v for k, v in flags.items() if v is not None})
    recipe = load_recipe(args.config)
    command = command_line("bench/gpu_run.py", sys.argv[1:] if argv is None else argv)
    last = args.init if args.link_only else None
    stages = [] if args.link_only else parse_stages(args.stages, len(recipe.stages))
    for stage, values in recipe.stage_values(given, args.out, stages):
        config = TrainConfig.from_dict(values)
        last = Path(config.output)
        if is_finished(last):
            LOG.info("stage %d: already trained in %s", stage, last)
            continue
        chosen = sample_examples(examples, config)
        progress = fit(config, TrainData(chosen, entities, example_sizes(chosen, entities)),
                       made_by=f"Stage {stage} of the recipe `{portable(args.config)}`, made by `{command}`.")
        if stage == len(recipe.stages):  # as jobs/train.py: the finished model's decision settings beside it
            save_linker_settings(config.output, recipe.linker)
        results.data["runs"][f"stage-{stage}"] = {"train": {"config": values, "history": progress.history}}
        results.save()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # the candidates of every evaluation document, by the last stage's model as saved (then the baseline's)
    titles = Titles.from_ids(e.id for e in kb)
    results.data["eval"] = decode_model(last, kb, titles, docs, args.out / "candidates-main.jsonl.gz", device, args)
    results.save()
    if args.baseline is not None:
        results.data["eval_baseline"] = decode_model(args.baseline, kb, titles, docs,
                                                     args.out / "candidates-baseline.jsonl.gz", device, args)
    results.data["seconds"] = round(time.perf_counter() - started, 1)
    results.save()
    LOG.info("done in %.0f s", results.data["seconds"])


if __name__ == "__main__":
    main()
