"""The decision settings of a linker, saved beside the model's weights as `linker_config.json`.

`LinkerConfig()` holds the generic defaults, for a model nobody tuned; the bundled default adapter ships
its own file with the settings picked for it on AIDA testa (`bench/gpu_score.py --write-config DIR`
writes one for any model).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from onegen.decide import DEFAULT_NIL_THRESHOLD, DEFAULT_POPULARITY_WEIGHT, DEFAULT_PRIOR_WEIGHT
from onegen.ner import SPACY_MODEL

LOG = logging.getLogger(__name__)

CONFIG_NAME = "linker_config.json"


@dataclass
class LinkerConfig:
    """How a linker decodes, ranks and decides (onegen.decide); `None` references mean "not recorded"."""

    nil_threshold: float = DEFAULT_NIL_THRESHOLD  # chosen candidate's cosine + alias and name terms below which: NIL
    # the same for spans the model was given (an NER's or a caller's, embedded by teacher forcing); None: nil_threshold
    given_nil_threshold: float | None = None
    short_forms: bool = False  # link a NIL mention that is part of a longer linked one to its entity (onegen.decide)
    alias_weight: float = DEFAULT_PRIOR_WEIGHT  # weight of p(entity | surface): alias table and KB names (0: off)
    # its weight in the evidence NIL is decided on (onegen.decide.AliasPrior.nil_weight); None: alias_weight; with
    # alias_weight 0 there is no prior and this does nothing
    alias_nil_weight: float | None = None
    popularity_weight: float = DEFAULT_POPULARITY_WEIGHT  # weight of the KB-popularity prior (0: off)
    name_weight: float = 0.0  # evidence added when a mention's surface is a candidate's title (onegen.decide; 0: off)
    mention_bias: float = 0.0  # logits added to opening a mention while decoding (0: the model's own choice)
    top_k: int = 10  # candidates retrieved per mention, re-ranked by the priors
    # up to this many entities the mention's surface refers to by the alias prior (its table's links, the KB's
    # names; likeliest first) scored and added to the retrieved ones when retrieval missed them (0: off; none
    # with alias_weight 0); `onegen.linker.add_name_candidates`
    name_candidates: int = 0
    kb_fields: list[str] = field(default_factory=lambda: ["popularity"])  # KB JSONL fields the priors read
    # which mentions are linked: the model's own ("model"), an NER's name spans ("ner") or both ("union": the
    # NER's spans that overlap none of the model's); the NER is the spaCy model `ner_model` (onegen.ner)
    mentions: str = "model"
    ner_model: str = SPACY_MODEL
    # with "union": an NER span that is a KB title ("Brigham Young University") replaces the model's mentions
    # inside it ("Brigham", "Young", "University"), and is embedded by teacher forcing (onegen.titles)
    title_spans: bool = False
    # with "union": a model mention that is no KB title is replaced by the NER spans inside it, embedded by teacher
    # forcing (role words: "President Boris Yeltsin" gives way to "Boris Yeltsin"; docs/results.md, 2026-12-04), and
    # a KB title that two neighbouring mentions spell ("Long Beach" and "California") replaces them (2026-12-05)
    split_spans: bool = False
    # What `Linker.save_pretrained` records so that `Linker.from_pretrained(dir)` links against the same entities:
    index: str | None = None  # built index folder
    kb: str | None = None  # KB JSONL searched in memory (None with no index: the bundled sample KB)
    aliases: str | None = None  # mention<TAB>entity<TAB>count table of the alias prior
    redirects: str | None = None  # from<TAB>to table whose names count as the KB's names in the alias prior

    def save(self, directory: str | Path) -> Path:
        """Write `directory/linker_config.json`; returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LinkerConfig:
        """Read `directory/linker_config.json`; an unknown key is an error."""
        path = Path(directory) / CONFIG_NAME
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **overrides) -> LinkerConfig:
        """A copy with `overrides` (None values skipped) applied; an unknown name is an error."""
        known = {f.name for f in fields(self)}
        if unknown := sorted(set(overrides) - known):
            raise ValueError(f"unknown linker setting(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
        return LinkerConfig(**(asdict(self) | {k: v for k, v in overrides.items() if v is not None}))


def config_dir(model: str | None) -> Path | None:
    """The folder whose linker_config.json belongs to `model` (a name as `OneGen.from_pretrained` takes it):
    the adapter folder for a PEFT adapter (the bundled one for None), else the model folder; None for a hub id."""
    from onegen.sources import resolve

    source = resolve(model)
    if source.adapter is not None:
        return source.adapter
    folder = Path(source.base).expanduser()
    return folder if folder.is_dir() else None


def model_config(model: str | None) -> LinkerConfig:
    """The settings saved with `model`, or the generic defaults (logged) when it has none."""
    directory = config_dir(model)
    if directory is not None and (directory / CONFIG_NAME).is_file():
        return LinkerConfig.load(directory)
    LOG.info("%s has no %s: using the generic linker settings %s (tune them with bench/gpu_score.py --write-config)",
             model, CONFIG_NAME, LinkerConfig())
    return LinkerConfig()
