"""Progress of the link job in its log: one line when each stage starts or ends, and while documents are
linked one line every `interval` seconds (documents, errors, mentions, rate), from counts the part
writers send to a small actor as each part is committed.

Off a terminal (a job's log, nohup) this replaces Ray Data's progress display, which there logs a block of
lines per operator every ten seconds; on a terminal Ray Data's bars stay.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

import ray
from ray.data import DataContext

LOG = logging.getLogger("onegen.progress")
PROGRESS_SECONDS = 30.0  # a linking progress line this often


def on_terminal() -> bool:
    """Whether the log (stderr) is an interactive terminal."""
    return sys.stderr.isatty()


def stage(number: int, total: int, message: str, *args) -> None:
    """Log the line of a job stage: `[number/total] message`."""
    LOG.info(f"[{number}/{total}] {message}", *args)


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Sums the counts of the committed parts (AtomicParquetSink's block stats)."""

    def __init__(self):
        self.counts: dict = {}

    def add(self, counts: dict) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def totals(self) -> dict:
        return dict(self.counts)


class LinkingProgress:
    """While in its `with` block: a line every `interval` seconds of what the counter has summed.

    `counter`, the ProgressCounter actor to hand to the sink, lives for the block; off a terminal, Ray
    Data's own progress display is turned off for it.
    """

    def __init__(self, label: str, interval: float = PROGRESS_SECONDS):
        self.label = label  # prefix of each line, e.g. "[3/3] linking"
        self.interval = interval
        self.counter = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-progress", daemon=True)
        self._started = 0.0
        self._context = DataContext.get_current()
        self._bars = self._context.enable_progress_bars

    def __enter__(self) -> LinkingProgress:
        if not on_terminal():
            self._context.enable_progress_bars = False
        self.counter = ProgressCounter.remote()
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.report()  # the last line: what was written
        self._context.enable_progress_bars = self._bars
        ray.kill(self.counter)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        """Log one line: documents (errors), mentions (linked), documents per second so far."""
        counts = ray.get(self.counter.totals.remote())
        seconds = time.perf_counter() - self._started
        documents = counts.get("documents", 0)
        LOG.info("%s: %d documents (%d errors), %d mentions (%d linked), %.1f docs/s, %.0f s", self.label, documents,
                 counts.get("errors", 0), counts.get("mentions", 0), counts.get("linked", 0),
                 documents / seconds if seconds else 0.0, seconds)
