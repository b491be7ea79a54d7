"""Reader for a Wikipedia `pages-articles` XML dump (bz2 or plain), streamed in constant memory.

Article pages (namespace 0) become KB entities: the title, and the first paragraph of the lead as
plain text (templates, references, files, categories and tables removed; links replaced by their
text) as description. Redirect pages go to a redirects table `from<TAB>to` of canonical ids.
Disambiguation pages (by their templates) and every other namespace are skipped.
"""
from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import mwparserfromhell
from mwparserfromhell.nodes import Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink

from kb.entity import Entity
from kb.files import atomic_output, open_dump
from kb.ids import canonical_title
from kb.jsonl import entity_to_json

LOG = logging.getLogger(__name__)

# Templates that mark a disambiguation or set-index page (names lower-cased, "_" as " ")
DISAMBIGUATION_TEMPLATES = frozenset({
    "disambiguation", "disambig", "disamb", "dab", "dis", "set index", "set index article", "sia",
    "hndis", "geodis", "surname", "given name", "mountainindex", "mountain index", "roadindex",
    "road index", "shipindex", "ship index", "sportindex", "sport index", "plant common name",
    "molecular formula index", "chemistry index", "letter-number combination",
})
DROP_TAGS = frozenset({"ref", "references", "table", "gallery", "math", "score", "timeline", "syntaxhighlight", "imagemap"})
DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category", "wikt", "wiktionary", "commons"})
SKIP_LINE = re.compile(r"^\s*[*#:;|!{]")  # list items, indents, table rows: not prose
EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")  # "()" or "(; )" left where templates were
SPACE = re.compile(r"\s+")


@dataclass
class Redirect:
    """One row of the redirects table."""

    source: str  # canonical id of the redirect page
    target: str  # canonical id of the page it points to (without #section)


@dataclass
class WikipediaReport:
    """Counts of what a dump held."""

    pages: int = 0  # <page> elements read
    articles: int = 0  # entities yielded
    redirects: int = 0  # redirects yielded
    disambiguation: int = 0  # disambiguation / set-index pages skipped
    other_namespaces: int = 0  # non-article pages skipped (talk, user, template, ...)
    examples: list[str] = field(default_factory=list)  # a few skipped titles, for logs


def _local(tag: str) -> str:
    """Tag name without its XML namespace ("{http://www.mediawiki.org/xml/export-0.11/}page" -> "page")."""
    return tag.rsplit("}", 1)[-1]


def is_disambiguation(title: str, code: mwparserfromhell.wikicode.Wikicode) -> bool:
    """True for a disambiguation or set-index page (its title or one of its templates says so)."""
    if title.endswith("(disambiguation)"):
        return True
    for template in code.filter_templates(recursive=False):
        name = str(template.name).strip().lower().replace("_", " ")
        if name in DISAMBIGUATION_TEMPLATES or name.endswith(" disambiguation") or name.endswith("disambig"):
            return True
    return False


def _dropped_link(link: Wikilink) -> bool:
    target = str(link.title).strip()
    if target.startswith(":"):
        target = target[1:]
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    return prefix in DROP_LINK_NAMESPACES or (2 <= len(prefix) <= 3 and prefix.isalpha() and prefix.islower())


def _plain(nodes) -> str:
    """Plain text of parsed wikitext nodes: templates, comments, references, files dropped; links as their text."""
    parts = []
    for node in nodes:
        if isinstance(node, Text):
            parts.append(node.value)
        elif isinstance(node, Wikilink):
            if not _dropped_link(node):
                parts.append(_plain((node.text or node.title).nodes))
        elif isinstance(node, Tag):
            if str(node.tag).strip().lower() not in DROP_TAGS and node.contents is not None:
                parts.append(_plain(node.contents.nodes))
        elif isinstance(node, ExternalLink):
            parts.append(_plain(node.title.nodes) if node.title else "")
        elif isinstance(node, HTMLEntity):
            parts.append(node.normalize())
        # Template, Comment, Argument, ...: no visible prose
    return "".join(parts)


def first_paragraph(code: mwparserfromhell.wikicode.Wikicode) -> str:
    """The first prose paragraph of the lead section as plain text ("" when there is none)."""
    lead = []
    for node in code.nodes:
        if isinstance(node, Heading):
            break
        if not isinstance(node, (Template, Comment)):
            lead.append(node)
    for paragraph in re.split(r"\n\s*\n", _plain(lead)):
        lines = [line for line in paragraph.splitlines() if line.strip() and not SKIP_LINE.match(line)]
        text = SPACE.sub(" ", EMPTY_PARENS.sub("", " ".join(lines))).strip()
        text = re.sub(r"\s+([,.;:])", r"\1", text)
        if text:
            return text
    return ""


def iter_pages(path: str | Path, progress: bool = True) -> Iterator[dict]:
    """Stream the pages of a dump as {"title", "ns", "id", "redirect" (target or None), "text"}."""
    with open_dump(path, desc=f"read {Path(path).name}", progress=progress) as stream:
        events = ET.iterparse(stream, events=("start", "end"))
        _, root = next(events)  # <mediawiki>: cleared after every page, so memory stays constant
        page: dict = {}
        for event, elem in events:
            name = _local(elem.tag)
            if event == "start":
                if name == "page":
                    page = {"title": "", "ns": None, "id": None, "redirect": None, "text": ""}
                continue
            if name == "title" and "title" in page and not page["title"]:
                page["title"] = elem.text or ""
            elif name == "ns" and page:
                page["ns"] = int(elem.text or 0)
            elif name == "id" and page and page["id"] is None:
                page["id"] = elem.text  # the page id comes before revision and contributor ids
            elif name == "redirect" and page:
                page["redirect"] = elem.get("title")
            elif name == "text" and page:
                page["text"] = elem.text or ""
            elif name == "page":
                yield page
                page = {}
                root.clear()


def iter_wikipedia(path: str | Path, report: WikipediaReport | None = None, progress: bool = True) -> Iterator[Entity | Redirect]:
    """Stream a pages-articles dump as KB entities (articles) and redirects, skipping everything else."""
    report = report if report is not None else WikipediaReport()
    for page in iter_pages(path, progress):
        report.pages += 1
        title = canonical_title(page["title"])
        if page["ns"] != 0 or title is None:
            report.other_namespaces += 1
            continue
        if page["redirect"] is not None:
            target = canonical_title(page["redirect"].split("#", 1)[0])
            if target and target != title:
                report.redirects += 1
                yield Redirect(source=title, target=target)
            continue
        code = mwparserfromhell.parse(page["text"])
        if is_disambiguation(page["title"], code):
            report.disambiguation += 1
            if len(report.examples) < 10:
                report.examples.append(page["title"])
            continue
        report.articles += 1
        yield Entity(id=title, title=title.replace("_", " "), description=first_paragraph(code))


def convert_wikipedia(dump: str | Path, kb_out: str | Path, redirects_out: str | Path, progress: bool = True) -> WikipediaReport:
    """Write a dump's articles as KB JSONL and its redirects as `from<TAB>to` TSV (both atomically)."""
    report = WikipediaReport()
    with atomic_output(kb_out) as kb, atomic_output(redirects_out) as redirects:
        for item in iter_wikipedia(dump, report, progress):
            if isinstance(item, Redirect):
                redirects.write(f"{item.source}\t{item.target}\n")
            else:
                kb.write(entity_to_json(item) + "\n")
    LOG.info("%s: %d pages -> %d articles, %d redirects; skipped %d disambiguation, %d other namespaces",
             dump, report.pages, report.articles, report.redirects, report.disambiguation, report.other_namespaces)
    return report
