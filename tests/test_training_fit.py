"""`onegen.training.fit` in a plain process (no Ray), and the recipe (configs/default.toml) run stage by stage.

Same tiny random model, documents and KB as tests/test_train_job.py; a few optimizer steps per run.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onegen.linker_config import LinkerConfig
from onegen.model import OneGen
from onegen.training import loop
from onegen.training import ARGS_FILE, CARD_FILE, RUN_NAME, SCORE, Progress, TrainConfig, fit, write_model_card
from onegen.training.card import portable
from onegen.training.recipe import load_recipe, parse_stages
from test_train_job import data_and_evaluation, files, load_train_cli, saved_adapter, tiny_config  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
MACHINE_FOLDERS = ("/tmp", "/work", "/root")


@pytest.fixture
def no_ray(monkeypatch):
    """`import ray` fails, as on a lent GPU machine."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_fit_trains_in_a_plain_process_resumes_and_writes_a_loadable_model(tmp_path, files, no_ray):
    """Without Ray: epochs, a resume that counts on, the best checkpoint by the injected evaluation as output."""
    scores = iter([0.2, 0.9, 0.1, 0.5])  # epochs 1, 2 (the best), then 3 in a resumed run
    calls = []

    def evaluate(onegen):  # what eval.epoch_eval.EpochEvaluation returns, from a stub
        calls.append(onegen.adapter)
        return {SCORE: next(scores)}

    output = tmp_path / "out"
    config = tiny_config(files, output, epochs=2)
    data, _ = data_and_evaluation(config)
    first = fit(config, data, evaluate=evaluate)
    assert [(h["epoch"], h["step"]) for h in first.history] == [(1, 2), (2, 4)]  # 3 examples in batches of 2
    assert "Weights from epoch 2" in (output / CARD_FILE).read_text()

    resumed = fit(tiny_config(files, output, epochs=3, resume=True, num_to_keep=1), data, evaluate=evaluate)
    assert [(h["epoch"], h["step"]) for h in resumed.history] == [(1, 2), (2, 4), (3, 6)]  # counted on
    assert resumed.history[-1]["train_loss"] < resumed.history[0]["train_loss"]
    assert len(calls) == 3 and all(c.endswith("model") for c in calls)  # each checkpoint's model, loaded back
    kept = sorted(p.name for p in (output / "ray" / RUN_NAME).glob("checkpoint_*"))
    assert kept == ["checkpoint_000002", "checkpoint_000003"]  # num_to_keep 1: the best, and the latest
    card = (output / CARD_FILE).read_text()
    assert "Weights from epoch 2 (best eval_inkb_f1 = 0.9000)" in card and "\n| 3 | 6 | " in card
    assert not any(folder in card for folder in MACHINE_FOLDERS), card
    assert json.loads((output / ARGS_FILE).read_text())["epochs"] == 3
    assert (output / "adapter_model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    loaded = OneGen.from_pretrained(str(output), device="cpu")
    assert loaded.adapter == str(output) and len(loaded.embed_entities(list(data.entities.values()))) == len(data.entities)


def test_fit_starts_from_init(tmp_path, files, no_ray):
    """`init`: the run starts from that adapter (at a vanishing learning rate it ends there too)."""
    saved_adapter(files, tmp_path / "init")
    config = tiny_config(files, tmp_path / "out", init=str(tmp_path / "init"), epochs=1, lr=1e-12)
    fit(config, data_and_evaluation(config)[0])
    started, ended = load_file(tmp_path / "init" / "adapter_model.safetensors"), load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert started.keys() == ended.keys()
    for name in started:
        torch.testing.assert_close(ended[name], started[name], atol=1e-6, rtol=0, msg=name)


def _recipe_cli(files, tmp_path, output, *extra) -> list[str]:
    """configs/default.toml on the tiny model and data, one optimizer step per stage, without Ray; the training
    documents stand in for the evaluation sets no silver document may share text with (stage 7)."""
    (tmp_path / "aliases.tsv").write_text("Germany\tGermany\t5\nParis\tParis\t3\n")
    (tmp_path / "redirects.tsv").write_text("Deutschland\tGermany\n")
    (tmp_path / "held_out" / "gerbil").mkdir(parents=True, exist_ok=True)
    shutil.copy(files["train"], tmp_path / "held_out" / "gerbil" / "docs.ttl")
    return ["--config", str(REPO / "configs" / "default.toml"), "--train", files["train"], "--split", "all",
            "--kb", files["kb"], "--aliases", str(tmp_path / "aliases.tsv"), "--redirects", str(tmp_path / "redirects.tsv"),
            "--base", files["base"], "--output", str(output), "--max-steps", "1", "--max-length", "256", "--no-ray",
            "--silver-exclude", str(tmp_path / "held_out"),
            *extra]


def test_default_recipe_runs_every_stage_from_the_last_and_skips_finished_ones(tmp_path, files, capsys, no_ray):
    cli = load_train_cli()
    output = tmp_path / "default"
    cli.main(_recipe_cli(files, tmp_path, output))
    stages = [output / f"stage-{i}" for i in range(1, 8)]
    args = [json.loads((s / ARGS_FILE).read_text()) for s in stages]
    assert args[0]["init"] is None and [a["init"] for a in args[1:]] == [str(s) for s in stages[:-1]]
    assert [a["loss"] for a in args] == ["bpr", "bpr", "infonce", "infonce", "infonce", "infonce", "infonce"]
    assert args[0]["schedule_epochs"] == 4 and args[5]["mine_negatives"] and args[5]["retrieval_weight"] == 0.3
    assert args[6]["silver_docs"] == 4000 and args[6]["case_augment"] == 0.25 and not args[6]["mine_negatives"]
    assert all(a["max_steps"] == 1 and a["base"] == str(Path(files["base"]).resolve()) for a in args)  # flags win
    last = (stages[-1] / CARD_FILE).read_text()
    assert f"Stage 7 of 7 of the recipe `{portable(REPO / 'configs' / 'default.toml')}`" in last
    assert "python jobs/train.py --config" in last and "mention_bias 1.0" in last and "mined_gold_first" in last
    assert "Training continued from `" in last
    # the recipe's [linker] settings travel with the finished model; the stages before get the generic ones
    assert LinkerConfig.load(stages[-1]) == LinkerConfig.load(REPO / "onegen" / "default_adapter")  # the shipped settings
    assert all(LinkerConfig.load(s) == LinkerConfig() for s in stages[:-1])
    for stage in stages:
        card = (stage / CARD_FILE).read_text()
        assert not any(folder in card for folder in MACHINE_FOLDERS), card
        OneGen.from_pretrained(str(stage), device="cpu")
    written = [(s / "adapter_model.safetensors").stat().st_mtime_ns for s in stages]

    capsys.readouterr()
    cli.main(_recipe_cli(files, tmp_path, output, "--stages", "6-7"))
    assert capsys.readouterr().out.count("already trained") == 2
    assert [(s / "adapter_model.safetensors").stat().st_mtime_ns for s in stages] == written


def test_a_recipe_extends_another_with_stages_after_its_own_and_keys_over_its_own(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.toml").write_text('[train]\nlora = 4\nseed = 1\n\n[[stage]]\nloss = "bpr"\n\n'
                                        '[linker]\nnil_threshold = 0.5\ntop_k = 5\n')
    (tmp_path / "sub" / "more.toml").write_text('extends = "../base.toml"\n\n[train]\nseed = 2\n\n'
                                                '[[stage]]\nloss = "infonce"\n\n[linker]\ntop_k = 20\n')
    more = load_recipe(tmp_path / "sub" / "more.toml")
    assert more.common == {"lora": 4, "seed": 2} and [s["loss"] for s in more.stages] == ["bpr", "infonce"]
    assert more.linker == {"nil_threshold": 0.5, "top_k": 20}
    (tmp_path / "sub" / "more.toml").write_text('extends = "missing.toml"\n')
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_recipe(tmp_path / "sub" / "more.toml")


def test_recipe_refuses_an_unknown_key_in_one_line(tmp_path, capsys):
    cli = load_train_cli()
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[train]\nlora = 4\n\n[[stage]]\nloss = "bpr"\nepoch = 2\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(recipe), "--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {recipe}: unknown key 'epoch' in [[stage]] 1; known keys: ") and "\n" not in err
    recipe.write_text('[train]\nlora = 4\n\n[stages]\nloss = "bpr"\n')
    with pytest.raises(SystemExit):
        cli.main(["--config", str(recipe), "--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o"])
    assert "unknown key 'stages' in the top level" in capsys.readouterr().err


@pytest.mark.parametrize("spec, stages", [("2", [2]), ("2-4", [2, 3, 4]), ("5-", [5, 6]), ("-2", [1, 2]), ("-", list(range(1, 7)))])
def test_stages_pick_a_range(spec, stages):
    assert parse_stages(spec, 6) == stages


@pytest.mark.parametrize("spec", ["0", "3-2", "7", "a-b"])
def test_stages_out_of_range_are_refused(spec):
    with pytest.raises(ValueError, match="--stages"):
        parse_stages(spec, 6)


def test_model_card_names_the_command_and_drops_machine_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(train="/work/shared/data/aida/AIDA-YAGO2-dataset.tsv", kb="/root/data/kb.jsonl",
                         output=str(tmp_path / "out"), base="/tmp/models/base", init="/tmp/runs/stage-1",
                         aliases=str(tmp_path / "data" / "aliases.tsv"), silver_docs=10, silver_exclude="/work/shared/data")
    progress = Progress(epoch=1, step=3, history=[{"epoch": 1, "step": 3, "train_loss": 0.5}])
    sizes = {"train_docs": 2, "train_examples": 3, "train_tokens": 90, "train_mentions": 5, "kb_entities": 10}
    write_model_card(tmp_path / "card.md", config, progress, sizes, progress.history[-1], driver_seconds=1.0,
                     init=config.init, made_by="Made by `python jobs/train.py --config configs/default.toml`.")
    card = (tmp_path / "card.md").read_text()
    assert "Made by `python jobs/train.py --config configs/default.toml`." in card
    assert not any(folder in card for folder in MACHINE_FOLDERS), card
    assert "`AIDA-YAGO2-dataset.tsv`" in card and "`data/aliases.tsv`" in card and "continued from `stage-1`" in card
    assert '"silver_exclude": "data"' in card


def test_init_starts_the_first_stage_run_and_the_later_ones_chain():
    recipe = load_recipe(REPO / "configs" / "default.toml")
    chosen = recipe.stage_values({"init": "stage3-copy", "max_steps": 1}, "out", [4, 5, 6])
    assert [(i, v["init"], v["output"], v["max_steps"]) for i, v in chosen] == [
        (4, "stage3-copy", str(Path("out/stage-4")), 1), (5, str(Path("out/stage-4")), str(Path("out/stage-5")), 1),
        (6, str(Path("out/stage-5")), str(Path("out/stage-6")), 1)]
    assert [v["loss"] for _, v in recipe.stage_values({}, "out")] == ["bpr"] * 2 + ["infonce"] * 5


def test_recipe_stage_whose_start_is_missing_is_refused(tmp_path, files, capsys, no_ray):
    cli = load_train_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_recipe_cli(files, tmp_path, tmp_path / "default", "--stages", "3-4"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: stage 3 starts from {tmp_path / 'default' / 'stage-2'}, "
                                               "which is missing: run the stages before it first")


def test_gpu_harness_trains_the_stages_through_fit_and_writes_candidates(tmp_path, files, no_ray):
    """bench/gpu_run.py on what bench/gpu_prepare.py writes: the recipe's stages via `fit`, then the candidates."""
    import gzip
    import importlib.util
    from dataclasses import asdict

    from kb.jsonl import read_kb
    from onegen.data import build_examples
    from test_train_job import DOCS, KB
    from tiny import annotated_document

    data = tmp_path / "data"
    data.mkdir()
    onegen = OneGen.from_pretrained(files["base"], device="cpu")
    docs = [annotated_document(f"doc{i}", t, s) for i, (t, s) in enumerate(DOCS)]
    examples = build_examples(docs, {e.id: e for e in KB}, onegen.tokenizer, onegen.token_ids, max_length=256)
    with gzip.open(data / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(asdict(e)) + "\n" for e in examples)
    with gzip.open(data / "kb.jsonl.gz", "wb") as f:
        f.write(Path(files["kb"]).read_bytes())
    names = [[[m.start, m.end] for m in d.mentions] for d in docs]  # the "NER's" spans: the gold names
    with gzip.open(data / "eval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"dataset": "aida-testa", "doc_id": d.doc_id, "text": d.text,
                                 "windows": [[0, len(d.text)]], "ner_spans": spans}) + "\n" for d, spans in zip(docs, names))
    (data / "redirects.tsv").write_text("Deutschland\tGermany\n")
    (data / "config.json").write_text(json.dumps({"train_config": {"train": "aida.tsv", "kb": "kb.jsonl", "aliases": None}}))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[train]\nbase = "{files["base"]}"\nlora = 4\nmax_steps = 1\nbatch_size = 2\n\n'
                      '[[stage]]\nloss = "bpr"\n\n[[stage]]\nloss = "infonce"\nmine_negatives = true\ntrain_examples = 2\n\n'
                      '[linker]\nmentions = "union"\nmention_bias = 1.0\n')
    spec = importlib.util.spec_from_file_location("gpu_run", REPO / "bench" / "gpu_run.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.main(["--data", str(data), "--out", str(tmp_path / "out"), "--config", str(recipe), "--eval-batch-size", "4",
                  "--baseline", str(tmp_path / "out" / "stage-1"), "--seed", "3"])

    stage2 = json.loads((tmp_path / "out" / "stage-2" / ARGS_FILE).read_text())
    assert stage2["init"] == str(tmp_path / "out" / "stage-1") and stage2["train_examples"] == 2 and stage2["seed"] == 3
    assert "mined_gold_first" in (tmp_path / "out" / "stage-2" / CARD_FILE).read_text()
    written = harness.read_jsonl_gz(tmp_path / "out" / "candidates-main.jsonl.gz")
    assert [d["doc_id"] for d in written] == [d.doc_id for d in docs]
    kb_ids = {e.id for e in read_kb(files["kb"]).entities}
    assert all(c[0] in kb_ids for d in written for m in d["mentions"] for c in m["candidates"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["eval"]["model"], results["eval"]["mentions_from"], results["eval"]["mention_bias"]) == ("stage-2", "union", 1.0)
    # union: each NER span is linked as one (source "ner") unless the model marked a span overlapping it
    for doc, spans in zip(written, names):
        own = [(m["start"], m["end"]) for m in doc["mentions"] if m["source"] == "model"]
        ner = [[m["start"], m["end"]] for m in doc["mentions"] if m["source"] == "ner"]
        assert ner == [s for s in spans if not any(s[0] < e and b < s[1] for b, e in own)]
    assert any(m["source"] == "ner" for d in written for m in d["mentions"])
    # the baseline: the model given, under its own (generic) settings, on the same documents
    baseline = harness.read_jsonl_gz(tmp_path / "out" / "candidates-baseline.jsonl.gz")
    assert [d["doc_id"] for d in baseline] == [d.doc_id for d in docs]
    assert (results["eval_baseline"]["model"], results["eval_baseline"]["mentions_from"]) == ("stage-1", "model")
    assert all(m["source"] == "model" for d in baseline for m in d["mentions"])
    # --link-only: no training, the --init model's candidates (stage 2's again, so the same ones)
    harness.main(["--data", str(data), "--out", str(tmp_path / "linked"), "--config", str(recipe), "--eval-batch-size", "4",
                  "--link-only", "--init", str(tmp_path / "out" / "stage-2")])
    assert not list((tmp_path / "linked").glob("stage-*"))
    assert harness.read_jsonl_gz(tmp_path / "linked" / "candidates-main.jsonl.gz") == written
    with pytest.raises(SystemExit):
        harness.main(["--data", str(data), "--out", str(tmp_path / "linked"), "--link-only"])


def test_gpu_harness_imports_without_what_the_lent_gpu_machine_lacks():
    """bench/gpu_run.py runs where Ray, FAISS, spaCy, pyarrow and rdflib are absent (DESIGN section 10)."""
    import subprocess
    import sys

    code = ("import sys\nfor name in ('ray', 'faiss', 'spacy', 'pyarrow', 'rdflib'): sys.modules[name] = None\n"
            "import importlib.util\nspec = importlib.util.spec_from_file_location('gpu_run', 'bench/gpu_run.py')\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bf16_autocast_trains_near_float32_keeps_float32_weights_and_is_recorded(tmp_path, files, no_ray):
    """`bf16` on a CPU: an epoch under bf16 autocast ends near the float32 epoch's loss, not at it; the saved
    weights stay float32, and the run's hardware record says which precision ran."""
    runs = {}
    for bf16 in (False, True):
        config = tiny_config(files, tmp_path / f"bf16-{bf16}", epochs=1, bf16=bf16)
        runs[bf16] = fit(config, data_and_evaluation(config)[0])
    fp32, bf16 = (runs[b].history[0]["train_loss"] for b in (False, True))
    assert fp32 != bf16 and abs(fp32 - bf16) < 0.05 * fp32
    assert (runs[False].hardware["bf16"], runs[True].hardware["bf16"]) == (False, True)
    saved = load_file(tmp_path / "bf16-True" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}


@pytest.mark.parametrize("native", [True, False])
def test_bf16_unset_follows_the_device_and_a_cpu_s_native_bf16(monkeypatch, native):
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native)
    config = TrainConfig(train="t", kb="k", output="o")
    assert loop.uses_bf16(config, torch.device("cpu")) is native
    assert loop.uses_bf16(config, torch.device("cuda")) is True
    for given in (True, False):  # set: it wins on either device
        config = TrainConfig(train="t", kb="k", output="o", bf16=given)
        assert loop.uses_bf16(config, torch.device("cpu")) is given
        assert loop.uses_bf16(config, torch.device("cuda")) is given
