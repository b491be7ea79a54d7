"""The link job end to end on a local Ray, with the test-only fake model and index (tests/link_fakes.py)."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from link_fakes import CORPUS, fake_linking, ray_env, tiny_model_and_index
from onegen.pipeline.job import JobConfig, run_job
from onegen.pipeline.outputs import Output, RunManifest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, runtime_env=ray_env())
    yield
    ray.shutdown()


def config(tmp_path, input, **overrides) -> JobConfig:
    options = dict(cpus_per_replica=0.5, batch_size=4, nil_threshold=0.9) | overrides
    return JobConfig(input=str(input), output=str(tmp_path / "out"), **options)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: (r["source"], r["source_row"]))


def test_every_input_row_yields_one_output_row(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", CORPUS)
    pq.write_table(pa.table({"doc_id": ["p1", "p2"], "text": ["Rome and Italy.", "Nothing here."], "year": [1999, 2000]}),
                   tmp_path / "in" / "b.parquet")
    summary = run_job(config(tmp_path, tmp_path / "in"), fake_linking())
    rows = rows_of(tmp_path / "out")
    assert [(r["doc_id"], r["status"]) for r in rows] == [
        ("d1", "ok"), ("d2", "ok"), ("d3", "error"), ("d4", "error"), ("d5", "error"), ("d1", "error"), ("d6", "ok"),
        ("p1", "ok"), ("p2", "ok")]
    by_id = {r["doc_id"]: r for r in rows if r["status"] == "ok"}
    assert [(m["surface"], m["entity_id"]) for m in by_id["d2"]["mentions"]] == [
        ("Berlin", "Berlin"), ("Germany", "Germany"), ("Rome", "Rome"), ("Italy", "Italy")]
    seine = by_id["d6"]["mentions"]
    assert [m["entity_id"] for m in seine] == [None, "Seine", "Paris", None]  # "The", "Normandy": NIL
    assert all(by_id["d6"]["text"][m["start"]:m["end"]] == m["surface"] for m in seine)
    assert len(seine[1]["candidates"]) == 8 and seine[1]["candidates"][0]["entity_id"] == "Seine"
    assert by_id["p1"]["year"] == 1999 and by_id["d1"]["lang"] == "en"
    assert {r["model"] for r in rows} == {"fake-model@sha256:0"} and {r["index"] for r in rows} == {"sha256:fakeindex"}
    metrics = json.loads((tmp_path / "out" / "_metrics.json").read_text())
    assert (summary.documents, summary.errors) == (9, 4) == (metrics["documents"], metrics["errors"])
    assert summary.mentions == sum(len(r["mentions"]) for r in rows) and summary.docs_per_second > 0
    with pytest.raises(FileExistsError, match="--resume"):
        run_job(config(tmp_path, tmp_path / "in"), fake_linking())


def test_resume_writes_only_missing_rows(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"doc_id": f"x{i}", "text": f"Doc {i} on Paris."} for i in range(40)])
    run_job(config(tmp_path, tmp_path / "a.jsonl"), fake_linking())
    clean = rows_of(tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    lost = pq.read_table(parts[0]).num_rows
    parts[0].unlink()  # as if the driver died before this part was written,
    output = Output.from_uri(str(tmp_path / "out"))
    manifest = RunManifest.load(output)
    manifest.pending, manifest.files, manifest.complete = manifest.files, {}, False  # leaving its manifest unfinished
    manifest.save(output)
    summary = run_job(config(tmp_path, tmp_path / "a.jsonl", resume=True), fake_linking())
    assert (summary.documents, summary.resumed_rows) == (lost, 40 - lost)
    assert rows_of(tmp_path / "out") == clean


def test_incremental_processes_only_new_or_changed_files(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "1.jsonl", [{"doc_id": "a", "text": "Paris."}])
    write_jsonl(tmp_path / "in" / "2.jsonl", [{"doc_id": "b", "text": "Rome."}])
    run_job(config(tmp_path, tmp_path / "in", incremental=True), fake_linking())
    write_jsonl(tmp_path / "in" / "2.jsonl", [{"doc_id": "b", "text": "Berlin."}, {"doc_id": "c", "text": "Italy."}])
    write_jsonl(tmp_path / "in" / "3.jsonl", [{"doc_id": "d", "text": "France."}])
    summary = run_job(config(tmp_path, tmp_path / "in", incremental=True), fake_linking())
    assert summary.input_files == [str(tmp_path / "in" / n) for n in ("2.jsonl", "3.jsonl")] and summary.skipped_files == 1
    assert [(r["doc_id"], r["mentions"][0]["entity_id"]) for r in rows_of(tmp_path / "out")] == [
        ("a", "Paris"), ("b", "Berlin"), ("c", "Italy"), ("d", "France")]
    nothing = run_job(config(tmp_path, tmp_path / "in", incremental=True), fake_linking())
    assert (nothing.documents, nothing.skipped_files) == (0, 3)


def test_real_model_and_index_end_to_end(tmp_path):
    model_dir, kb, index_dir = tiny_model_and_index(tmp_path)
    docs = [{"doc_id": f"r{i}", "text": t} for i, t in enumerate(
        ["Paris is in France.", "Berlin and Rome.", "", "The Seine reaches the sea.", "Marie Curie worked in Paris."])]
    write_jsonl(tmp_path / "in.jsonl", docs)
    summary = run_job(config(tmp_path, tmp_path / "in.jsonl", model=str(model_dir), index=str(index_dir), nil_threshold=0.0))
    rows = rows_of(tmp_path / "out")
    assert [(r["doc_id"], r["status"]) for r in rows] == [(d["doc_id"], "error" if not d["text"] else "ok") for d in docs]
    kb_ids = {json.loads(line)["id"] for line in kb.read_text().splitlines()}
    for row in rows:
        for m in row["mentions"]:
            assert row["text"][m["start"]:m["end"]] == m["surface"] and m["entity_id"] in kb_ids
            assert {c["entity_id"] for c in m["candidates"]} <= kb_ids
    assert summary.model.startswith(str(model_dir)) and summary.index.startswith("sha256:")
    assert {r["model"] for r in rows} == {summary.model} and summary.generated_tokens > 0


@pytest.mark.parametrize("mentions", ["ner", "union"])
def test_the_job_links_the_ner_spans_on_request(tmp_path, mentions):
    """--mentions ner|union: spaCy's name spans, found on CPUs before the replicas, are linked with the model's
    teacher-forced vectors; "union" keeps the model's own mentions (as `onegen.Linker` links them)."""
    from onegen.linker import Linker
    from onegen.ner import NerSpans

    model_dir, kb, index_dir = tiny_model_and_index(tmp_path)
    texts = ["Angela Merkel met Emmanuel Macron in Germany.", "", "The Seine flows through Normandy, far from Holland."]
    write_jsonl(tmp_path / "in.jsonl", [{"doc_id": f"n{i}", "text": t} for i, t in enumerate(texts)])
    run_job(config(tmp_path, tmp_path / "in.jsonl", model=str(model_dir), index=str(index_dir), nil_threshold=0.0,
                   mentions=mentions, alias_weight=5.0, top_k=12))  # every entity of the KB a candidate
    rows = rows_of(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    found = [[(m["start"], m["end"]) for m in r["mentions"]] for r in rows if r["status"] == "ok"]
    ner = NerSpans(tidy=True)([texts[0], texts[2]])
    assert [texts[0][s:e] for s, e in ner[0]] == ["Angela Merkel", "Emmanuel Macron", "Germany"]
    assert "Holland" in [texts[2][s:e] for s, e in ner[1]]
    linker = Linker.from_pretrained(str(model_dir), index=str(index_dir), nil_threshold=0.0, alias_weight=5.0, top_k=12)
    expected = linker.link([texts[0], texts[2]], spans=ner, mentions={"ner": "given", "union": "union"}[mentions])
    assert found == [[(m.start, m.end) for m in doc] for doc in expected]
    # decided alike, with the alias prior counting the index's names: a mention written as a title or as one of
    # the KB's aliases (weighted far above a random model's cosines) links to that entity
    assert [[m["entity_id"] for m in r["mentions"]] for r in rows if r["status"] == "ok"] == [
        [m.entity_id for m in doc] for doc in expected]
    titled = [(m["surface"], m["entity_id"]) for r in rows for m in r["mentions"] if m["surface"] == "Germany"]
    assert (titled == [("Germany", "Germany")]) if mentions == "ner" else all(e == "Germany" for _, e in titled)
    aliased = [m["entity_id"] for r in rows for m in r["mentions"] if m["surface"] == "Holland"]
    assert aliased and set(aliased) == {"Netherlands"}
    own = [[(m.start, m.end) for m in doc] for doc in linker.link([texts[0], texts[2]], mentions="model")]
    assert [[m["source"] for m in r["mentions"]] for r in rows if r["status"] == "ok"] == [
        ["model" if span in doc_own else "ner" for span in doc] for doc, doc_own in zip(found, own)]


def test_missing_index_says_how_to_build_it(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"doc_id": "a", "text": "Paris."}])
    with pytest.raises(FileNotFoundError, match="jobs/build_index.py --kb"):
        run_job(config(tmp_path, tmp_path / "in.jsonl", index=str(tmp_path / "no-index")))


def test_replicas_get_calls_of_several_model_batches(tmp_path):
    """A replica call holds batch_size x MODEL_BATCHES_PER_CALL documents (the input's tail excepted), so
    that each call can sort its windows by length over several model batches."""
    from onegen.pipeline.job import MODEL_BATCHES_PER_CALL

    (tmp_path / "sizes").mkdir()
    corpus = write_jsonl(tmp_path / "in.jsonl", [{"doc_id": f"a{i}", "text": f"Paris number {i}."} for i in range(70)])
    summary = run_job(config(tmp_path, corpus, batch_size=4), fake_linking(sizes_dir=str(tmp_path / "sizes")))
    call = 4 * MODEL_BATCHES_PER_CALL
    sizes = sorted(int(p.name.split("-")[0]) for p in (tmp_path / "sizes").iterdir())
    assert sizes == [70 % call] + [call] * (70 // call)
    assert summary.documents == 70 and summary.errors == 0


def test_off_a_terminal_the_log_has_one_progress_line_per_stage(tmp_path, caplog, monkeypatch):
    """Logs, not progress bars: a line per stage, linking lines while it runs and at its end."""
    from ray.data import DataContext

    import onegen.pipeline.progress as progress

    import logging

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.2)
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    write_jsonl(tmp_path / "in.jsonl", CORPUS)
    ray_data_log = logging.getLogger("ray.data")  # Ray's loggers do not reach the root logger: listen here too
    ray_data_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="onegen.progress"), caplog.at_level("INFO", logger="ray.data"):
            run_job(config(tmp_path, tmp_path / "in.jsonl"), fake_linking())
    finally:
        ray_data_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "Running Dataset" in r.getMessage()]  # Ray Data's display was off
    lines = [r.getMessage() for r in caplog.records if r.name == "onegen.progress"]
    assert lines[0].startswith("[1/3] input ") and "1 files" in lines[0]
    assert lines[1].startswith("[2/3] model fake-model@sha256:0 and index sha256:fakeindex ready")
    assert lines[2:] and all(line.startswith("[3/3] linking: ") for line in lines[2:])
    assert lines[-1].startswith(f"[3/3] linking: {len(CORPUS)} documents (4 errors)")  # the last: everything
    assert DataContext.get_current().enable_progress_bars  # back on after
