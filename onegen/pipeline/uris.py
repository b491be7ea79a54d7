"""Locations the link job reads and writes: open them with pyarrow, name them without credentials.

A URI may carry credentials (`s3://KEY:SECRET@bucket/docs`, `https://user:pass@host/...?X-Amz-Signature=...`).
They reach pyarrow and nothing else: every name the job shows or stores (log lines, error messages,
`_metrics.json`, the manifest, the `source` column) is `redact_uri`'s. A secret that holds `/`, `@`,
`?` or `#` must be percent-encoded in the URI (as pyarrow requires too).
"""
from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

MASK = "***"
# Query parameters whose values are secrets (presigned URLs, tokens, keys).
SECRET_QUERY_KEY = re.compile(r"secret|token|key|password|passwd|signature|sig|credential|auth", re.IGNORECASE)


def _secret_query(query: str) -> list[tuple[str, str]]:
    """(key, raw value) of every secret-looking parameter of a query string."""
    pairs = [item.split("=", 1) for item in query.split("&") if "=" in item]
    return [(key, value) for key, value in pairs if value and SECRET_QUERY_KEY.search(unquote(key))]


def redact_uri(uri: str) -> str:
    """`uri` with its user info and secret query values replaced by ***; a local path or a clean URI unchanged."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    secret = dict(_secret_query(parts.query))
    if netloc == parts.netloc and not secret:
        return uri
    query = "&".join(f"{item.split('=', 1)[0]}={MASK}" if item.split("=", 1)[0] in secret else item
                     for item in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact(text: str, uri: str) -> str:
    """`text` (a message about `uri`) with `uri` redacted and each of its secrets, raw or decoded, replaced by ***."""
    text = text.replace(uri, redact_uri(uri))
    if "://" not in uri:
        return text
    parts = urlsplit(uri)
    secrets = [value for _, value in _secret_query(parts.query)]
    if "@" in parts.netloc:
        secrets += [parts.netloc.rsplit("@", 1)[0], parts.password or ""]
    for secret in sorted({s for raw in secrets for s in (raw, unquote(raw)) if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or a URI; a URI pyarrow refuses is a one-line ValueError
    that shows no credentials."""
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowException, OSError, ValueError) as err:
        # `from None`: the original error repeats the URI, credentials and all
        raise ValueError(f"cannot open {redact_uri(location)}: {redact(str(err), location)}; expected a local path "
                         f"or a URI of a filesystem pyarrow reads (file://, s3://, gs://, hdfs://, abfs://)") from None
