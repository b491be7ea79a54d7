"""A static HTML view of a finished link-job output: `OUT/_html/index.html` and a page per document.

The index sums the output up (documents, mentions, linked share, NIL, most frequent entities,
error rows) and links the document pages `OUT/_html/docs/<n>.html`, which highlight each mention:
a linked one links to its English Wikipedia article, a NIL one is marked "NIL" in another colour,
and hovering shows the score and the top candidates. Pages are self-contained UTF-8 (inline CSS,
no scripts). Parquet readers of OUT skip `_html/`, as every `_`-prefixed name.
"""
from __future__ import annotations

import html
from collections import Counter
from urllib.parse import quote

import pyarrow.parquet as pq

from onegen.pipeline.outputs import Output, atomic_write

HTML_FOLDER = "_html"
MAX_DOCUMENTS = 1000  # document pages (and error rows listed) at most; the index says how many were left out
TOP_CANDIDATES = 5  # candidates in a mention's hover text
TOP_ENTITIES = 20  # most frequent entities on the index
WIKIPEDIA_URL = "https://en.wikipedia.org/wiki/"  # + URL-quoted entity id (a Wikipedia title in URL form)
COLUMNS = ["doc_id", "text", "mentions", "status", "error"]

CSS = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }
.text { white-space: pre-wrap; line-height: 2.4; font-size: 1.05em; }
.mention { padding: 0.3em 0.35em; border-radius: 0.3em; color: #000; text-decoration: none; }
.mention[data-label]::after { content: attr(data-label); font-size: 0.65em; font-weight: bold; margin-left: 0.4em; }
.linked { background: #a8d8ff; }
.nil { background: #ffc46b; }
.error { color: #b00020; }
table { border-collapse: collapse; }
td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
"""


def write_html(output_uri: str, max_documents: int = MAX_DOCUMENTS) -> str:
    """Write the view of the output at `output_uri`; returns the index page's location.

    Args:
        output_uri: a finished link-job output (local folder or URI).
        max_documents: document pages written at most (the first ones read); the rest are only counted.
    """
    output = Output.from_uri(output_uri)
    parts = output.parts()
    if not parts:
        raise FileNotFoundError(f"{output.uri} holds no part files; run jobs/link.py with this --output first")
    folder = output.join(HTML_FOLDER)
    output.filesystem.delete_dir_contents(f"{folder}/docs", missing_dir_ok=True)  # pages of an earlier view
    totals = Counter()  # documents, mentions, linked
    entities = Counter()  # entity id -> linked mentions
    listed = []  # (n, doc_id, mentions, status) of the documents with a page
    errors = []  # (n, doc_id, error) of the error rows
    for path in parts:
        with output.filesystem.open_input_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=COLUMNS):
                for row in batch.to_pylist():
                    n = totals["documents"]
                    mentions = row["mentions"] or []
                    totals.update(documents=1, mentions=len(mentions))
                    linked = [m["entity_id"] for m in mentions if m["entity_id"] is not None]
                    totals["linked"] += len(linked)
                    entities.update(linked)
                    if row["status"] == "error":
                        errors.append((n, row["doc_id"], row["error"]))
                    if n < max_documents:
                        listed.append((n, row["doc_id"], len(mentions), row["status"]))
                        _write(output, f"{folder}/docs/{n}.html", document_page(row))
    index = f"{folder}/index.html"
    _write(output, index, index_page(totals, entities, listed, errors, max_documents))
    return f"{output.uri.rstrip('/')}/{HTML_FOLDER}/index.html"


def _write(output: Output, path: str, page: str) -> None:
    data = page.encode("utf-8")
    atomic_write(output.filesystem, path, lambda stream: stream.write(data))


def entity_url(entity_id: str) -> str:
    """The English Wikipedia article of an entity id (a title in URL form: `Marie_Curie`)."""
    return WIKIPEDIA_URL + quote(entity_id, safe="")


def _score(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


def hover_text(mention: dict) -> str:
    """The chosen entity (or NIL) with its score, then the top candidates with theirs, one a line."""
    chosen = mention["entity_id"] if mention["entity_id"] is not None else "NIL"
    lines = [f"{chosen} (score {_score(mention['score'])})", "top candidates:"]
    lines += [f"{c['entity_id']} {_score(c['score'])}" for c in (mention["candidates"] or [])[:TOP_CANDIDATES]]
    return "\n".join(lines)


def highlight(text: str, mentions: list[dict]) -> str:
    """`text` as escaped HTML with each mention wrapped once: a Wikipedia link when linked, a NIL mark else."""
    pieces, cursor = [], 0
    for m in sorted(mentions, key=lambda m: (m["start"], m["end"])):
        if m["start"] < cursor:  # overlaps the previous mention: its text is already written
            continue
        surface = html.escape(text[m["start"]:m["end"]])
        title = html.escape(hover_text(m))
        pieces.append(html.escape(text[cursor:m["start"]]))
        if m["entity_id"] is None:
            pieces.append(f'<mark class="mention nil" data-label="NIL" title="{title}">{surface}</mark>')
        else:
            pieces.append(f'<a class="mention linked" href="{html.escape(entity_url(m["entity_id"]))}" '
                          f'data-label="{html.escape(m["entity_id"])}" title="{title}">{surface}</a>')
        cursor = m["end"]
    pieces.append(html.escape(text[cursor:]))
    return "".join(pieces)


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def document_page(row: dict) -> str:
    """One document: its id, status, and its text with the mentions highlighted."""
    doc_id = html.escape(str(row["doc_id"]))
    body = ['<p><a href="../index.html">all documents</a></p>', f"<h1>{doc_id}</h1>",
            '<p>Highlights: <span class="mention linked">linked</span> (links to Wikipedia) '
            '<span class="mention nil">not linked</span> (NIL). Hover a mention for its score and top candidates.</p>']
    if row["status"] == "error":
        body.append(f'<p class="error">error: {html.escape(str(row["error"]))}</p>')
    body.append(f'<div class="text">{highlight(row["text"] or "", row["mentions"] or [])}</div>')
    return page(f"{row['doc_id']} - links", "\n".join(body))


def index_page(totals: Counter, entities: Counter, listed: list, errors: list, max_documents: int) -> str:
    """The summary, the most frequent entities, the error rows and the links to the document pages."""
    documents, mentions, linked = totals["documents"], totals["mentions"], totals["linked"]
    share = f"{linked / mentions:.1%}" if mentions else "n/a"
    left_out = documents - len(listed)
    rows = [("documents", documents), ("mentions", mentions), ("linked", f"{linked} ({share} of mentions)"),
            ("NIL", mentions - linked), ("errors", len(errors))]
    body = ["<h1>Entity links</h1>", "<table>"] + [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    if left_out:
        body.append(f"<p>{left_out} documents left out: pages are written for the first {max_documents} only.</p>")
    body.append("<h2>Most frequent entities</h2>\n<table>")
    body += [f'<tr><td><a href="{html.escape(entity_url(e))}">{html.escape(e)}</a></td><td>{count}</td></tr>'
             for e, count in entities.most_common(TOP_ENTITIES)]
    body.append("</table>")
    if errors:
        body.append("<h2>Errors</h2>\n<ul>")
        body += [f'<li>{_document_link(n, doc_id, max_documents)}: <span class="error">{html.escape(str(error))}</span></li>'
                 for n, doc_id, error in errors[:max_documents]]
        body.append("</ul>")
        if len(errors) > max_documents:
            body.append(f"<p>{len(errors) - max_documents} more error rows not listed.</p>")
    body.append("<h2>Documents</h2>\n<ol start=\"0\">")
    body += [f"<li>{_document_link(n, doc_id, max_documents)} ({count} mentions, {html.escape(str(status))})</li>"
             for n, doc_id, count, status in listed]
    body.append("</ol>")
    return page("Entity links", "\n".join(body))


def _document_link(n: int, doc_id: str, max_documents: int) -> str:
    """The document's id, linking its page when it has one."""
    doc_id = html.escape(str(doc_id))
    return f'<a href="docs/{n}.html">{doc_id}</a>' if n < max_documents else doc_id
