"""jobs/link.py's options reach the job's config."""
import importlib.util
from pathlib import Path

from onegen.decide import DEFAULT_NIL_THRESHOLD, DEFAULT_POPULARITY_WEIGHT
from onegen.default_model import DEFAULT_MENTION_BIAS

SPEC = importlib.util.spec_from_file_location("link_cli", Path(__file__).resolve().parents[1] / "jobs" / "link.py")
link_cli = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(link_cli)


def test_decision_options_default_to_the_tuned_settings_and_can_be_changed():
    config = link_cli.parse_args(["--input", "in.jsonl", "--output", "out"])
    assert (config.nil_threshold, config.popularity_weight, config.mention_bias) == (
        DEFAULT_NIL_THRESHOLD, DEFAULT_POPULARITY_WEIGHT, DEFAULT_MENTION_BIAS)
    config = link_cli.parse_args(["--input", "in.jsonl", "--output", "out", "--popularity-weight", "0",
                                  "--mention-bias", "1.5", "--nil-threshold", "0.6"])
    assert (config.nil_threshold, config.popularity_weight, config.mention_bias) == (0.6, 0.0, 1.5)
