"""The ranking kernels: BPR and WARP over ONE sub-block, with block-local negatives.

Imports nothing from Spark. The squared-error kernel (`kernel_squared.py`) fits ratings; these fit the
*order* of items per user, which is what a top-N list is judged on. Both are SGD over the
positives of one (user block, item block) sub-block, each positive paired with negatives drawn
from the caller's item row range ``[item_lo, item_hi)`` only, so that threads or tasks working on
disjoint ranges never touch the same rows of ``Q``/``bi`` (DSGD's no-conflict rule, now for the
sampled rows too). Every function is ``nogil``.

Contract with the data path (one sub-block)
-------------------------------------------
``users_idx`` int32, ``items_idx`` int32, ``ratings`` float32, sorted by (user, item), no
duplicate (user, item); ``indptr`` int64 of length ``P.shape[0] + 1`` (`csr_indptr`), so the
ratings of local user ``u`` are positions ``indptr[u]:indptr[u + 1]``. Every item index lies in
``[item_lo, item_hi)``, and the arrays hold *every* rating of these users in that range (the
rejection test needs the user's full list there). Violations raise ``ValueError``.
``P`` (user block rows x k) and ``Q`` (item rows x k) are float32, ``bi`` float32 item biases
(pass a zero-length array to train without biases), all updated in place. Arithmetic is float64
per update, stored as float32; ``fastmath`` is off so the kernels equal the plain sequential
references in tests/sgd_reference.py to rounding.

A positive is a rating ``>= pos_threshold`` (``-inf``: every rated item). ``order`` (int64) lists
the positions to visit (``NO_ORDER``: 0..n-1); non-positive positions are skipped.

Sampling
--------
Counter-based (SplitMix64 of ``seed`` and a counter), so the negatives of a positive depend on
(seed, position, draw number) only: not on the visiting order, the thread, or earlier draws.
Draw ``a`` for negative ``m`` of position ``pos`` uses counter ``(pos * n_neg + m) * max_tries + a``
(WARP: ``pos * max_trials * max_tries + t * max_tries + a`` for trial ``t``) and maps to
``item_lo + floor(h_hi32 * (item_hi - item_lo) / 2**32)``. A draw that the user rated is rejected
and redrawn, at most ``max_tries`` times, after which that negative is skipped (counted).
Callers derive ``seed`` from (model seed, epoch, user block, item block) so every sub-block and
epoch gets fresh, reproducible negatives (tests/sgd_reference.py has the same generator in Python).

What block-restricted sampling does to the gradient
---------------------------------------------------
Full BPR for user u (N_u = unrated items, |N_u| = n_items - |I_u|) is

    L_u = sum_{p in I_u+} (1 / |N_u|) sum_{n in N_u} l(u, p, n),   l = -log sigmoid(x_up - x_un).

DSGD visits (u, p) only in the stratum where p's block b is paired with u's block, and the
negative can only come from the same block: n ~ U(N_u ∩ B_b). Unweighted, the pair (p, n) gets
weight 1{b(n) = b(p)} / |N_u ∩ B_b| instead of 1 / |N_u|: users whose block is crowded with
their own positives (heavy users, small blocks) get their negatives over-weighted, and pairs
across blocks are never seen. The item -> block map is a seeded hash that does not look at the
data, so for a pair of distinct items P(b(n) = b(p)) = pi_b (= 1/d for d equal-probability
blocks; `block_share`). Weighting every pair of the sub-block by

    w_ub = |N_u ∩ B_b| / (pi_b * |N_u|)

makes the estimate unbiased over the hash:

    E_hash E_n[w_ub l(u, p, n)] = E_hash[(1 / (pi_b |N_u|)) sum_{n in N_u ∩ B_b} l]
                                = (1 / (pi_b |N_u|)) sum_{n in N_u} pi_b l = L_u's term for p.

``|N_u ∩ B_b|`` is known in the kernel ((item_hi - item_lo) minus the user's ratings in the range);
``|N_u|`` is the caller's ``user_neg_total[u]`` (catalogue size minus the user's ratings in all
blocks, one int per local user, computed once per fit); pass a zero-length ``user_neg_total`` for
w = 1. With a thread range inside a task's item block, pi_b is the share of the catalogue the
range covers: pass ``block_share = (item_hi - item_lo) / n_items``. For a *fixed* hash the
unbiasedness is in expectation over hashes; pairs across blocks are still never compared
directly, only through the shared user factor, which on ML-100K with d <= 4 costs nothing measurable.
(Re-salting the item hash per epoch would remove even that, at the price of a ratings shuffle.)

WARP (Weston, Bengio, Usunier 2011) samples negatives until one violates the margin
(x_un > x_up - margin) and, if that takes N trials, estimates the violating fraction by 1/N (the
usual geometric estimate). Drawn from the block, N measures the block's violating fraction,
which over the hash has the catalogue-wide fraction as its expectation; so the rank estimate is
floor((|N_u| - 1) / N) with the catalogue-wide |N_u| (``user_neg_total``; without it, the range's
own count, i.e. the rank within the block). The update is the hinge gradient weighted by
Phi(rank) = H(rank) = sum_{j <= rank} 1/j. The violator is uniform over the block's violators,
hence (over the hash) over all violators; no further weight is needed. WARP's steps are large
(Phi up to ~8), and with L2 and a constant step the row norms drift upward on ML-100K; the
``max_norm`` projection (WSABIE's capacity control) is what keeps it stable.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numba import njit

__all__ = [
    "NO_ORDER",
    "NO_TRACE",
    "NO_WEIGHTS",
    "bpr_block",
    "csr_indptr",
    "harmonic",
    "warm_up",
    "warp_block",
]

NO_ORDER = np.zeros(0, dtype=np.int64)
NO_WEIGHTS = np.zeros(0, dtype=np.int64)
NO_TRACE = np.zeros(0, dtype=np.int64)

# SplitMix64's constants. numba freezes globals as typed constants; every operand is uint64 so
# no op promotes to float.
_U_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_U_M1 = np.uint64(0xBF58476D1CE4E5B9)
_U_M2 = np.uint64(0x94D049BB133111EB)
_U30 = np.uint64(30)
_U27 = np.uint64(27)
_U31 = np.uint64(31)
_U32 = np.uint64(32)


def csr_indptr(users_idx: np.ndarray, n_users: int) -> np.ndarray:
    """CSR row pointers of a (user, item)-sorted sub-block: ratings of u are indptr[u]:indptr[u+1]."""
    counts = np.bincount(np.asarray(users_idx, dtype=np.int64), minlength=n_users)
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# compiled


@njit(cache=True, nogil=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _U30)) * _U_M1
    z = (z ^ (z >> _U27)) * _U_M2
    return z ^ (z >> _U31)


@njit(cache=True, nogil=True, inline="always")
def _draw(seed, counter, lo, span):
    h = _mix(np.uint64(seed) ^ _mix(np.uint64(counter) + _U_GAMMA))
    return lo + np.int64(((h >> _U32) * np.uint64(span)) >> _U32)


@njit(cache=True, nogil=True, inline="always")
def _rated(items_idx, start, end, item):
    """Binary search of item in the user's sorted items_idx[start:end]."""
    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi) // 2
        v = items_idx[mid]
        if v < item:
            lo = mid + 1
        elif v > item:
            hi = mid
        else:
            return True
    return False


@njit(cache=True, nogil=True)
def _check_block(users_idx, items_idx, ratings, indptr, n_users, item_lo, item_hi):
    n = ratings.shape[0]
    if users_idx.shape[0] != n or items_idx.shape[0] != n:
        raise ValueError("users_idx, items_idx and ratings must have the same length")
    if indptr.shape[0] != n_users + 1 or indptr[0] != 0 or indptr[n_users] != n:
        raise ValueError("indptr must have P.shape[0] + 1 entries, from 0 to len(ratings)")
    if item_lo < 0 or item_hi <= item_lo:
        raise ValueError("need 0 <= item_lo < item_hi")
    for u in range(n_users):
        for t in range(indptr[u], indptr[u + 1]):
            if users_idx[t] != u:
                raise ValueError("users_idx disagrees with indptr (ratings must be sorted by user)")
            it = items_idx[t]
            if it < item_lo or it >= item_hi:
                raise ValueError("an item index lies outside [item_lo, item_hi)")
            if t > indptr[u] and items_idx[t - 1] >= it:
                raise ValueError("items must be strictly increasing within a user")


@njit(cache=True, nogil=True, inline="always")
def _dot(P, u, Q, i):
    s = 0.0
    for f in range(P.shape[1]):
        s += np.float64(P[u, f]) * np.float64(Q[i, f])
    return s


@njit(cache=True, nogil=True, inline="always")
def _dot2(P, u, Q, i, j):
    """(p_u . q_i, p_u . q_j) in one pass: two independent sums, each in `_dot`'s order, so bit for
    bit `_dot`'s results, with their additions overlapping instead of waiting on each other."""
    s = 0.0
    t = 0.0
    for f in range(P.shape[1]):
        pu = np.float64(P[u, f])
        s += pu * np.float64(Q[i, f])
        t += pu * np.float64(Q[j, f])
    return s, t


@njit(cache=True, nogil=True, inline="always")
def _softplus_neg(x):
    """-log(sigmoid(x)) without overflow."""
    if x > 0:
        return math.log1p(math.exp(-x))
    return -x + math.log1p(math.exp(x))


@njit(cache=True, nogil=True, inline="always")
def _pair_update(P, u, Q, p, n, bi, g, lr, reg_user, reg_item, reg_bias):
    """Ascent on g * (x_up - x_un): p_u, q_p, q_n (all from their old values) and both biases."""
    for f in range(P.shape[1]):
        pu = np.float64(P[u, f])
        qp = np.float64(Q[p, f])
        qn = np.float64(Q[n, f])
        P[u, f] = pu + lr * (g * (qp - qn) - reg_user * pu)
        Q[p, f] = qp + lr * (g * pu - reg_item * qp)
        Q[n, f] = qn + lr * (-g * pu - reg_item * qn)
    if bi.shape[0] > 0:
        bp = np.float64(bi[p])
        bn = np.float64(bi[n])
        bi[p] = bp + lr * (g - reg_bias * bp)
        bi[n] = bn + lr * (-g - reg_bias * bn)


@njit(cache=True, nogil=True, inline="always")
def _clip_row(M, r, max_norm):
    """Project row r of M onto the ball of radius max_norm (WSABIE's capacity control)."""
    sq = 0.0
    for f in range(M.shape[1]):
        sq += np.float64(M[r, f]) * np.float64(M[r, f])
    if sq > max_norm * max_norm:
        scale = max_norm / math.sqrt(sq)
        for f in range(M.shape[1]):
            M[r, f] = np.float64(M[r, f]) * scale


@njit(cache=True, nogil=True)
def harmonic(k):
    """H(k) = sum_{j=1..k} 1/j (exact up to 64, asymptotic series beyond: error < 1e-12)."""
    if k <= 0:
        return 0.0
    if k <= 64:
        s = 0.0
        for j in range(1, k + 1):
            s += 1.0 / j
        return s
    x = np.float64(k)
    return math.log(x) + 0.5772156649015329 + 1.0 / (2.0 * x) - 1.0 / (12.0 * x * x) + 1.0 / (120.0 * x**4)


@njit(cache=True, nogil=True)
def bpr_block(
    users_idx, items_idx, ratings, indptr, order, P, Q, bi, item_lo, item_hi,
    n_neg, lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, block_share,
    seed, max_tries, trace,
):  # fmt: skip
    """BPR-SGD over one sub-block, updating P, Q, bi in place.

    Each positive (u, p) meets ``n_neg`` negatives from ``[item_lo, item_hi)``, one sequential
    pair update each: ascent on ``w * log sigmoid(x_up - x_un)`` with ``x_ui = p_u . q_i + b_i``
    and L2 (``reg_user`` on p_u, ``reg_item`` on q_p and q_n, ``reg_bias`` on b_p and b_n), with
    ``w`` the block weight of the module docstring (1 when ``user_neg_total`` is empty).
    ``trace`` (int64, may be empty) receives the first ``len(trace)`` negatives actually used.

    Returns (weighted loss sum before each update, pair updates, negatives skipped).
    """
    n_users = P.shape[0]
    _check_block(users_idx, items_idx, ratings, indptr, n_users, item_lo, item_hi)
    span = item_hi - item_lo
    n = ratings.shape[0]
    m = order.shape[0]
    count = m if m > 0 else n
    weighted = user_neg_total.shape[0] > 0
    loss = 0.0
    pairs = 0
    skipped = 0
    for t in range(count):
        pos = order[t] if m > 0 else t
        if ratings[pos] < pos_threshold:
            continue
        u = users_idx[pos]
        p = items_idx[pos]
        start, end = indptr[u], indptr[u + 1]
        free = span - (end - start)
        if free <= 0:
            skipped += n_neg
            continue
        w = 1.0
        if weighted:
            w = free / (block_share * user_neg_total[u])
        for j in range(n_neg):
            base = (pos * n_neg + j) * max_tries
            neg = -1
            for a in range(max_tries):
                cand = _draw(seed, base + a, item_lo, span)
                if not _rated(items_idx, start, end, cand):
                    neg = cand
                    break
            if neg < 0:
                skipped += 1
                continue
            if pairs < trace.shape[0]:
                trace[pairs] = neg
            x_p, x_n = _dot2(P, u, Q, p, neg)
            x = x_p - x_n
            if bi.shape[0] > 0:
                x += np.float64(bi[p]) - np.float64(bi[neg])
            loss += w * _softplus_neg(x)
            g = w / (1.0 + math.exp(x))
            _pair_update(P, u, Q, p, neg, bi, g, lr, reg_user, reg_item, reg_bias)
            pairs += 1
    return loss, pairs, skipped


@njit(cache=True, nogil=True)
def warp_block(
    users_idx, items_idx, ratings, indptr, order, P, Q, bi, item_lo, item_hi,
    lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, margin, max_trials,
    max_norm, seed, max_tries, trace,
):  # fmt: skip
    """WARP-SGD over one sub-block, updating P, Q, bi in place.

    For each positive (u, p), up to ``max_trials`` negatives from ``[item_lo, item_hi)`` are
    drawn until one violates ``x_un > x_up - margin``. Found at trial N: rank estimate
    ``r = floor((M - 1) / N)`` (M = ``user_neg_total[u]``, or the range's negatives when empty),
    and a hinge step weighted by ``H(r)`` (r >= 1; r = 0 makes no step). None found: no step.
    ``max_norm > 0`` then projects the three updated rows onto the ball of that radius, the
    capacity control of WSABIE (Weston et al.), which L2 alone does not give a constant step;
    ``max_norm <= 0`` turns it off.
    ``trace`` receives every sampled negative (violating or not) while it has room.

    Returns (sum of H(r) * hinge before each update, updates, positives without a violator).
    """
    n_users = P.shape[0]
    _check_block(users_idx, items_idx, ratings, indptr, n_users, item_lo, item_hi)
    span = item_hi - item_lo
    n = ratings.shape[0]
    m = order.shape[0]
    count = m if m > 0 else n
    global_rank = user_neg_total.shape[0] > 0
    loss = 0.0
    updates = 0
    missed = 0
    traced = 0
    has_bias = bi.shape[0] > 0
    for t in range(count):
        pos = order[t] if m > 0 else t
        if ratings[pos] < pos_threshold:
            continue
        u = users_idx[pos]
        p = items_idx[pos]
        start, end = indptr[u], indptr[u + 1]
        free = span - (end - start)
        if free <= 0:
            missed += 1
            continue
        x_p = _dot(P, u, Q, p)
        if has_bias:
            x_p += np.float64(bi[p])
        neg = -1
        trials = 0
        x_n = 0.0
        for trial in range(max_trials):
            base = (pos * max_trials + trial) * max_tries
            cand = -1
            for a in range(max_tries):
                c = _draw(seed, base + a, item_lo, span)
                if not _rated(items_idx, start, end, c):
                    cand = c
                    break
            if cand < 0:
                continue
            if traced < trace.shape[0]:
                trace[traced] = cand
                traced += 1
            trials = trial + 1
            x_c = _dot(P, u, Q, cand)
            if has_bias:
                x_c += np.float64(bi[cand])
            if x_c > x_p - margin:
                neg = cand
                x_n = x_c
                break
        if neg < 0:
            missed += 1
            continue
        total = user_neg_total[u] if global_rank else free
        rank = (total - 1) // trials
        if rank < 1:
            continue
        g = harmonic(rank)
        loss += g * (margin - x_p + x_n)
        _pair_update(P, u, Q, p, neg, bi, g, lr, reg_user, reg_item, reg_bias)
        if max_norm > 0:
            _clip_row(P, u, max_norm)
            _clip_row(Q, p, max_norm)
            _clip_row(Q, neg, max_norm)
        updates += 1
    return loss, updates, missed


def warm_up() -> float:
    """Compile (or load from numba's cache) both kernels; returns the seconds it took."""
    started = time.perf_counter()
    u = np.array([0, 0], np.int32)
    i = np.array([0, 1], np.int32)
    r = np.ones(2, np.float32)
    indptr = np.array([0, 2], np.int64)
    P = np.zeros((1, 2), np.float32)
    Q = np.zeros((4, 2), np.float32)
    b = np.zeros(4, np.float32)
    bpr_block(
        u,
        i,
        r,
        indptr,
        NO_ORDER,
        P,
        Q,
        b,
        0,
        4,
        1,
        0.01,
        0.0,
        0.0,
        0.0,
        -np.inf,
        NO_WEIGHTS,
        1.0,
        1,
        8,
        NO_TRACE,
    )
    warp_block(
        u,
        i,
        r,
        indptr,
        NO_ORDER,
        P,
        Q,
        b,
        0,
        4,
        0.01,
        0.0,
        0.0,
        0.0,
        -np.inf,
        NO_WEIGHTS,
        1.0,  # margin
        4,  # max_trials
        0.0,  # max_norm (off)
        1,  # seed
        8,  # max_tries
        NO_TRACE,
    )
    return time.perf_counter() - started
