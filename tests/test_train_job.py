"""The training job (onegen/training/, jobs/train.py): trainable parts, checkpoints, a Ray run killed and resumed.

Tiny random model (tests/tiny.py) saved as a base folder, two invented NIF documents, a ten-entity KB.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval.nif import to_nif
from kb.entity import Entity
from kb.jsonl import write_kb
from onegen.collate import OneGenCollator
from onegen.data import build_examples
from onegen.linker_config import LinkerConfig
from onegen.model import OneGen
from onegen.train_step import compute_loss
from onegen.training import CARD_FILE, RUN_NAME, SCORE, Progress, TrainConfig, write_model_card
from onegen.training.checkpoints import CKPT_MODEL, load_model_state, read_progress, save_checkpoint
from onegen.training.trainable import make_trainable
from tiny import annotated_document, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 3  # of the killed-and-resumed run: killed as its first checkpoint lands (an epoch takes seconds), two are left
KB = [
    Entity("Germany", "Germany", "Country in Central Europe."),
    Entity("France", "France", "Country in Western Europe."),
    Entity("Paris", "Paris", "Capital city of France."),
    Entity("Bonn", "Bonn", "City on the Rhine in Germany."),
    Entity("Rhine", "Rhine", "River of Europe."),
    Entity("Berlin", "Berlin", "Capital city of Germany."),
    Entity("Spain", "Spain", "Country in Southern Europe."),
    Entity("Madrid", "Madrid", "Capital city of Spain."),
    Entity("Lyon", "Lyon", "City in France."),
    Entity("Danube", "Danube", "River of Central Europe."),
]
DOCS = [  # invented text: (text, [(surface, entity)])
    ("Germany beat Spain .\nParis was calm .", [("Germany", "Germany"), ("Spain", "Spain"), ("Paris", "Paris")]),
    ("Bonn is old .\nThe Rhine is long .", [("Bonn", "Bonn"), ("Rhine", "Rhine")]),
    ("Madrid met Lyon .\nThe Danube froze .", [("Madrid", "Madrid"), ("Lyon", "Lyon"), ("Danube", "Danube")]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny base model folder, a NIF training file and a KB JSONL."""
    root = tmp_path_factory.mktemp("train_job")
    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer)), tokenizer, device="cpu").save_pretrained(root / "base")
    (root / "docs.ttl").write_text(to_nif([annotated_document(f"http://example.org/doc{i}", t, s) for i, (t, s) in enumerate(DOCS)]))
    write_kb(KB, root / "kb.jsonl")
    return {"base": str(root / "base"), "train": str(root / "docs.ttl"), "kb": str(root / "kb.jsonl"), "root": root}


def data_and_evaluation(config: TrainConfig):
    """The training data and the per-epoch evaluation of `config`, as jobs/train.py builds them."""
    from eval.corpora import load_dataset_file
    from eval.epoch_eval import EpochEvaluation
    from onegen.training import prepare_data
    from onegen.training.trainable import tokenizer_with_tokens

    tokenizer, token_ids = tokenizer_with_tokens(config.base)
    data = prepare_data(config, load_dataset_file(config.train, config.split), tokenizer, token_ids)
    evaluation = EpochEvaluation.from_config(config, data.entities) if config.eval else None
    if evaluation is not None:
        data.sizes.update(eval_docs=len(evaluation.docs), eval_kb_entities=len(evaluation.entities))
    return data, evaluation


def tiny_config(files, output, **overrides) -> TrainConfig:
    values = dict(train=files["train"], split=None, kb=files["kb"], base=files["base"], output=str(output),
                  lora=4, lr=3e-2, epochs=EPOCHS, batch_size=2, max_length=256, warmup_ratio=0.0)
    return TrainConfig(**{**values, **overrides})


def test_config_names_unknown_keys_and_choices():
    with pytest.raises(ValueError, match="unknown training config keys \\['epoch'\\]"):
        TrainConfig.from_dict({"train": "t", "kb": "k", "output": "o", "epoch": 3})
    with pytest.raises(ValueError, match="choose one of"):
        TrainConfig(train="t", kb="k", output="o", loss="hinge")
    with pytest.raises(ValueError, match="--use-gpu"):
        TrainConfig(train="t", kb="k", output="o", strategy="fsdp", num_workers=2)


def _batch(onegen: OneGen, config: TrainConfig):
    """One small batch: the second document, two negatives per anchor (logits are (N, T, 49k): keep N small)."""
    entities = {e.id: e for e in KB}
    docs = [annotated_document("http://example.org/doc1", *DOCS[1])]
    examples = build_examples(docs, entities, onegen.tokenizer, onegen.token_ids, max_length=config.max_length,
                              num_negatives=2)
    return OneGenCollator(onegen.tokenizer, onegen.token_ids, entities, num_negatives=2)(examples)


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_token_rows_and_saves_what_loads(tmp_path, tie):
    """LoRA + OneGen token rows train (loss falls), and the saved adapter reloads to the same outputs."""
    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer), tie=tie), tokenizer, device="cpu").save_pretrained(tmp_path / "base")
    onegen = OneGen.from_pretrained(str(tmp_path / "base"), device="cpu")
    config = TrainConfig(train="", kb="", output="", base=str(tmp_path / "base"), lora=4, max_length=256)
    model = make_trainable(onegen.model, onegen.token_ids, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    assert not any(n.endswith("embed_tokens.weight") for n in trainable)  # only 3 rows, not the matrix
    batch = _batch(onegen, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = compute_loss(model, batch, onegen.token_ids).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    onegen.model = model
    onegen.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids[:1]).logits  # (1, T, V): the mention row
        loaded = OneGen.from_pretrained(str(tmp_path / "adapter"), device="cpu")
        got = loaded.model(input_ids=batch.input_ids[:1]).logits
    torch.testing.assert_close(got, expected)


def test_checkpoint_restores_trained_weights(tmp_path, files):
    onegen = OneGen.from_pretrained(files["base"], device="cpu")
    config = tiny_config(files, tmp_path / "out")
    model = make_trainable(onegen.model, onegen.token_ids, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    compute_loss(model, _batch(onegen, config), onegen.token_ids).total.backward()
    optimizer.step()
    onegen.model = model
    save_checkpoint(tmp_path / "ckpt", model, onegen, optimizer, scheduler, rank=0)

    fresh = OneGen.from_pretrained(files["base"], device="cpu")
    restored = make_trainable(fresh.model, fresh.token_ids, config)
    load_model_state(restored, tmp_path / "ckpt", config)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, param in restored.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, trained[name], msg=name)


def test_fsdp_wraps_decoder_layers_and_checkpoints_a_loadable_adapter(tmp_path, files):
    """FSDP construction, one step and the checkpoint path, in one CPU process (Ray's FSDP needs GPUs)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from onegen.training.checkpoints import load_train_state, write_progress
    from onegen.training.trainable import OneGenLoss, fsdp_kwargs

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        onegen = OneGen.from_pretrained(files["base"], device="cpu")
        config = tiny_config(files, tmp_path / "out")
        model = make_trainable(onegen.model, onegen.token_ids, config)
        kwargs = fsdp_kwargs(model, torch.device("cpu"))
        kwargs.pop("mixed_precision")  # bf16 compute is for GPUs
        sharded = FSDP(OneGenLoss(model, onegen.token_ids), **kwargs)
        units = [m for m in sharded.modules() if isinstance(m, FSDP)]
        assert len(units) == 1 + 2  # the root and one unit per decoder layer of the 2-layer model
        optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=3e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        sharded(_batch(onegen, config)).total.backward()
        optimizer.step()
        assert [u._is_root for u in units] == [True, False, False]  # the forward ran through the root
        onegen.model = model
        save_checkpoint(tmp_path / "ckpt", sharded, onegen, optimizer, scheduler, rank=0)
        write_progress(tmp_path / "ckpt", Progress(epoch=1, step=1))
        assert load_train_state(tmp_path / "ckpt", sharded, optimizer, scheduler).step == 1
        sharded(_batch(onegen, config)).total.backward()  # training goes on through the units after the save
        assert len([m for m in sharded.modules() if isinstance(m, FSDP)]) == 1 + 2
    finally:
        dist.destroy_process_group()
    saved = load_file(tmp_path / "ckpt" / CKPT_MODEL / "adapter_model.safetensors")
    lora_b = [value for name, value in saved.items() if "lora_B" in name]
    assert len(lora_b) == 2 * 7  # every linear layer of both decoder layers: the trained LoRA weights are saved
    assert all(value.abs().sum() > 0 for value in lora_b)  # the step moved them from their zero start
    loaded = OneGen.from_pretrained(str(tmp_path / "ckpt" / CKPT_MODEL), device="cpu")
    assert loaded.adapter is not None


def test_ddp_runs_the_loss_through_its_forward(tmp_path, files):
    """DDP (one CPU process) wraps OneGenLoss: a step through the wrapper trains the LoRA weights."""
    import torch.distributed as dist

    from onegen.training.trainable import OneGenLoss

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        onegen = OneGen.from_pretrained(files["base"], device="cpu")
        config = tiny_config(files, tmp_path / "out")
        model = make_trainable(onegen.model, onegen.token_ids, config)
        ddp = torch.nn.parallel.DistributedDataParallel(OneGenLoss(model, onegen.token_ids))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=3e-2)
        ddp(_batch(onegen, config)).total.backward()
        optimizer.step()
    finally:
        dist.destroy_process_group()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed)


def _cli(files, output, *extra) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "train.py"), "--train", files["train"], "--split", "all",
            "--kb", files["kb"], "--base", files["base"], "--output", str(output), "--lora", "4", "--lr", "3e-2",
            "--epochs", str(EPOCHS), "--batch-size", "2", "--max-length", "256", *extra]


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, timeout: float) -> None:
    """Block until Ray has registered a finished checkpoint of `run` in its manager snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [c.name for c in run.glob("checkpoint_*") if (c / "progress.json").is_file()]
        snapshots = " ".join(f.read_text() for f in run.glob("checkpoint_manager_snapshot*.json"))
        if any(name in snapshots for name in done):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before its first checkpoint:\n"
                                 f"{proc.stdout.read().decode(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint under {run} after {timeout} s")


@pytest.mark.ray
@pytest.mark.slow
def test_killed_run_resumes_and_writes_a_loadable_model(tmp_path, files):
    """SIGKILL a CLI run after its first checkpoint; --resume finishes it: counters continue, model card, loadable."""
    import ray

    from onegen.training import train

    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_object_store_memory": str(200 * 2**20)}
    proc = subprocess.Popen(_cli(files, output, "--eval", files["train"], "--eval-split", "all"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    run = output / "ray" / RUN_NAME
    try:
        _wait_for_checkpoint(proc, run, timeout=150)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and the local Ray cluster it started
        proc.wait()
    killed_at = max(read_progress(c).epoch for c in run.glob("checkpoint_*") if (c / "progress.json").is_file())
    assert 1 <= killed_at < EPOCHS, "the run was killed after its last epoch; nothing left to resume"
    assert not (output / CARD_FILE).exists()

    config = tiny_config(files, output, eval=files["train"], eval_split=None, resume=True)
    data, evaluation = data_and_evaluation(config)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(files, output, eval=files["train"], eval_split=None), data, evaluate=evaluation)
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    try:
        result = train(config, data, evaluate=evaluation)
    finally:
        ray.shutdown()

    history = result.progress.history
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    steps = [h["step"] for h in history]
    assert steps == [2 * e for e in range(1, EPOCHS + 1)]  # 3 examples in batches of 2: 2 steps an epoch, counted on
    assert steps[-1] == result.progress.step
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(SCORE in h for h in history)
    card = (output / CARD_FILE).read_text()
    assert "Metrics per epoch" in card and "Hardware" in card and "/tmp" not in card
    assert "\n| 1 | 2 | " in card and f"\n| {EPOCHS} | {2 * EPOCHS} | " in card  # a row per epoch: epoch, step, ...
    args = json.loads((output / "training_args.json").read_text())
    assert args["base"] == files["base"] and args["lora"] == 4
    assert (output / "adapter_model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert LinkerConfig.load(output) == LinkerConfig()  # generic decision settings, not the bundled default's tuned ones
    loaded = OneGen.from_pretrained(str(output), device="cpu")
    assert loaded.adapter == str(output) and loaded.name_or_path == files["base"]
    best = max(history, key=lambda h: h[SCORE])[SCORE]
    assert result.checkpoint.name.startswith("checkpoint_") and read_progress(result.checkpoint).history[-1][SCORE] == best
    assert not any(CKPT_MODEL == p.name for p in output.iterdir() if p.is_dir())


def test_model_card_names_the_model_training_continued_from(tmp_path):
    """A run continued from a saved adapter says so on its card; a run from the base does not claim one."""
    config = TrainConfig(train="train.tsv", kb="kb.jsonl", output=str(tmp_path))
    progress = Progress(epoch=1, step=3, history=[{"epoch": 1, "step": 3, "train_loss": 0.5}])
    sizes = {"train_docs": 2, "train_examples": 3, "train_tokens": 90, "train_mentions": 5, "kb_entities": 10}
    write_model_card(tmp_path / "continued.md", config, progress, sizes, progress.history[-1], driver_seconds=1.0,
                     init=Path("onegen/default_adapter"))
    write_model_card(tmp_path / "fresh.md", config, progress, sizes, progress.history[-1], driver_seconds=1.0)
    assert "Training continued from `onegen/default_adapter`" in (tmp_path / "continued.md").read_text()
    assert "continued from" not in (tmp_path / "fresh.md").read_text()


def test_config_refuses_mining_under_fsdp():
    with pytest.raises(ValueError, match="mine_negatives .* use strategy 'ddp'"):
        TrainConfig(train="t", kb="k", output="o", strategy="fsdp", use_gpu=True, mine_negatives=True)


def test_mining_run_records_the_models_ranking_each_epoch(tmp_path, files):
    """--mine-negatives through the CLI: every epoch mines first, its top-1 on the training data is in the history.
    In a plain process (--no-ray): mining is `fit`'s, which Ray Train's workers run too."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    output = tmp_path / "out"
    done = subprocess.run([*_cli(files, output, "--mine-negatives", "--loss", "infonce"), "--epochs", "2", "--no-ray"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-3000:]
    last = max(c for c in output.glob(f"ray/{RUN_NAME}/checkpoint_*") if (c / "progress.json").is_file())
    history = read_progress(last).history
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0.0 <= h["mined_gold_first"] <= 1.0 and h["mining_seconds"] > 0 for h in history)
    assert json.loads((output / "training_args.json").read_text())["mine_negatives"] is True
    assert "mined_gold_first" in (output / CARD_FILE).read_text()


def saved_adapter(files, directory):
    """Save a LoRA adapter of the tiny base far from a fresh one (whose B matrices are zero) to `directory`."""
    onegen = OneGen.from_pretrained(files["base"], device="cpu")
    model = make_trainable(onegen.model, onegen.token_ids, tiny_config(files, directory.parent / "unused"))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    onegen.model = model
    onegen.save_pretrained(directory)


def test_init_continues_training_from_a_saved_adapter(tmp_path, files):
    """--init DIR: the run starts from that adapter (at a vanishing learning rate it ends there too), and the
    card and training_args name it. In a plain process (--no-ray), as the killed-run test covers Ray's."""
    saved_adapter(files, tmp_path / "init")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    output = tmp_path / "out"
    done = subprocess.run([*_cli(files, output, "--init", str(tmp_path / "init")), "--epochs", "1", "--lr", "1e-12", "--no-ray"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-3000:]
    started, ended = load_file(tmp_path / "init" / "adapter_model.safetensors"), load_file(output / "adapter_model.safetensors")
    assert started.keys() == ended.keys()
    for name in started:
        torch.testing.assert_close(ended[name], started[name], atol=1e-6, rtol=0, msg=name)
    assert "Training continued from `" in (output / CARD_FILE).read_text()
    assert json.loads((output / "training_args.json").read_text())["init"] == str(tmp_path / "init")


def test_cli_refuses_an_init_folder_that_does_not_exist(tmp_path, capsys):
    cli = load_train_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o", "--init", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --init {tmp_path / 'missing'}: no such folder (a saved model: an adapter or full weights)"


@pytest.mark.parametrize("flag", ["--train", "--kb", "--base"])
def test_cli_refuses_a_missing_file_or_model_in_one_line_before_ray_starts(files, tmp_path, capsys, monkeypatch, flag):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(ray, "init", no_ray)
    cli = load_train_cli()
    given = {"--train": files["train"], "--kb": files["kb"], "--base": files["base"], flag: str(tmp_path / "missing")}
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*(part for pair in given.items() for part in pair), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and str(tmp_path / "missing") in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def load_train_cli():
    """jobs/train.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "jobs" / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.parametrize("flags, recomputes", [
    ([], True),  # on CPU by default: packed AIDA windows would otherwise run a 23 GB machine out of memory
    (["--no-gradient-checkpointing"], False),
    (["--use-gpu"], False),
    (["--use-gpu", "--gradient-checkpointing"], True),
])
def test_cli_recomputes_activations_on_cpu_unless_told_not_to(flags, recomputes):
    cli = load_train_cli()
    config = cli.config_from_args(cli.parse_args(["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o", *flags]))
    assert config.gradient_checkpointing is recomputes


def test_cli_retrieval_weight_reaches_the_config_and_must_be_positive():
    cli = load_train_cli()
    args = ["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o"]
    assert cli.config_from_args(cli.parse_args(args)).retrieval_weight == 1.0
    assert cli.config_from_args(cli.parse_args([*args, "--retrieval-weight", "0.3"])).retrieval_weight == 0.3
    with pytest.raises(ValueError, match="retrieval_weight must be > 0"):
        cli.config_from_args(cli.parse_args([*args, "--retrieval-weight", "0"]))


def test_prefix_sharing_is_on_unless_turned_off_or_impossible():
    from onegen.training.loop import shares_prefix

    cli = load_train_cli()
    args = ["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o"]
    model = tiny_model(64)
    assert model.config._attn_implementation == "sdpa"
    assert shares_prefix(cli.config_from_args(cli.parse_args(args)), model)
    assert not shares_prefix(cli.config_from_args(cli.parse_args([*args, "--no-share-prefix"])), model)
    assert not shares_prefix(cli.config_from_args(cli.parse_args([*args, "--strategy", "fsdp", "--use-gpu"])), model)
    model.config._attn_implementation = "eager"
    assert not shares_prefix(cli.config_from_args(cli.parse_args(args)), model)


def test_cli_reports_a_bad_setting_in_one_line(capsys):
    cli = load_train_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: epochs must be >= 1, got 0"


def test_model_card_starts_with_hugging_face_metadata(tmp_path):
    """The card's YAML front matter: library, licence, base hub id, data, and the evaluation F1 when there was one."""
    import yaml  # installed with transformers

    progress = Progress(epoch=1, step=3, history=[{"epoch": 1, "step": 3, "train_loss": 0.5, SCORE: 0.61}])
    sizes = {"train_docs": 2, "train_examples": 3, "train_tokens": 90, "train_mentions": 5, "kb_entities": 10,
             "eval_docs": 1, "eval_kb_entities": 10}
    cards = {}
    for name, config in (("lora", TrainConfig(train="train.tsv", kb="kb.jsonl", output=str(tmp_path), split="train",
                                              eval="aida.tsv", eval_split="testa")),
                         ("full", TrainConfig(train="train.tsv", kb="kb.jsonl", output=str(tmp_path), lora=None,
                                              base=str(tmp_path), eval=None))):
        write_model_card(tmp_path / f"{name}.md", config, progress, sizes, progress.history[-1], driver_seconds=1.0)
        text = (tmp_path / f"{name}.md").read_text()
        assert text.startswith("---\n")
        cards[name] = yaml.safe_load(text.split("---\n")[1])
    assert cards["lora"]["library_name"] == "peft" and cards["lora"]["license"] == "apache-2.0"
    assert cards["lora"]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cards["lora"]["datasets"] == ["train.tsv (train)"] and cards["lora"]["metrics"] == ["f1"]
    (result,) = cards["lora"]["model-index"][0]["results"]
    assert result["dataset"]["name"] == "aida.tsv (testa)" and result["metrics"][0]["value"] == 0.61
    assert cards["full"]["library_name"] == "transformers" and "base_model" not in cards["full"]  # a folder: no hub id
    assert "model-index" not in cards["full"]


def test_silver_documents_and_case_variants_join_the_training_data(files, tmp_path):
    """--silver-docs adds KB descriptions that share no text with the held-out evaluation texts (as documents whose
    described entity is linked); --case-augment adds upper- or lower-cased copies; the card's sizes count both."""
    from onegen.training import prepare_data
    from onegen.training.trainable import tokenizer_with_tokens

    kb = [Entity("Rhine", "Rhine", "The Rhine is a river that flows from the Alps through Germany to the North Sea."),
          Entity("Danube", "Danube", "The Danube is a river that flows from the Black Forest to the Black Sea in Romania."),
          *[e for e in KB if e.id not in ("Rhine", "Danube")]]  # the others' descriptions are too short to use
    write_kb(kb, tmp_path / "kb.jsonl")
    cli = load_train_cli()
    args = ["--train", files["train"], "--split", "all", "--kb", str(tmp_path / "kb.jsonl"), "--output", str(tmp_path / "o"),
            "--base", files["base"], "--max-length", "256"]
    with pytest.raises(ValueError, match="silver_docs needs silver_exclude"):
        cli.config_from_args(cli.parse_args([*args, "--silver-docs", "5"]))
    config = cli.config_from_args(cli.parse_args([*args, "--silver-docs", "5", "--silver-exclude", "unused",
                                                  "--case-augment", "1"]))
    tokenizer, token_ids = tokenizer_with_tokens(config.base)
    from eval.corpora import load_dataset_file

    docs = load_dataset_file(config.train, config.split)
    held_out = ["Breaking: the Danube is a river that flows from the Black Forest to the sea."]
    data = prepare_data(config, docs, tokenizer, token_ids, held_out=held_out)
    assert data.sizes["silver_docs"] == 1 and data.sizes["silver_dropped_as_held_out"] == 1  # Rhine kept, Danube not
    assert data.sizes["case_variant_docs"] == len(docs) + 1  # every document once more (share 1)
    plain = prepare_data(cli.config_from_args(cli.parse_args(args)), docs, tokenizer, token_ids)
    assert "silver_docs" not in plain.sizes
    by_doc = {e.doc_id for e in data.examples}
    assert "silver:Rhine" in by_doc and "silver:Rhine#lower" in by_doc
    rhine = next(e for e in data.examples if e.doc_id == "silver:Rhine")
    assert rhine.link_entities == ["Rhine", "Germany"]  # its own name, and an unambiguous KB name
    assert data.sizes["train_examples"] > plain.sizes["train_examples"]


def test_the_silver_exclude_folder_must_hold_evaluation_sets(tmp_path):
    cli = load_train_cli()
    with pytest.raises(FileNotFoundError, match="no evaluation sets there"):
        cli.evaluation_texts(str(tmp_path))


@pytest.mark.parametrize("flags, bf16", [([], None), (["--bf16"], True), (["--no-bf16"], False)])
def test_cli_bf16_flag_reaches_the_config_and_unset_leaves_it_to_the_device(flags, bf16):
    cli = load_train_cli()
    config = cli.config_from_args(cli.parse_args(["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o", *flags]))
    assert config.bf16 is bf16
