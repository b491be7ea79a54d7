"""Knowledge base: the KB JSONL contract, dump readers and the sharded entity index.

`read_kb`/`iter_kb`/`write_kb` (kb.jsonl) read and write the KB; `EntityIndex` (kb.index) is the
on-disk index with `load(dir, expect=fingerprint)` and `search(vectors, k) -> (D, I)`. The Ray
parts live in kb.serving (`RayIndexClient`, `open_index`), imported on demand so that reading a
KB does not import Ray; `EntityIndex` is imported on first use too, so that reading a KB does not
import FAISS either. Encoding a KB with the model into an index is `onegen.index_build`; this
package holds no model and imports neither `onegen` nor `eval`.
"""
from kb.entity import Entity
from kb.jsonl import KbError, KbReport, iter_kb, read_kb, write_kb
from kb.manifest import IndexCorruptError, IndexLoadError, IndexMismatchError, IndexSpec, Manifest

__all__ = [
    "Entity",
    "EntityIndex",
    "IndexCorruptError",
    "IndexLoadError",
    "IndexMismatchError",
    "IndexSpec",
    "KbError",
    "KbReport",
    "Manifest",
    "iter_kb",
    "read_kb",
    "write_kb",
]


def __getattr__(name: str):
    if name == "EntityIndex":
        from kb.index import EntityIndex

        return EntityIndex
    raise AttributeError(f"module 'kb' has no attribute {name!r}")
