"""The hot loop of the SGD matrix factorization: one pass of SGD over one block of ratings.

Imports nothing from Spark. Biased MF: prediction = mu + b_u + b_i + p_u . q_i, squared error
plus L2 on factors (`reg`) and on biases (`bias_reg`), the classic Funk/Koren update:

    e    = r - prediction                      (with the factors *before* this update)
    b_u += lr * (e - bias_reg * b_u)
    b_i += lr * (e - bias_reg * b_i)
    p_u += lr * (e * q_i - reg * p_u)          (both use the old p_u, q_i)
    q_i += lr * (e * p_u - reg * q_i)

Arithmetic is float64 per rating, the arrays are float32 (stored after each update); `fastmath`
is off so the compiled loop and `reference_sgd` agree to rounding.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = ["NO_ORDER", "reference_sgd", "reference_sse", "sgd_block", "sse_block", "warm_up"]

# Pass as `order` to visit ratings in their stored order.
NO_ORDER = np.zeros(0, dtype=np.int64)


@njit(cache=True, fastmath=False, nogil=True)
def sgd_block(users_idx, items_idx, ratings, order, P, Q, bu, bi, mu, lr, reg, bias_reg):
    """SGD over the ratings of one block, updating P, Q, bu, bi in place.

    `order` (int64) lists the positions to visit; an empty array means 0..n-1.
    Returns the sum of squared errors, each computed before its own update.
    """
    n = ratings.shape[0]
    k = P.shape[1]
    m = order.shape[0]
    count = m if m > 0 else n
    sse = 0.0
    for t in range(count):
        pos = order[t] if m > 0 else t
        u = users_idx[pos]
        i = items_idx[pos]
        dot = 0.0
        for f in range(k):
            dot += np.float64(P[u, f]) * np.float64(Q[i, f])
        e = np.float64(ratings[pos]) - (mu + np.float64(bu[u]) + np.float64(bi[i]) + dot)
        sse += e * e
        bu_old = np.float64(bu[u])
        bi_old = np.float64(bi[i])
        bu[u] = bu_old + lr * (e - bias_reg * bu_old)
        bi[i] = bi_old + lr * (e - bias_reg * bi_old)
        for f in range(k):
            pu = np.float64(P[u, f])
            qi = np.float64(Q[i, f])
            P[u, f] = pu + lr * (e * qi - reg * pu)
            Q[i, f] = qi + lr * (e * pu - reg * qi)
    return sse


@njit(cache=True, fastmath=False, nogil=True)
def sse_block(users_idx, items_idx, ratings, P, Q, bu, bi, mu):
    """Sum of squared errors of the current factors over one block (no update)."""
    n = ratings.shape[0]
    k = P.shape[1]
    sse = 0.0
    for t in range(n):
        u = users_idx[t]
        i = items_idx[t]
        dot = 0.0
        for f in range(k):
            dot += np.float64(P[u, f]) * np.float64(Q[i, f])
        e = np.float64(ratings[t]) - (mu + np.float64(bu[u]) + np.float64(bi[i]) + dot)
        sse += e * e
    return sse


def reference_sgd(users_idx, items_idx, ratings, order, P, Q, bu, bi, mu, lr, reg, bias_reg) -> float:
    """Sequential pure-Python/numpy twin of `sgd_block`, for tests only (slow)."""
    positions = range(len(ratings)) if order is None or len(order) == 0 else order
    sse = 0.0
    for pos in positions:
        u, i = int(users_idx[pos]), int(items_idx[pos])
        pu = P[u].astype(np.float64)
        qi = Q[i].astype(np.float64)
        e = float(ratings[pos]) - (mu + float(bu[u]) + float(bi[i]) + float(sum(pu * qi)))
        sse += e * e
        bu_old, bi_old = float(bu[u]), float(bi[i])
        bu[u] = bu_old + lr * (e - bias_reg * bu_old)
        bi[i] = bi_old + lr * (e - bias_reg * bi_old)
        P[u] = pu + lr * (e * qi - reg * pu)
        Q[i] = qi + lr * (e * pu - reg * qi)
    return sse


def reference_sse(users_idx, items_idx, ratings, P, Q, bu, bi, mu) -> float:
    pred = mu + bu[users_idx].astype(np.float64) + bi[items_idx] + np.einsum(
        "nk,nk->n", P[users_idx].astype(np.float64), Q[items_idx].astype(np.float64)
    )
    return float(np.sum((ratings.astype(np.float64) - pred) ** 2))


def warm_up() -> float:
    """Compile (or load from numba's on-disk cache) both kernels; returns the seconds it took."""
    started = time.perf_counter()
    u = np.zeros(2, np.int32)
    r = np.ones(2, np.float32)
    P = np.zeros((1, 2), np.float32)
    Q = np.zeros((1, 2), np.float32)
    b = np.zeros(1, np.float32)
    sgd_block(u, u, r, NO_ORDER, P, Q, b, b.copy(), 0.0, 0.01, 0.01, 0.01)
    sgd_block(u, u, r, np.arange(2, dtype=np.int64), P, Q, b, b.copy(), 0.0, 0.01, 0.01, 0.01)
    sse_block(u, u, r, P, Q, b, b, 0.0)
    return time.perf_counter() - started
