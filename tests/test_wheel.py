"""The built wheel in a fresh venv, used from outside the checkout: console scripts, package data
(sample corpus and KB, default adapter), the spaCy entry point, and the dependencies it declares.

The venv gets the same torch as this one (on this project's machines, the CPU build on disk) and then
the wheel with its `cpu` extra from the package index: a dependency the code needs but the wheel does
not declare fails here. About a minute and a half on 2 cores, most of it pip.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from link_fakes import tiny_model_and_index

REPO = Path(__file__).resolve().parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__",
                                       ".pytest_cache", "tests", "bench")

pytestmark = pytest.mark.slow


def run(command: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(bin folder of a fresh venv holding the built wheel, environment to run it in)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    env.update(HF_HUB_OFFLINE="1", ONEGEN_CACHE=str(work / "cache"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    source = work / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=SOURCE_IGNORE)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)], work, env)
    (wheel,) = (work / "dist").glob("onegen_el-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], work, env)
    into = [*pip, "--python", str(work / "venv" / "bin" / "python"), "install", "-q", "--no-compile"]
    run([*into, f"torch=={torch.__version__.split('+')[0]}"], work, env)
    run([*into, f"{wheel}[cpu]"], work, env)
    # installed --no-compile (quicker), then the modules a link job imports compiled once, here, not in each of
    # its processes (and in every one of them when the environment says PYTHONDONTWRITEBYTECODE)
    run([str(work / "venv" / "bin" / "python"), "-c", "import onegen.model, onegen.pipeline.job, kb.index, ray.data, spacy"],
        work, env)
    return work / "venv" / "bin", env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model dir, KB, index dir) of a random tiny OneGen model, made in this (the checkout's) environment."""
    return tiny_model_and_index(tmp_path_factory.mktemp("tiny"))


def test_installed_commands_explain_themselves(installed, tmp_path):
    bin_dir, env = installed
    helps = {command: run([str(bin_dir / command), *args, "--help"], tmp_path, env).stdout
             for command, args in (("onegen-link", []), ("onegen-index", []), ("onegen-train", []),
                                   ("onegen-gerbil", ["run"]))}
    for command, text in helps.items():
        assert text.startswith(f"usage: {command}") and "--log-level" in text, text
    assert "--sample" in helps["onegen-link"] and "--html" in helps["onegen-link"]


def test_installed_package_carries_its_data_outside_the_checkout(installed, tmp_path):
    bin_dir, env = installed
    code = ("import onegen, json; from onegen.indexes import SAMPLE_CORPUS, SAMPLE_KB; "
            "from onegen.default_model import DEFAULT_ADAPTER_DIR; "
            "print(json.dumps([onegen.__file__, SAMPLE_CORPUS.is_file(), SAMPLE_KB.is_file(), "
            "(DEFAULT_ADAPTER_DIR / 'adapter_config.json').is_file()]))")
    location, *present = json.loads(run([str(bin_dir / "python"), "-c", code], tmp_path, env).stdout)
    assert str(bin_dir.parent) in location and str(REPO) not in location  # the installed copy, not the checkout
    assert present == [True, True, True]


def test_installed_link_command_links_a_corpus_and_writes_the_page(installed, tiny, tmp_path):
    """`onegen-link ... --html` run from another folder, with a tiny model and its index."""
    bin_dir, env = installed
    model_dir, _, index_dir = tiny
    texts = ["Marie Curie was born in Warsaw.", "Paris is the capital of France.", "The Amazon flows east."]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n"
                                                   for i, t in enumerate(texts)), encoding="utf-8")
    proc = run([str(bin_dir / "onegen-link"), "--input", "corpus.jsonl", "--output", "out", "--model", str(model_dir),
                "--index", str(index_dir), "--html", "--log-level", "WARNING"], tmp_path, env)
    assert proc.stdout.startswith("linked 3 documents (0 errors)"), proc.stdout
    assert json.loads((tmp_path / "out" / "_metrics.json").read_text())["documents"] == 3
    assert "<h1>Entity links</h1>" in (tmp_path / "out" / "_html" / "index.html").read_text(encoding="utf-8")
    assert " INFO " not in proc.stderr  # --log-level WARNING holds back the info lines


def test_installed_spacy_finds_the_component_by_entry_point(installed, tiny, tmp_path):
    bin_dir, env = installed
    model_dir, kb, _ = tiny
    config = {"model": str(model_dir), "kb": str(kb), "mention_bias": 20.0, "nil_threshold": -1.0}  # random model:
    # made to mark mentions and link each to its best candidate
    code = ("import spacy, json; nlp = spacy.blank('en'); "
            f"nlp.add_pipe('onegen_linker', config={config!r}); "
            "doc = nlp('Marie Curie was born in Warsaw.'); print(json.dumps([e.kb_id_ for e in doc.ents]))")
    kb_ids = {json.loads(line)["id"] for line in kb.read_text(encoding="utf-8").splitlines()}
    linked = json.loads(run([str(bin_dir / "python"), "-c", code], tmp_path, env).stdout)
    assert linked and set(linked) <= kb_ids
