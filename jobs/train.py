"""Fine-tune a OneGen entity linker: `onegen-train --train FILE --kb KB.jsonl --output DIR` (installed
command; `python jobs/train.py` is the same).

LoRA (default, r=16) or full fine-tuning of any causal LM on annotated documents (AIDA TSV split or
NIF), with per-epoch checkpoints, evaluation on an AIDA split (testa) and resume after a crash.
The output folder loads with `OneGen.from_pretrained(DIR)`. Runs on Ray Train: connects to the cluster
in RAY_ADDRESS, else starts a local one; `--no-ray` trains in this process on one device instead.

`--config configs/default.toml` runs a recipe: every stage in order into DIR/stage-N, each from the
previous stage's output; a finished stage is skipped, an interrupted one resumed. Flags given on the
command line override the recipe's values. The library code is onegen/training/.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onegen.cli_logging import add_log_level, setup_logging
from onegen.default_model import DEFAULT_MODEL_NAME
from onegen.linker_config import LinkerConfig
from onegen.sources import check_model
from onegen.training.config import RETRIEVAL_KINDS, STRATEGIES, TrainConfig
from onegen.training.recipe import load_recipe, parse_stages

LOG = logging.getLogger("train")
DEFAULTS = TrainConfig(train="", kb="", output="")
NOT_CONFIG = ("config", "stages", "no_ray", "full", "log_level")  # flags that are not TrainConfig fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; only the flags given are set (a flag overrides the recipe only when given)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    add = parser.add_argument
    add("--config", metavar="TOML", help="a recipe of stages, e.g. configs/default.toml (the shipped default's)")
    add("--stages", metavar="N-M", help="with --config: run only these stages (e.g. 1-3, 6, 4-); default all")
    add("--no-ray", action="store_true",
        help="train in this process on one device (onegen.training.fit), without a Ray cluster")
    add("--train", help="training documents: AIDA TSV or NIF file")
    add("--split", help="AIDA split of --train (default train; 'all' for every document)")
    add("--train-examples", type=int, metavar="N", help="train on a seeded sample of N examples (default: all)")
    add("--kb", help="KB JSONL: positives and negatives are drawn from it")
    add("--aliases", help="mention<TAB>entity<TAB>count table for same-alias hard negatives")
    add("--silver-docs", type=int, metavar="N",
        help="add N of the KB's descriptions as training documents, a seeded sample (onegen.silver): encyclopedic "
             "text whose described entity and unambiguous KB names are linked; more than there are: all")
    add("--silver-exclude", metavar="DATA_DIR",
        help="with --silver-docs: a data folder (aida/, gerbil/) whose evaluation documents (all but AIDA train) no "
             "silver document may share 8 consecutive words with")
    add("--case-augment", type=float, metavar="SHARE",
        help="also train on this share of the documents upper- or lower-cased (e.g. 0.1; default 0)")
    add("--mine-negatives", action="store_true",
        help="before each epoch, the entities the model ranks above the gold one become the negatives (ANCE; "
             "each worker embeds the whole KB every epoch)")
    add("--every-mention", action="store_true",
        help="with --mine-negatives: every linked mention is an anchor (default: one per sentence)")
    add("--base", help=f"base model folder or cached hub id (default {DEFAULT_MODEL_NAME})")
    add("--output", required=True, help="folder of the final model, tokenizer and model card (with --config: "
                                         "of the stage-N folders)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", type=int, metavar="R", help=f"LoRA rank (default {DEFAULTS.lora})")
    mode.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    add("--lora-alpha", type=int, help="LoRA alpha (default 2 * rank)")
    add("--loss", choices=RETRIEVAL_KINDS, help=f"retrieval loss (default {DEFAULTS.loss})")
    add("--init", metavar="DIR",
        help="continue training a saved model of the same kind (e.g. onegen/default_adapter with --lora 16): its "
             "weights, this run's learning-rate schedule (default: start from --base; with --config: the first "
             "stage run starts from DIR, e.g. --stages 4-6 --init STAGE3_DIR)")
    add("--retrieval-weight", type=float, metavar="W",
        help="weight of the retrieval loss next to the generation CE's 1 (lambda_ret, default 1); below 1 keeps "
             "more of the mention marking when the negatives are hard (--mine-negatives)")
    add("--epochs", type=int, help=f"epochs to train (default {DEFAULTS.epochs})")
    add("--schedule-epochs", type=int, metavar="N",
        help="epochs the learning-rate schedule spans (default --epochs); more stops part-way down the decay")
    add("--lr", type=float, help="peak learning rate (default 2e-4 LoRA, 5e-5 full)")
    add("--max-length", type=int, help=f"tokens per training example (default {DEFAULTS.max_length})")
    add("--batch-size", type=int, help=f"examples per worker per micro-batch (default {DEFAULTS.batch_size})")
    add("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    add("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
        help="recompute activations in backward: far less memory for about 1.3x the compute (default: on without "
             "--use-gpu, where a batch of 4 AIDA windows with their entity rows would pass 23 GB; off with it)")
    add("--share-prefix", action=argparse.BooleanOptionalAction,
        help="forward the chat template + instruction (mention rows) and the entity line (entity rows) once per "
             "batch instead of once per sequence: the same loss and gradients, about 30%% fewer tokens on AIDA "
             "(default: on; FSDP and models without sdpa attention run without it)")
    add("--group-by-length", action="store_true",
        help="batches of examples of similar length, in a shuffled order: less padding where long and short "
             "documents mix (1.9x fewer positions forwarded with the silver text of configs/default.toml's stage 7, 1.2x on AIDA "
             "alone); in-batch InfoNCE then sees the entities of similar documents only; one worker only")
    add("--num-workers", type=int, help="Ray Train workers (default 1)")
    add("--cpus-per-worker", type=int, help="CPU cores (torch threads) per worker (default 1)")
    add("--use-gpu", action="store_true", help="one GPU per worker")
    add("--bf16", action=argparse.BooleanOptionalAction,
        help="bf16 autocast over float32 weights (default: on GPUs, and on CPUs that multiply bf16 natively, "
             "AVX512-BF16 or AMX, where it gave 1.5x the tokens/s of float32)")
    add("--strategy", choices=STRATEGIES, help="ddp replicas or fsdp shards (GPUs; default ddp)")
    add("--eval", help="evaluation documents each epoch (AIDA TSV or NIF)")
    add("--eval-split", help="AIDA split of --eval (default testa; 'all' for every document)")
    add("--eval-docs", type=int, help="score a seeded sample of N eval documents")
    add("--eval-kb-size", type=int,
        help="link against the eval gold entities plus random KB entities up to N (default: the whole KB)")
    add("--redirects", help="from<TAB>to redirects applied when scoring and mining")
    add("--max-steps", type=int, help="stop after N optimizer steps")
    add("--seed", type=int, help="seed of sampling, shuffling and initialisation (default 0)")
    add("--resume", action="store_true", help="continue the run in --storage from its latest checkpoint")
    add("--storage", help="checkpoint folder (default OUTPUT/ray)")
    add_log_level(parser)
    args = parser.parse_args(argv)
    args.log_level = getattr(args, "log_level", "INFO")  # set even though other flags are only when given
    return args


def overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig values the command line gives."""
    values = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    if getattr(args, "full", False):
        values["lora"] = None
    for key in ("split", "eval_split"):
        if values.get(key) == "all":
            values[key] = None
    if "init" in values and not Path(values["init"]).is_dir():
        raise ValueError(f"--init {values['init']}: no such folder (a saved model: an adapter or full weights)")
    return values


def _finish(values: dict) -> TrainConfig:
    """The config of merged values, with the defaults that depend on other settings."""
    values.setdefault("gradient_checkpointing", not values.get("use_gpu", False))
    if not values.get("eval"):
        values["eval_split"] = None
    for key in ("train", "kb"):
        if not values.get(key):
            raise ValueError(f"--{key} is required (or a --config whose [train] sets {key})")
    return TrainConfig.from_dict(values)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed command-line arguments (a single run, no recipe)."""
    return _finish(overrides(args))


def stage_configs(args: argparse.Namespace, command: str) -> list[tuple[int, TrainConfig, str]]:
    """(stage number, config, model card line) of the recipe stages to run, in order: `--stages` of `--config`.

    The last stage's card line also gives the recipe's [linker] settings, which are saved beside its weights."""
    from onegen.training.card import portable

    recipe = load_recipe(args.config)
    given = overrides(args)
    output = given.pop("output")
    stages = parse_stages(getattr(args, "stages", "-"), len(recipe.stages))
    runs = []
    for i, values in recipe.stage_values(given, output, stages):
        made_by = f"Stage {i} of {len(recipe.stages)} of the recipe `{portable(args.config)}`, made by `{command}`."
        if i == len(recipe.stages) and recipe.linker:
            made_by += " Decided with " + ", ".join(f"{k} {v}" for k, v in recipe.linker.items()) + " (linker_config.json)."
        linker = recipe.linker if i == len(recipe.stages) else {}
        runs.append((i, _finish(values), made_by, linker))
    return runs


def run(config: TrainConfig, no_ray: bool, made_by: str):
    """One training run: read the documents, build the data and the evaluation, train; returns the Progress."""
    from eval.corpora import load_dataset_file
    from eval.epoch_eval import EpochEvaluation
    from onegen.training import fit, prepare_data, train
    from onegen.training.trainable import tokenizer_with_tokens

    tokenizer, token_ids = tokenizer_with_tokens(config.base)
    data = prepare_data(config, load_dataset_file(config.train, config.split), tokenizer, token_ids,
                        held_out=evaluation_texts(config.silver_exclude) if config.silver_docs else ())
    evaluate = None
    if config.eval:
        evaluate = EpochEvaluation.from_config(config, data.entities)
        data.sizes.update(eval_docs=len(evaluate.docs), eval_kb_entities=len(evaluate.entities))
    LOG.info("training data: %s", data.sizes)
    if no_ray:
        return fit(config, data, evaluate=evaluate, made_by=made_by)
    return train(config, data, evaluate=evaluate, made_by=made_by).progress


def evaluation_texts(data_dir: str) -> list[str]:
    """The text of every document of every evaluation set in `data_dir` (all its datasets but AIDA train)."""
    from eval.corpora import dataset_names, load_dataset

    names = [name for name in dataset_names(data_dir) if name != "aida-train"]
    if not names:
        raise FileNotFoundError(f"--silver-exclude {data_dir}: no evaluation sets there (expected aida/ or gerbil/*.ttl)")
    LOG.info("silver documents must share no text with %s", ", ".join(names))
    return [doc.text for name in names for doc in load_dataset(name, data_dir)]


def save_linker_settings(output: str, values: dict) -> None:
    """Save a recipe's [linker] settings as the model's linker_config.json (over the generic one training wrote)."""
    if values:
        LinkerConfig().replace(**values).save(output)


def check_inputs(config: TrainConfig) -> None:
    """Refuse a missing data file or base model folder before Ray starts (nothing is loaded)."""
    check_model(config.base)
    for flag, path in (("--train", config.train), ("--kb", config.kb), ("--eval", config.eval),
                       ("--aliases", config.aliases), ("--redirects", config.redirects),
                       ("--silver-exclude", config.silver_exclude)):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{flag} {path}: no such file or folder")


def fail(message: str) -> None:
    """Print `error: MESSAGE` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)  # --help answers here, before torch is imported
    from onegen.training import RUN_NAME, is_finished
    from onegen.training.card import command_line

    command = command_line("jobs/train.py", argv)
    try:
        if "config" in args:
            runs = stage_configs(args, command)
        else:
            if "stages" in args:
                raise ValueError("--stages picks stages of a recipe: give --config too")
            runs = [(None, config_from_args(args), f"Made by `{command}`.", {})]
        for _, config, _, _ in runs:
            check_inputs(config)
    except (ValueError, FileNotFoundError) as e:  # a bad setting (--epochs 0, an unknown key), a missing file: one line
        fail(str(e))
    setup_logging(args.log_level)
    no_ray = getattr(args, "no_ray", False)
    if not no_ray:
        import ray

        ray.init(logging_level=logging.getLogger().getEffectiveLevel())  # the cluster in RAY_ADDRESS, else a local one
    try:
        for stage, config, made_by, linker in runs:
            if stage is not None:
                if is_finished(config.output):
                    print(f"stage {stage}: already trained in {config.output}; skipped")
                    save_linker_settings(config.output, linker)
                    continue
                if (config.storage_path / RUN_NAME).exists():  # an interrupted stage goes on where it stopped
                    config = TrainConfig.from_dict({**vars(config), "resume": True})
            if config.init and not Path(config.init).is_dir():
                fail(f"stage {stage} starts from {config.init}, which is missing: run the stages before it first")
            try:
                progress = run(config, no_ray, made_by)
            except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input, a run already there: one line
                fail(str(e))
            save_linker_settings(config.output, linker)
            last = progress.history[-1]
            print(f"model {config.output}: {progress.epoch} epochs, {progress.step} steps, "
                  f"last train loss {last['train_loss']:.4f}, {last['tokens_per_second']:.0f} tokens/s")
    finally:
        if not no_ray:
            ray.shutdown()


if __name__ == "__main__":
    main()
