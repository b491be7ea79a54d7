"""The final model folder: weights of the chosen checkpoint, tokenizer, training_args.json and a model card.

The card starts with Hugging Face metadata (YAML: base model, licence, data, metric), names how the model
was made (the command, the recipe stage) and shows paths without the machine's folders: a path under the
working directory or its parent is shown relative to it, any other absolute path by its last component.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

from onegen.default_model import DEFAULT_MODEL_NAME
from onegen.linker_config import LinkerConfig
from onegen.training.checkpoints import ARGS_FILE, CKPT_MODEL, Progress, read_progress
from onegen.training.config import SCORE, TrainConfig

CARD_FILE = "README.md"
PATH_FIELDS = ("train", "kb", "base", "init", "aliases", "eval", "redirects", "silver_exclude")  # TrainConfig fields that hold paths
HUB_BASES = {DEFAULT_MODEL_NAME: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # base names -> Hugging Face hub ids
LICENSE = "apache-2.0"  # the project's; the default base model's too


def card_metadata(base: str, datasets: list[str], score: tuple[str, float] | None = None,
                  adapter: bool = True) -> list[str]:
    """The YAML front matter of a model card (Hugging Face model-card metadata): library (PEFT for an adapter),
    base model (when it is a hub id), licence, the data trained on, and the evaluation's InKB micro-F1 as
    `score` (dataset name, value)."""
    base_id = HUB_BASES.get(base, base if base.count("/") == 1 and not os.path.exists(base) else None)
    lines = ["---", f"library_name: {'peft' if adapter else 'transformers'}", f"license: {LICENSE}"]
    lines += [f"base_model: {json.dumps(base_id)}"] if base_id else []
    lines += ["datasets:", *[f"- {json.dumps(d)}" for d in datasets], "metrics:", "- f1",
              "tags:", "- entity-linking", "- onegen"]
    if score is not None:
        lines += ["model-index:", "- name: onegen-entity-linker", "  results:",
                  "  - task: {type: entity-linking, name: Entity linking (A2KB, strong match)}",
                  f"    dataset: {{type: {json.dumps(score[0])}, name: {json.dumps(score[0])}}}",
                  f"    metrics: [{{type: f1, name: InKB micro-F1, value: {score[1]:.4f}}}]"]
    return lines + ["---", ""]


def portable(path: str | os.PathLike | None) -> str | None:
    """`path` as a model card shows it: relative when under the working directory (or its parent), else its name."""
    if path is None or not os.path.isabs(path):
        return None if path is None else str(path)
    relative = os.path.relpath(path)
    return relative if not relative.startswith(os.path.join("..", "..")) else Path(path).name


def command_line(script: str, argv: list[str]) -> str:
    """`python SCRIPT ARGS` as a model card shows it: absolute paths among the arguments made `portable`."""
    return " ".join(["python", script, *(shlex.quote(portable(a) if os.path.isabs(a) else a) for a in argv)])


def is_finished(output: str | os.PathLike) -> bool:
    """Whether `output` holds a finished run's model (training_args.json and the card are written last)."""
    return (Path(output) / ARGS_FILE).is_file() and (Path(output) / CARD_FILE).is_file()


def write_output(config: TrainConfig, checkpoint: Path, tokenizer, progress: Progress, sizes: dict,
                 seconds: float, made_by: str | None = None) -> Path:
    """Copy `checkpoint`'s model to `config.output` with the tokenizer, training_args.json and the model card.

    `progress` is the run's (its history gives the card's table); the card's "weights from" line is the
    checkpoint's own last epoch. Returns the output folder.
    """
    output = Path(config.output)
    shutil.copytree(Path(checkpoint) / CKPT_MODEL, output, dirs_exist_ok=True)
    tokenizer.save_pretrained(output)  # the tokenizer with the OneGen tokens, beside adapter or weights
    (output / ARGS_FILE).write_text(json.dumps(asdict(config), indent=1))
    LinkerConfig().save(output)  # generic decision settings, not the bundled default's: tune with bench/gpu_score.py --write-config
    write_model_card(output / CARD_FILE, config, progress, sizes, read_progress(checkpoint).history[-1],
                     driver_seconds=seconds, init=config.init, made_by=made_by)
    return output


_CARD_COLUMNS = [("epoch", "{}"), ("step", "{}"), ("train_loss", "{:.4f}"), ("train_generation", "{:.4f}"),
                 ("train_retrieval", "{:.4f}"), ("tokens_per_second", "{:.0f}"), ("eval_inkb_precision", "{:.4f}"),
                 ("eval_inkb_recall", "{:.4f}"), (SCORE, "{:.4f}"), ("mined_gold_first", "{:.4f}"), ("wall_seconds", "{:.0f}")]


def write_model_card(path: Path, config: TrainConfig, progress: Progress, sizes: dict, best: dict,
                     driver_seconds: float, init: str | Path | None = None, made_by: str | None = None) -> None:
    """A README.md model card: how it was made, base, data, hyper-parameters, metrics per epoch, wall time, hardware.

    `init` names the saved model that training continued from, when it did not start from the base;
    `made_by` is a line saying how to make it again (the command, the recipe stage). Paths are `portable`.
    """
    method = (f"LoRA r={config.lora} alpha={config.lora_alpha or 2 * config.lora} dropout={config.lora_dropout} "
              "on every linear layer, plus the [LK]/[SE]/[_CONTINUE_] embedding rows (PEFT trainable tokens)"
              if config.lora is not None else "full fine-tuning")
    header = "| " + " | ".join(name for name, _ in _CARD_COLUMNS) + " |"
    rule = "|" + "---|" * len(_CARD_COLUMNS)
    rows = ["| " + " | ".join(fmt.format(h[name]) if name in h else "" for name, fmt in _CARD_COLUMNS) + " |"
            for h in progress.history]
    hyper = {k: v for k, v in asdict(config).items() if k not in ("output", "storage", "resume")}
    hyper.update({k: portable(hyper[k]) for k in PATH_FIELDS})
    hyper["lr"] = config.learning_rate
    datasets = [hyper["train"] + (f" ({config.split})" if config.split else "")]
    eval_name = f"{hyper['eval']}" + (f" ({config.eval_split})" if config.eval_split else "") if config.eval else None
    lines = [
        *card_metadata(config.base, datasets, (eval_name, best[SCORE]) if SCORE in best and eval_name else None,
                       adapter=config.lora is not None),
        "# OneGen entity linker", "",
        *([made_by, ""] if made_by else []),
        f"Base model: `{hyper['base']}`. Method: {method}; loss: generation CE + {config.loss.upper()} retrieval "
        "(DESIGN section 2). Load with `OneGen.from_pretrained(this_folder)`.", "",
        *([f"Training continued from `{portable(init)}` (its weights, a new learning-rate schedule).", ""] if init else []),
        "## Data", "",
        f"- Training: `{hyper['train']}`" + (f", split `{config.split}`" if config.split else "")
        + f": {sizes['train_docs']} documents, {sizes['train_examples']} examples, {sizes['train_tokens']} tokens, "
        f"{sizes['train_mentions']} linked mentions.",
        f"- KB: `{hyper['kb']}`, {sizes['kb_entities']} entities"
        + (f"; hard negatives from `{hyper['aliases']}`." if config.aliases else "."),
    ]
    if config.eval:
        lines.append(f"- Evaluation each epoch: `{hyper['eval']}`" + (f", split `{config.eval_split}`" if config.eval_split else "")
                     + f", {sizes['eval_docs']} documents, exact cosine top-1 over {sizes['eval_kb_entities']} KB entities "
                     "(closed in-KB universe), A2KB strong match, InKB micro scores (eval/scorer.py).")
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hyper, indent=1), "```", "",
              "## Metrics per epoch", "", header, rule, *rows, ""]
    if SCORE in best:
        lines.append(f"Weights from epoch {best.get('epoch')} (best {SCORE} = {best[SCORE]:.4f}).")
    else:
        lines.append(f"Weights from the last epoch ({best.get('epoch')}).")
    lines += ["", "## Run", "",
              f"- Wall time in training (all runs, evaluation and checkpoints included): {progress.train_seconds:.0f} s; "
              f"this driver run: {driver_seconds:.0f} s.",
              f"- Steps: {progress.step}; tokens trained on (mention and entity rows, unpadded): {progress.tokens}.",
              f"- Hardware: {json.dumps(progress.hardware)}.", ""]
    path.write_text("\n".join(lines))
