"""Link the entity mentions of a document collection: `onegen-link --input IN --output OUT`
(installed command; `python jobs/link.py` is the same).

IN: Parquet or JSONL (`doc_id`, `text`; other columns carried through) as a file, folder, glob or
URI; `--sample` links the bundled sample corpus instead. OUT: a Parquet dataset, one row per input
document (DESIGN section 4), plus `_metrics.json` and `_manifest.json` (with --html also a browsable
view, `_html/index.html`). On a cluster: `ray job submit --working-dir . -- python jobs/link.py ...`
(connects to RAY_ADDRESS); alone it starts a local Ray. With only --input and --output it uses the
trained default model and the bundled sample KB, whose index is built once and cached.
The library code is onegen/pipeline/.
"""
from __future__ import annotations

import argparse
import sys

from onegen.cli_logging import add_log_level, setup_logging
from onegen.indexes import SAMPLE_CORPUS
from onegen.ner import MENTION_SOURCES, SPACY_MODEL
from onegen.pipeline.config import JobConfig

CLI_ONLY = ("sample", "html", "log_level")  # options of this command that do not change results: not in JobConfig


def build_parser() -> argparse.ArgumentParser:
    """The command's options: the job's (JobConfig) plus --sample, --html and --log-level."""
    defaults = JobConfig(input="", output="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", help="Parquet/JSONL file, folder, glob or URI (s3://, gs://, ...)")
    inputs.add_argument("--sample", action="store_true",
                        help=f"link the bundled sample corpus (36 short documents, {SAMPLE_CORPUS.name}) instead of --input")
    parser.add_argument("--output", required=True, help="output folder (local path or URI)")
    parser.add_argument("--model", default=None, help="model folder, adapter folder or cached hub id (default: the trained default, SmolLM2-135M-Instruct + the bundled OneGen adapter)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", default=None, help="built entity index folder (python jobs/build_index.py)")
    source.add_argument("--kb", default=None, help="KB JSONL whose index is built on first use and cached (default: samples/kb.jsonl)")
    parser.add_argument("--num-replicas", type=int, default=None,
                        help="most model replicas. On GPUs the pool starts with one replica per GPU in the cluster and "
                             "grows up to this as an autoscaler adds GPU nodes (default: no limit but the GPUs); "
                             "on CPUs it is the pool's size (default: 1)")
    parser.add_argument("--gpus-per-replica", type=float, default=None,
                        help="GPUs per replica; more than 1 spreads one model over them. Default: 1 when the cluster has "
                             "a GPU at the start, else 0: the replicas run on CPUs (with a warning). On a cluster whose "
                             "GPU nodes start on demand (cluster.yaml) pass 1: the job asks the autoscaler for a GPU node "
                             "and stops with an error if none comes within --gpu-wait")
    parser.add_argument("--cpus-per-replica", type=float, default=defaults.cpus_per_replica, help="CPUs reserved per replica")
    parser.add_argument("--shard-gpus", type=float, default=defaults.shard_gpus,
                        help="GPU share per index-shard actor, e.g. 0.1 (default: 0, shards on CPUs so the replicas get "
                             "the GPUs); refused unless the GPUs left over still take a model replica")
    parser.add_argument("--gpu-wait", type=float, default=defaults.gpu_wait,
                        help="seconds to wait for a node with a replica's GPUs before stopping with an error "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="documents per model call")
    # Decision settings: default None = the model's linker_config.json (generic defaults when it has none)
    parser.add_argument("--top-k", type=int, default=None, help="candidates kept per mention (default: the model's)")
    parser.add_argument("--name-candidates", type=int, default=None, metavar="N",
                        help="also score up to N entities a mention's surface refers to by the alias prior (its "
                             "--aliases links and the KB's names, likeliest first) that retrieval missed, and add them "
                             "to its candidates (default: the model's; 0 turns it off; needs --alias-weight above 0)")
    parser.add_argument("--nil-threshold", type=float, default=None,
                        help="chosen candidate's cosine, plus its alias and name terms, below which a mention is NIL (default: the model's)")
    parser.add_argument("--given-nil-threshold", type=float, default=None,
                        help="the same for the NER's spans of --mentions ner|union, which the model embeds by teacher "
                             "forcing (default: the model's; 0.9 for the trained default; unset: --nil-threshold)")
    parser.add_argument("--short-forms", action=argparse.BooleanOptionalAction, default=None,
                        help="link a NIL mention whose words are part of a longer linked mention of the same document "
                             "('Yeltsin' after 'Boris Yeltsin') to that entity when it is among its candidates "
                             "(default: the model's; on for the trained default)")
    parser.add_argument("--aliases", default=None,
                        help="alias table mention<TAB>entity<TAB>count (e.g. the gold links of your training data): its "
                             "counts join the KB's names in the alias prior p(entity | surface) (default: the names alone)")
    parser.add_argument("--redirects", default=None,
                        help="redirects table from<TAB>to (kb.wikipedia.convert_wikipedia writes one from a dump): "
                             "the names of the redirects to an entity count as its names in the alias prior, as its "
                             "title does")
    parser.add_argument("--alias-weight", type=float, default=None,
                        help="weight of the alias prior p(entity | surface), for ranking and for NIL: each name of an "
                             "entity (its title, with or without a parenthesised qualifier, the KB's aliases and "
                             "--redirects names) counts "
                             "as one link of it, with the --aliases counts (default: the model's; 0 turns it off)")
    parser.add_argument("--alias-nil-weight", type=float, default=None,
                        help="weight of the alias prior in the evidence NIL is decided on, where it differs from its "
                             "ranking weight: a surface known to name the entity is evidence that the mention is in "
                             "the KB (default: the model's; unset there: --alias-weight; needs --alias-weight above 0)")
    parser.add_argument("--popularity-weight", type=float, default=None,
                        help="weight of the KB-popularity prior, read from the KB JSONL's popularity field "
                             "(default: the model's; 0 turns it off)")
    parser.add_argument("--name-weight", type=float, default=None,
                        help="evidence added to a candidate's cosine, for ranking and for NIL, when the mention is "
                             "written as the entity's title (its id, e.g. 'Paris' for Paris_(band)), case aside "
                             "(default: the model's; 0 turns it off)")
    parser.add_argument("--mention-bias", type=float, default=None,
                        help="logits added to opening a mention while decoding: above 0 the model marks more mentions "
                             "(recall for precision; slower); 0 is the model's own choice (default: the model's, "
                             "1 for the trained default)")
    parser.add_argument("--mentions", choices=MENTION_SOURCES, default=None,
                        help="what is linked: the model's own mentions ('model'), the name spans of a spaCy NER run on "
                             "CPUs before the replicas ('ner'), or both: the NER's spans that overlap none of the model's "
                             "are added ('union'). The model embeds an NER span by teacher forcing (one forward pass). "
                             "Default: the model's ('union' for the trained default)")
    parser.add_argument("--title-spans", action=argparse.BooleanOptionalAction, default=None,
                        help="with --mentions union: an NER span that is a KB entity's title ('Brigham Young "
                             "University') replaces the model's mentions inside it ('Brigham', 'Young', 'University') "
                             "(default: the model's)")
    parser.add_argument("--split-spans", action=argparse.BooleanOptionalAction, default=None,
                        help="with --mentions union: a model mention that is no KB entity's title ('President Boris "
                             "Yeltsin') is replaced by the NER spans inside it ('Boris Yeltsin'), and a KB title that "
                             "two neighbouring mentions spell ('Long Beach', 'California') replaces them (default: the model's)")
    parser.add_argument("--ner-model", default=None,
                        help=f"spaCy model (installed package or folder) of --mentions ner|union (default: the model's, {SPACY_MODEL})")
    parser.add_argument("--max-chars", type=int, default=defaults.max_chars, help="longer documents get status=error")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted run in --output: same input, model, index and options (writes only missing rows)")
    parser.add_argument("--incremental", action="store_true", help="process only input files new or changed since the last run")
    parser.add_argument("--break-lock", action="store_true",
                        help="remove the lock of a run that is gone (--output/_lock.json names it) before starting; "
                             "a lock left by a killed run on this machine is taken over without it")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--html", action="store_true",
                        help="after the run, write a static HTML view of the whole output: --output/_html/index.html "
                             "(summary, links to a page per document with its mentions highlighted)")
    add_log_level(parser)
    return parser


def job_config(args: argparse.Namespace) -> JobConfig:
    """The job's config from parsed options (--sample: the bundled corpus as the input)."""
    options = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    if args.sample:
        options["input"] = str(SAMPLE_CORPUS)
    return JobConfig(**options)


def parse_args(argv: list[str] | None = None) -> JobConfig:
    """The job's config from a command line."""
    return job_config(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)  # --help answers here, before Ray is imported
    from onegen.pipeline.html_view import write_html
    from onegen.pipeline.job import run_job

    setup_logging(args.log_level)
    config = job_config(args)
    try:
        summary = run_job(config)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:  # the message says what to do
        sys.exit(f"error: {err}")
    print(summary.text())
    print(f"metrics: {summary.output.rstrip('/')}/_metrics.json")
    if args.html:
        print(f"html: {write_html(config.output)}")


if __name__ == "__main__":
    main()
