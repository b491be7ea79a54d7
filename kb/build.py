"""The work folder of an index build or update: the model-free half (DESIGN sections 3 and 8).

    KB JSONL --validate--> staged Parquet (row, id, title, description, popularity, aliases)
      --encoder (onegen.index_build)--> chunk files (atomic, keyed by their rows) --> ids, popularity, aliases, vectors

Encoded vectors land in `OUT/.build/chunks/` as atomically renamed files of rows, so an interrupted
build continues by encoding only the rows no chunk holds yet. Encoding a KB with the model, and
writing the index from the assembled rows, is `onegen.index_build`.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kb.files import atomic_output, sha256_file
from kb.jsonl import KbReport, iter_kb
from kb.manifest import fingerprints_match

LOG = logging.getLogger(__name__)

BUILD_DIR = ".build"  # work folder of a build inside OUT (removed when the build succeeds)
UPDATE_DIR = ".update"  # work folder of an update inside OUT
STAGED_KB = "kb.parquet"  # validated KB rows, in row order
STATE_FILE = "state.json"  # what the work folder was made from (KB hash, model fingerprint)
CHUNK_DIR = "chunks"  # encoded vectors, one .npz per batch
STAGE_ROWS = 65_536  # KB rows per Parquet row group while staging
STAGED_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("title", pa.string()),
                           ("description", pa.string()), ("popularity", pa.int64()),
                           ("aliases", pa.list_(pa.string()))])


def stage_kb(kb: Path, work: Path) -> KbReport:
    """Validate the KB and write its rows (row, id, title, description, popularity, aliases) to `work/kb.parquet`."""
    report = KbReport(path=str(kb))
    columns: dict[str, list] = {name: [] for name in STAGED_SCHEMA.names}
    with pq.ParquetWriter(work / STAGED_KB, STAGED_SCHEMA) as writer:  # complete once state.json is written
        for row, entity in enumerate(iter_kb(kb, report=report)):
            values = (row, entity.id, entity.title, entity.description, entity.popularity, entity.aliases)
            for name, value in zip(STAGED_SCHEMA.names, values):
                columns[name].append(value)
            if len(columns["row"]) == STAGE_ROWS:
                writer.write_table(pa.table(columns, schema=STAGED_SCHEMA))
                columns = {name: [] for name in STAGED_SCHEMA.names}
        writer.write_table(pa.table(columns, schema=STAGED_SCHEMA))
    LOG.info("%s", report.summary())
    return report


def prepare_work_dir(work: Path, kb: Path, fingerprint: dict, resume: bool) -> dict:
    """The work folder's state; made afresh unless `resume` and it was made from the same KB and model."""
    state = {"kb_sha256": sha256_file(kb), "model": fingerprint}
    state_file = work / STATE_FILE
    if resume and state_file.is_file():
        previous = json.loads(state_file.read_text(encoding="utf-8"))
        if previous.get("kb_sha256") == state["kb_sha256"] and fingerprints_match(previous.get("model", {}), fingerprint):
            LOG.info("resuming from %s", work)
            if set(STAGED_SCHEMA.names) - set(pq.read_schema(work / STAGED_KB).names):  # staged before a field was kept
                stage_kb(kb, work)  # the same KB gives the same rows, so the chunks stay valid
            return previous
        raise ValueError(
            f"cannot resume in {work}: it was started from another KB file or model "
            f"({previous.get('kb_sha256', '')[:12]}.../{previous.get('model')}, now {state['kb_sha256'][:12]}.../{fingerprint}). "
            "Run again without --resume to start afresh."
        )
    shutil.rmtree(work, ignore_errors=True)
    (work / CHUNK_DIR).mkdir(parents=True)
    try:
        report = stage_kb(kb, work)
    except BaseException:  # a refused KB (no entity in it) or an interrupted staging: nothing encoded, nothing left
        shutil.rmtree(work, ignore_errors=True)
        raise
    state["rows"] = report.entities
    state["kb_report"] = report.summary()
    with atomic_output(state_file) as f:
        json.dump(state, f, indent=2)
    return state


def write_chunk(chunk_dir: Path, rows: np.ndarray, vectors: np.ndarray) -> Path:
    """Save one encoded batch atomically as `chunk-FIRST-LAST-COUNT.npz` (rows (n,), vectors (n, D))."""
    path = chunk_dir / f"chunk-{rows.min():010d}-{rows.max():010d}-{len(rows)}.npz"
    with atomic_output(path, "wb") as f:
        np.savez(f, rows=rows, vectors=vectors)
    return path


def encoded_rows(chunk_dir: Path, total: int) -> np.ndarray:
    """(total,) bool mask of the rows some chunk file already holds."""
    done = np.zeros(total, dtype=bool)
    for path in chunk_dir.glob("chunk-*.npz"):
        with np.load(path) as chunk:
            done[chunk["rows"]] = True
    return done


def assemble(work: Path, total: int, dim: int) -> tuple[list[str], list[int], pa.ListArray, np.ndarray]:
    """Entity ids (N,), their popularity (N,), their aliases (N lists, kept in Arrow: a Wikidata KB has tens of
    millions) and a (N, D) float32 memmap of their vectors, in KB row order, from the staged KB and the chunks."""
    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32, shape=(total, dim))
    done = np.zeros(total, dtype=bool)
    for path in sorted((work / CHUNK_DIR).glob("chunk-*.npz")):
        with np.load(path) as chunk:
            vectors[chunk["rows"]] = chunk["vectors"]
            done[chunk["rows"]] = True
    if not done.all():
        raise RuntimeError(f"{int((~done).sum())} KB rows were not encoded; run the build again with --resume")
    staged = pq.read_table(work / STAGED_KB, columns=["id", "popularity", "aliases"])
    return (staged.column("id").to_pylist(), staged.column("popularity").to_pylist(),
            staged.column("aliases").combine_chunks(), vectors)
