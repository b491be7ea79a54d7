"""The commands answer `--help` and parse their options at once: nothing imports Ray, torch or transformers
before the options are read (seconds on a CPU; `onegen-train --help` took 5 to 9)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("ray", "torch", "transformers")


@pytest.mark.parametrize("script, parse, option", [
    ("jobs/link.py", "import jobs.link; jobs.link.parse_args(['--sample', '--output', 'out'])", "--sample"),
    ("jobs/train.py", "import jobs.train; from onegen.training import load_recipe; "
                      "jobs.train.parse_args(['--config', 'configs/default.toml', '--output', 'out']); "
                      "load_recipe('configs/default.toml')", "--config TOML"),
])
def test_help_and_option_parsing_import_nothing_heavy(script, parse, option):
    code = f"import sys; {parse}; print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    parsed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert parsed.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ") and option in helped.stdout
