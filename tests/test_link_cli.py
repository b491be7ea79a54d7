"""jobs/link.py's options reach the job's config; decision settings left out come from the model's linker_config.json."""
import importlib.util
from pathlib import Path

from onegen.linker_config import LinkerConfig, model_config
from onegen.pipeline.job import with_model_settings

SPEC = importlib.util.spec_from_file_location("link_cli", Path(__file__).resolve().parents[1] / "jobs" / "link.py")
link_cli = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(link_cli)


def test_decision_options_default_to_the_models_settings_and_can_be_changed(tmp_path):
    config = link_cli.parse_args(["--input", "in.jsonl", "--output", "out"])
    assert (config.nil_threshold, config.popularity_weight, config.mention_bias) == (None, None, None)
    resolved = with_model_settings(config)  # the trained default: its bundled linker_config.json
    shipped = model_config(None)  # (tests/test_linker.py holds its values)
    assert (resolved.nil_threshold, resolved.given_nil_threshold, resolved.short_forms, resolved.popularity_weight,
            resolved.alias_weight, resolved.mention_bias, resolved.top_k, resolved.mentions) == (
        shipped.nil_threshold, shipped.given_nil_threshold, True, shipped.popularity_weight, shipped.alias_weight,
        1.0, 10, "union")
    assert resolved.name_weight == shipped.name_weight and resolved.title_spans is True
    assert resolved.name_candidates == shipped.name_candidates == 0
    assert resolved.alias_nil_weight == shipped.alias_nil_weight
    config = link_cli.parse_args(["--input", "in.jsonl", "--output", "out", "--popularity-weight", "0",
                                  "--mention-bias", "1.5", "--nil-threshold", "0.6", "--alias-weight", "0.3",
                                  "--mentions", "model", "--given-nil-threshold", "0.7", "--no-short-forms",
                                  "--name-weight", "0.2", "--no-title-spans", "--name-candidates", "5",
                                  "--alias-nil-weight", "0.4"])
    resolved = with_model_settings(config)
    assert resolved.name_weight == 0.2 and resolved.title_spans is False and resolved.name_candidates == 5
    assert resolved.alias_nil_weight == 0.4
    assert (resolved.nil_threshold, resolved.given_nil_threshold, resolved.short_forms, resolved.popularity_weight,
            resolved.alias_weight, resolved.mention_bias, resolved.mentions) == (0.6, 0.7, False, 0.0, 0.3, 1.5, "model")


def test_a_model_folder_without_settings_gets_the_generic_defaults(tmp_path):
    (tmp_path / "model").mkdir()
    config = with_model_settings(link_cli.parse_args(["--input", "i.jsonl", "--output", "o", "--model", str(tmp_path / "model")]))
    assert config.mention_bias == LinkerConfig().mention_bias == 0.0  # not the default adapter's tuned 1.0
    LinkerConfig(nil_threshold=0.4, mention_bias=0.5).save(tmp_path / "model")
    config = with_model_settings(link_cli.parse_args(["--input", "i.jsonl", "--output", "o", "--model", str(tmp_path / "model")]))
    assert (config.nil_threshold, config.mention_bias) == (0.4, 0.5)
