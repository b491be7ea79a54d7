"""Deterministic stand-ins for the model and the index, for testing the link job's machinery.

Test-only: the job itself always uses OneGen and the entity index. Mentions are capitalised
words; a mention's vector is a hash of its lower-cased surface, so the fake index (the same
hash of each entity name) finds its entity with cosine 1. Faults are injected with marker
files so each happens once even across actor restarts and processes.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from functools import partial
from pathlib import Path

import numpy as np

from kb.lookup import VectorsById
from onegen.indexes import SAMPLE_KB
from onegen.pipeline.job import Linking
from onegen.spans import Annotated, EmbeddedMention

DIM = 16
ENTITIES = ["Paris", "France", "Berlin", "Germany", "Rome", "Italy", "Europe", "Seine"]
WORD = re.compile(r"\b[A-Z][a-z]+\b")
TESTS_DIR = str(Path(__file__).resolve().parent)


def vector(name: str) -> np.ndarray:
    """(DIM,) unit vector fixed by the lower-cased name."""
    seed = int.from_bytes(hashlib.sha256(name.lower().encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_annotate(texts: list[str], spans: list[list[tuple[int, int]]] | None = None, *, fail_dir: str | None = None,
                  kill_dir: str | None = None, fail_every: int = 3, delay: float = 0.0, node_dir: str | None = None,
                  sizes_dir: str | None = None) -> list[Annotated]:
    """Capitalised words as mentions, plus the given `spans` that overlap none (as `Linker.embed` with
    mentions="union"). fail_dir: every `fail_every`-th batch (by content) raises once;
    kill_dir: the first batch seen kills its process (os._exit) once; delay: seconds per text;
    node_dir: a file named after the Ray node that ran the batch is left there; sizes_dir: a file
    named "<number of texts>-<batch hash>" is left there."""
    key = hashlib.sha256("\0".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
    if node_dir:
        import ray

        (Path(node_dir) / ray.get_runtime_context().get_node_id()).touch()
    if sizes_dir:
        (Path(sizes_dir) / f"{len(texts)}-{key[:16]}").touch()
    if kill_dir and not _mark(Path(kill_dir) / "killed"):
        os._exit(1)
    if fail_dir and int(key, 16) % fail_every == 0 and not _mark(Path(fail_dir) / key):
        raise RuntimeError(f"injected failure for batch {key[:8]}")
    time.sleep(delay * len(texts))
    out = []
    for text, given in zip(texts, spans or [[] for _ in texts]):
        mentions = [EmbeddedMention(m.start(), m.end(), m.group(), vector(m.group())) for m in WORD.finditer(text)]
        mentions += [EmbeddedMention(s, e, text[s:e], vector(text[s:e]), "ner") for s, e in given
                     if not any(s < m.end and m.start < e for m in mentions)]
        out.append(Annotated(text, sorted(mentions, key=lambda m: m.start), marked=text, generated_tokens=len(text.split())))
    return out


def lowercase_words(texts: list[str]) -> list[list[tuple[int, int]]]:
    """A stand-in NER: the spans of lower-case words of three letters or more."""
    return [[m.span() for m in re.finditer(r"\b[a-z]{3,}\b", text)] for text in texts]


def _mark(path: Path) -> bool:
    """True if the marker existed; creates it (atomically) otherwise."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return True
    os.close(fd)
    return False


def make_fake_annotator(**options):
    """Factory the AnnotateStage calls once per replica; with `node_dir`, the replica's node is recorded here
    too, so a replica placed on a node counts even when the other replicas take every batch."""
    if options.get("node_dir"):
        import ray

        (Path(options["node_dir"]) / ray.get_runtime_context().get_node_id()).touch()
    return partial(fake_annotate, **options)


class FakeIndex:
    """Exact inner-product search over the fake entity vectors."""

    def __init__(self, names: list[str] = ENTITIES):
        self.ids = np.array(names, dtype=object)
        self.vectors = np.stack([vector(n) for n in names])  # (N, DIM)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # one query at a time: a batched product's last bits depend on the batch's size, and the
        # resume test compares runs whose batches differ
        scores = np.stack([self.vectors @ v for v in vectors]).reshape(len(vectors), -1)  # (Q, N)
        order = np.argsort(-scores, axis=1)[:, :k]  # (Q, k)
        return np.take_along_axis(scores, order, axis=1).astype(np.float32), self.ids[order]

    def score(self, vectors: np.ndarray, wanted: list[list[str]]) -> list[dict[str, float]]:
        return VectorsById(self.ids, self.vectors).score(vectors, wanted)


def fake_linking(**options) -> Linking:
    return Linking(partial(make_fake_annotator, **options), FakeIndex(), "fake-model@sha256:0", "sha256:fakeindex")


def ray_env() -> dict:
    """runtime_env letting workers import this module."""
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS_DIR, str(Path(TESTS_DIR).parent)])}}


CORPUS = [
    {"doc_id": "d1", "text": "Paris is the capital of France.", "lang": "en"},
    {"doc_id": "d2", "text": "Berlin lies in Germany, Rome in Italy.", "lang": "en"},
    {"doc_id": "d3", "text": "", "lang": "en"},
    {"doc_id": "d4", "text": None, "lang": "en"},
    {"doc_id": "d5", "text": 42, "lang": "en"},
    {"doc_id": "d1", "text": "A second d1 about Europe.", "lang": "en"},
    {"doc_id": "d6", "text": "The Seine flows through Paris and Normandy.", "lang": "fr"},
]


def tiny_model_and_index(folder: Path, kb_lines: int = 12) -> tuple[Path, Path, Path]:
    """A random tiny OneGen model folder, a KB (the first lines of the bundled sample KB) and its index (with
    the KB's aliases), built in-process: (model dir, KB file, index dir). Real code paths, no fakes."""
    from kb.index import EntityIndex
    from kb.jsonl import read_kb
    from onegen.model import OneGen
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model_dir, kb, index_dir = folder / "tiny-model", folder / "kb.jsonl", folder / "index"
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(model_dir)
    samples = SAMPLE_KB.read_text(encoding="utf-8").splitlines()
    kb.write_text("\n".join(samples[:kb_lines]) + "\n", encoding="utf-8")
    onegen = OneGen.from_pretrained(str(model_dir), device="cpu")  # loaded from files: the fingerprint the job sees
    entities = read_kb(kb).entities
    EntityIndex.build(index_dir, [e.id for e in entities], onegen.embed_entities(entities), fingerprint=onegen.fingerprint(),
                      aliases=[e.aliases for e in entities])
    return model_dir, kb, index_dir
