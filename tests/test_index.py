"""The sharded on-disk entity index: exact merge, index kinds, refusals, incremental update."""
import json

import numpy as np
import pytest

from kb.index import EntityIndex, merge_topk
from kb.manifest import MANIFEST_NAME, IndexCorruptError, IndexMismatchError, IndexSpec

FINGERPRINT = {"model": "tiny-test", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
DIM = 16


def unit_vectors(n, dim=DIM, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids_for(n, prefix="E"):
    return [f"{prefix}_{i}" for i in range(n)]


def build(tmp_path, n=300, name="idx", **kw):
    return EntityIndex.build(tmp_path / name, ids_for(n), unit_vectors(n), fingerprint=FINGERPRINT, **kw)


def test_sharded_topk_equals_single_index(tmp_path):
    queries = unit_vectors(20, seed=1)
    single = build(tmp_path, name="one", num_shards=1)
    sharded = build(tmp_path, name="four", num_shards=4)
    assert [s.count for s in sharded.manifest.shards] == [75, 75, 75, 75]
    d1, i1 = single.search(queries, k=10)
    d4, i4 = sharded.search(queries, k=10)
    assert d1.shape == (20, 10) and d1.dtype == np.float32 and i1.shape == (20, 10)
    np.testing.assert_array_equal(i1, i4)
    np.testing.assert_allclose(d1, d4, rtol=0, atol=1e-6)
    # and both equal brute force
    exact = queries @ unit_vectors(300).T  # (20, 300)
    expected = np.argsort(-exact, axis=1)[:, :10]
    assert [[f"E_{j}" for j in row] for row in expected] == i1.tolist()


def test_merge_topk_takes_best_over_shards():
    parts = [
        (np.array([[0.9, 0.4]], np.float32), np.array([["a", "b"]], object), np.array([[0, 7]])),
        (np.array([[0.5, 0.4]], np.float32), np.array([["c", "d"]], object), np.array([[9, 3]])),
    ]
    d, i = merge_topk(parts, 3)
    assert i.tolist() == [["a", "c", "d"]]  # the tie at 0.4 goes to the lower global row
    np.testing.assert_allclose(d, [[0.9, 0.5, 0.4]])


@pytest.mark.parametrize(
    "spec,dtype,pca",
    [
        (IndexSpec("flat"), "float16", None),
        (IndexSpec("ivf", nlist=4, nprobe=4), "float32", None),
        (IndexSpec("ivf", nlist=4, nprobe=4), "float16", None),
        (IndexSpec("hnsw", hnsw_m=8), "float32", None),
        (IndexSpec("hnsw", hnsw_m=8), "float16", None),
        (IndexSpec("flat"), "float32", 8),
    ],
)
def test_index_kinds_find_each_entity_by_its_own_vector(tmp_path, spec, dtype, pca):
    vectors = unit_vectors(300)
    index = EntityIndex.build(
        tmp_path / "idx", ids_for(300), vectors, fingerprint=FINGERPRINT, num_shards=2, spec=spec, dtype=dtype, pca_dim=pca
    )
    reloaded = EntityIndex.load(tmp_path / "idx", FINGERPRINT, expect_dim=DIM)
    assert reloaded.manifest.dim == (pca or DIM) and reloaded.manifest.dtype == dtype
    d, i = reloaded.search(vectors, k=5)
    top1 = np.mean(i[:, 0] == np.array(ids_for(300), dtype=object))
    assert top1 >= (0.9 if pca else 0.98)
    np.testing.assert_allclose(d, index.search(vectors, k=5)[0], atol=1e-6)


@pytest.mark.parametrize("dtype,pca", [("float32", None), ("float16", None), ("float32", 8)])
def test_the_ids_asked_for_score_as_search_scores_them_from_whichever_shard_holds_them(tmp_path, dtype, pca):
    index = EntityIndex.build(tmp_path / "idx", ids_for(300), unit_vectors(300), fingerprint=FINGERPRINT, num_shards=3,
                              spec=IndexSpec("hnsw", hnsw_m=8), dtype=dtype, pca_dim=pca)
    queries = unit_vectors(4, seed=3)
    d, i = index.search(queries, k=300)  # every entity: the search's own score of each
    wanted = [["E_0", "E_150", "E_299"], ["E_7", "Not_indexed"], [], ["E_7"]]
    scores = EntityIndex.load(tmp_path / "idx", FINGERPRINT).score(queries, wanted)
    assert [sorted(s) for s in scores] == [["E_0", "E_150", "E_299"], ["E_7"], [], ["E_7"]]
    for q, found in enumerate(scores):
        for entity_id, score in found.items():
            assert score == pytest.approx(float(d[q][list(i[q]).index(entity_id)]), abs=2e-3 if dtype == "float16" else 1e-5)
    index.update(["E_7"], unit_vectors(1, seed=11))  # the replaced vector is the one scored
    assert index.score(unit_vectors(1, seed=11), [["E_7"]])[0]["E_7"] == pytest.approx(1.0, abs=1e-3)


def test_k_larger_than_index_pads_with_none(tmp_path):
    index = build(tmp_path, n=3, num_shards=2)
    d, i = index.search(unit_vectors(2, seed=5), k=5)
    assert (i[:, 3:] == None).all() and np.isneginf(d[:, 3:]).all()  # noqa: E711
    assert sorted(i[0, :3]) == ["E_0", "E_1", "E_2"]


def test_refuses_other_model_with_rebuild_command(tmp_path):
    build(tmp_path, kb={"path": "/data/kb.jsonl", "sha256": "c" * 64})
    other = dict(FINGERPRINT, weights_sha256="d" * 64, model="other-model")
    with pytest.raises(IndexMismatchError, match=r"python jobs/build_index.py --kb /data/kb.jsonl --out .* --model other-model"):
        EntityIndex.load(tmp_path / "idx", other)
    # the same weights under another name are accepted
    EntityIndex.load(tmp_path / "idx", dict(FINGERPRINT, model="/elsewhere/tiny"))


def test_refuses_dimension_mismatch(tmp_path):
    index = build(tmp_path)
    with pytest.raises(IndexMismatchError, match="16-dimensional"):
        EntityIndex.load(tmp_path / "idx", FINGERPRINT, expect_dim=32)
    with pytest.raises(ValueError, match=r"shape \(Q, 16\)"):
        index.search(unit_vectors(2, dim=32), k=3)


def test_refuses_missing_and_corrupt_shard(tmp_path):
    build(tmp_path, num_shards=2)
    directory = tmp_path / "idx"
    vectors = sorted(directory.glob("shard-00001.*.vectors.npy"))[0]
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="checksum mismatch.*python jobs/build_index.py"):
        EntityIndex.load(directory, FINGERPRINT)
    vectors.unlink()
    with pytest.raises(IndexCorruptError, match="shard file missing"):
        EntityIndex.load(directory, FINGERPRINT)


def test_refuses_folder_without_manifest_and_old_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="python jobs/build_index.py"):
        EntityIndex.load(tmp_path, FINGERPRINT)
    build(tmp_path)
    manifest = json.loads((tmp_path / "idx" / MANIFEST_NAME).read_text())
    manifest["version"] = 0
    (tmp_path / "idx" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="layout version"):
        EntityIndex.load(tmp_path / "idx", FINGERPRINT)


@pytest.mark.parametrize("spec", [IndexSpec("flat"), IndexSpec("ivf", nlist=4, nprobe=4), IndexSpec("hnsw", hnsw_m=8)])
def test_update_replaces_and_adds_without_old_vectors(tmp_path, spec):
    old = unit_vectors(200)
    index = EntityIndex.build(tmp_path / "idx", ids_for(200), old, fingerprint=FINGERPRINT, num_shards=2, spec=spec)
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())
    fresh = unit_vectors(3, seed=9)  # new vectors for E_5 (shard 0), E_150 (shard 1) and a new entity
    report = index.update(["E_5", "E_150", "New_entity"], fresh, kb={"path": "delta.jsonl", "sha256": "e" * 64})
    assert (report.added, report.replaced, report.revision) == (1, 2, 1)

    reloaded = EntityIndex.load(tmp_path / "idx", FINGERPRINT)  # checksums of the new revision verify
    assert len(reloaded) == 201 and reloaded.manifest.revision == 1
    assert reloaded.manifest.kb["updates"][0]["added"] == 1
    d, i = reloaded.search(fresh, k=1)
    assert i[:, 0].tolist() == ["E_5", "E_150", "New_entity"]
    np.testing.assert_allclose(d[:, 0], 1.0, atol=1e-5)
    # querying with a replaced entity's old vector never returns it at its old score
    d_old, i_old = reloaded.search(old[[5, 150]], k=200)
    for row, entity in enumerate(["E_5", "E_150"]):
        hit = np.flatnonzero(i_old[row] == entity)
        assert not len(hit) or d_old[row, hit[0]] < 0.99
    # an untouched entity is still found; superseded files are gone
    assert reloaded.search(old[[7]], k=1)[1][0, 0] == "E_7"
    after = {p.name for p in (tmp_path / "idx").iterdir()}
    assert not any(name.startswith("shard-00000.r0") or name.startswith("shard-00001.r0") for name in after)
    assert before != sorted(after)


def test_popularity_is_stored_per_shard_kept_by_updates_and_checked(tmp_path):
    from kb.index import stored_popularity

    popularity = list(range(300))
    index = build(tmp_path, num_shards=3, popularity=popularity)
    assert stored_popularity(tmp_path / "idx") == dict(zip(ids_for(300), popularity))
    index.update(["E_5", "New_entity"], unit_vectors(2, seed=9), popularity=[1000, 7])
    assert stored_popularity(tmp_path / "idx") == dict(zip(ids_for(300), popularity), E_5=1000, New_entity=7)
    EntityIndex.load(tmp_path / "idx", FINGERPRINT)  # the popularity files' checksums verify with the others

    [counts] = (tmp_path / "idx").glob("shard-00002.*.popularity.npy")
    np.save(counts, np.zeros(100, dtype=np.int64))
    with pytest.raises(IndexCorruptError, match="checksum mismatch.*python jobs/build_index.py"):
        stored_popularity(tmp_path / "idx")
    with pytest.raises(ValueError, match="number of popularity values and ids must be the same, got 2 and 3"):
        build(tmp_path, n=3, name="short", popularity=[1, 2])

    legacy = build(tmp_path, name="legacy", num_shards=2)  # built before popularity was stored
    assert stored_popularity(tmp_path / "legacy") is None
    legacy.update(["E_5", "New_entity"], unit_vectors(2, seed=9), popularity=[1000, 7])
    assert stored_popularity(tmp_path / "legacy") is None  # the old shards still store none


def test_aliases_are_stored_per_shard_kept_by_updates_and_checked(tmp_path, caplog):
    from kb.index import stored_aliases

    aliases = [[f"Alias {i}", f"Other {i}"] if i % 7 == 0 else [] for i in range(300)]
    index = build(tmp_path, num_shards=3, aliases=aliases)
    expected = {(name, f"E_{i}") for i in range(300) for name in aliases[i]}
    assert sorted(stored_aliases(tmp_path / "idx")) == sorted(expected)
    index.update(["E_7", "New_entity"], unit_vectors(2, seed=9), aliases=[["Seven"], ["Nouveau", "Neu"]])
    expected = (expected - {("Alias 7", "E_7"), ("Other 7", "E_7")}) | {("Seven", "E_7"), ("Nouveau", "New_entity"),
                                                                        ("Neu", "New_entity")}
    assert sorted(stored_aliases(tmp_path / "idx")) == sorted(expected)  # replaced, not added to
    EntityIndex.load(tmp_path / "idx", FINGERPRINT)  # the aliases files' checksums verify with the others

    [stored] = (tmp_path / "idx").glob("shard-00002.*.aliases.jsonl")
    stored.write_text(stored.read_text().replace("Alias", "Tampered"))
    with pytest.raises(IndexCorruptError, match="checksum mismatch.*python jobs/build_index.py"):
        list(stored_aliases(tmp_path / "idx"))
    with pytest.raises(ValueError, match="number of alias lists and ids must be the same, got 2 and 3"):
        build(tmp_path, n=3, name="short", aliases=[[], []])
    assert not caplog.records
    legacy = build(tmp_path, name="legacy", num_shards=2)  # built before aliases were stored
    assert list(stored_aliases(tmp_path / "legacy")) == []
    assert "stores no aliases (built before they were stored)" in caplog.text


def test_stored_ids_are_every_entity_of_every_shard_updates_included_and_checked(tmp_path):
    from kb.index import stored_ids

    index = build(tmp_path, num_shards=3)
    assert sorted(stored_ids(tmp_path / "idx")) == sorted(ids_for(300))
    index.update(["E_5", "New_entity"], unit_vectors(2, seed=9))
    assert sorted(stored_ids(tmp_path / "idx")) == sorted(ids_for(300) + ["New_entity"])
    [ids] = (tmp_path / "idx").glob("shard-00001.*.ids.txt")
    ids.write_text("E_1\n", encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        stored_ids(tmp_path / "idx")
