"""Where a linker's entities come from: the bundled sample KB, the cache of indexes built from KB
files, and the popularity prior stored with an index. Shared by `onegen.Linker` and the link job."""
from __future__ import annotations

import fcntl
import hashlib
import logging
from pathlib import Path

from onegen.decide import PopularityPrior
from onegen.default_model import cache_root

LOG = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent / "samples"  # bundled with the package (package data)
SAMPLE_KB = SAMPLES / "kb.jsonl"  # the sample KB: 196 entities
SAMPLE_CORPUS = SAMPLES / "corpus.jsonl"  # the sample corpus: 36 short documents


def cached_index_dir(fingerprint: dict, kb_sha256: str, kb_name: str) -> Path:
    """Cache folder of the index of one KB encoded by one model."""
    key = hashlib.sha256(f"{fingerprint['weights_sha256']}\0{fingerprint['tokenizer_sha256']}\0{kb_sha256}".encode()).hexdigest()
    return cache_root() / "indexes" / f"{kb_name}-{key[:16]}"


def require_kb(kb: Path) -> None:
    """Refuse a KB file that does not exist, saying what to pass instead."""
    if not kb.is_file():
        raise FileNotFoundError(f"KB {kb} not found: pass --kb FILE (JSONL, DESIGN section 4) or --index DIR of a built index")


def ensure_index(kb: Path, model: str | None, fingerprint: dict) -> Path:
    """The cached index of `kb` for the model, built (resumably) when missing."""
    from kb.files import sha256_file
    from kb.manifest import MANIFEST_NAME
    from onegen.index_build import BuildConfig, build_index

    require_kb(kb)
    directory = cached_index_dir(fingerprint, sha256_file(kb), kb.stem)
    if (directory / MANIFEST_NAME).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building this index: wait for it, then use its build
        if not (directory / MANIFEST_NAME).is_file():
            LOG.info("building the index of %s for %s into %s (once)", kb, fingerprint["model"], directory)
            build_index(BuildConfig(kb=kb, out=directory, model=model, resume=(directory / ".build").is_dir()))
    return directory


def popularity_prior(directory: Path, weight: float, built_from: Path | None = None) -> PopularityPrior | None:
    """The popularity prior of the entities of an index, from the popularity stored with it.

    None when the weight is 0. An index built before popularity was stored falls back, with one warning,
    to `built_from` (a KB file known to be the one it was built from, as for a cached index keyed by the
    file's sha256), else to the KB files its manifest names: None when it names none or a file is gone or
    changed since the build (linking then goes on without the prior).
    """
    from kb.files import sha256_file
    from kb.index import stored_popularity
    from kb.manifest import Manifest

    if not weight:
        return None
    counts = stored_popularity(directory)
    if counts is not None:
        return PopularityPrior.from_counts(counts, weight=weight)
    # an index built before popularity was stored: read it from the KB files, as such an index always did
    if built_from is not None:
        LOG.warning("the index %s stores no popularity (built before it was stored): read it from %s; "
                    "rebuild the index to store it", directory, built_from)
        return PopularityPrior.from_kb(built_from, weight=weight)
    kb = Manifest.read(directory).kb
    if not kb.get("path"):
        LOG.warning("no popularity prior: the index %s stores no popularity and its manifest names no KB file", directory)
        return None
    files = [(Path(kb["path"]), kb["sha256"])] + [(Path(u["path"]), u["sha256"]) for u in kb.get("updates", [])]
    for path, sha256 in files:
        if not path.is_file() or sha256_file(path) != sha256:
            LOG.warning("no popularity prior: the index %s stores no popularity and %s, a KB file of it, is gone or "
                        "changed since the build; rebuild the index to store it", directory, path)
            return None
    LOG.warning("the index %s stores no popularity (built before it was stored): read it from its KB files; "
                "rebuild the index to store it", directory)
    return PopularityPrior.from_kb(*(path for path, _ in files), weight=weight)
