"""The link job on real Ray clusters: several raylets (ray.cluster_utils.Cluster), and `ray start` +
`ray job submit`, the way it runs in production."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from link_fakes import ENTITIES, FakeIndex, make_fake_annotator, ray_env, tiny_model_and_index
from kb.index import EntityIndex
from onegen.pipeline.job import JobConfig, Linking, index_id, run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FINGERPRINT = {"model": "fake", "weights_sha256": "0" * 64, "tokenizer_sha256": "0" * 64}
DOCS = [{"doc_id": f"x{i}", "text": f"Doc {i}: Paris, Rome and Berlin lie in Europe."} for i in range(24)]


def rows_of(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: (r["source"], r["source_row"]))


def link(tmp_path, name: str, replicas: int, cpus: float, shard_gpus: float = 0) -> tuple[list[dict], list[str], set[str]]:
    """Run the job with the fake model and the real sharded index served by shard actors;
    returns the rows, the nodes of the shard actors and the nodes the replicas were placed on."""
    from kb.serving import RayIndexClient

    nodes = tmp_path / f"nodes-{name}"
    nodes.mkdir()
    client = RayIndexClient(tmp_path / "index", FINGERPRINT, num_cpus=0.25, num_gpus=shard_gpus)
    shard_nodes = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for a in client.actors])
    linking = Linking(partial(make_fake_annotator, node_dir=str(nodes), delay=0.05), client, "fake@sha256:0",
                      index_id((tmp_path / "index" / "manifest.json").read_bytes()))
    config = JobConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / name), num_replicas=replicas,
                       gpus_per_replica=0, cpus_per_replica=cpus, batch_size=1, nil_threshold=0.9)  # 2 replica calls
    run_job(config, linking)
    client.close()
    return rows_of(tmp_path / name), shard_nodes, {p.name for p in nodes.iterdir()}


def test_replicas_and_shards_spread_over_nodes_with_the_same_output(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    EntityIndex.build(tmp_path / "index", ENTITIES, FakeIndex().vectors, fingerprint=FINGERPRINT, num_shards=2)

    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, runtime_env=ray_env())
    try:
        single, _, _ = link(tmp_path, "single", replicas=1, cpus=0.5)
    finally:
        ray.shutdown()

    # A CPU-only head for the driver, reads and writes; two workers with a (fake) GPU each. Each shard
    # is given one GPU (an opt-in) and each replica needs 1.5 of a worker's 2 CPUs, so both spread.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=80 * 2**20) for _ in range(2)]
    try:
        ray.init(address=cluster.address, runtime_env=ray_env())
        multi, shard_nodes, replica_nodes = link(tmp_path, "multi", replicas=2, cpus=1.5, shard_gpus=1)
    finally:
        ray.shutdown()
        cluster.shutdown()
    worker_ids = {w.node_id for w in workers}
    print(f"shards on nodes {shard_nodes}, replicas on nodes {sorted(replica_nodes)}")
    assert set(shard_nodes) == worker_ids and replica_nodes == worker_ids
    assert multi == single and len(single) == len(DOCS)
    assert all([m["entity_id"] for m in r["mentions"]] == [None, "Paris", "Rome", "Berlin", "Europe"] for r in single)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` on loopback with the dashboard (job server); stopped (by its own pid) afterwards."""
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rg-", dir="/tmp")  # own session dir: other Ray users never find this head
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token")
    if not (Path.home() / ".ray" / "auth_token").is_file() and "RAY_AUTH_TOKEN" not in env:
        env["RAY_AUTH_MODE"] = "disabled"  # no token to share with the client: loopback-only cluster without auth
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--object-store-memory=200000000", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         # free ports for the head's agents too: another Ray on this machine must not take them
         *(f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                  "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port"))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if head.poll() is not None:
                pytest.skip(f"ray start --head exited: {head.stderr.read().decode()[-800:]}")
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401: the job server is up and wants the token
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("the Ray dashboard / job server did not come up within 90 s on this machine")
                time.sleep(1)
        yield address, env
    finally:
        head.terminate()  # `ray start --block` stops its raylet, GCS and dashboard on SIGTERM
        try:
            head.wait(timeout=3)  # it often takes longer: the process group's SIGKILL below ends the rest
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this head's session is left (its own process group)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_link_job(tmp_path, ray_head):
    address, env = ray_head
    model_dir, kb, _ = tiny_model_and_index(tmp_path, kb_lines=6)
    docs = [{"doc_id": "a", "text": "Paris is in France."}, {"doc_id": "b", "text": None}, {"doc_id": "c", "text": "Rome."}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    runtime_env = {"env_vars": {"ONEGEN_CACHE": str(tmp_path / "cache")}}  # the index of --kb is built and cached here
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address={address}", "--working-dir=.",
               f"--runtime-env-json={json.dumps(runtime_env)}", "--", sys.executable, "jobs/link.py",
               "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
               "--kb", str(kb), "--cpus-per-replica", "0.5"]
    deadline = time.monotonic() + 120
    while True:  # the head's job agent starts after the dashboard answers; until then submit is refused, nothing runs
        done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True,
                              text=True, timeout=400)
        if "No available agent to submit job" not in done.stderr + done.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "linked 3 documents (1 errors)" in done.stdout
    rows = rows_of(tmp_path / "out")
    assert [(r["doc_id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "error"), ("c", "ok")]
    assert len(list((tmp_path / "cache" / "indexes").glob("kb-*/manifest.json"))) == 1
    assert json.loads((tmp_path / "out" / "_metrics.json").read_text())["documents"] == 3
