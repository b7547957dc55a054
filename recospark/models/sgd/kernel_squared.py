"""The squared-loss kernels: one pass of SGD over one block of ratings, and its squared error.

Imports nothing from Spark. Biased MF: prediction = mu + b_u + b_i + p_u . q_i, squared error
plus L2 on factors (`reg`) and on biases (`bias_reg`), the classic Funk/Koren update:

    e    = r - prediction                      (with the factors *before* this update)
    b_u += lr * (e - bias_reg * b_u)
    b_i += lr * (e - bias_reg * b_i)
    p_u += lr * (e * q_i - reg * p_u)          (both use the old p_u, q_i)
    q_i += lr * (e * p_u - reg * q_i)

The compiled kernels compute in float32 with `fastmath` on, so LLVM may reassociate the rank-k
dot product: the dot and both row updates become 8-wide AVX2 FMA loops (float64 arithmetic
with fastmath off does not vectorize the reduction). The squared error is accumulated in
float64. They are `nogil`, so a task's threads run disjoint sub-blocks at once, and
`cache=True`: a fresh Python worker loads the machine code from numba's on-disk cache instead of
compiling (see `warm_up`).

Tolerance against the plain float64 references (tests/sgd_reference.py, checked in
tests/test_sgd_kernel.py): after 3 passes over 3,000 ratings at rank 8, factors and biases agree
within 1e-4 absolute and the SSE within 1e-4 relative; `sse_block` within 1e-5 relative.
A given build is deterministic: the same inputs give bit-identical outputs, whatever thread
runs them.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = ["NO_ORDER", "sgd_block", "sse_block", "warm_up"]

# Pass as `order` to visit ratings in their stored order (sorted by user, then item).
NO_ORDER = np.zeros(0, dtype=np.int64)


@njit(cache=True, fastmath=True, nogil=True, boundscheck=False, error_model="numpy")
def sgd_block(users_idx, items_idx, ratings, order, P, Q, bu, bi, mu, lr, reg, bias_reg):
    """SGD over the ratings of one block, updating P, Q, bu, bi in place (float32 arithmetic).

    `users_idx`/`items_idx` are rows of P/Q. `order` (int64) lists the positions to visit; an
    empty array means 0..n-1, the stored order. Returns the sum of squared errors (float64),
    each computed before its own update.
    """
    n = ratings.shape[0]
    k = P.shape[1]
    m = order.shape[0]
    count = m if m > 0 else n
    lr32 = np.float32(lr)
    reg32 = np.float32(reg)
    breg32 = np.float32(bias_reg)
    mu32 = np.float32(mu)
    sse = 0.0
    for t in range(count):
        pos = order[t] if m > 0 else t
        u = users_idx[pos]
        i = items_idx[pos]
        p = P[u]
        q = Q[i]
        dot = np.float32(0.0)
        for f in range(k):
            dot += p[f] * q[f]
        bu_old = bu[u]
        bi_old = bi[i]
        e = ratings[pos] - (mu32 + bu_old + bi_old + dot)
        sse += np.float64(e) * np.float64(e)
        bu[u] = bu_old + lr32 * (e - breg32 * bu_old)
        bi[i] = bi_old + lr32 * (e - breg32 * bi_old)
        for f in range(k):
            pf = p[f]
            qf = q[f]
            p[f] = pf + lr32 * (e * qf - reg32 * pf)
            q[f] = qf + lr32 * (e * pf - reg32 * qf)
    return sse


@njit(cache=True, fastmath=True, nogil=True, boundscheck=False, error_model="numpy")
def sse_block(users_idx, items_idx, ratings, P, Q, bu, bi, mu):
    """Sum of squared errors of the current factors over one block (no update), float64 sum."""
    n = ratings.shape[0]
    k = P.shape[1]
    mu32 = np.float32(mu)
    sse = 0.0
    for t in range(n):
        u = users_idx[t]
        i = items_idx[t]
        p = P[u]
        q = Q[i]
        dot = np.float32(0.0)
        for f in range(k):
            dot += p[f] * q[f]
        e = ratings[t] - (mu32 + bu[u] + bi[i] + dot)
        sse += np.float64(e) * np.float64(e)
    return sse


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def warm_up() -> float:
    """Compile (or load from numba's on-disk cache) the signatures the DSGD tasks call: read-only
    rating arrays (memory-mapped blocks or streamed bytes) and writable float32 factor blocks.
    Other signatures (writable ratings, as in tests) compile on first use. Returns the seconds it
    took; `stratum.ensure_warm` calls it once per Python process."""
    started = time.perf_counter()
    u = _readonly(np.zeros(2, np.int32))
    r = _readonly(np.ones(2, np.float32))
    P = np.zeros((2, 2), np.float32)
    Q = np.zeros((2, 2), np.float32)
    b = np.zeros(2, np.float32)
    sgd_block(u, u, r, NO_ORDER, P, Q, b, b.copy(), 0.0, 0.01, 0.01, 0.01)
    sse_block(u, u, r, P, Q, b, b, 0.0)
    return time.perf_counter() - started
