"""kb.lookup.VectorsById: the cosines of queries with entities named by id, as every retriever's `score` gives them."""
import numpy as np
import pytest

from kb.lookup import VectorsById


def unit_rows(n: int, dim: int = 6, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_each_query_gets_the_cosines_of_its_own_wanted_ids_that_are_held():
    ids, vectors = ["a", "b", "c"], unit_rows(3)
    queries = unit_rows(2, seed=1)
    scores = VectorsById(ids, vectors.astype(np.float16)).score(queries, [["c", "zzz", "a", "c"], []])
    assert list(scores[0]) == ["c", "a"] and scores[1] == {}  # unknown ids left out, a repeated one once
    assert scores[0]["c"] == pytest.approx(float(vectors[2] @ queries[0]), abs=1e-3)
    assert scores[0]["a"] == pytest.approx(float(vectors[0] @ queries[0]), abs=1e-3)


def test_one_wanted_list_per_query_and_one_vector_per_id():
    with pytest.raises(ValueError, match="one list of wanted ids per query"):
        VectorsById(["a"], unit_rows(1)).score(unit_rows(2), [["a"]])
    with pytest.raises(ValueError, match="ids and vectors must be the same"):
        VectorsById(["a", "b"], unit_rows(1))
