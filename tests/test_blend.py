"""The standardized blend of factor models is a factor model: check it against numpy z-scores."""

from __future__ import annotations

import numpy as np
import pytest

from recospark.models.blend import standardized_blend

SCHEMA = "id int, features array<float>"


def _table(spark, ids, mat):
    return spark.createDataFrame([(int(i), [float(x) for x in row]) for i, row in zip(ids, mat)], SCHEMA)


def _as_dict(df):
    return {r.id: np.array(r.features, dtype=np.float64) for r in df.collect()}


def test_blend_ranks_like_weighted_per_user_z_scores(spark):
    rng = np.random.default_rng(0)
    users, items = [1, 2, 3, 4], [10, 20, 30, 40, 50, 60]
    P1, Q1 = rng.normal(size=(4, 2)), rng.normal(size=(6, 2))
    P2, Q2 = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)) + 1.0
    weights = (0.3, 0.7)
    parts = [
        (_table(spark, users, P1), _table(spark, items, Q1), weights[0]),
        (_table(spark, users, P2), _table(spark, items, Q2), weights[1]),
    ]
    bu, bi = standardized_blend(parts)
    U, V = _as_dict(bu), _as_dict(bi)
    assert sorted(U) == users and sorted(V) == items
    assert all(len(v) == 5 for v in [*U.values(), *V.values()])
    got = np.array([[U[u] @ V[i] for i in items] for u in users])

    def z(S):
        return (S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True)

    S1, S2 = P1.astype(np.float32) @ Q1.astype(np.float32).T, P2.astype(np.float32) @ Q2.astype(np.float32).T
    expected = weights[0] * z(S1) + weights[1] * z(S2)
    # equal up to a per-user constant (the dropped means): compare after centring per user
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), expected, atol=1e-4)
    assert (np.argsort(-got, axis=1, kind="stable") == np.argsort(-expected, axis=1, kind="stable")).all()


def test_zero_weights_are_dropped_and_only_shared_ids_kept(spark):
    a_users = _table(spark, [1, 2], [[1.0], [2.0]])
    a_items = _table(spark, [10, 20, 30], [[1.0], [2.0], [3.0]])
    b_users = _table(spark, [2, 3], [[1.0], [1.0]])
    b_items = _table(spark, [20, 30], [[1.0], [5.0]])
    users, items = standardized_blend([(a_users, a_items, 1.0), (b_users, b_items, 1.0)])
    assert sorted(r.id for r in users.collect()) == [2]
    assert sorted(r.id for r in items.collect()) == [20, 30]
    users, items = standardized_blend([(a_users, a_items, 1.0), (b_users, b_items, 0.0)])
    assert sorted(r.id for r in users.collect()) == [1, 2]
    assert all(len(r.features) == 1 for r in users.collect())
    with pytest.raises(ValueError, match=">= 0"):
        standardized_blend([(a_users, a_items, -1.0)])
    with pytest.raises(ValueError, match="non-zero"):
        standardized_blend([(a_users, a_items, 0.0)])
