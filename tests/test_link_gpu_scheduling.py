"""The GPU path schedules, on Ray's fake resources (nodes that declare GPUs this machine lacks).

With default options the model replicas get the GPUs (one replica per GPU) and the index-shard
actors stay on CPUs; a replica that Ray gave a GPU id runs its model on the CPU when there is no
CUDA; options the cluster cannot place, and a damaged shard, are refused in one line. A job that
would wait forever fails its test at a deadline instead of hanging the suite.
"""
import json
import os
import shutil
import threading
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from link_fakes import ENTITIES, FakeIndex, fake_linking, lowercase_words, make_fake_annotator, ray_env, tiny_model_and_index
from kb.index import EntityIndex
from onegen.pipeline.job import JobConfig, Linking, index_id, run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FINGERPRINT = {"model": "fake", "weights_sha256": "0" * 64, "tokenizer_sha256": "0" * 64}
DEADLINE = 240  # seconds a job of a few documents may take on 2 busy cores; a stuck job fails here
DOCS = [{"doc_id": f"x{i}", "text": f"Doc {i}: Paris, Rome and Berlin lie in Europe."} for i in range(24)]


@pytest.fixture(scope="module")
def cluster():
    """One node with 2 CPUs and 1 (fake) GPU, as `ray.init(num_cpus=2, num_gpus=1)`; a test may add nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "object_store_memory": 200 * 2**20})
    ray.init(address=cluster.address, runtime_env=ray_env())
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, KB, index dir) of a random tiny OneGen model: real code paths, seconds on a CPU."""
    return tiny_model_and_index(tmp_path_factory.mktemp("tiny"), kb_lines=6)


def write_docs(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def finished(job, seconds: float = DEADLINE):
    """What job() returns (or raises); a test failure when it has not returned within `seconds`."""
    outcome = {}

    def target():
        try:
            outcome["value"] = job()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the job did not finish within {seconds} s: it waits for resources it never gets"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def recording(make_annotator, marks: str):
    """Replica factory: builds the annotator, then leaves a file saying where it runs (node, Ray's GPU ids,
    and for OneGen the device and dtype its weights are on)."""
    from onegen.model import OneGen

    annotate = make_annotator()
    seen = {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    # the OneGen instance of the onegen.Linker whose `embed` onegen_annotator returns (bound in a partial)
    embed = getattr(annotate, "func", annotate)
    onegen = getattr(getattr(embed, "__self__", None), "onegen", None)
    if isinstance(onegen, OneGen):
        weights = next(onegen.model.parameters())
        seen.update(device=str(onegen.device), weights=f"{weights.device} {weights.dtype}")
    (Path(marks) / f"{os.getpid()}.json").write_text(json.dumps(seen))
    return annotate


def replicas_seen(marks: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(marks.iterdir())]


def test_default_options_on_one_gpu_run_the_real_model_on_cpu_with_shards_off_the_gpu(cluster, tiny, tmp_path):
    from onegen.pipeline.model_and_index import prepare_linking

    model_dir, _, index_dir = tiny
    docs = [{"doc_id": "a", "text": "Paris is in France."}, {"doc_id": "b", "text": None}, {"doc_id": "c", "text": "Rome."}]
    config = JobConfig(input=str(write_docs(tmp_path / "in.jsonl", docs)), output=str(tmp_path / "out"), model=str(model_dir),
                       index=str(index_dir), cpus_per_replica=0.5)  # replicas and shards placed by default
    marks = tmp_path / "marks"
    marks.mkdir()
    linking = prepare_linking(config)
    free_gpus = ray.available_resources().get("GPU", 0)  # with the shard actors up
    linking.make_annotator = partial(recording, linking.make_annotator, str(marks))
    try:
        summary = finished(lambda: run_job(config, linking))
    finally:
        linking.retriever.close()
    assert free_gpus == 1, "the index-shard actors hold the GPU that the model replica needs"
    assert (summary.documents, summary.errors) == (3, 1)
    assert [r["status"] for r in pq.read_table(tmp_path / "out").to_pylist()].count("ok") == 2
    [replica] = replicas_seen(marks)
    print(f"replica: {replica}")
    assert replica["gpu_ids"] == ["0"] and replica["cuda_visible_devices"] == "0"  # Ray gave it the (fake) GPU ...
    assert replica["device"] == "cpu" and replica["weights"] == "cpu torch.float32"  # ... and without CUDA it ran on the CPU


def recording_ner(marks: str):
    """NER factory: leaves a file saying which GPUs Ray gave it, then finds lower-case words as names."""
    (Path(marks) / f"ner-{os.getpid()}.json").write_text(json.dumps({"gpu_ids": [str(g) for g in ray.get_gpu_ids()]}))
    return lowercase_words


def test_the_ner_of_mentions_union_runs_on_cpus_beside_the_gpu_replicas(cluster, tmp_path):
    """--mentions union on 2 CPUs and a GPU, default reservations: the reads, the NER actor and the replica fit
    (the job finishes), the NER gets no GPU, the replica gets it, and the NER's spans reach the output."""
    marks = tmp_path / "marks"
    marks.mkdir()
    linking = fake_linking()
    linking.make_annotator = partial(recording, linking.make_annotator, str(marks))
    linking.make_span_finder = partial(recording_ner, str(marks))
    config = JobConfig(input=str(write_docs(tmp_path / "in.jsonl", DOCS)), output=str(tmp_path / "out"), mentions="union")
    summary = finished(lambda: run_job(config, linking))
    assert (summary.documents, summary.errors) == (len(DOCS), 0)
    seen = {p.name.split("-")[0]: json.loads(p.read_text()) for p in marks.iterdir()}
    assert seen["ner"]["gpu_ids"] == [] and len(next(v for k, v in seen.items() if k != "ner")["gpu_ids"]) == 1
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert {tuple(m["surface"] for m in r["mentions"]) for r in rows} == {("Doc", "Paris", "Rome", "and", "Berlin", "lie", "Europe")}


def test_mentions_union_with_a_cpu_replica_and_an_index_shard_fits_two_cpus(cluster, tmp_path):
    """`make demo` on a 2-core machine: --mentions union (the default model's setting), a replica on CPUs with
    the default reservation, the NER actor, an index-shard actor, reads and links share 2 CPUs. The
    reservations must leave a read its half CPU (an NER reserving half a CPU stalled this job for good)."""
    from kb.serving import RayIndexClient
    from onegen.pipeline.model_and_index import SHARD_CPUS

    marks = tmp_path / "marks"
    marks.mkdir()
    EntityIndex.build(tmp_path / "index", ENTITIES, FakeIndex().vectors, fingerprint=FINGERPRINT)
    client = finished(lambda: RayIndexClient(tmp_path / "index", FINGERPRINT, num_cpus=SHARD_CPUS))  # placed as the job does
    linking = Linking(make_fake_annotator, client, "fake@sha256:0", index_id((tmp_path / "index" / "manifest.json").read_bytes()),
                      make_span_finder=partial(recording_ner, str(marks)))
    config = JobConfig(input=str(write_docs(tmp_path / "in.jsonl", DOCS)), output=str(tmp_path / "out"), mentions="union",
                       gpus_per_replica=0, nil_threshold=0.9)  # the default CPUs per replica (1)
    try:
        summary = finished(lambda: run_job(config, linking))
    finally:
        client.close()
    assert (summary.documents, summary.errors) == (len(DOCS), 0)
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert all([(m["surface"], m["entity_id"]) for m in r["mentions"]] == [
        ("Doc", None), ("Paris", "Paris"), ("Rome", "Rome"), ("and", None), ("Berlin", "Berlin"), ("lie", None),
        ("Europe", "Europe")] for r in rows)


def test_a_model_given_gpu_ids_without_cuda_loads_whole_on_the_cpu_in_float32(tiny, monkeypatch):
    import torch

    from onegen.model import OneGen, _is_split

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what Ray sets in a replica given 2 GPUs (--gpus-per-replica 2)
    assert not torch.cuda.is_available()
    onegen = OneGen.from_pretrained(str(tiny[0]), split_over_gpus=True)
    weights = next(onegen.model.parameters())
    assert onegen.device.type == "cpu" and (weights.device.type, weights.dtype) == ("cpu", torch.float32)  # not bf16 on CUDA
    assert not _is_split(onegen.model)  # no layers dispatched to GPUs that are not there


def test_a_replica_no_node_can_take_is_refused_in_one_line_not_awaited_forever(cluster, tmp_path):
    from onegen.pipeline.job import ReplicaPlacementError

    config = JobConfig(input=str(write_docs(tmp_path / "in.jsonl", DOCS[:2])), output=str(tmp_path / "out"),
                       gpus_per_replica=2, cpus_per_replica=0.5, gpu_wait=3)  # no node has 2 GPUs, none is added
    with pytest.raises(ReplicaPlacementError) as refused:
        finished(lambda: run_job(config, fake_linking()), seconds=90)
    message = str(refused.value)
    print(message)
    assert "\n" not in message and "2 GPU" in message and "--gpus-per-replica 0" in message


def test_shard_gpus_are_an_opt_in_from_gpus_the_replicas_leave(cluster, tmp_path):
    from onegen.pipeline.model_and_index import shard_gpus

    with pytest.raises(ValueError, match=r"--shard-gpus 0.5 for 2 index shards leaves 0 of the cluster's 1 GPUs"):
        shard_gpus(JobConfig(input="in", output="out", shard_gpus=0.5), shards=2)  # the replica needs the GPU
    assert shard_gpus(JobConfig(input="in", output="out"), shards=2) == 0  # default: shards on CPUs
    assert shard_gpus(JobConfig(input="in", output="out", shard_gpus=0.25, gpus_per_replica=0.5), shards=2) == 0.25


def test_a_corrupt_shard_is_one_cli_line_naming_the_file_and_the_rebuild(cluster, tiny, tmp_path):
    import jobs.link

    model_dir, _, index_dir = tiny
    damaged = tmp_path / "index"
    shutil.copytree(index_dir, damaged)
    vectors = next(damaged.glob("shard-00000.*.vectors.npy"))
    vectors.write_bytes(vectors.read_bytes()[:-8] + b"\0" * 8)
    argv = ["--input", str(write_docs(tmp_path / "in.jsonl", DOCS[:2])), "--output", str(tmp_path / "out"),
            "--model", str(model_dir), "--index", str(damaged)]
    with pytest.raises(SystemExit) as stopped:
        finished(lambda: jobs.link.main(argv))
    message = str(stopped.value.code)
    print(message)
    assert "\n" not in message and message.startswith(f"error: checksum mismatch for {vectors}")
    assert f"Rebuild the index with: python jobs/build_index.py --kb " in message and f"--out {damaged}" in message


def test_two_nodes_with_a_gpu_each_run_two_replicas_and_leave_the_gpus_to_them(cluster, tmp_path):
    from kb.serving import RayIndexClient
    from onegen.pipeline.model_and_index import SHARD_CPUS

    EntityIndex.build(tmp_path / "index", ENTITIES, FakeIndex().vectors, fingerprint=FINGERPRINT, num_shards=2)
    worker = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20)
    marks = tmp_path / "marks"
    marks.mkdir()
    try:
        cluster.wait_for_nodes()
        client = finished(lambda: RayIndexClient(tmp_path / "index", FINGERPRINT, num_cpus=SHARD_CPUS))  # placed as the job does
        free_gpus = ray.available_resources().get("GPU", 0)
        linking = Linking(partial(recording, partial(make_fake_annotator, delay=0.2), str(marks)), client, "fake@sha256:0",
                          index_id((tmp_path / "index" / "manifest.json").read_bytes()))
        config = JobConfig(input=str(write_docs(tmp_path / "in.jsonl", DOCS)), output=str(tmp_path / "out"),
                           cpus_per_replica=0.5, batch_size=1, nil_threshold=0.9)  # default replicas and GPUs
        try:
            summary = finished(lambda: run_job(config, linking))
        finally:
            client.close()
    finally:
        cluster.remove_node(worker)
    replicas = replicas_seen(marks)
    print(f"free GPUs with the shards up: {free_gpus}; replicas: {replicas}")
    assert free_gpus == 2, "the index-shard actors hold GPUs that the model replicas need"
    assert summary.documents == len(DOCS) and summary.errors == 0
    assert {r["node"] for r in replicas} == {cluster.head_node.node_id, worker.node_id}  # one replica per GPU node
    assert all(len(r["gpu_ids"]) == 1 for r in replicas) and len(replicas) == 2
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert all([m["entity_id"] for m in r["mentions"]] == [None, "Paris", "Rome", "Berlin", "Europe"] for r in rows)
