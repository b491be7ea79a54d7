"""Reader for a Wikidata JSON dump (`latest-all.json[.bz2|.gz]`), streamed in constant memory.

The dump is one JSON array with one entity per line (`[`, `{...},`, ..., `]`). Items with an
English Wikipedia sitelink become KB entities: the sitelink title as canonical id and title, the
English description, and the English label and aliases as aliases; popularity is the number of
sitelinks (a common proxy for prominence). Items without an enwiki sitelink are skipped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kb.entity import Entity
from kb.files import open_dump
from kb.ids import canonical_title
from kb.jsonl import write_kb

LOG = logging.getLogger(__name__)

LANGUAGE = "en"
SITELINK = "enwiki"


@dataclass
class WikidataReport:
    """Counts of what a dump held."""

    lines: int = 0  # entity lines read
    entities: int = 0  # KB entities yielded
    no_enwiki: int = 0  # items skipped for want of an English Wikipedia sitelink
    bad_lines: int = 0  # lines that were not a JSON object
    examples: list[str] = field(default_factory=list)  # "line N: problem" for the first bad lines


def entity_from_wikidata(item: dict) -> Entity | None:
    """The KB entity of one Wikidata item, or None when it has no enwiki sitelink."""
    sitelink = (item.get("sitelinks") or {}).get(SITELINK)
    entity_id = canonical_title(sitelink["title"]) if sitelink else None
    if entity_id is None:
        return None
    title = entity_id.replace("_", " ")
    label = ((item.get("labels") or {}).get(LANGUAGE) or {}).get("value")
    description = ((item.get("descriptions") or {}).get(LANGUAGE) or {}).get("value", "")
    names = ([label] if label else []) + [a["value"] for a in (item.get("aliases") or {}).get(LANGUAGE, [])]
    aliases = list(dict.fromkeys(n for n in names if n != title))  # unique, in order, title excluded
    return Entity(id=entity_id, title=title, description=description, aliases=aliases, popularity=len(item["sitelinks"]))


def iter_wikidata(path: str | Path, report: WikidataReport | None = None, progress: bool = True) -> Iterator[Entity]:
    """Stream the KB entities of a Wikidata JSON dump."""
    report = report if report is not None else WikidataReport()
    with open_dump(path, desc=f"read {Path(path).name}", progress=progress) as stream:
        for lineno, raw in enumerate(stream, 1):
            line = raw.strip().rstrip(b",")
            if line in (b"", b"[", b"]"):
                continue
            report.lines += 1
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError(f"expected a JSON object, got {type(item).__name__}")
            except ValueError as err:
                report.bad_lines += 1
                if len(report.examples) < 10:
                    report.examples.append(f"line {lineno}: {err}")
                continue
            entity = entity_from_wikidata(item)
            if entity is None:
                report.no_enwiki += 1
                continue
            report.entities += 1
            yield entity


def convert_wikidata(dump: str | Path, kb_out: str | Path, progress: bool = True) -> WikidataReport:
    """Write the KB entities of a Wikidata dump as KB JSONL (atomically)."""
    report = WikidataReport()
    write_kb(iter_wikidata(dump, report, progress), kb_out)
    LOG.info("%s: %d items -> %d entities; %d without enwiki sitelink, %d bad lines",
             dump, report.lines, report.entities, report.no_enwiki, report.bad_lines)
    return report
