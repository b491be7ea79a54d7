"""Fine-tuning OneGen (DESIGN sections 2 and 7), one module per concern:

- config.py: `TrainConfig`, every setting of a run (saved as training_args.json beside the weights);
- recipe.py: a TOML recipe of stages (configs/default.toml made the shipped default), read into configs;
- data.py: `TrainData` and `prepare_data`, the OneGen examples of already-read documents;
- trainable.py: LoRA (or every weight) plus the OneGen token rows, the loss as one module, FSDP's wrap;
- loop.py: `fit(config, data)`, the training loop in a plain process (one device, no Ray);
- checkpoints.py: checkpoint contents, saving, resuming, the run folder;
- card.py: the final model folder and its model card;
- ray_train.py: `train(config, data)`, the same `fit` in Ray Train's workers (DDP / FSDP).

Evaluation is injected (`evaluate=`: the model -> metrics), so that training imports nothing from eval/;
jobs/train.py wires up eval.epoch_eval.
"""
import importlib

_MODULE_OF = {  # public name -> the module of this package that defines it
    "CARD_FILE": "card", "is_finished": "card", "write_model_card": "card",
    "ARGS_FILE": "checkpoints", "RUN_NAME": "checkpoints", "Progress": "checkpoints",
    "RETRIEVAL_KINDS": "config", "SCORE": "config", "STRATEGIES": "config", "TrainConfig": "config",
    "TrainData": "data", "prepare_data": "data",
    "Evaluate": "loop", "Runtime": "loop", "fit": "loop",
    "TrainResult": "ray_train", "train": "ray_train",
    "Recipe": "recipe", "load_recipe": "recipe",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name, its module imported on first use: the config and the recipe load without torch, so that
    `onegen-train --help` and its input checks answer at once."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
