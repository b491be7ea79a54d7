"""The KB JSONL contract (DESIGN section 4): one entity a line, read with validation, written atomically.

A line is `{"id": ..., "title": ..., "description": ..., "aliases": [...], "popularity": N}`; only `id`
is required (`title` defaults to the id with `_` as spaces, `description` to "" meaning the title
is used). Problems are counted in a `KbReport` with their line numbers: a bad JSON line or a line
without a usable id is skipped (fatal in strict mode); so is an id that holds a line break of any
kind (`str.splitlines` splits on it: the index stores ids one a line) and a popularity that is not
a finite count >= 0. A duplicate id keeps its first line or is fatal, by option.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from kb.entity import Entity
from kb.files import atomic_output

LOG = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("first", "error")
MAX_EXAMPLES = 20  # line numbers kept per problem kind in a report


class KbError(ValueError):
    """A KB file that breaks the contract where the caller asked for strictness, or that holds no entity."""


@dataclass
class KbReport:
    """What reading one KB file found."""

    path: str  # the file read
    lines: int = 0  # non-blank lines seen
    entities: int = 0  # entities yielded
    empty_descriptions: int = 0  # entities whose description is "" (allowed: the title is used)
    bad_lines: int = 0  # lines that are not a JSON object of the right shape
    missing_ids: int = 0  # JSON objects without a non-empty string "id"
    duplicates: Counter = field(default_factory=Counter)  # id -> extra lines with that id (skipped)
    examples: list[str] = field(default_factory=list)  # "line N: problem" for the first problems

    @property
    def duplicate_lines(self) -> int:
        """Lines skipped because their id was already read."""
        return sum(self.duplicates.values())

    @property
    def ok(self) -> bool:
        """True when nothing was skipped."""
        return not (self.bad_lines or self.missing_ids or self.duplicates)

    def summary(self) -> str:
        """One line for logs: counts of each problem."""
        return (
            f"{self.path}: {self.entities} entities from {self.lines} lines; "
            f"{self.bad_lines} bad lines, {self.missing_ids} without id, "
            f"{self.duplicate_lines} duplicate lines ({len(self.duplicates)} ids), "
            f"{self.empty_descriptions} empty descriptions"
        )

    def _problem(self, lineno: int, message: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"line {lineno}: {message}")


@dataclass
class KbReadResult:
    """A whole KB file in memory."""

    entities: list[Entity]  # in file order, duplicates removed
    report: KbReport  # what was skipped and why


def is_one_line(text: str) -> bool:
    """True when `text` is non-empty and holds no line break of any kind (`str.splitlines` keeps it whole)."""
    return text.splitlines() == [text]


def entity_from_dict(obj: dict) -> Entity:
    """An `Entity` from one parsed JSON line; raises ValueError naming the field that is wrong."""
    entity_id = obj.get("id")
    if not isinstance(entity_id, str) or not entity_id.strip():
        raise ValueError(f'"id" must be a non-empty string, got {entity_id!r}')
    if not is_one_line(entity_id):
        raise ValueError(f'"id" must be one line (no \\n, \\r, \\u2028, \\x85 or other line break), got {entity_id!r}')
    title = obj.get("title") or entity_id.replace("_", " ")
    description = obj.get("description") or ""
    aliases = obj.get("aliases") or []
    popularity = obj.get("popularity") or 0
    if not isinstance(title, str) or not isinstance(description, str):
        raise ValueError('"title" and "description" must be strings')
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f'"aliases" must be a list of strings, got {aliases!r}')
    if isinstance(popularity, bool) or not isinstance(popularity, (int, float)) or not 0 <= popularity < math.inf:
        raise ValueError(f'"popularity" must be a finite number >= 0 (a count such as in-links), got {popularity!r}')
    return Entity(id=entity_id, title=title, description=description, aliases=aliases, popularity=int(popularity))


def iter_kb(
    path: str | Path,
    *,
    on_duplicate: str = "first",
    strict: bool = False,
    report: KbReport | None = None,
) -> Iterator[Entity]:
    """Stream the entities of a KB JSONL file, validating each line.

    Args:
        on_duplicate: "first" keeps the first line of a repeated id and counts the others;
            "error" raises KbError at the second occurrence.
        strict: raise KbError at the first bad JSON line or line without id instead of skipping it.
        report: filled while iterating (pass one in to read the counts afterwards).

    A file in which no line is an entity raises KbError once it is read through.
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(f"on_duplicate must be one of {DUPLICATE_POLICIES}, got {on_duplicate!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KB file not found: {path} (expected JSONL, one entity a line)")
    report = report if report is not None else KbReport(path=str(path))
    seen: dict[str, int] = {}  # id -> line number of its first occurrence
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.lines += 1
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as err:
                report.bad_lines += 1
                report._problem(lineno, f"bad JSON: {err}")
                if strict:
                    raise KbError(f"{path}:{lineno}: bad JSON line ({err}); fix the line or read without strict") from err
                continue
            if not isinstance(obj.get("id"), str) or not obj["id"].strip():
                report.missing_ids += 1
                report._problem(lineno, f'missing id (got {obj.get("id")!r})')
                if strict:
                    raise KbError(f"{path}:{lineno}: no non-empty string \"id\"; fix the line or read without strict")
                continue
            try:
                entity = entity_from_dict(obj)
            except ValueError as err:
                report.bad_lines += 1
                report._problem(lineno, str(err))
                if strict:
                    raise KbError(f"{path}:{lineno}: {err}; fix the line or read without strict") from err
                continue
            if entity.id in seen:
                report.duplicates[entity.id] += 1
                report._problem(lineno, f"duplicate id {entity.id!r} (first on line {seen[entity.id]})")
                if on_duplicate == "error":
                    raise KbError(
                        f"{path}:{lineno}: duplicate id {entity.id!r}, first on line {seen[entity.id]}; "
                        "remove one or read with on_duplicate='first'"
                    )
                continue
            seen[entity.id] = lineno
            report.entities += 1
            report.empty_descriptions += not entity.description
            yield entity
    if not report.entities:  # a wrong file given as the KB (a corpus, a TSV): linking against it would link nothing
        problems = f"; first problems: {'; '.join(report.examples[:3])}" if report.examples else ""
        raise KbError(f"{path} holds no KB entity ({report.lines} lines{problems}): expected JSON lines with a string "
                      '"id" and "title" (DESIGN section 4)')
    if not report.ok:
        LOG.warning("%s; first problems: %s", report.summary(), "; ".join(report.examples[:5]))


def read_kb(path: str | Path, *, on_duplicate: str = "first", strict: bool = False) -> KbReadResult:
    """Read a whole KB JSONL file (see `iter_kb` for the options)."""
    report = KbReport(path=str(path))
    entities = list(iter_kb(path, on_duplicate=on_duplicate, strict=strict, report=report))
    return KbReadResult(entities=entities, report=report)


def entity_to_json(entity: Entity) -> str:
    """One KB JSONL line (without newline); keys in contract order, non-ASCII kept."""
    return json.dumps(asdict(entity), ensure_ascii=False)


def write_kb(entities: Iterable[Entity], path: str | Path) -> int:
    """Write entities as KB JSONL, streaming, atomically (the file appears complete or not at all).

    Returns the number of entities written.
    """
    count = 0
    with atomic_output(path) as f:
        for entity in entities:
            f.write(entity_to_json(entity) + "\n")
            count += 1
    return count


def iter_aliases(path: str | Path) -> Iterator[tuple[str, str]]:
    """The (alias, entity id) pairs of a KB JSONL file, streamed: each entity's `aliases` (`iter_kb`)."""
    return ((alias, entity.id) for entity in iter_kb(path) for alias in entity.aliases)
