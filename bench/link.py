"""Benchmark the link job against the model alone, and its memory over a 10x larger corpus.

    python bench/link.py [--docs 64] [--scale 10] [--model M] [--kb FILE | --index DIR] [--report FILE]

1. Model alone: `OneGen(texts)` in this process on the same texts (docs/s, generated tokens/s).
2. The job: `run_job` on a local Ray over the same texts, end to end (planning, replica start,
   index-shard actors, reading, writing included); ratio = job docs/s / model docs/s (target >= 0.8).
   Also the ratio once started: the larger run's extra documents over its extra wall time, which
   leaves out the fixed start-up (what a long job's throughput tends to).
3. Scale: the job over `--scale` times more documents; peak RSS of the driver plus every Ray
   process it started, sampled every 0.2 s, for both sizes (streaming keeps it flat: ratio ~1).
Numbers are measured side by side in one run, so a shared, noisy machine still gives fair ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil  # installed with ray[default]
import ray

from onegen.indexes import SAMPLE_CORPUS
from onegen.pipeline.job import JobConfig, run_job



def corpus(n: int) -> list[str]:
    """n texts cycled from the bundled sample corpus."""
    texts = [json.loads(line)["text"] for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]
    return [texts[i % len(texts)] for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"doc_id": f"doc-{i:07d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


class PeakRss:
    """Peak summed RSS (bytes) of this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def model_alone(model: str | None, texts: list[str], batch_size: int, threads: int) -> dict:
    import torch

    from onegen.model import OneGen

    torch.set_num_threads(threads)  # what a replica gets: Ray sets OMP_NUM_THREADS to its num_cpus
    onegen = OneGen.from_pretrained(model)
    onegen(texts[:batch_size], batch_size=batch_size)  # warm-up, as the job's replica warms up on its first batch
    started = time.perf_counter()
    annotated = onegen(texts, batch_size=batch_size)
    wall = time.perf_counter() - started
    tokens = sum(a.generated_tokens for a in annotated)
    return {"docs_per_second": len(texts) / wall, "tokens_per_second": tokens / wall, "wall_seconds": wall,
            "mentions": sum(len(a.mentions) for a in annotated)}


def job(folder: Path, name: str, texts: list[str], args) -> tuple[dict, int]:
    config = JobConfig(input=str(write_jsonl(folder / f"{name}.jsonl", texts)), output=str(folder / name),
                       model=args.model, index=args.index, kb=args.kb, batch_size=args.batch_size,
                       cpus_per_replica=args.cpus_per_replica)
    with PeakRss() as rss:
        summary = run_job(config)
    return {"docs_per_second": summary.docs_per_second, "tokens_per_second": summary.tokens_per_second,
            "wall_seconds": summary.wall_seconds, "mentions": summary.mentions, "errors": summary.errors}, rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=64, help="documents in the base corpus")
    parser.add_argument("--scale", type=int, default=10, help="the memory check runs on docs x scale documents")
    parser.add_argument("--model", default=None, help="model (default: the embedded default)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", default=None, help="built index folder")
    source.add_argument("--kb", default=None, help="KB JSONL (index built and cached on first use; default samples/kb.jsonl)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus-per-replica", type=float, default=JobConfig.cpus_per_replica,
                        help="CPUs of the job's replica; the model-alone run gets as many torch threads")
    parser.add_argument("--report", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    texts = corpus(args.docs)
    alone = model_alone(args.model, texts, args.batch_size, max(1, int(args.cpus_per_replica)))
    ray.init()  # local Ray, as `python jobs/link.py` starts it
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        folder = Path(tmp)
        job(folder, "warm", texts[: args.batch_size], args)  # builds/caches the index outside the timings
        base, base_rss = job(folder, "base", texts, args)
        large, large_rss = job(folder, "large", corpus(args.docs * args.scale), args)
    ray.shutdown()
    result = {
        "docs": args.docs, "model_alone": alone, "job": base, "job_large": large,
        "ratio_docs_per_second": base["docs_per_second"] / alone["docs_per_second"],
        "ratio_tokens_per_second": base["tokens_per_second"] / alone["tokens_per_second"] if alone["tokens_per_second"] else None,
        # the extra documents of the larger run over its extra time: the job's rate with start-up excluded
        "ratio_steady_docs_per_second": (args.docs * (args.scale - 1)) / (large["wall_seconds"] - base["wall_seconds"])
        / alone["docs_per_second"] if args.scale > 1 else None,
        "peak_rss_mb": {"base": base_rss / 2**20, f"x{args.scale}": large_rss / 2**20},
        "rss_ratio": large_rss / base_rss,
    }
    print(f"{'':24}{'docs/s':>10}{'tokens/s':>12}{'wall s':>10}")
    for name, row in (("model alone", alone), ("link job", base), (f"link job x{args.scale}", large)):
        print(f"{name:24}{row['docs_per_second']:>10.2f}{row['tokens_per_second']:>12.1f}{row['wall_seconds']:>10.1f}")
    print(f"job / model: {result['ratio_docs_per_second']:.2f} (docs/s), target >= 0.8")
    if result["ratio_steady_docs_per_second"] is not None:
        print(f"job / model once started: {result['ratio_steady_docs_per_second']:.2f} (docs/s: the x{args.scale} run's "
              f"extra {args.docs * (args.scale - 1)} docs over its extra wall time; Ray, replica and index start-up excluded)")
    print(f"peak RSS driver + Ray: {base_rss / 2**20:.0f} MB ({args.docs} docs) vs {large_rss / 2**20:.0f} MB "
          f"({args.docs * args.scale} docs): ratio {result['rss_ratio']:.2f}")
    if args.report:
        args.report.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
