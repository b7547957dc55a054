"""The ranking kernels (BPR, WARP) over one sub-block, without Spark."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sgd_reference as ref

from recospark.models.sgd import kernel_ranking as R

INF = -np.inf


def _block(seed=0, nu=30, lo=10, hi=40, n=400, k=6, n_q=50):
    """A random sub-block: distinct (user, item) pairs sorted by (user, item), items in [lo, hi)."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(nu * (hi - lo), size=n, replace=False)
    cells.sort()
    u = (cells // (hi - lo)).astype(np.int32)
    i = (lo + cells % (hi - lo)).astype(np.int32)
    r = rng.integers(1, 6, n).astype(np.float32)
    P = rng.normal(0, 0.1, (nu, k)).astype(np.float32)
    Q = rng.normal(0, 0.1, (n_q, k)).astype(np.float32)
    b = rng.normal(0, 0.1, n_q).astype(np.float32)
    neg_total = (n_q - np.bincount(u, minlength=nu)).astype(np.int64)
    return u, i, r, R.csr_indptr(u, nu), P, Q, b, neg_total


def _bpr_args(neg_total, threshold=3.0, seed=7):
    # n_neg, lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, block_share, seed, max_tries
    return (3, 0.05, 0.01, 0.02, 0.01, threshold, neg_total, 0.6, seed, 8)


def _warp_args(neg_total, threshold=3.0, seed=7):
    # lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, margin, max_trials, max_norm, seed, max_tries
    return (0.05, 0.01, 0.02, 0.01, threshold, neg_total, 1.0, 10, 0.3, seed, 8)


LOSSES = {
    "bpr": (R.bpr_block, ref.reference_bpr, _bpr_args),
    "warp": (R.warp_block, ref.reference_warp, _warp_args),
}


@pytest.mark.parametrize("loss", ["bpr", "warp"])
@pytest.mark.parametrize("variant", ["order+weights+bias", "natural order, unweighted, no bias"])
def test_kernel_equals_sequential_reference_with_the_same_negatives(loss, variant):
    kernel, reference, args = LOSSES[loss]
    u, i, r, ip, P, Q, b, neg_total = _block()
    if variant.startswith("natural"):
        order, neg_total, b = R.NO_ORDER, R.NO_WEIGHTS, np.zeros(0, np.float32)
    else:
        order = np.random.default_rng(3).permutation(len(r)).astype(np.int64)
    compiled, sequential = (
        [P.copy(), Q.copy(), b.copy()],
        [P.copy(), Q.copy(), b.copy()],
    )
    for epoch in range(3):  # several passes so a difference would compound
        trace = np.full(10_000, -1, np.int64)
        drawn: list[int] = []
        out_c = kernel(u, i, r, ip, order, *compiled, 10, 40, *args(neg_total, seed=epoch), trace)
        out_r = reference(u, i, r, ip, order, *sequential, 10, 40, *args(neg_total, seed=epoch), drawn)
        assert out_c[1:] == out_r[1:]
        assert out_c[0] == pytest.approx(out_r[0], rel=1e-9)
        assert len(drawn) > 100
        np.testing.assert_array_equal(trace[: len(drawn)], drawn)
    for a, c in zip(compiled, sequential):
        np.testing.assert_allclose(a, c, atol=1e-6, rtol=0)
    assert not np.allclose(compiled[0], P)  # it did train


@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_negatives_stay_in_the_range_are_unrated_and_rows_outside_are_untouched(loss):
    kernel, _, args = LOSSES[loss]
    u, i, r, ip, P, Q, b, neg_total = _block(nu=40, n=700)
    trace = np.full(100_000, -1, np.int64)
    Q2, b2 = Q.copy(), b.copy()
    out = kernel(
        u,
        i,
        r,
        ip,
        R.NO_ORDER,
        P.copy(),
        Q2,
        b2,
        10,
        40,
        *args(neg_total, threshold=INF),
        trace,
    )
    drawn = trace[trace >= 0]
    assert out[1] > 0 and len(drawn) >= out[1]
    assert drawn.min() >= 10 and drawn.max() < 40
    assert len(np.unique(drawn)) > 20  # the whole range is used
    np.testing.assert_array_equal(Q2[:10], Q[:10])
    np.testing.assert_array_equal(Q2[40:], Q[40:])
    np.testing.assert_array_equal(b2[:10], b[:10])
    np.testing.assert_array_equal(b2[40:], b[40:])
    # one position at a time, so each draw is known to belong to that position's user
    rated = {(int(a), int(c)) for a, c in zip(u, i)}
    Pc, Qc, bc = P.copy(), Q.copy(), b.copy()
    for pos in range(len(r)):
        one = np.full(64, -1, np.int64)
        kernel(
            u,
            i,
            r,
            ip,
            np.array([pos], np.int64),
            Pc,
            Qc,
            bc,
            10,
            40,
            *args(neg_total, threshold=INF),
            one,
        )
        assert all((int(u[pos]), int(n)) not in rated for n in one[one >= 0])


def test_rated_draws_are_rejected_and_a_full_range_is_skipped():
    # user 0 rated every item of the range but one: every used negative must be that one
    items = np.array([0, 1, 2, 3, 5, 6, 7], np.int32)
    u = np.zeros(len(items), np.int32)
    r = np.ones(len(items), np.float32)
    ip = R.csr_indptr(u, 1)
    P = np.full((1, 4), 0.1, np.float32)
    Q = np.random.default_rng(0).normal(0, 0.1, (8, 4)).astype(np.float32)
    trace = np.full(100, -1, np.int64)
    _loss, pairs, skipped = R.bpr_block(
        u,
        items,
        r,
        ip,
        R.NO_ORDER,
        P,
        Q,
        np.zeros(0, np.float32),
        0,
        8,
        2,
        0.05,
        0.0,
        0.0,
        0.0,
        INF,
        R.NO_WEIGHTS,
        1.0,
        11,
        64,
        trace,
    )
    assert pairs + skipped == 14 and pairs > 0
    assert set(trace[trace >= 0].tolist()) == {4}
    # a user who rated the whole range has no negative there: nothing is updated
    u2 = np.zeros(8, np.int32)
    Q2 = Q.copy()
    out = R.bpr_block(
        u2,
        np.arange(8, dtype=np.int32),
        np.ones(8, np.float32),
        R.csr_indptr(u2, 1),
        R.NO_ORDER,
        P.copy(),
        Q2,
        np.zeros(0, np.float32),
        0,
        8,
        1,
        0.05,
        0.0,
        0.0,
        0.0,
        INF,
        R.NO_WEIGHTS,
        1.0,
        11,
        64,
        R.NO_TRACE,
    )
    assert out[1:] == (0, 8)
    np.testing.assert_array_equal(Q2, Q)


@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_same_seed_same_result_other_seed_other_result(loss):
    kernel, _, args = LOSSES[loss]
    u, i, r, ip, P, Q, b, neg_total = _block()
    runs = []
    for seed in (5, 5, 6):
        mats = [P.copy(), Q.copy(), b.copy()]
        kernel(
            u,
            i,
            r,
            ip,
            R.NO_ORDER,
            *mats,
            10,
            40,
            *args(neg_total, seed=seed),
            R.NO_TRACE,
        )
        runs.append(mats)
    for a, c in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_negatives_do_not_depend_on_the_visiting_order():
    u, i, r, ip, P, Q, b, neg_total = _block(n=200)
    args = (
        3,
        0.05,
        0.01,
        0.02,
        0.01,
        INF,
        neg_total,
        0.6,
        7,
        64,
    )  # max_tries 64: no draw is given up
    t1, t2 = np.full(5000, -1, np.int64), np.full(5000, -1, np.int64)
    R.bpr_block(u, i, r, ip, R.NO_ORDER, P.copy(), Q.copy(), b.copy(), 10, 40, *args, t1)
    rev = np.arange(len(r) - 1, -1, -1, dtype=np.int64)
    R.bpr_block(u, i, r, ip, rev, P.copy(), Q.copy(), b.copy(), 10, 40, *args, t2)
    n = int((t1 >= 0).sum())
    per_pos = t1[:n].reshape(len(r), 3)  # every position is a positive, none skipped here
    np.testing.assert_array_equal(t2[:n].reshape(len(r), 3), per_pos[::-1])


def test_positive_threshold_and_block_weight():
    u, i, r, ip, P, Q, b, neg_total = _block()
    # no rating reaches 6: nothing is a positive, nothing moves
    Pc = P.copy()
    out = R.bpr_block(
        u,
        i,
        r,
        ip,
        R.NO_ORDER,
        Pc,
        Q.copy(),
        b.copy(),
        10,
        40,
        *_bpr_args(neg_total, threshold=6.0),
        R.NO_TRACE,
    )
    assert out == (0.0, 0, 0)
    np.testing.assert_array_equal(Pc, P)
    # pairs are counted only for ratings >= 4
    out = R.bpr_block(
        u,
        i,
        r,
        ip,
        R.NO_ORDER,
        P.copy(),
        Q.copy(),
        b.copy(),
        10,
        40,
        *_bpr_args(neg_total, threshold=4.0),
        R.NO_TRACE,
    )
    assert out[1] + out[2] == 3 * int((r >= 4).sum())
    # the loss of one pair with weights = w * softplus(-x), w = free / (share * |N_u|)
    one = np.array([0], np.int64)
    loss_w = R.bpr_block(
        u,
        i,
        r,
        ip,
        one,
        P.copy(),
        Q.copy(),
        b.copy(),
        10,
        40,
        1,
        0.0,
        0,
        0,
        0,
        INF,
        neg_total,
        0.6,
        3,
        8,
        R.NO_TRACE,
    )[0]
    loss_1 = R.bpr_block(
        u,
        i,
        r,
        ip,
        one,
        P.copy(),
        Q.copy(),
        b.copy(),
        10,
        40,
        1,
        0.0,
        0,
        0,
        0,
        INF,
        R.NO_WEIGHTS,
        0.6,
        3,
        8,
        R.NO_TRACE,
    )[0]
    free = 30 - (ip[1] - ip[0])
    assert loss_w == pytest.approx(loss_1 * free / (0.6 * neg_total[0]), rel=1e-12)


def test_malformed_blocks_are_refused():
    u, i, r, ip, P, Q, b, neg_total = _block()
    args = _bpr_args(neg_total)
    with pytest.raises(ValueError, match="outside"):
        R.bpr_block(u, i, r, ip, R.NO_ORDER, P, Q, b, 11, 40, *args, R.NO_TRACE)
    swapped = i.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    if u[0] == u[1]:
        with pytest.raises(ValueError, match="increasing"):
            R.bpr_block(u, swapped, r, ip, R.NO_ORDER, P, Q, b, 10, 40, *args, R.NO_TRACE)
    with pytest.raises(ValueError, match="indptr"):
        R.warp_block(
            u,
            i,
            r,
            ip[:-1],
            R.NO_ORDER,
            P,
            Q,
            b,
            10,
            40,
            *_warp_args(neg_total),
            R.NO_TRACE,
        )


def test_disjoint_blocks_in_threads_equal_the_sequential_run():
    """nogil: two threads on disjoint user rows and disjoint item ranges of one Q == one after the other."""
    a = _block(seed=1, nu=30, lo=0, hi=25, n=300, n_q=50)
    c = _block(seed=2, nu=30, lo=25, hi=50, n=300, n_q=50)
    Q = a[5].copy()
    bi = a[6].copy()

    def run(blk, P, Q, bi, lo, hi):
        u, i, r, ip, _, _, _, nt = blk
        for epoch in range(20):
            R.bpr_block(
                u,
                i,
                r,
                ip,
                R.NO_ORDER,
                P,
                Q,
                bi,
                lo,
                hi,
                *_bpr_args(nt, threshold=INF, seed=epoch),
                R.NO_TRACE,
            )

    seq = [a[4].copy(), c[4].copy(), Q.copy(), bi.copy()]
    run(a, seq[0], seq[2], seq[3], 0, 25)
    run(c, seq[1], seq[2], seq[3], 25, 50)
    par = [a[4].copy(), c[4].copy(), Q.copy(), bi.copy()]
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(run, a, par[0], par[2], par[3], 0, 25),
            pool.submit(run, c, par[1], par[2], par[3], 25, 50),
        ]
        for j in jobs:
            j.result()
    for x, y in zip(seq, par):
        np.testing.assert_array_equal(x, y)


def _planted(seed=0, nu=120, ni=80, rank=3):
    """Users prefer items by a planted low-rank score; each rates its top quarter, some held out."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(nu, rank))
    V = rng.normal(size=(ni, rank))
    truth = U @ V.T
    liked = truth >= np.quantile(truth, 0.75, axis=1, keepdims=True)
    hold = liked & (rng.random((nu, ni)) < 0.25)
    train = liked & ~hold
    uu, ii = np.nonzero(train)  # row-major: sorted by (user, item)
    return uu.astype(np.int32), ii.astype(np.int32), train, hold


@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_ranking_loss_recovers_a_planted_preference(loss):
    uu, ii, train, hold = _planted()
    nu, ni = train.shape
    r = np.ones(len(uu), np.float32)
    ip = R.csr_indptr(uu, nu)
    rng = np.random.default_rng(1)
    P = rng.normal(0, 0.1, (nu, 8)).astype(np.float32)
    Q = rng.normal(0, 0.1, (ni, 8)).astype(np.float32)
    b = np.zeros(ni, np.float32)
    nt = (ni - train.sum(1)).astype(np.int64)
    for epoch in range(60):
        order = np.random.default_rng([2, epoch]).permutation(len(r)).astype(np.int64)
        if loss == "bpr":
            R.bpr_block(
                uu,
                ii,
                r,
                ip,
                order,
                P,
                Q,
                b,
                0,
                ni,
                2,
                0.05,
                0.01,
                0.01,
                0.01,
                INF,
                nt,
                1.0,
                epoch,
                32,
                R.NO_TRACE,
            )
        else:
            R.warp_block(
                uu,
                ii,
                r,
                ip,
                order,
                P,
                Q,
                b,
                0,
                ni,
                0.01,
                0.01,
                0.01,
                0.01,
                INF,
                nt,
                1.0,
                50,
                0.0,
                epoch,
                32,
                R.NO_TRACE,
            )
    scores = P @ Q.T + b
    aucs = []
    for u in range(nu):
        pos = scores[u, hold[u]]
        neg = scores[u, ~hold[u] & ~train[u]]
        if len(pos) and len(neg):
            aucs.append((pos[:, None] > neg[None, :]).mean())
    assert np.mean(aucs) >= 0.9


def test_harmonic_numbers():
    for k in (0, 1, 2, 10, 64, 65, 100, 1000, 50_000):
        assert R.harmonic(k) == pytest.approx(sum(1.0 / j for j in range(1, k + 1)), abs=1e-10)


def test_reference_generator_is_uniform_over_the_range():
    draws = np.array([ref.reference_draw(9, c, 100, 7) for c in range(7000)])
    assert draws.min() == 100 and draws.max() == 106
    counts = np.bincount(draws - 100)
    assert counts.min() > 850 and counts.max() < 1150


def test_csr_indptr():
    np.testing.assert_array_equal(R.csr_indptr(np.array([0, 0, 2], np.int32), 4), [0, 2, 2, 3, 3])


def test_warm_up_compiles_both_kernels():
    """warm_up calls each kernel with its full signature (a missing argument would raise here)."""
    from recospark.models.sgd import kernel_ranking as ranking

    seconds = ranking.warm_up()
    assert seconds > 0
    assert ranking.bpr_block.signatures and ranking.warp_block.signatures


def test_the_paired_dot_products_equal_two_single_ones_bit_for_bit():
    """BPR takes x_up and x_un from one pass (`_dot2`): the same sums in the same order as `_dot`,
    so the kernel's floats did not change with it."""
    rng = np.random.default_rng(5)
    P = rng.normal(0, 1, (4, 128)).astype(np.float32)
    Q = rng.normal(0, 1, (9, 128)).astype(np.float32)
    for u, i, j in [(0, 1, 2), (3, 8, 8), (2, 0, 5)]:
        assert R._dot2(P, u, Q, i, j) == (R._dot(P, u, Q, i), R._dot(P, u, Q, j))
