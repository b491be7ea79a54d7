"""Runs into one output folder never mix: --resume and --incremental against the manifest, the run lock,
killed drivers, an output folder inside the input, bad manifests, and the checks made before Ray starts.

The fast tests come first and must not start Ray; the others share one module-scoped local Ray.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from link_fakes import TESTS_DIR, fake_linking, ray_env
from onegen.pipeline.job import JobConfig, run_job

SPEC = importlib.util.spec_from_file_location("link_cli", Path(TESTS_DIR).parent / "jobs" / "link.py")
link_cli = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(link_cli)

# A driver slowed to 0.2 s a document writes the 96 documents of A in parts a few seconds apart:
# time to act while it runs, and to kill it between two parts
DOCS_A = [{"doc_id": f"a{i}", "text": f"Doc {i} on Paris and Rome."} for i in range(96)]
DOCS_B = [{"doc_id": f"b{i}", "text": f"Doc {i} on Berlin."} for i in range(10)]
OTHER_MODEL = "other-model@sha256:1"
# a lock as a run on another machine holds it
FOREIGN_LOCK = {"run_id": "0123abcd", "host": "worker-7", "pid": 4242, "started_at": "2025-01-01T00:00:00+00:00",
                "machine": "elsewhere"}


def config(input, output, **overrides) -> JobConfig:
    # mentions: the fake model's own (not the default model's setting), as the fake linking has no NER
    options = dict(cpus_per_replica=0.5, batch_size=1, nil_threshold=0.9, mentions="model") | overrides
    return JobConfig(input=str(input), output=str(output), **options)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: (r["source"], r["source_row"]))


def part_names(folder) -> set[str]:
    return {p.name for p in Path(folder).glob("part-*.parquet")}


@pytest.fixture
def no_ray():
    """The test must fail before Ray starts (and Ray is shut down again if it did start)."""
    assert not ray.is_initialized()
    yield
    if ray.is_initialized():
        ray.shutdown()


# ---- fast: no Ray --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing input", "missing KB", "output is a file", "missing NER model", "missing model",
                                  "missing relative model", "missing redirects"])
def test_cheap_checks_fail_before_ray_starts(tmp_path, no_ray, case):
    corpus = write_jsonl(tmp_path / "in.jsonl", DOCS_B)
    if case == "missing model":  # a mistyped --model path
        run, error, message = (config(corpus, tmp_path / "out", model=str(tmp_path / "no-model")), FileNotFoundError,
                               "No model folder at .*no-model")
    elif case == "missing relative model":  # reads as a hub id; downloads are off (HF_HUB_OFFLINE) and it is not cached
        run, error, message = (config(corpus, tmp_path / "out", model="out/no-model"), FileNotFoundError,
                               "'out/no-model' is neither a local folder nor a hub id in the local Hugging Face cache")
    elif case == "missing NER model":
        run, error, message = (config(corpus, tmp_path / "out", mentions="union", ner_model="no_such_model"), ValueError,
                               "spaCy model 'no_such_model' is not installed")
    elif case == "missing input":
        run, error, message = config(tmp_path / "nope.jsonl", tmp_path / "out"), FileNotFoundError, "input .* not found"
    elif case == "missing redirects":
        run, error, message = (config(corpus, tmp_path / "out", redirects=str(tmp_path / "r.tsv")), FileNotFoundError,
                               "redirects table .*r.tsv not found")
    elif case == "missing KB":
        run, error, message = config(corpus, tmp_path / "out", kb=str(tmp_path / "kb.jsonl")), FileNotFoundError, "KB .* not found"
    else:
        (tmp_path / "out").write_text("not a folder")
        run, error, message = config(corpus, tmp_path / "out"), FileExistsError, "is a file; expected a folder"
    with pytest.raises(error, match=message):
        run_job(run)
    assert not ray.is_initialized()


PREVIOUS_LAYOUT = (b'{"run_id": "r", "complete": true, "model": "m", "index": "i", "options": {}, "input": "in.jsonl", '
                   b'"files": {}, "pending": {}, "version": 2}')  # parts without the mentions' source


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n", b"[1, 2]", b'{"files": {}, "model": null, "index": null, "other": 1}',
                                     PREVIOUS_LAYOUT], ids=["not JSON", "a JSON list", "unknown keys", "previous layout"])
def test_a_corrupt_or_foreign_manifest_gets_one_line_naming_it(tmp_path, no_ray, content):
    corpus = write_jsonl(tmp_path / "in.jsonl", DOCS_B)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_manifest.json").write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        link_cli.main(["--input", str(corpus), "--output", str(tmp_path / "out"), "--resume"])
    message = str(exit_.value.code)
    assert message.startswith(f"error: {tmp_path / 'out' / '_manifest.json'} is not a link-job manifest")
    assert "new --output" in message and "\n" not in message
    assert not ray.is_initialized() and not (tmp_path / "out" / "_lock.json").exists()


def test_a_lock_of_a_run_elsewhere_is_refused_in_one_line(tmp_path, no_ray):
    corpus = write_jsonl(tmp_path / "in.jsonl", DOCS_B)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_lock.json").write_text(json.dumps(FOREIGN_LOCK))
    with pytest.raises(SystemExit) as exit_:
        link_cli.main(["--input", str(corpus), "--output", str(tmp_path / "out")])
    message = str(exit_.value.code)
    assert message.startswith(f"error: {tmp_path / 'out' / '_lock.json'}: run 0123abcd (host worker-7, pid 4242")
    assert "--break-lock" in message and "\n" not in message
    assert not ray.is_initialized() and json.loads((tmp_path / "out" / "_lock.json").read_text()) == FOREIGN_LOCK


# ---- with Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    # address="local": a Ray of its own even when a `ray start` cluster runs on this machine
    context = ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, runtime_env=ray_env())
    yield context
    ray.shutdown()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    """A complete run of input A: (input file, output folder to copy)."""
    folder = tmp_path_factory.mktemp("finished")
    corpus = write_jsonl(folder / "a.jsonl", DOCS_A)
    run_job(config(corpus, folder / "out"), fake_linking())
    return corpus, folder / "out"


def start_driver(ray_session, run: JobConfig, delay: float = 0.2) -> subprocess.Popen:
    """The job in a driver process of its own, slowed to `delay` seconds a document."""
    script = textwrap.dedent(f"""
        import ray
        from link_fakes import fake_linking, ray_env
        from onegen.pipeline.job import JobConfig, run_job
        ray.init(address={ray_session.address_info["address"]!r}, runtime_env=ray_env())
        run_job(JobConfig(**{vars(run)!r}), fake_linking(delay={delay!r}))
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(TESTS_DIR), start_new_session=True,
                            env=dict(os.environ, **ray_env()["env_vars"]))  # imports link_fakes, as the workers do


def sources_in(part: Path) -> list[str]:
    try:
        return pq.read_table(part, columns=["source"]).column("source").to_pylist()
    except FileNotFoundError:  # a part the driver removed meanwhile (rows of a changed file)
        return []


def wait_for_part(driver: subprocess.Popen, out: Path, of: Path) -> None:
    """Until a part holding rows of the input file `of` is written (the driver still running)."""
    deadline = time.monotonic() + 120
    while not any(str(of) in sources_in(out / name) for name in part_names(out)) \
            and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.1)
    assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before it was to be killed"


def kill(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


@pytest.mark.ray
def test_resume_refuses_another_input(tmp_path, finished):
    """Reproduced: resuming into a finished output of input A with input B gave 40 rows of A + 10 of B."""
    corpus, template = finished
    shutil.copytree(template, tmp_path / "out")
    other = write_jsonl(tmp_path / "b.jsonl", DOCS_B)
    with pytest.raises(ValueError, match=f"linked from other input .*{other} is new, {corpus} is not in this input.*--incremental"):
        run_job(config(other, tmp_path / "out", resume=True), fake_linking())
    assert rows_of(tmp_path / "out") == rows_of(template) and not (tmp_path / "out" / "_lock.json").exists()
    nothing = run_job(config(corpus, tmp_path / "out", resume=True), fake_linking())  # the same input: already complete
    assert (nothing.documents, nothing.skipped_files) == (0, 1) and rows_of(tmp_path / "out") == rows_of(template)


@pytest.mark.ray
def test_continuing_refuses_other_result_options(tmp_path, finished):
    corpus, template = finished
    shutil.copytree(template, tmp_path / "out")
    (tmp_path / "in").mkdir()
    shutil.copy(corpus, tmp_path / "in")
    write_jsonl(tmp_path / "in" / "b.jsonl", DOCS_B)
    with pytest.raises(ValueError, match=r"linked with --top-k 10 \(this run: 5\), --nil-threshold 0.9 \(this run: 0.5\)"):
        run_job(config(tmp_path / "in", tmp_path / "out", incremental=True, top_k=5, nil_threshold=0.5), fake_linking())
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("Paris\tParis\t3\n")
    with pytest.raises(ValueError, match=r"linked with --aliases None \(this run: [0-9a-f]{64}\)"):
        run_job(config(corpus, tmp_path / "out", resume=True, aliases=str(aliases)), fake_linking())
    with pytest.raises(ValueError, match=r"linked with --mentions model \(this run: union\), --ner-model None \(this run: en_core"):
        run_job(config(corpus, tmp_path / "out", resume=True, mentions="union"), fake_linking())
    assert rows_of(tmp_path / "out") == rows_of(template)


def test_an_output_written_before_mentions_were_recorded_continues_with_the_models_own():
    """Manifests from before --mentions lack the option: their runs linked the model's own mentions."""
    from onegen.pipeline.job import JobConfig, option_changes, result_options

    before = {key: value for key, value in result_options(JobConfig("in", "out", mentions="model")).items()
              if key not in ("mentions", "ner_model")}
    assert option_changes(before, result_options(JobConfig("in", "out", mentions="model"))) == ""
    assert option_changes(before, result_options(JobConfig("in", "out", mentions="ner"))).startswith(
        "--mentions model (this run: ner)")


def test_the_redirects_table_is_a_result_option_by_its_content_and_absent_means_none(tmp_path):
    from onegen.pipeline.job import JobConfig, option_changes, result_options

    table = tmp_path / "redirects.tsv"
    table.write_text("City_of_Light\tParis\n")
    before = {key: value for key, value in result_options(JobConfig("in", "out")).items() if key != "redirects_sha256"}
    assert option_changes(before, result_options(JobConfig("in", "out"))) == ""
    assert option_changes(before, result_options(JobConfig("in", "out", redirects=str(table)))).startswith(
        "--redirects None (this run: ")


def test_the_alias_nil_weight_is_a_result_option_and_absent_means_the_alias_weight():
    """Manifests from before --alias-nil-weight lack it: their runs weighed the alias prior alike for NIL (None)."""
    from onegen.pipeline.job import JobConfig, option_changes, result_options

    before = {key: value for key, value in result_options(JobConfig("in", "out")).items() if key != "alias_nil_weight"}
    assert option_changes(before, result_options(JobConfig("in", "out"))) == ""
    assert option_changes(before, result_options(JobConfig("in", "out", alias_nil_weight=0.3))) == (
        "--alias-nil-weight None (this run: 0.3)")


@pytest.mark.parametrize("option", ["title_spans", "split_spans"])
def test_span_options_are_result_options_of_union_runs_and_absent_means_off(option):
    from onegen.pipeline.job import JobConfig, option_changes, result_options

    union = JobConfig("in", "out", mentions="union", **{option: False})
    before = {key: value for key, value in result_options(union).items() if key != option}  # an older manifest
    assert option_changes(before, result_options(union)) == ""
    on = "with joined titles" if option == "split_spans" else True
    assert option_changes(before, result_options(JobConfig("in", "out", mentions="union", **{option: True}))) == (
        f"--{option.replace('_', '-')} False (this run: {on})")
    assert result_options(JobConfig("in", "out", mentions="ner", **{option: True}))[option] is False  # no model spans


def test_an_output_split_before_titles_were_joined_is_not_continued_with_joined_titles():
    """Manifests of 2026-12-04 record split_spans True: those runs did not join titles, today's do."""
    from onegen.pipeline.job import JobConfig, option_changes, result_options

    now = result_options(JobConfig("in", "out", mentions="union", split_spans=True))
    assert option_changes(now, result_options(JobConfig("in", "out", mentions="union", split_spans=True))) == ""
    assert option_changes(now | {"split_spans": True}, now) == "--split-spans True (this run: with joined titles)"


@pytest.mark.ray
def test_continuing_checks_the_model_column_of_existing_parts(tmp_path, finished):
    corpus, template = finished
    shutil.copytree(template, tmp_path / "out")
    part = sorted((tmp_path / "out").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    models = pa.array([OTHER_MODEL] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("model"), "model", models), part)  # a part of another run
    with pytest.raises(ValueError, match=f"holds results of model {OTHER_MODEL} .* this run uses fake-model"):
        run_job(config(corpus, tmp_path / "out", resume=True), fake_linking())


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_run_refuses_while_one_runs_and_a_killed_run_resumes_only_with_its_model(tmp_path, ray_session):
    """Reproduced: resuming an interrupted run with another model gave rows of both models."""
    corpus, out = write_jsonl(tmp_path / "a.jsonl", DOCS_A), tmp_path / "out"
    driver = start_driver(ray_session, config(corpus, out))
    try:
        wait_for_part(driver, out, corpus)
        with pytest.raises(FileExistsError, match=f"_lock.json: run \\w+ \\(host .*, pid {driver.pid}, .*is writing to this output"):
            run_job(config(corpus, out, resume=True), fake_linking())
    finally:
        kill(driver)
    written = pq.read_table(out).num_rows
    assert 0 < written < len(DOCS_A)
    with pytest.raises(ValueError, match=f"holds results of model fake-model@sha256:0 .* this run uses {OTHER_MODEL}"):
        run_job(config(corpus, out, resume=True), replace(fake_linking(), model_id=OTHER_MODEL))
    summary = run_job(config(corpus, out, resume=True), fake_linking())  # the killed driver's lock is taken over
    assert (summary.documents, summary.resumed_rows) == (len(DOCS_A) - written, written)
    run_job(config(corpus, tmp_path / "clean"), fake_linking())
    assert rows_of(out) == rows_of(tmp_path / "clean")
    assert not (out / "_lock.json").exists() and json.loads((out / "_manifest.json").read_text())["complete"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_replaced_input_is_refused_by_resume_and_relinked_by_incremental(tmp_path, ray_session):
    """Reproduced: resuming after the input file was replaced kept stale rows and never linked new documents."""
    corpus, out = write_jsonl(tmp_path / "a.jsonl", DOCS_A), tmp_path / "out"
    driver = start_driver(ray_session, config(corpus, out))
    try:
        wait_for_part(driver, out, corpus)
    finally:
        kill(driver)
    assert 0 < pq.read_table(out).num_rows < len(DOCS_A)
    write_jsonl(corpus, [{"doc_id": f"n{i}", "text": f"New {i} on Berlin."} for i in range(len(DOCS_A))])
    with pytest.raises(ValueError, match=f"linked from other input \\({corpus} changed\\); pass --incremental"):
        run_job(config(corpus, out, resume=True), fake_linking())
    summary = run_job(config(corpus, out, incremental=True), fake_linking())
    assert (summary.documents, summary.resumed_rows) == (len(DOCS_A), 0)
    run_job(config(corpus, tmp_path / "clean"), fake_linking())
    assert rows_of(out) == rows_of(tmp_path / "clean")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("then", ["rerun", "change the new file, rerun"])
def test_a_kill_during_incremental_then_a_rerun_equals_a_clean_run(tmp_path, ray_session, then):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "1.jsonl", DOCS_B[:4])
    write_jsonl(tmp_path / "in" / "3.jsonl", DOCS_B[4:])
    out, new = tmp_path / "out", tmp_path / "in" / "2.jsonl"
    run_job(config(tmp_path / "in", out, incremental=True), fake_linking())
    write_jsonl(new, DOCS_A)
    write_jsonl(tmp_path / "in" / "3.jsonl", [{"doc_id": "c", "text": "Changed: Italy."}])  # changed
    driver = start_driver(ray_session, config(tmp_path / "in", out, incremental=True), delay=0.05)
    try:
        wait_for_part(driver, out, new)
    finally:
        kill(driver)
    assert sum(r["source"] == str(new) for r in rows_of(out)) > 0  # killed once the new file had rows in OUT
    if then == "change the new file, rerun":
        write_jsonl(new, [dict(d, text=d["text"].replace("Rome", "Berlin")) for d in DOCS_A])
    summary = run_job(config(tmp_path / "in", out, incremental=True), fake_linking())
    assert summary.skipped_files == 1 and (summary.resumed_rows > 0 or then != "rerun")  # rerun: written rows kept
    run_job(config(tmp_path / "in", tmp_path / "clean"), fake_linking())
    assert rows_of(out) == rows_of(tmp_path / "clean")


@pytest.mark.ray
def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, ray_session):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "docs.jsonl", DOCS_B)
    run_job(config(data, data / "links"), fake_linking())
    again = run_job(config(data, data / "links", incremental=True), fake_linking())
    assert (again.documents, again.input_files, again.skipped_files) == (0, [], 1)
    rows = rows_of(data / "links")
    assert [r["doc_id"] for r in rows] == [d["doc_id"] for d in DOCS_B] and {r["source"] for r in rows} == {str(data / "docs.jsonl")}


@pytest.mark.ray
def test_a_lock_of_a_run_gone_elsewhere_is_cleared_with_break_lock(tmp_path, ray_session):
    corpus = write_jsonl(tmp_path / "in.jsonl", DOCS_B)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_lock.json").write_text(json.dumps(FOREIGN_LOCK))
    with pytest.raises(FileExistsError, match="--break-lock"):
        run_job(config(corpus, tmp_path / "out"), fake_linking())
    summary = run_job(config(corpus, tmp_path / "out", break_lock=True), fake_linking())
    assert summary.documents == len(DOCS_B) and not (tmp_path / "out" / "_lock.json").exists()


@pytest.mark.parametrize("command", ["link", "index"])
def test_without_faiss_the_commands_say_what_to_install_in_one_line(tmp_path, command):
    """FAISS is an extra (cpu or gpu): without it --help works and a run stops, before Ray, in one line."""
    (tmp_path / "in.jsonl").write_text('{"doc_id": "a", "text": "Paris is in France."}\n')
    module, args = {"link": ("jobs.link", ["--input", "in.jsonl", "--output", "out"]),
                    "index": ("jobs.build_index", ["--kb", "kb.jsonl", "--out", "index"])}[command]
    code = f"import sys; sys.modules['faiss'] = None; from {module} import main; main(sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": str(Path(TESTS_DIR).parent)}
    helped = subprocess.run([sys.executable, "-c", code, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--log-level" in helped.stdout
    ran = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1] == ("error: FAISS is not installed: pip install 'onegen-el[cpu]' "
                                                   "(faiss-cpu) or 'onegen-el[gpu]' (faiss-gpu-cu12)"), ran.stderr
    assert "Traceback" not in ran.stderr and "Started a local Ray" not in ran.stderr
