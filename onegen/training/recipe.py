"""A training recipe: stages run in order, each continuing the previous stage's model (configs/default.toml).

The TOML file has three tables, every key checked, and an optional top-level key:

    extends      another recipe file (relative to this one): its [train] and [linker] values are taken
                 and overridden key by key by this file's, and its stages come before this file's
    [train]      TrainConfig values every stage shares (data paths relative to the working directory)
    [[stage]]    one table per stage: its own TrainConfig values over [train]
    [linker]     the decision settings of the finished model (onegen.LinkerConfig keys), saved beside the
                 last stage's weights as linker_config.json (not used in training)

A key left out takes TrainConfig's default (TOML has no null). Stage N writes OUTPUT/stage-N; stage
N > 1 starts from stage N-1's folder (`init`), stage 1 from the base; an `init` given with the
stages to run starts the first of them instead.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from onegen.linker_config import LinkerConfig
from onegen.training.config import TrainConfig

TABLES = ("train", "stage", "linker")
# every onegen.LinkerConfig setting but what is linked against (the index, KB and alias table: a command line's)
LINKER_KEYS = tuple(f.name for f in fields(LinkerConfig) if f.name not in ("index", "kb", "aliases"))
NOT_IN_RECIPE = ("output", "resume", "storage")  # where and whether to resume: the command line's
STAGE_DIR = "stage-{}"  # a stage's output folder inside the recipe's output


@dataclass
class Recipe:
    """A parsed recipe file."""

    path: str  # the TOML file as given
    common: dict  # [train]: values every stage shares
    stages: list[dict]  # [[stage]]: each stage's own values
    linker: dict  # [linker]: NIL threshold, prior weights, mention bias, top-k of the finished model

    def stage_values(self, overrides: dict, output: str | Path, stages: list[int] | None = None) -> list[tuple[int, dict]]:
        """(stage number, TrainConfig values) of `stages` (default all), in order: [train], then the stage,
        then `overrides` (the command line's values).

        Stage N writes OUTPUT/stage-N and starts from stage N-1's output; the first stage run starts from
        `overrides["init"]` when given (else stage 1 from the base, a later one from the stage before it).
        A `storage` in `overrides` gets a stage-N folder per stage too.
        """
        stages = list(range(1, len(self.stages) + 1)) if stages is None else stages
        chosen = []
        for i in stages:
            values = {**self.common, **self.stages[i - 1], **overrides, "output": str(Path(output) / STAGE_DIR.format(i))}
            if i > 1 and not (i == stages[0] and "init" in overrides):
                values["init"] = str(Path(output) / STAGE_DIR.format(i - 1))
            if overrides.get("storage"):
                values["storage"] = str(Path(overrides["storage"]) / STAGE_DIR.format(i))
            chosen.append((i, values))
        return chosen


def _check_keys(path: str, where: str, values: dict, known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(known))}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; an unknown table or key is a one-line ValueError naming it."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"recipe file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    _check_keys(str(path), "the top level", data, {*TABLES, "extends"})
    base = load_recipe(Path(path).parent / data["extends"]) if "extends" in data else Recipe("", {}, [], {})
    train_keys = {f.name for f in fields(TrainConfig)} - set(NOT_IN_RECIPE)
    common, stages, linker = data.get("train", {}), data.get("stage", []), data.get("linker", {})
    if not isinstance(stages, list) or not (stages or base.stages):
        raise ValueError(f"{path}: no [[stage]] tables; a recipe needs at least one stage")
    _check_keys(str(path), "[train]", common, train_keys)
    for i, stage in enumerate(stages, start=len(base.stages) + 1):
        _check_keys(str(path), f"[[stage]] {i}", stage, train_keys - {"init"})  # stages after the first chain
    _check_keys(str(path), "[linker]", linker, set(LINKER_KEYS))
    return Recipe(str(path), {**base.common, **common}, base.stages + stages, {**base.linker, **linker})


def parse_stages(spec: str, count: int) -> list[int]:
    """Stage numbers (1-based) of "N", "N-M", "N-" or "-M" among `count` stages."""
    first, sep, last = spec.partition("-")
    try:
        low = int(first) if first else 1
        high = (int(last) if last else count) if sep else low
    except ValueError:
        raise ValueError(f"--stages {spec!r}: expected N, N-M, N- or -M with stage numbers 1 to {count}") from None
    if not 1 <= low <= high <= count:
        raise ValueError(f"--stages {spec!r}: the recipe has stages 1 to {count}")
    return list(range(low, high + 1))
