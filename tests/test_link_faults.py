"""Faults the link job survives: a model replica killed mid-job, batches that raise, a killed driver."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest
import ray

from link_fakes import TESTS_DIR, fake_linking, ray_env
from onegen.pipeline.job import JobConfig, run_job

pytestmark = pytest.mark.ray
# batch_size=1: replica calls of MODEL_BATCHES_PER_CALL (16) documents, so 48 documents make 3 calls
DOCS = [{"doc_id": f"x{i}", "text": f"Doc {i} on Paris and Rome."} for i in range(48)]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    context = ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, runtime_env=ray_env())
    yield context
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return path


def config(tmp_path, corpus, out="out", **overrides) -> JobConfig:
    return JobConfig(input=str(corpus), output=str(tmp_path / out), cpus_per_replica=0.5, batch_size=1, nil_threshold=0.9,
                     **overrides)


def rows_of(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: (r["source"], r["source_row"]))


def assert_complete(rows):
    assert [r["doc_id"] for r in rows] == [d["doc_id"] for d in DOCS]
    assert all(r["status"] == "ok" and [m["entity_id"] for m in r["mentions"]] == [None, "Paris", "Rome"] for r in rows)


def test_batches_that_raise_once_are_retried(tmp_path, corpus):
    (tmp_path / "fail").mkdir()
    summary = run_job(config(tmp_path, corpus), fake_linking(fail_dir=str(tmp_path / "fail"), fail_every=3))
    failed = len(list((tmp_path / "fail").iterdir()))
    print(f"batches failed once: {failed}")
    assert failed >= 1 and summary.errors == 0
    assert_complete(rows_of(tmp_path / "out"))


def test_killed_replica_is_restarted_and_its_batch_retried(tmp_path, corpus):
    (tmp_path / "kill").mkdir()
    summary = run_job(config(tmp_path, corpus), fake_linking(kill_dir=str(tmp_path / "kill")))
    assert (tmp_path / "kill" / "killed").exists() and summary.documents == len(DOCS)
    assert_complete(rows_of(tmp_path / "out"))


def test_resume_after_the_driver_is_killed_equals_a_clean_run(tmp_path, corpus, ray_session):
    script = textwrap.dedent(f"""
        import ray
        from link_fakes import fake_linking, ray_env
        from onegen.pipeline.job import JobConfig, run_job
        ray.init(address={ray_session.address_info["address"]!r}, runtime_env=ray_env())
        run_job(JobConfig(input={str(corpus)!r}, output={str(tmp_path / "out")!r}, cpus_per_replica=0.5, batch_size=1,
                          nil_threshold=0.9), fake_linking(delay=0.1))
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(TESTS_DIR), start_new_session=True,
                              env=dict(os.environ, **ray_env()["env_vars"]))  # imports link_fakes, as the workers do
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("part-*.parquet")) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    written = pq.read_table(tmp_path / "out").num_rows
    print(f"rows written before the kill: {written}")
    assert 0 < written < len(DOCS)
    summary = run_job(config(tmp_path, corpus, resume=True), fake_linking())
    assert (summary.documents, summary.resumed_rows) == (len(DOCS) - written, written)
    run_job(config(tmp_path, corpus, out="clean"), fake_linking())
    assert rows_of(tmp_path / "out") == rows_of(tmp_path / "clean")
    assert_complete(rows_of(tmp_path / "out"))
