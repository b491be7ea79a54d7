"""File helpers shared by the KB readers and the index: compressed dump input, atomic output, checksums."""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from tqdm import tqdm

BZ2_MAGIC = b"BZh"
GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def open_dump(path: str | Path, desc: str, progress: bool = True) -> Iterator[IO[bytes]]:
    """Open a plain, bz2 or gzip file (sniffed from its first bytes) for binary streaming reads.

    With `progress`, a tqdm bar counts the compressed bytes read, so it reaches 100% at the end of
    the file whatever the compression ratio.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dump file not found: {path}")
    with path.open("rb") as raw, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, disable=not progress
    ) as bar:
        counted = _CountingReader(raw, bar)
        magic = raw.read(3)
        raw.seek(0)
        if magic.startswith(BZ2_MAGIC):
            stream: IO[bytes] = bz2.BZ2File(counted)
        elif magic.startswith(GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=counted)
        else:
            stream = io.BufferedReader(counted)
        with stream:
            yield stream


class _CountingReader(io.RawIOBase):
    """A raw reader that advances a progress bar by the bytes it hands out."""

    def __init__(self, raw: IO[bytes], bar: tqdm):
        self.raw = raw
        self.bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.bar.update(n or 0)
        return n


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside `path` and rename it over `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
