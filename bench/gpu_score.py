"""Score the candidates `bench/gpu_run.py` wrote on a GPU machine, here, with the eval/ scorer.

    python bench/gpu_score.py --candidates DIR [--run main] [--tune-sets aida-testa,oke-2015-train]
                              [--json results.json] [--write-config MODEL_DIR | --settings MODEL_DIR]
                              [--predictions DIR] [--against MODEL_DIR]

On a CPU, `eval/run_gerbil.py run --linker onegen --candidates DIR/candidates-main.jsonl.gz` writes the
same file (it must include the dev sets the settings are picked on).

Each mention's top-k (entity, cosine) list goes through `onegen.decide.decide`, as
`eval/run_gerbil.py run --linker onegen` does: an alias prior p(entity | surface) from the AIDA train
alias table and the KB's names (titles and redirects, one link each) and a popularity prior from the KB's `popularity` field re-rank the candidates, and a
mention whose chosen cosine (plus the alias term, weighted for NIL apart where the tune finds it pays, and the name
bonus when the mention is written as the entity's title) is under the NIL threshold (given NER spans: their own threshold) is left unlinked; short forms of a document's linked mentions may then be linked (`onegen.decide.short_form_links`).
The settings are picked on the dev sets (best mean InKB micro-F1 over a grid, `tune`; by default AIDA testa
and OKE15 train, news and encyclopedic text, so that no one genre decides; averaged over linking with the alias
table and without it, the KB's names alone, as a linker may be given none); every dataset of `--run` is then scored with them
(A2KB, strong match, InKB, redirects applied), and every run with candidates for the dev sets (the
ablations) gets its dev F1, tuned the same way, and its F1 with no prior and no NIL. With `--settings`, a model's
own settings take the tune's place (no grid: seconds instead of about 12 minutes on a 2-core CPU). With `--against`,
another model's settings are compared with the run's on each dev set, document by document (`eval.significance`), so a
settings change can be judged by more than its mean; with `--against-run`, another run of the folder (the model the
run should replace, decoded in the same call: `candidates-baseline`) under its own settings, tuned or given. Either
ends with the shipping rule's verdict (`eval.significance.shipping_verdict`): the run replaces the other only where
the dev objective rises, no dev figure falls beyond chance and each dev set rises beyond chance with the alias table
or with the KB's names alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
from pathlib import Path

from eval.corpora import DEFAULT_DATA_DIR, DEV_SETS, load_dataset
from eval.mention_errors import read_candidates
from eval.predictions import write_nif_predictions
from kb.ids import Redirects
from eval.run_gerbil import format_table, interval_text, pct, signed_pct
from eval.scorer import INKB, document_counts, score
from eval.significance import Comparison, compare, shipping_verdict
from onegen.decide import AliasPrior, PopularityPrior
from onegen.linker import choose_mentions, settle_mentions
from onegen.linker_config import CONFIG_NAME, LinkerConfig, model_config
from onegen.spans import Mention
from onegen.titles import kb_file_names

THRESHOLDS = [-math.inf] + [round(0.05 * i, 2) for i in range(0, 19)]
PRIOR_WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
POPULARITY_WEIGHTS = [0.0, 0.1, 0.2, 0.3, 0.5]
NAME_WEIGHTS = [0.0, 0.05, 0.1, 0.15, 0.2]
NIL_PRIOR_WEIGHTS = [0.0, 0.2, 0.3, 0.5, 1.0]  # the alias prior's weight in the NIL evidence, apart from ranking
RANKING_SETTINGS = ("prior_weight", "nil_prior_weight", "popularity_weight", "name_weight")  # what a mention's choice depends on
SETTING_NAMES = ("nil_threshold", "given_nil_threshold", "short_forms", "prior_weight", "nil_prior_weight",
                 "popularity_weight", "name_weight")


RAW = {"nil_threshold": -math.inf, "prior_weight": 0.0, "popularity_weight": 0.0, "given_nil_threshold": None,
       "short_forms": False, "name_weight": 0.0, "nil_prior_weight": None}  # every retrieved mention linked to its best candidate


def link(docs: dict[str, list[Mention]], settings: dict, table: AliasPrior, popularity: PopularityPrior,
         choices: dict[str, list[tuple]] | None = None) -> dict[str, list[Mention]]:
    """Mentions of every document decided with `settings` (RAW's keys): each one's entity, or None (NIL). `choices`:
    the documents' `choices_of` under these settings, when computed before."""
    choices = choices or choices_of(docs, settings, table, popularity)
    return {doc_id: settle_mentions(mentions, choices[doc_id], nil_threshold=settings["nil_threshold"],
                                    given_nil_threshold=settings["given_nil_threshold"],
                                    short_forms=settings["short_forms"])
            for doc_id, mentions in docs.items()}


def choices_of(docs: dict[str, list[Mention]], settings: dict, table: AliasPrior,
               popularity: PopularityPrior) -> dict[str, list[tuple]]:
    """Each document's ranked choices under the settings' priors and name weight (`choose_mentions`), which the NIL
    thresholds and short forms then settle."""
    alias_prior, popularity_prior = priors(table, popularity, settings["prior_weight"], settings["popularity_weight"],
                                           settings["nil_prior_weight"])
    return {doc_id: choose_mentions(mentions, alias_prior=alias_prior, popularity=popularity_prior,
                                    name_weight=settings["name_weight"])
            for doc_id, mentions in docs.items()}


def priors(table: AliasPrior, popularity: PopularityPrior, weight: float, popularity_weight: float,
           nil_weight: float | None = None):
    """(alias prior, popularity prior) with these weights (the alias prior's NIL weight: `nil_weight`, None: `weight`);
    a weight of 0 gives None."""
    return (dataclasses.replace(table, weight=weight, nil_weight=nil_weight) if weight else None,
            PopularityPrior(popularity.scores, popularity_weight) if popularity_weight else None)


def data_priors(data_dir: Path, kb_file: Path) -> tuple[AliasPrior, PopularityPrior]:
    """The alias prior of DATA_DIR's AIDA-train table and the KB's names (its ids' titles, its aliases and DATA_DIR's
    redirects), and the KB's popularity prior, as `eval/run_gerbil.py run --linker onegen` has them."""
    names = kb_file_names(kb_file, data_dir / "kb" / "redirects.tsv")
    return (AliasPrior.from_tsv(data_dir / "kb" / "aida_train_aliases.tsv", names=names),
            PopularityPrior.from_kb(kb_file))


def settings_of(config: LinkerConfig) -> dict:
    """A linker config's decision settings, as RAW's keys (what `write_config` saves)."""
    return {"nil_threshold": config.nil_threshold, "given_nil_threshold": config.given_nil_threshold,
            "short_forms": config.short_forms, "prior_weight": config.alias_weight,
            "nil_prior_weight": config.alias_nil_weight, "popularity_weight": config.popularity_weight,
            "name_weight": config.name_weight}


def tune(dev: list[tuple], redirects, table, popularity) -> dict:
    """The settings (RAW's keys, plus "dev_f1", "dev_f1_without_aliases" and "objective") that score best over a grid
    on the dev sets, given as (gold documents, candidates by doc id) pairs. The objective is the mean InKB micro-F1
    over the dev sets, averaged over linking with the alias table and without it (the KB's names alone, `table.names`):
    the alias term counts toward NIL, and a linker given no table (onegen-link's default) decides with the same
    thresholds. First
    one NIL threshold and the two prior weights over the grid; then, at those weights, the NIL thresholds of the
    model's and of given (NER) spans apart, the name weight and short forms on or off, kept only where they gain;
    last, at those, the alias prior's own weight in the NIL evidence (`AliasPrior.nil_weight`) with the two
    thresholds, kept only where it gains."""
    dev_sets = DevSets(dev, redirects, table, popularity)

    def objective(settings: dict) -> float:
        return dev_sets.scores(settings, with_table_only=True)["objective"]

    best, best_score = None, -1.0
    for weight, popularity_weight, threshold in itertools.product(PRIOR_WEIGHTS, POPULARITY_WEIGHTS, THRESHOLDS):
        settings = RAW | {"nil_threshold": threshold, "prior_weight": weight, "popularity_weight": popularity_weight}
        if (found := objective(settings)) > best_score:
            best, best_score = settings, found
    weights = {k: best[k] for k in ("prior_weight", "popularity_weight")}
    for short_forms, name_weight, threshold, given in itertools.product((False, True), NAME_WEIGHTS, THRESHOLDS, THRESHOLDS):
        settings = RAW | weights | {"nil_threshold": threshold, "given_nil_threshold": given, "short_forms": short_forms,
                                    "name_weight": name_weight}
        if (found := objective(settings)) > best_score:
            best, best_score = settings, found
    if best["prior_weight"]:
        kept = {k: best[k] for k in ("short_forms", "name_weight")}
        for nil_weight, threshold, given in itertools.product(NIL_PRIOR_WEIGHTS, THRESHOLDS, THRESHOLDS):
            settings = RAW | weights | kept | {"nil_prior_weight": nil_weight, "nil_threshold": threshold,
                                               "given_nil_threshold": given}
            if (found := objective(settings)) > best_score:
                best, best_score = settings, found
    return best | dev_sets.scores(best)


def dev_scores(settings: dict, dev: list[tuple], redirects, table, popularity, with_table_only: bool = False) -> dict:
    """`tune`'s scores of these settings on the dev sets (`DevSets.scores`)."""
    return DevSets(dev, redirects, table, popularity).scores(settings, with_table_only)


class DevSets:
    """The dev sets, as (gold documents, candidates by doc id) pairs, decided and scored as `tune` does. A mention's
    ranked choice depends on the prior weights and the name weight only (RANKING_SETTINGS), so it is computed once
    for each of those and reused across the NIL thresholds and short forms, most of the tune's grid."""

    def __init__(self, dev: list[tuple], redirects, table: AliasPrior, popularity: PopularityPrior):
        self.dev, self.redirects, self.popularity = dev, redirects, popularity
        self.tables = {True: table, False: dataclasses.replace(table, table=None)}  # the alias table; the KB's names alone
        self.choices: dict[tuple, list[dict]] = {}

    def mean_f1(self, settings: dict, with_table: bool = True) -> float:
        """Mean over the dev sets of the InKB micro-F1 of the decisions under `settings`."""
        table = self.tables[with_table]
        key = (with_table, *(settings[k] for k in RANKING_SETTINGS))
        if key not in self.choices:
            self.choices[key] = [choices_of(docs, settings, table, self.popularity) for _, docs in self.dev]
        return sum(score(gold, link(docs, settings, table, self.popularity, choices), redirects=self.redirects).inkb.micro.f1
                   for (gold, docs), choices in zip(self.dev, self.choices[key])) / len(self.dev)

    def scores(self, settings: dict, with_table_only: bool = False) -> dict:
        """"dev_f1" (with the alias table), "dev_f1_without_aliases" (the KB's names alone) and "objective" (their
        mean; with no alias weight, the first). `with_table_only`: the objective alone, the second linking skipped
        where it does not count."""
        with_table = self.mean_f1(settings)
        if with_table_only and not settings["prior_weight"]:
            return {"objective": with_table}
        without = self.mean_f1(settings, with_table=False)
        return {"dev_f1": with_table, "dev_f1_without_aliases": without,
                "objective": (with_table + without) / 2 if settings["prior_weight"] else with_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=Path, required=True, help="folder of candidates-RUN.jsonl.gz files")
    parser.add_argument("--run", default="main",
                        help="the run scored on every dataset (default: %(default)s; before 2026-11-27 it was lora-bpr)")
    parser.add_argument("--tune-sets", default=",".join(DEV_SETS),
                        help="comma-separated dev sets the settings are picked on (best mean micro-F1; default: %(default)s); "
                             "never the sets you report")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--kb", type=Path, help="KB JSONL with the popularity field (default: DATA_DIR/kb/entities.jsonl)")
    parser.add_argument("--json", type=Path, help="write the chosen settings and every score here")
    parser.add_argument("--settings", type=Path, metavar="MODEL_DIR",
                        help=f"score with MODEL_DIR/{CONFIG_NAME}'s settings instead of picking them (a model as shipped)")
    parser.add_argument("--write-config", type=Path, metavar="MODEL_DIR",
                        help=f"write the chosen settings as MODEL_DIR/{CONFIG_NAME} (its other settings, such as the "
                             "mention bias the candidates were made with, are kept), so the model links with them")
    against = parser.add_mutually_exclusive_group()
    against.add_argument("--against", type=Path, metavar="MODEL_DIR",
                         help=f"also compare, on each dev set, MODEL_DIR/{CONFIG_NAME}'s settings with the run's (tuned or "
                              "--settings), document by document, and say whether the run's may replace them")
    against.add_argument("--against-run", metavar="RUN",
                         help="also compare, on each dev set, another run of the folder under its own settings (tuned, "
                              "or --settings) with --run, document by document, and say whether --run may replace it")
    parser.add_argument("--predictions", type=Path, metavar="DIR",
                        help="also write the run's links of each dataset as DIR/NAME.ttl (NIF), for `onegen-gerbil "
                             "compare` against another system's or other settings'")
    args = parser.parse_args(argv)
    tune_sets = [name.strip() for name in args.tune_sets.split(",") if name.strip()]
    redirects = Redirects.from_tsv(args.data_dir / "kb" / "redirects.tsv")
    table, popularity = data_priors(args.data_dir, args.kb or args.data_dir / "kb" / "entities.jsonl")
    runs = {p.name[len("candidates-"):-len(".jsonl.gz")]: read_candidates(p)
            for p in sorted(args.candidates.glob("candidates-*.jsonl.gz"))}
    for run in filter(None, (args.run, args.against_run)):
        if run not in runs:
            raise SystemExit(f"no candidates-{run}.jsonl.gz in {args.candidates}; found runs {sorted(runs)}")
        if missing := [name for name in tune_sets if name not in runs[run]]:
            raise SystemExit(f"candidates-{run}.jsonl.gz has no documents of the dev set(s) {', '.join(missing)} "
                             f"(--tune-sets); it holds {', '.join(runs[run])}")
    gold = {name: load_dataset(name, args.data_dir) for name in runs[args.run]}
    report = {"runs": {}, "datasets": {}}

    ablation_rows = []
    for run, data in runs.items():
        if any(name not in data for name in tune_sets):
            continue
        dev = [(gold[name], data[name]) for name in tune_sets]
        if args.settings:
            fixed = settings_of(model_config(str(args.settings)))
            chosen = fixed | dev_scores(fixed, dev, redirects, table, popularity)
        else:
            chosen = tune(dev, redirects, table, popularity)
        raw = DevSets(dev, redirects, table, popularity).mean_f1(RAW)
        report["runs"][run] = chosen | {"tune_sets": tune_sets, "dev_f1_raw": raw}
        ablation_rows.append([run, pct(raw), pct(chosen["dev_f1"]), pct(chosen["dev_f1_without_aliases"]),
                              *(chosen[k] for k in SETTING_NAMES)])
    print(f"mean over {', '.join(tune_sets)}: A2KB strong InKB micro-F1 (percent)")
    picked = "given" if args.settings else "tuned"
    print(format_table(["run", "no prior, no NIL", picked, f"{picked}, no alias table", *SETTING_NAMES], ablation_rows))

    chosen = report["runs"][args.run]
    if args.against or args.against_run:
        mine = "those of " + str(args.settings) if args.settings else "its tuned ones"
        if args.against:
            other = settings_of(model_config(str(args.against)))
            other |= dev_scores(other, [(gold[name], runs[args.run][name]) for name in tune_sets], redirects, table, popularity)
            other_run, title = args.run, f"run {args.run}: the settings of {args.against} (A) against {mine} (B)"
        else:
            other, other_run = report["runs"][args.against_run], args.against_run
            title = (f"run {args.against_run} (A) against run {args.run} (B), each under "
                     f"{'the settings of ' + str(args.settings) if args.settings else 'its tuned settings'}")
        dev = [(name, gold[name], runs[other_run][name], runs[args.run][name]) for name in tune_sets]
        report["against"] = dev_comparisons(dev, other, chosen, redirects, table, popularity)
        print(f"\n{title}, on the dev sets; 95% intervals by the paired bootstrap over documents, p: paired permutation "
              "test (onegen-gerbil compare)")
        print(format_table(["dev set", "alias prior", "A", "B", "B - A", "B - A 95%", "p"],
                           [[c["dataset"], c["alias_prior"], pct(c["f1_a"]), pct(c["f1_b"]), signed_pct(c["difference"]),
                             interval_text(c["low"], c["high"], signed=True), f"{c['p_value']:.4f}"]
                            for c in report["against"]]))
        reasons = verdict(report["against"], other["objective"], chosen["objective"])
        report["verdict"] = {"ships": not reasons, "reasons": reasons}
        print(f"dev objective {pct(other['objective'])} (A) -> {pct(chosen['objective'])} (B): "
              + ("B may replace A by the shipping rule" if not reasons else "B may not replace A: " + "; ".join(reasons)))
    rows = []
    for name, docs in runs[args.run].items():
        linked = link(docs, chosen, table, popularity)
        r = score(gold[name], linked, redirects=redirects)
        if args.predictions:
            write_nif_predictions(args.predictions / f"{name}.ttl", gold[name], linked)
        m = r.inkb.micro
        rows.append([name, len(gold[name]), m.tp + m.fn, pct(m.precision), pct(m.recall), pct(m.f1), pct(r.inkb.macro.f1)])
        report["datasets"][name] = r.to_dict()
    print(f"\nrun {args.run}: " + ", ".join(f"{k} {chosen[k]}" for k in SETTING_NAMES)
          + f" ({'of ' + str(args.settings) if args.settings else 'tuned on ' + ', '.join(tune_sets)}); A2KB strong InKB (percent)")
    print(format_table(["dataset", "docs", "gold InKB", "P", "R", "micro-F1", "macro-F1"], rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if args.write_config:
        write_config(args.write_config, chosen)


def dev_comparisons(dev: list[tuple], settings_a: dict, settings_b: dict, redirects, table: AliasPrior,
                    popularity: PopularityPrior) -> list[dict]:
    """Each dev set's paired comparison (`eval.significance.compare`) of A's decisions with B's, with the alias table
    and with the KB's names alone, as the tune's objective counts both; dev holds (name, gold documents, A's candidates
    by doc id, B's), A's decided with `settings_a` and B's with `settings_b`."""
    out = []
    for name, gold, docs_a, docs_b in dev:
        for label, prior in (("table", table), ("names only", dataclasses.replace(table, table=None))):
            a, b = ([c[INKB] for c in document_counts(gold, link(docs, settings, prior, popularity), redirects=redirects)]
                    for docs, settings in ((docs_a, settings_a), (docs_b, settings_b)))
            result = compare(a, b)
            out.append({"dataset": name, "alias_prior": label} | dataclasses.asdict(result)
                       | {"difference": result.difference})
    return out


def verdict(comparisons: list[dict], objective_a: float, objective_b: float) -> list[str]:
    """The shipping rule's reasons against B (`eval.significance.shipping_verdict`) from `dev_comparisons`' rows."""
    ways: dict[str, dict] = {}
    for row in comparisons:
        fields = {f.name: row[f.name] for f in dataclasses.fields(Comparison)}
        ways.setdefault(row["dataset"], {})[row["alias_prior"]] = Comparison(**fields)
    return shipping_verdict(objective_a, objective_b, ways)


def write_config(model_dir: Path, chosen: dict) -> Path:
    """Save the chosen settings (RAW's keys) into the model folder's linker_config.json, its others kept."""
    config = dataclasses.replace(model_config(str(model_dir)), nil_threshold=chosen["nil_threshold"],
                                 given_nil_threshold=chosen["given_nil_threshold"], short_forms=chosen["short_forms"],
                                 alias_weight=chosen["prior_weight"], alias_nil_weight=chosen["nil_prior_weight"],
                                 popularity_weight=chosen["popularity_weight"],
                                 name_weight=chosen["name_weight"])
    path = config.save(model_dir)
    print(f"settings written to {path}")
    return path


if __name__ == "__main__":
    main()
