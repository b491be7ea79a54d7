"""The Ray Data build job: a clean build, an interrupted and resumed build, an update, the CLI."""
import subprocess
import sys

import numpy as np
import pytest

from kb.entity import Entity
from kb.jsonl import write_kb

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_cli_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, "jobs/build_index.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for option in ("--kb", "--out", "--model", "--shards", "--resume", "--update", "--num-replicas", "--pca"):
        assert option in result.stdout


def test_cli_refuses_a_missing_kb_or_model_in_one_line_before_ray_starts(tmp_path):
    import ray

    from jobs.build_index import main

    write_kb(kb_entities(3), tmp_path / "kb.jsonl")
    for argv, message in ((["--kb", str(tmp_path / "nope.jsonl")], "KB .*nope.jsonl not found"),
                          (["--kb", str(tmp_path / "kb.jsonl"), "--model", str(tmp_path / "no-model")],
                           "No model folder at .*no-model")):
        with pytest.raises(SystemExit, match=f"^error: {message}") as exit_:
            main([*argv, "--out", str(tmp_path / "index")])
        assert "\n" not in str(exit_.value.code)
    assert not ray.is_initialized() and not (tmp_path / "index").exists()


def kb_entities(n, start=0, tag=""):
    return [Entity(id=f"Entity_{i}", title=f"Entity {i}", description=f"thing number {i}{tag}" if i % 3 else "",
                   popularity=i, aliases=[f"Thing {i}"] if i % 4 == 0 else []) for i in range(start, start + n)]


def test_a_kb_with_no_entity_is_refused_leaving_no_work_folder(tmp_path):
    from kb.build import prepare_work_dir
    from kb.jsonl import KbError

    kb = tmp_path / "corpus.jsonl"  # a corpus given as the KB
    kb.write_text('{"doc_id": "d1", "text": "Paris."}\n', encoding="utf-8")
    fingerprint = {"model": "m", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
    with pytest.raises(KbError, match="holds no KB entity"):
        prepare_work_dir(tmp_path / "index" / ".build", kb, fingerprint, resume=False)
    assert not (tmp_path / "index" / ".build").exists()


def test_a_work_folder_staged_before_a_field_was_kept_is_staged_again_on_resume_keeping_its_chunks(tmp_path):
    import pyarrow.parquet as pq

    from kb.build import STAGED_KB, assemble, prepare_work_dir, write_chunk

    kb = tmp_path / "kb.jsonl"
    write_kb(kb_entities(4), kb)
    work = tmp_path / "work"
    fingerprint = {"model": "m", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
    prepare_work_dir(work, kb, fingerprint, resume=False)
    write_chunk(work / "chunks", np.arange(4), np.ones((4, 2), dtype=np.float32))
    old = pq.read_table(work / STAGED_KB).drop_columns(["aliases"])  # as staged by the last version
    pq.write_table(old, work / STAGED_KB)
    prepare_work_dir(work, kb, fingerprint, resume=True)
    ids, popularity, aliases, vectors = assemble(work, 4, 2)
    assert aliases.to_pylist() == [["Thing 0"], [], [], []] and vectors.shape == (4, 2)


def test_work_folder_stages_the_kb_and_resumes_only_the_same_build(tmp_path):
    from kb.build import assemble, encoded_rows, prepare_work_dir, write_chunk

    kb = tmp_path / "kb.jsonl"
    write_kb(kb_entities(10), kb)
    work = tmp_path / "work"
    fingerprint = {"model": "m", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
    state = prepare_work_dir(work, kb, fingerprint, resume=False)
    assert state["rows"] == 10 and "10 entities" in state["kb_report"]
    write_chunk(work / "chunks", np.array([4, 2, 3]), np.eye(3, 4, dtype=np.float32))
    assert encoded_rows(work / "chunks", 10).tolist() == [False, False, True, True, True] + [False] * 5
    with pytest.raises(RuntimeError, match="7 KB rows were not encoded; run the build again with --resume"):
        assemble(work, 10, 4)
    write_chunk(work / "chunks", np.array([0, 1, 5, 6, 7, 8, 9]), np.ones((7, 4), dtype=np.float32))
    ids, popularity, aliases, vectors = assemble(work, 10, 4)
    assert ids == [f"Entity_{i}" for i in range(10)] and popularity == list(range(10)) and vectors.shape == (10, 4)
    assert aliases.to_pylist() == [["Thing 0"], [], [], [], ["Thing 4"], [], [], [], ["Thing 8"], []]

    assert prepare_work_dir(work, kb, dict(fingerprint, model="/moved/m"), resume=True) == state  # same weights
    assert encoded_rows(work / "chunks", 10).sum() == 10  # the chunks survived the resume
    write_kb(kb_entities(11), kb)
    with pytest.raises(ValueError, match="cannot resume .* Run again without --resume"):
        prepare_work_dir(work, kb, fingerprint, resume=True)
    assert prepare_work_dir(work, kb, fingerprint, resume=False)["rows"] == 11
    assert encoded_rows(work / "chunks", 11).sum() == 0  # a fresh build starts from nothing


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen

    tokenizer = tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-model")
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.mark.ray
def test_interrupted_build_resumes_to_the_clean_result_and_updates(tmp_path, ray_cluster, tiny_model_dir, monkeypatch):
    import onegen.index_build as build
    from kb.index import EntityIndex
    from kb.manifest import IndexMismatchError
    from onegen.model import OneGen

    onegen = OneGen.from_pretrained(tiny_model_dir)
    entities = kb_entities(40)
    expected = onegen.embed_entities(entities)  # (40, 32): what a clean build must index
    kb = tmp_path / "kb.jsonl"
    write_kb(entities, kb)
    config = build.BuildConfig(kb=kb, out=tmp_path / "index", model=tiny_model_dir, shards=2, chunk_rows=8, batch_size=4)

    # interrupt after two chunk files, then resume
    real_write, written = build.write_chunk, []

    def failing_write(chunk_dir, rows, vectors):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated interruption")
        written.append(real_write(chunk_dir, rows, vectors))
        return written[-1]

    monkeypatch.setattr(build, "write_chunk", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build.build_index(config)
    monkeypatch.setattr(build, "write_chunk", real_write)
    chunks = tmp_path / "index" / build.BUILD_DIR / build.CHUNK_DIR
    kept = {p.name: p.stat().st_mtime_ns for p in chunks.glob("*.npz")}
    assert len(kept) == 2 and not (tmp_path / "index" / "manifest.json").exists()

    encoded_again = []
    monkeypatch.setattr(build, "write_chunk", lambda d, rows, v: encoded_again.extend(rows) or real_write(d, rows, v))
    config.resume = True
    index = build.build_index(config)
    assert len(encoded_again) == 40 - 16  # the two kept chunks were not encoded again
    assert not (tmp_path / "index" / build.BUILD_DIR).exists()
    assert index.manifest.model == onegen.fingerprint() and [s.count for s in index.manifest.shards] == [20, 20]
    stored = np.concatenate([shard.index.reconstruct_n(0, shard.index.ntotal) for shard in index.shards])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert [i for shard in index.shards for i in shard.ids] == [e.id for e in entities]

    with pytest.raises(FileExistsError, match="--update"):
        build.build_index(config)

    # update: one replaced entity, two new ones; the others keep their vectors
    changed = [Entity(id="Entity_3", title="Entity 3", description="now something else entirely")] + kb_entities(2, start=40)
    delta = tmp_path / "delta.jsonl"
    write_kb(changed, delta)
    updated = build.update_index(build.BuildConfig(kb=delta, out=tmp_path / "index", model=tiny_model_dir))
    assert len(updated) == 42 and updated.manifest.revision == 1
    reloaded = EntityIndex.load(tmp_path / "index", onegen.fingerprint())
    new_vectors = onegen.embed_entities(changed)
    d, i = reloaded.search(new_vectors, k=1)
    assert i[:, 0].tolist() == ["Entity_3", "Entity_40", "Entity_41"]
    np.testing.assert_allclose(reloaded.shards[0].index.reconstruct(3), new_vectors[0], atol=1e-5)
    np.testing.assert_allclose(reloaded.shards[0].index.reconstruct_n(0, 3), expected[:3], atol=1e-5)

    # the popularity prior is stored with the index: the KB files are not needed to read it
    from onegen.indexes import popularity_prior

    kb.unlink()
    delta.unlink()
    prior = popularity_prior(tmp_path / "index", 0.3)
    assert prior.score("Entity_41") == pytest.approx(1.0) and prior.score("Entity_0") == 0.0
    assert prior.score("Entity_3") == 0.0  # replaced by the delta's line, which has no popularity
    assert prior.score("Entity_39") == pytest.approx(np.log1p(39) / np.log1p(41))
    # and so are the KB's aliases, for the alias prior: Entity_3's replaced (it has none now), Entity_40's added
    from kb.index import stored_aliases

    assert sorted(stored_aliases(tmp_path / "index")) == sorted((f"Thing {i}", f"Entity_{i}") for i in range(0, 41, 4))

    other = tmp_path / "other-model"
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3, seed=1), tokenizer).save_pretrained(other)
    with pytest.raises(IndexMismatchError, match="python jobs/build_index.py"):
        build.update_index(build.BuildConfig(kb=delta, out=tmp_path / "index", model=str(other)))


@pytest.mark.ray
def test_a_build_with_a_replica_per_cpu_finishes(tmp_path, ray_cluster, tiny_model_dir):
    """Replicas that took every CPU of the cluster left none to read the KB: the build never started."""
    import threading

    import onegen.index_build as build

    write_kb(kb_entities(20), tmp_path / "kb.jsonl")
    config = build.BuildConfig(kb=tmp_path / "kb.jsonl", out=tmp_path / "index", model=tiny_model_dir, chunk_rows=8,
                               num_replicas=int(ray_cluster.cluster_resources()["CPU"]))
    built = []
    worker = threading.Thread(target=lambda: built.append(build.build_index(config)), daemon=True)
    worker.start()
    worker.join(timeout=180)
    assert built and len(built[0]) == 20, "the build did not finish within 180 s"


def test_model_identity_is_cached_by_the_model_files(tmp_path, monkeypatch):
    """A second job on the same model files skips loading the model; new weights are identified again."""
    import os

    import onegen.index_build
    from onegen.model import OneGen
    from tiny import identify_in_process, tiny_model, tiny_tokenizer

    tokenizer, folder = tiny_tokenizer(), tmp_path / "model"
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(folder)
    monkeypatch.setenv("ONEGEN_CACHE", str(tmp_path / "cache"))
    loads = []  # the models loaded to identify them (in this process, not in the Ray task)
    monkeypatch.setattr(onegen.index_build, "_identify_in_ray", lambda model: loads.append(model) or identify_in_process(model))
    first = onegen.index_build.model_identity(str(folder))
    assert onegen.index_build.model_identity(str(folder)) == first and len(loads) == 1
    [cached] = (tmp_path / "cache" / "identities").iterdir()
    assert first[1] == 32
    cached.write_text("{not json")  # an unreadable cache entry is computed again, not trusted
    assert onegen.index_build.model_identity(str(folder)) == first and len(loads) == 2

    OneGen(tiny_model(len(tokenizer) + 3, seed=1), tokenizer).save_pretrained(folder)  # same names and sizes
    for path in folder.iterdir():  # a later time, as a retrain would have (this rewrite may share the tick)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = onegen.index_build.model_identity(str(folder))
    assert len(loads) == 3 and second[0]["weights_sha256"] != first[0]["weights_sha256"]
    assert second[0]["tokenizer_sha256"] == first[0]["tokenizer_sha256"]
