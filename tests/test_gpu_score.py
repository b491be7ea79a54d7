"""bench/gpu_score.py --write-config: the settings picked on AIDA testa become the model's linker_config.json."""
import importlib.util
from pathlib import Path

from onegen.linker_config import LinkerConfig, model_config

SPEC = importlib.util.spec_from_file_location("gpu_score", Path(__file__).resolve().parents[1] / "bench" / "gpu_score.py")
gpu_score = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_score)


def test_write_config_saves_the_picked_settings_and_keeps_the_others(tmp_path):
    LinkerConfig(mention_bias=1.5, top_k=7).save(tmp_path)  # how the candidates were made
    gpu_score.write_config(tmp_path, {"nil_threshold": 0.6, "prior_weight": 0.3, "popularity_weight": 0.0})
    assert model_config(str(tmp_path)) == LinkerConfig(nil_threshold=0.6, alias_weight=0.3, popularity_weight=0.0,
                                                       mention_bias=1.5, top_k=7)
