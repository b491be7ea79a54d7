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
from onegen.training.card import CARD_FILE, is_finished, write_model_card
from onegen.training.checkpoints import ARGS_FILE, RUN_NAME, Progress
from onegen.training.config import SCORE, STRATEGIES, TrainConfig
from onegen.training.data import TrainData, prepare_data
from onegen.training.loop import Evaluate, Runtime, fit
from onegen.training.ray_train import TrainResult, train
from onegen.training.recipe import Recipe, load_recipe

__all__ = [
    "ARGS_FILE", "CARD_FILE", "RUN_NAME", "SCORE", "STRATEGIES", "Evaluate", "Progress", "Recipe", "Runtime",
    "TrainConfig", "TrainData", "TrainResult", "fit", "is_finished", "load_recipe", "prepare_data", "train",
    "write_model_card",
]
