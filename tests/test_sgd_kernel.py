"""The compiled SGD kernel and the DSGD partition worker, without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from recospark.models.sgd import kernel as K
from recospark.models.sgd.dsgd import (
    FactorBlock,
    RatingsBlock,
    block_order,
    init_factor_block,
    sse_partition,
    strata_order,
    train_stratum_partition,
)


def _problem(seed=0, n=3000, nu=60, ni=45, k=8):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, nu, n).astype(np.int32)
    i = rng.integers(0, ni, n).astype(np.int32)
    r = rng.uniform(1, 5, n).astype(np.float32)
    P = rng.normal(0, 0.1, (nu, k)).astype(np.float32)
    Q = rng.normal(0, 0.1, (ni, k)).astype(np.float32)
    bu = rng.normal(0, 0.1, nu).astype(np.float32)
    bi = rng.normal(0, 0.1, ni).astype(np.float32)
    return u, i, r, P, Q, bu, bi


@pytest.mark.parametrize("with_order", [False, True])
def test_kernel_equals_sequential_reference(with_order):
    u, i, r, P, Q, bu, bi = _problem()
    order = np.random.default_rng(1).permutation(len(r)).astype(np.int64) if with_order else K.NO_ORDER
    compiled = [a.copy() for a in (P, Q, bu, bi)]
    reference = [a.copy() for a in (P, Q, bu, bi)]
    for _ in range(3):  # a few epochs so differences would compound
        s1 = K.sgd_block(u, i, r, order, *compiled, 3.5, 0.02, 0.05, 0.01)
        s2 = K.reference_sgd(u, i, r, order if with_order else None, *reference, 3.5, 0.02, 0.05, 0.01)
        assert s1 == pytest.approx(s2, rel=1e-9)
    for a, b in zip(compiled, reference):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert not np.allclose(compiled[0], P)  # it did update


def test_order_matters_and_is_respected():
    u, i, r, P, Q, bu, bi = _problem(n=500)
    a = [x.copy() for x in (P, Q, bu, bi)]
    b = [x.copy() for x in (P, Q, bu, bi)]
    rev = np.arange(len(r) - 1, -1, -1, dtype=np.int64)
    K.sgd_block(u, i, r, rev, *a, 3.0, 0.05, 0.0, 0.0)
    K.sgd_block(u[::-1].copy(), i[::-1].copy(), r[::-1].copy(), K.NO_ORDER, *b, 3.0, 0.05, 0.0, 0.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_sse_block_matches_numpy_and_does_not_update():
    u, i, r, P, Q, bu, bi = _problem()
    before = [x.copy() for x in (P, Q, bu, bi)]
    s = K.sse_block(u, i, r, P, Q, bu, bi, 3.2)
    assert s == pytest.approx(K.reference_sse(u, i, r, P, Q, bu, bi, 3.2), rel=1e-9)
    for x, y in zip(before, (P, Q, bu, bi)):
        np.testing.assert_array_equal(x, y)


def test_sgd_reduces_error_on_learnable_data():
    rng = np.random.default_rng(3)
    nu, ni, k = 80, 60, 3
    U, V = rng.normal(0, 1, (nu, k)), rng.normal(0, 1, (ni, k))
    u = rng.integers(0, nu, 4000).astype(np.int32)
    i = rng.integers(0, ni, 4000).astype(np.int32)
    r = (3 + np.sum(U[u] * V[i], axis=1)).astype(np.float32)
    P = rng.normal(0, 0.3, (nu, k)).astype(np.float32)
    Q = rng.normal(0, 0.3, (ni, k)).astype(np.float32)
    bu, bi = np.zeros(nu, np.float32), np.zeros(ni, np.float32)
    first = K.sgd_block(u, i, r, K.NO_ORDER, P, Q, bu, bi, 3.0, 0.02, 0.0, 0.0)
    for _ in range(60):
        last = K.sgd_block(u, i, r, K.NO_ORDER, P, Q, bu, bi, 3.0, 0.02, 0.0, 0.0)
    assert last < 0.1 * first


def test_warm_up_returns_seconds():
    assert K.warm_up() >= 0


def _blocks(d=3, seed=0):
    """Ratings of user block 1 split in d item sub-blocks, plus the factor blocks."""
    rng = np.random.default_rng(seed)
    nu, ni = 20, 15
    sub = []
    for j in range(d):
        n = 50 + 10 * j
        sub.append(
            (
                rng.integers(0, nu, n).astype(np.int32),
                rng.integers(0, ni, n).astype(np.int32),
                rng.uniform(1, 5, n).astype(np.float32),
            )
        )
    ratings = RatingsBlock(1, tuple(sub))
    user = init_factor_block(1, np.arange(100, 100 + nu), 4, 0.1, 7, 0)
    items = [init_factor_block(j, np.arange(15) * d + j, 4, 0.1, 7, 1) for j in range(d)]
    return ratings, user, items


def test_worker_visits_each_rating_of_its_sub_block_once_and_matches_reference():
    ratings, user, items = _blocks()
    j = 2
    records = [(1, ("R", ratings)), (1, ("U", user)), (1, ("M", items[j])), (1, ("I", items[0])), (1, ("L", (5.0, 7)))]
    out = list(train_stratum_partition(iter(records), lr=0.03, reg=0.05, bias_reg=0.01, mu=3.0, seed=11, epoch=4))
    tags = [value[0] for _, value in out]
    assert tags == ["U", "I", "L"]
    assert all(key == 1 for key, _ in out)
    sse, n = out[2][1][1]
    u_idx, i_idx, r = ratings.sub[j]
    assert n == len(r)
    # the same SGD, sequentially in Python, in the worker's order
    P, Q = user.factors.copy(), items[j].factors.copy()
    bu, bi = user.biases.copy(), items[j].biases.copy()
    ref = K.reference_sgd(u_idx, i_idx, r, block_order(11, 4, 1, j, len(r)), P, Q, bu, bi, 3.0, 0.03, 0.05, 0.01)
    assert sse == pytest.approx(ref, rel=1e-9)
    new_user, new_item = out[0][1][1], out[1][1][1]
    np.testing.assert_allclose(new_user.factors, P, atol=1e-5)
    np.testing.assert_allclose(new_item.factors, Q, atol=1e-5)
    np.testing.assert_allclose(new_user.biases, bu, atol=1e-5)
    np.testing.assert_allclose(new_item.biases, bi, atol=1e-5)
    assert new_item.block == j and np.array_equal(new_item.ids, items[j].ids)
    # inputs are not mutated (a retried task must see the same inputs)
    assert not np.array_equal(new_user.factors, user.factors)


def test_one_epoch_of_strata_visits_every_rating_exactly_once():
    d = 3
    ratings, user, items = _blocks(d)
    state = [(1, ("U", user)), (1, ("L", (123.0, 99)))]  # a loss left over from the previous epoch
    for position, shift in enumerate(strata_order(5, 0, d)):
        j = (ratings.block + shift) % d
        records = [(1, ("R", ratings)), *state, (1, ("M", items[j]))]
        state = list(
            train_stratum_partition(records, lr=0.01, reg=0.0, bias_reg=0.0, mu=3.0, seed=5, epoch=0, carry_loss=position > 0)
        )
    sse, visited = state[2][1][1]
    assert visited == sum(len(s[2]) for s in ratings.sub)


def test_worker_uses_the_resident_item_block_when_nothing_moved():
    ratings, user, items = _blocks()
    j = 1
    resident = list(
        train_stratum_partition([(1, ("R", ratings)), (1, ("U", user)), (1, ("I", items[j]))], lr=0.03, reg=0.05, bias_reg=0.01, mu=3.0, seed=2, epoch=0)
    )
    moved = list(
        train_stratum_partition([(1, ("R", ratings)), (1, ("U", user)), (1, ("M", items[j]))], lr=0.03, reg=0.05, bias_reg=0.01, mu=3.0, seed=2, epoch=0)
    )
    assert resident[2][1][1] == moved[2][1][1] and resident[1][1][1].block == j
    np.testing.assert_array_equal(resident[0][1][1].factors, moved[0][1][1].factors)


def test_worker_rejects_incomplete_partition():
    ratings, user, _ = _blocks()
    with pytest.raises(ValueError, match="one ratings, one user and one item block"):
        list(train_stratum_partition([(1, ("R", ratings)), (1, ("U", user))], lr=0.1, reg=0, bias_reg=0, mu=0, seed=0, epoch=0))


def test_sse_partition_sums_over_all_item_blocks():
    ratings, user, items = _blocks()
    records = [(1, ("R", ratings)), (1, ("U", user))] + [(1, ("M", it)) for it in reversed(items)]
    [(sse, n)] = list(sse_partition(records, mu=3.0))
    expected = sum(
        K.reference_sse(u, i, r, user.factors, items[j].factors, user.biases, items[j].biases, 3.0)
        for j, (u, i, r) in enumerate(ratings.sub)
    )
    assert n == sum(len(s[2]) for s in ratings.sub)
    assert sse == pytest.approx(expected, rel=1e-9)


def test_seeded_orders_are_deterministic_and_permutations():
    assert strata_order(1, 3, 5) == strata_order(1, 3, 5)
    assert sorted(strata_order(1, 3, 5)) == list(range(5))
    assert len({tuple(strata_order(1, e, 5)) for e in range(10)}) > 1
    for first in range(5):  # rotated to start where the item blocks already are
        order = strata_order(1, 3, 5, first=first)
        assert order[0] == first and sorted(order) == list(range(5))
    o = block_order(1, 2, 3, 4, 100)
    assert o.dtype == np.int64 and sorted(o) == list(range(100))
    assert np.array_equal(o, block_order(1, 2, 3, 4, 100))
    assert not np.array_equal(o, block_order(1, 3, 3, 4, 100))
    a = init_factor_block(2, np.arange(5), 3, 0.1, 9, 0)
    b = init_factor_block(2, np.arange(5), 3, 0.1, 9, 0)
    assert isinstance(a, FactorBlock) and np.array_equal(a.factors, b.factors) and a.factors.dtype == np.float32
