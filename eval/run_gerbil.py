"""GERBIL-style evaluation from the command line: score predictions, compare two systems' predictions, run a linker
over datasets, serve a linker.

    python eval/run_gerbil.py score --gold ../shared/data/gerbil/msnbc.ttl --pred out/msnbc.parquet
    python eval/run_gerbil.py compare --gold ../shared/data/gerbil/msnbc.ttl --pred out/a.parquet --pred out/b.parquet
    python eval/run_gerbil.py run --datasets aida-testb,reuters-128 --linker baseline
    python eval/run_gerbil.py serve --port 8080 --linker baseline
"""
import argparse
import contextlib
import gzip
import json
import os
import sys
import time
from pathlib import Path

from eval.corpora import DEFAULT_DATA_DIR, dataset_names, load_dataset, load_dataset_file
from eval.linkers import LINKER_NAMES, TextLinker, get_linker
from eval.predictions import read_predictions, write_nif_predictions
from eval.scorer import INKB, document_counts, score
from eval.significance import CONFIDENCE, RESAMPLES, compare, f1_interval
from eval.serve import ServiceLimits, serve
from kb.ids import Redirects
from onegen.cli_logging import add_log_level, setup_logging
from onegen.ner import MENTION_SOURCES
from onegen.spans import Document

# errors a user can fix (missing file, bad name, bad file, linker not installed): one line, exit code 2
USER_ERRORS = (OSError, ValueError, ImportError)
EXIT_USER_ERROR = 2
MIN_LINK_CHUNK = 64  # documents per linker call in `run`, so the progress bar moves
PROGRESS_LOG_SECONDS = 30  # off a terminal (nohup, a job's log), the progress bar is redrawn this seldom


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pct(x: float) -> str:
    """A score in [0, 1] as a percentage with two decimals."""
    return f"{100 * x:.2f}"


def load_redirects(path: str | None) -> Redirects:
    """The redirects table at `path`, or the empty table when no path is given."""
    return Redirects.from_tsv(path) if path else Redirects.empty()


def write_json(path: str, data: dict) -> None:
    """Write `data` as indented JSON, creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def cmd_score(args: argparse.Namespace) -> int:
    """Score a prediction file against a gold file and print the table."""
    gold = load_dataset_file(args.gold, args.split)
    pred = read_predictions(args.pred)
    report = score(gold, pred, match=args.match, task=args.task, redirects=load_redirects(args.redirects))
    print(f"gold: {args.gold} ({len(gold)} documents); predictions: {args.pred} ({len(pred)} documents, "
          f"{len(pred.errors)} with status=error, scored as no annotations)")
    if missing := len({d.doc_id for d in gold} - set(pred)):
        print(f"warning: {missing} gold document(s) have no prediction and score as empty", file=sys.stderr)
    print(report.format_table())
    if args.json:
        write_json(args.json, report.to_dict() | {"prediction_errors": len(pred.errors)})
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Score two systems' predictions against the same gold, one dataset or several, and say whether B's InKB
    micro-F1 differs from A's by more than chance (`eval.significance`)."""
    if len(args.pred) != 2:
        raise ValueError(f"compare needs --pred twice (system A, then system B), got {len(args.pred)}")
    if bool(args.gold) == bool(args.datasets):
        raise ValueError("compare needs either --gold FILE (with prediction files) or --datasets NAMES (with "
                         "prediction folders holding NAME.ttl, as `run --predictions` writes them)")
    if args.datasets:
        resolve_redirects(args)
        sets = [(name, docs, [Path(folder) / f"{name}.ttl" for folder in args.pred])
                for name, docs in load_datasets(args)]
    else:
        sets = [(Path(args.gold).stem, load_dataset_file(args.gold, args.split), [Path(p) for p in args.pred])]
    if missing := [str(path) for _, _, paths in sets for path in paths if not path.exists()]:
        raise FileNotFoundError(f"predictions not found: {', '.join(missing)}")
    redirects = load_redirects(args.redirects)
    options = {"confidence": args.confidence, "resamples": args.resamples, "seed": args.seed}
    rows, results = [], []
    for name, gold, paths in sets:
        counts = [inkb_counts(gold, path, args, redirects) for path in paths]
        result = compare(*counts, **options)
        intervals = [f1_interval(c, **options) for c in counts]
        rows.append([name, len(gold), pct(result.f1_a), interval_text(*intervals[0]), pct(result.f1_b),
                     interval_text(*intervals[1]), signed_pct(result.difference),
                     interval_text(result.low, result.high, signed=True), f"{result.p_value:.4f}"])
        results.append({"dataset": name, "a": str(paths[0]), "b": str(paths[1]), "documents": result.documents,
                        "f1_a": result.f1_a, "f1_b": result.f1_b, "interval_a": intervals[0], "interval_b": intervals[1],
                        "difference": result.difference, "difference_interval": [result.low, result.high],
                        "p_value": result.p_value})
    level = f"{args.confidence:.0%}"
    print(f"A: {args.pred[0]}; B: {args.pred[1]}; redirects: {args.redirects or 'none'}")
    print(f"{args.task.upper()}, {args.match} match, InKB micro-F1 (percent); {level} intervals by the bootstrap over "
          f"each dataset's documents ({args.resamples} resamples, paired for B - A); p: paired permutation test, "
          "two-sided")
    print(format_table(["dataset", "docs", "A", f"A {level}", "B", f"B {level}", "B - A", f"B - A {level}", "p"], rows))
    if args.json:
        write_json(args.json, {"match": args.match, "task": args.task, "redirects": args.redirects, **options,
                               "datasets": results})
    return 0


def inkb_counts(gold: list[Document], path: Path, args: argparse.Namespace, redirects: Redirects) -> list:
    """The InKB counts of each gold document for the predictions at `path`, saying what is missing or failed."""
    pred = read_predictions(path)
    if missing := len({d.doc_id for d in gold} - set(pred)):
        print(f"warning: {path}: {missing} gold document(s) have no prediction and score as empty", file=sys.stderr)
    if pred.errors:
        print(f"warning: {path}: {len(pred.errors)} document(s) with status=error, scored as no annotations",
              file=sys.stderr)
    return [c[INKB] for c in document_counts(gold, pred, match=args.match, task=args.task, redirects=redirects)]


def signed_pct(x: float) -> str:
    """A difference of fractions as signed percentage points with two decimals."""
    return f"{100 * x:+.2f}"


def interval_text(low: float, high: float, signed: bool = False) -> str:
    """An interval of fractions in percent, "low to high"."""
    as_text = signed_pct if signed else pct
    return f"{as_text(low)} to {as_text(high)}"


def linker_from_args(args: argparse.Namespace) -> TextLinker:
    """Build --linker with the options given on the command line (the rest stay at the linker's defaults); the
    onegen linker also counts the names of the --redirects table (the scorer's) in its alias prior."""
    names = {"redirects": args.redirects} if args.linker == "onegen" else {}
    return get_linker(args.linker, model=args.model, kb=args.kb, aliases=args.aliases, batch_size=args.batch_size, **names,
                      nil_threshold=args.nil_threshold, given_nil_threshold=args.given_nil_threshold,
                      short_forms=args.short_forms, alias_weight=args.alias_weight, alias_nil_weight=args.alias_nil_weight,
                      popularity_weight=args.popularity_weight, name_weight=args.name_weight,
                      mention_bias=args.mention_bias, mentions=args.mentions, title_spans=args.title_spans,
                      split_spans=args.split_spans, name_candidates=args.name_candidates)


def resolve_linker_paths(args: argparse.Namespace) -> None:
    """Default --kb, --aliases and --redirects (when present) to the files of --data-dir, so one flag moves all data."""
    kb_dir = Path(args.data_dir) / "kb"
    args.kb = args.kb or str(kb_dir / "entities.jsonl")
    args.aliases = args.aliases or str(kb_dir / "aida_train_aliases.tsv")
    resolve_redirects(args)


def resolve_redirects(args: argparse.Namespace) -> None:
    """Default --redirects to DATA_DIR/kb/redirects.tsv when that file is there."""
    if args.redirects is None and (Path(args.data_dir) / "kb" / "redirects.tsv").is_file():
        args.redirects = str(Path(args.data_dir) / "kb" / "redirects.tsv")


def load_datasets(args: argparse.Namespace) -> list[tuple[str, list[Document]]]:
    """(name, documents) for every --datasets name, then every --dataset-file (named by its file stem)."""
    names = [n.strip() for group in args.datasets or [] for n in group.split(",") if n.strip()]
    files = [Path(p) for p in args.dataset_file or []]
    if not names and not files:
        raise ValueError("no dataset given; pass --datasets NAMES (e.g. aida-testb,msnbc) and/or --dataset-file PATH")
    if names and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data dir not found: {args.data_dir} (set it with --data-dir)")
    valid = dataset_names(args.data_dir)
    if unknown := [n for n in names if n not in valid]:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)} in {args.data_dir}; choose from: {', '.join(valid)}")
    return [(n, load_dataset(n, args.data_dir)) for n in names] + [(p.stem, load_dataset_file(p)) for p in files]


def link_documents(linker: TextLinker, docs: list[Document], chunk: int, desc: str, candidates=None) -> dict[str, list]:
    """doc_id -> predicted annotations, linking `chunk` documents per call with a progress bar on stderr
    (also into a log, redrawn there at most every PROGRESS_LOG_SECONDS).

    With `candidates` (a text file open for writing), each document's mentions and their top-k
    candidates are written there too, one JSON line per document under the dataset name `desc`."""
    from tqdm import tqdm

    pred: dict[str, list] = {}
    interval = 0.1 if sys.stderr.isatty() else PROGRESS_LOG_SECONDS
    with tqdm(total=len(docs), desc=desc, unit="doc", file=sys.stderr, mininterval=interval) as bar:
        for i in range(0, len(docs), chunk):
            batch = docs[i:i + chunk]
            texts = [d.text for d in batch]
            if candidates is None:
                linked = linker.link(texts)
            else:
                linked = [linker.decide(mentions) for mentions in linker.retrieve(texts)]
                for doc, mentions in zip(batch, linked, strict=True):
                    candidates.write(json.dumps({"dataset": desc, "doc_id": doc.doc_id,
                                                 "mentions": [m.to_dict() for m in mentions]}, ensure_ascii=False) + "\n")
            for doc, annotations in zip(batch, linked, strict=True):
                pred[doc.doc_id] = annotations
            bar.update(len(batch))
    return pred


@contextlib.contextmanager
def candidates_file(path: str | None):
    """A gzip text file for `--candidates`, written beside `path` and moved there only when the run finishes."""
    if path is None:
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(f"{path}.partial")
    with gzip.open(partial, "wt", encoding="utf-8") as f:
        yield f
    os.replace(partial, path)


def cmd_run(args: argparse.Namespace) -> int:
    """Link every document of each dataset, score it and print one GERBIL-style table."""
    started = time.perf_counter()
    resolve_linker_paths(args)
    datasets = load_datasets(args)
    redirects = load_redirects(args.redirects)
    if args.candidates and args.linker != "onegen":
        raise ValueError(f"--candidates needs the onegen linker (it retrieves candidates), not {args.linker!r}")
    if args.candidates and not args.candidates.endswith(".jsonl.gz"):
        raise ValueError(f"--candidates {args.candidates}: name it DIR/candidates-RUN.jsonl.gz (bench/gpu_score.py reads those)")
    linker = linker_from_args(args)
    load_seconds = time.perf_counter() - started
    chunk = max(MIN_LINK_CHUNK, args.batch_size or 0)
    rows, results = [], []
    with candidates_file(args.candidates) as candidates:
        for name, docs in datasets:
            t0 = time.perf_counter()
            pred = link_documents(linker, docs, chunk, desc=name, candidates=candidates)
            seconds = time.perf_counter() - t0
            report = score(docs, pred, match=args.match, task="a2kb", redirects=redirects)
            if args.predictions:
                write_nif_predictions(Path(args.predictions) / f"{name}.ttl", docs, pred)
            m = report.inkb.micro
            rate = len(docs) / seconds if seconds > 0 else float("inf")
            rows.append([name, len(docs), m.tp + m.fn, pct(m.precision), pct(m.recall), pct(m.f1),
                         pct(report.inkb.macro.f1), f"{rate:.1f}"])
            results.append({"dataset": name, "docs": len(docs), "gold_inkb": m.tp + m.fn, "link_seconds": seconds,
                            "docs_per_second": rate, "report": report.to_dict()})
    total = time.perf_counter() - started
    print(f"linker: {args.linker}; A2KB, {args.match} match, InKB (percent); "
          f"redirects: {args.redirects or 'none'}; KB: {args.kb}")
    print(format_table(["dataset", "docs", "gold InKB", "P", "R", "micro-F1", "macro-F1", "docs/s"], rows))
    print(f"total {total:.1f} s (loading data and linker {load_seconds:.1f} s; docs/s counts linking only)")
    if args.json:
        write_json(args.json, {
            "linker": args.linker,
            "options": {k: getattr(args, k) for k in ("model", "kb", "aliases", "batch_size", "nil_threshold",
                                                           "given_nil_threshold", "short_forms", "alias_weight", "alias_nil_weight",
                                                           "popularity_weight", "name_weight", "mention_bias",
                                                           "mentions", "title_spans", "split_spans")},
            "data_dir": str(args.data_dir), "task": "a2kb", "match": args.match, "redirects": args.redirects,
            "load_seconds": load_seconds, "total_seconds": total, "datasets": results,
        })
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the linker as a GERBIL NIF annotator web service until interrupted."""
    limits = ServiceLimits(args.max_body, args.max_chars, args.max_in_flight, args.timeout)  # checked before loading
    resolve_linker_paths(args)
    linker = linker_from_args(args)
    serve(args.host, args.port, linker, limits)
    return 0


def add_linker_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir, --linker and the linker's options (--kb, --aliases default to DATA_DIR/kb files)."""
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                        help="data bundle with aida/, gerbil/ and kb/ (default: %(default)s)")
    parser.add_argument("--linker", required=True, help=f"linker to run: {', '.join(LINKER_NAMES)}")
    parser.add_argument("--model", help="baseline: spaCy model name; onegen: model name or folder")
    parser.add_argument("--kb", help="entities JSONL (default: DATA_DIR/kb/entities.jsonl)")
    parser.add_argument("--aliases", help="alias prior mention<TAB>entity<TAB>count (default: DATA_DIR/kb/aida_train_aliases.tsv)")
    parser.add_argument("--batch-size", type=int, help="texts per model batch (default: the linker's)")
    parser.add_argument("--nil-threshold", type=float, help="onegen: minimum score to link, else NIL (default: the model's linker_config.json)")
    parser.add_argument("--given-nil-threshold", type=float,
                        help="onegen: the same for NER spans (--mentions ner|union), embedded by teacher forcing "
                             "(default: the model's linker_config.json; unset there: --nil-threshold)")
    parser.add_argument("--short-forms", action=argparse.BooleanOptionalAction,
                        help="onegen: link a NIL mention whose words are part of a longer linked mention of the same "
                             "document to that entity when retrieval found it (default: the model's linker_config.json)")
    parser.add_argument("--alias-weight", type=float,
                        help="onegen: weight of the alias prior, for ranking and NIL: the --aliases counts and the KB's "
                             "names, one link each (default: the model's linker_config.json)")
    parser.add_argument("--alias-nil-weight", type=float,
                        help="onegen: weight of the alias prior in the evidence NIL is decided on (default: the model's "
                             "linker_config.json; unset there: --alias-weight; needs --alias-weight above 0)")
    parser.add_argument("--popularity-weight", type=float,
                        help="onegen: weight of the prior from the KB's popularity field (0: off; default: the model's linker_config.json)")
    parser.add_argument("--name-candidates", type=int, metavar="N",
                        help="onegen: also score up to N entities a mention's surface refers to by the alias prior "
                             "that retrieval missed, as candidates (0: off; default: the model's linker_config.json)")
    parser.add_argument("--name-weight", type=float,
                        help="onegen: evidence added to a candidate's cosine, for ranking and NIL, when the mention is "
                             "written as the entity's title (0: off; default: the model's linker_config.json)")
    parser.add_argument("--mentions", choices=MENTION_SOURCES,
                        help="onegen: which mentions are linked: the model's own ('model'), the baseline's spaCy NER "
                             "name spans ('ner'), or both, NER spans where they overlap none of the model's ('union'); "
                             "NER spans get the model's [LK] vectors by teacher forcing (default: the model's "
                             "linker_config.json)")
    parser.add_argument("--title-spans", action=argparse.BooleanOptionalAction,
                        help="onegen, --mentions union: an NER span that is a KB title replaces the model's mentions "
                             "inside it (default: the model's linker_config.json)")
    parser.add_argument("--split-spans", action=argparse.BooleanOptionalAction,
                        help="onegen, --mentions union: a model mention that is no KB title is replaced by the NER "
                             "spans inside it (role words: 'President Boris Yeltsin'), and a KB title two neighbouring "
                             "mentions spell ('Long Beach, California') replaces them (default: the model's linker_config.json)")
    parser.add_argument("--mention-bias", type=float,
                        help="onegen: logits added to opening a mention while decoding; above 0 marks more mentions "
                             "(recall for precision, and slower; 0: the model's own choice; default: the model's linker_config.json)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        description="GERBIL-style entity-linking evaluation (A2KB/D2KB, strong/weak match, InKB and EE scores).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `%(prog)s COMMAND --help` for the options of a command (installed command: onegen-gerbil;\n"
               "`python eval/run_gerbil.py` is the same).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "score", help="score predictions (NIF or link-job Parquet) against a gold NIF file or AIDA TSV",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score predictions against gold annotations and print InKB and EE precision, recall and F1.\n\n"
                    "example:\n  python eval/run_gerbil.py score --gold ../shared/data/aida/AIDA-YAGO2-dataset.tsv "
                    "--split testb \\\n      --pred out/aida-testb/ --redirects ../shared/data/kb/redirects.tsv --json score.json")
    p.add_argument("--gold", required=True, help="gold NIF file (.ttl) or AIDA TSV file")
    p.add_argument("--pred", required=True, help="predictions: NIF file, or link-job Parquet file or folder "
                                                  "(doc_id = NIF context URI or AIDA doc id)")
    p.add_argument("--split", choices=("train", "testa", "testb"), help="AIDA split of --gold (default: all documents)")
    p.add_argument("--match", choices=("strong", "weak"), default="strong", help="annotation match (default: strong)")
    p.add_argument("--task", choices=("a2kb", "d2kb"), default="a2kb", help="GERBIL task (default: a2kb)")
    p.add_argument("--redirects", help="from<TAB>to redirects applied to gold and predicted ids (default: none)")
    p.add_argument("--json", help="write the report as JSON to this file")
    add_log_level(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "compare", help="whether system B's InKB micro-F1 differs from system A's by more than chance",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score two systems' predictions against the same gold and compare their InKB micro-F1 document by\n"
                    "document: each system's bootstrap interval, the paired bootstrap interval of B - A and the p-value\n"
                    "of a paired permutation test (approximate randomisation). An interval of B - A that holds 0, or a\n"
                    "large p, says the two could differ by chance alone on documents like these.\n\n"
                    "examples:\n  python eval/run_gerbil.py compare --gold ../shared/data/aida/AIDA-YAGO2-dataset.tsv "
                    "--split testb \\\n      --pred out/a/ --pred out/b/ --redirects ../shared/data/kb/redirects.tsv\n"
                    "  python eval/run_gerbil.py compare --datasets aida-testb,msnbc --pred out/baseline --pred out/onegen"
                    "\n      (folders of NAME.ttl, as `run --predictions` writes them)")
    p.add_argument("--gold", help="gold NIF file (.ttl) or AIDA TSV file; --pred are then files")
    p.add_argument("--split", choices=("train", "testa", "testb"), help="AIDA split of --gold (default: all documents)")
    p.add_argument("--datasets", action="append", metavar="NAMES",
                   help="instead of --gold: comma-separated dataset names of --data-dir (as `run`'s); --pred are then "
                        "folders holding NAME.ttl for each")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="data bundle of --datasets (default: %(default)s)")
    p.add_argument("--pred", required=True, action="append",
                   help="predictions as for `score` (with --datasets: a folder of NAME.ttl), given twice: system A, "
                        "then system B")
    p.add_argument("--match", choices=("strong", "weak"), default="strong", help="annotation match (default: strong)")
    p.add_argument("--task", choices=("a2kb", "d2kb"), default="a2kb", help="GERBIL task (default: a2kb)")
    p.add_argument("--redirects", help="from<TAB>to redirects applied to gold and predicted ids (default: with "
                                       "--datasets DATA_DIR/kb/redirects.tsv when present, else none)")
    p.add_argument("--confidence", type=float, default=CONFIDENCE, help="interval level (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=RESAMPLES,
                   help="bootstrap and permutation resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default: %(default)s)")
    p.add_argument("--json", help="write the scores, intervals and p-value as JSON to this file")
    add_log_level(p)
    p.set_defaults(func=cmd_compare, dataset_file=None)  # load_datasets reads it; compare takes names only

    p = sub.add_parser(
        "run", help="link every document of named datasets and print a GERBIL-style table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Link every document of each dataset with a linker, score A2KB InKB and print one row per dataset\n"
                    "(dataset, docs, gold InKB, P, R, micro-F1, macro-F1, docs/s).\n"
                    "Dataset names: aida-train, aida-testa, aida-testb and the stem of any NIF file in DATA_DIR/gerbil.\n\n"
                    "example:\n  python eval/run_gerbil.py run --datasets aida-testb,reuters-128,msnbc "
                    "--linker baseline --json baseline.json")
    p.add_argument("--datasets", action="append", metavar="NAMES", help="comma-separated dataset names (repeatable)")
    p.add_argument("--dataset-file", action="append", metavar="PATH", help="a NIF or AIDA TSV file (repeatable)")
    p.add_argument("--match", choices=("strong", "weak"), default="strong", help="annotation match (default: strong)")
    p.add_argument("--redirects", help="redirects table, applied to gold and predicted ids; onegen also counts its names "
                                       "in the alias prior (default: DATA_DIR/kb/redirects.tsv when present)")
    p.add_argument("--json", help="write per-dataset reports and timings as JSON to this file")
    p.add_argument("--candidates", metavar="FILE.jsonl.gz",
                   help="onegen: also write every mention's top-k candidates here, for picking the NIL threshold and "
                        "prior weight offline (name it DIR/candidates-main.jsonl.gz, then: "
                        "python bench/gpu_score.py --candidates DIR)")
    p.add_argument("--predictions", metavar="DIR",
                   help="also write each dataset's links as DIR/NAME.ttl (NIF), for `compare` against another system's")
    add_linker_options(p)
    add_log_level(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve", help="serve a linker as a GERBIL-compatible NIF annotator web service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Answer POSTed NIF Turtle (one nif:Context) with the same Turtle plus one nif:Phrase per link.\n\n"
                    "example:\n  python eval/run_gerbil.py serve --host 0.0.0.0 --port 8080 --linker baseline\n"
                    "  curl -X POST -H 'Content-Type: application/x-turtle' --data-binary @doc.ttl http://localhost:8080/")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    p.add_argument("--redirects", help="onegen: redirects table whose names count in the alias prior "
                                       "(default: DATA_DIR/kb/redirects.tsv when present)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: %(default)s)")
    limits = ServiceLimits()
    p.add_argument("--max-body", type=int, default=limits.max_body,
                   help="largest request body in bytes; larger gets 413 at once (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=limits.max_chars,
                   help="longest context in characters; longer gets 413 (default: %(default)s)")
    p.add_argument("--max-in-flight", type=int, default=limits.max_in_flight,
                   help="requests in work at once; one more gets 503 with Retry-After (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=limits.timeout,
                   help="seconds a client may stay silent (then the connection is closed) and may take to send a body "
                        "(then 408) (default: %(default)s)")
    add_linker_options(p)
    add_log_level(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
