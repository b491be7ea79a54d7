"""Evaluation datasets by name (AIDA splits, GERBIL NIF files in the data bundle) or by file path."""
from __future__ import annotations

import os
from pathlib import Path

from eval.aida import read_aida
from onegen.spans import Document

REPO_ROOT = Path(__file__).resolve().parent.parent
# the project's data bundle (shared/data/README.md); ONEGEN_SHARED_DATA overrides it, as in tests/conftest.py
DEFAULT_DATA_DIR = Path(os.environ.get("ONEGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
AIDA_FILE = Path("aida") / "AIDA-YAGO2-dataset.tsv"  # relative to the data dir
GERBIL_DIR = "gerbil"  # relative to the data dir: one NIF file per dataset, named by its stem
AIDA_SPLITS = {"aida-train": "train", "aida-testa": "testa", "aida-testb": "testb"}  # dataset name -> AIDA split
# The dev sets every setting is chosen on (news and encyclopedic text); the other sets are only reported.
DEV_SETS = ("aida-testa", "oke-2015-train")
NIF_SUFFIXES = (".ttl", ".nt", ".n3", ".nif")  # NIF 2.0 serialisations read by eval.nif (all parse as Turtle)
AIDA_SUFFIXES = (".tsv",)


def _nif_files(data_dir: Path) -> dict[str, Path]:
    """Dataset name (file stem) -> NIF file, for every NIF file in DATA_DIR/gerbil."""
    folder = Path(data_dir) / GERBIL_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in NIF_SUFFIXES}


def dataset_names(data_dir: str | Path) -> list[str]:
    """Names `load_dataset` accepts for this data dir: the AIDA splits (when the TSV is there), then NIF stems."""
    data_dir = Path(data_dir)
    names = list(AIDA_SPLITS) if (data_dir / AIDA_FILE).is_file() else []
    return names + list(_nif_files(data_dir))


def load_dataset(name: str, data_dir: str | Path) -> list[Document]:
    """Documents of a named dataset: `aida-train|testa|testb` or the stem of a NIF file in DATA_DIR/gerbil."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data dir not found: {data_dir} (expected the data bundle, e.g. ../shared/data)")
    if name in AIDA_SPLITS and (data_dir / AIDA_FILE).is_file():
        return read_aida(data_dir / AIDA_FILE, AIDA_SPLITS[name])
    nif = _nif_files(data_dir)
    if name in nif:
        from eval.nif import read_nif  # here, not at import: rdflib is needed for NIF files only (not on a lent GPU)

        return read_nif(nif[name])
    raise ValueError(f"unknown dataset {name!r} in {data_dir}; choose one of: {', '.join(dataset_names(data_dir))} "
                     f"(or pass a file with --dataset-file)")


def _looks_like_aida(path: Path) -> bool:
    """True when the file's first non-empty line is an AIDA `-DOCSTART-` line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.startswith("-DOCSTART-")
    return False


def load_dataset_file(path: str | Path, split: str | None = None) -> list[Document]:
    """Documents of a NIF file (.ttl, .nt, .n3, .nif) or an AIDA TSV file (all docs, or one split).

    The format comes from the extension; a file with any other extension is read as AIDA when
    it starts with `-DOCSTART-`, else as NIF Turtle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path} (expected a NIF Turtle file or an AIDA TSV file)")
    if path.suffix in AIDA_SUFFIXES or (path.suffix not in NIF_SUFFIXES and _looks_like_aida(path)):
        return read_aida(path, split)
    if split is not None:
        raise ValueError(f"--split {split!r} applies to the AIDA TSV only, but {path} is a NIF file; drop the split")
    from eval.nif import read_nif

    return read_nif(path)
