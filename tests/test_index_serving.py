"""Ray shard actors serve the same exact top-k as the in-process index, and refuse damaged shards."""
import numpy as np
import pytest

from kb.index import EntityIndex
from kb.manifest import IndexCorruptError, IndexMismatchError

pytestmark = pytest.mark.ray

FINGERPRINT = {"model": "tiny-test", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def unit_vectors(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ray_actors_match_in_process_index_and_refuse_damage(tmp_path, ray_cluster):
    from kb.serving import RayIndexClient, open_index

    ids = [f"E_{i}" for i in range(400)]
    single = EntityIndex.build(tmp_path / "one", ids, unit_vectors(400), fingerprint=FINGERPRINT)
    EntityIndex.build(tmp_path / "three", ids, unit_vectors(400), fingerprint=FINGERPRINT, num_shards=3)
    queries = unit_vectors(32, seed=3)

    client = open_index(tmp_path / "three", FINGERPRINT, expect_dim=16, use_ray=True)
    assert isinstance(client, RayIndexClient) and len(client.actors) == 3 and len(client) == 400
    d_ray, i_ray = client.search(queries, k=7)
    d_one, i_one = single.search(queries, k=7)
    np.testing.assert_array_equal(i_ray, i_one)
    np.testing.assert_allclose(d_ray, d_one, atol=1e-6)
    wanted = [["E_0", "E_399", "Not_indexed"], []] * 16  # E_0 in the first shard, E_399 in the last
    served, in_process = client.score(queries, wanted), single.score(queries, wanted)
    assert [sorted(s) for s in served] == [sorted(s) for s in in_process] == [["E_0", "E_399"], []] * 16
    assert all(s[e] == pytest.approx(p[e], abs=1e-6) for s, p in zip(served, in_process) for e in s)
    client.close()

    with pytest.raises(IndexMismatchError):
        RayIndexClient(tmp_path / "three", dict(FINGERPRINT, weights_sha256="f" * 64))
    ids_file = next((tmp_path / "three").glob("shard-00002.*.ids.txt"))
    ids_file.write_text(ids_file.read_text().replace("E_399", "E_999"))
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        RayIndexClient(tmp_path / "three", FINGERPRINT)
