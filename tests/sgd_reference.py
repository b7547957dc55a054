"""Plain sequential references of the DSGD kernels, for tests only: the same arithmetic as the
compiled kernels in `recospark.models.sgd.kernel_squared` and `kernel_ranking`, in plain Python /
numpy (float64), slow and obviously correct. The package defines no reference; the kernel tests
check the compiled code against these."""

from __future__ import annotations

import math

import numpy as np

from recospark.models.sgd.kernel_ranking import harmonic

# (absolute on factors/biases, relative on SSE): `sgd_block` against `reference_sgd`, see kernel_squared's docstring
KERNEL_TOLERANCE = (1e-4, 1e-4)

# SplitMix64, as the ranking kernels' negative sampler uses it
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def reference_sgd(users_idx, items_idx, ratings, order, P, Q, bu, bi, mu, lr, reg, bias_reg) -> float:
    """Sequential pure-Python/numpy twin of `sgd_block` in float64 arithmetic, for tests only (slow)."""
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
    pred = (
        mu
        + bu[users_idx].astype(np.float64)
        + bi[items_idx]
        + np.einsum("nk,nk->n", P[users_idx].astype(np.float64), Q[items_idx].astype(np.float64))
    )
    return float(np.sum((ratings.astype(np.float64) - pred) ** 2))


def reference_draw(seed: int, counter: int, lo: int, span: int) -> int:
    """The kernels' counter-based generator in Python: an item in [lo, lo + span)."""

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * _M1) & _MASK
        z = ((z ^ (z >> 27)) * _M2) & _MASK
        return z ^ (z >> 31)

    h = mix((seed & _MASK) ^ mix((counter + _GAMMA) & _MASK))
    return lo + (((h >> 32) * span) >> 32)


def _ref_dot(P, u, Q, i) -> float:
    s = 0.0
    for f in range(P.shape[1]):
        s += float(P[u, f]) * float(Q[i, f])
    return s


def _ref_update(P, u, Q, p, n, bi, g, lr, reg_user, reg_item, reg_bias) -> None:
    pu = P[u].astype(np.float64)
    qp = Q[p].astype(np.float64)
    qn = Q[n].astype(np.float64)
    P[u] = pu + lr * (g * (qp - qn) - reg_user * pu)
    Q[p] = qp + lr * (g * pu - reg_item * qp)
    Q[n] = qn + lr * (-g * pu - reg_item * qn)
    if len(bi):
        bp, bn = float(bi[p]), float(bi[n])
        bi[p] = bp + lr * (g - reg_bias * bp)
        bi[n] = bn + lr * (-g - reg_bias * bn)


def _ref_positions(order, n):
    return range(n) if order is None or len(order) == 0 else [int(x) for x in order]


def reference_bpr(
    users_idx, items_idx, ratings, indptr, order, P, Q, bi, item_lo, item_hi,
    n_neg, lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, block_share,
    seed, max_tries, trace=None,
):  # fmt: skip
    """Sequential twin of `bpr_block` (no validation); `trace`, when a list, gets every negative used."""
    span = item_hi - item_lo
    loss, pairs, skipped = 0.0, 0, 0
    for pos in _ref_positions(order, len(ratings)):
        if ratings[pos] < pos_threshold:
            continue
        u, p = int(users_idx[pos]), int(items_idx[pos])
        rated = {int(x) for x in items_idx[indptr[u] : indptr[u + 1]]}
        free = span - len(rated)
        if free <= 0:
            skipped += n_neg
            continue
        w = free / (block_share * float(user_neg_total[u])) if len(user_neg_total) else 1.0
        for j in range(n_neg):
            neg = next(
                (c for a in range(max_tries) if (c := reference_draw(seed, (pos * n_neg + j) * max_tries + a, item_lo, span)) not in rated),
                -1,
            )
            if neg < 0:
                skipped += 1
                continue
            if trace is not None:
                trace.append(neg)
            x = _ref_dot(P, u, Q, p) - _ref_dot(P, u, Q, neg)
            if len(bi):
                x += float(bi[p]) - float(bi[neg])
            loss += w * (math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x)))
            _ref_update(
                P,
                u,
                Q,
                p,
                neg,
                bi,
                w / (1.0 + math.exp(x)),
                lr,
                reg_user,
                reg_item,
                reg_bias,
            )
            pairs += 1
    return loss, pairs, skipped


def reference_warp(
    users_idx, items_idx, ratings, indptr, order, P, Q, bi, item_lo, item_hi,
    lr, reg_user, reg_item, reg_bias, pos_threshold, user_neg_total, margin, max_trials,
    max_norm, seed, max_tries, trace=None,
):  # fmt: skip
    """Sequential twin of `warp_block` (no validation); `trace`, when a list, gets every sampled negative."""
    span = item_hi - item_lo
    loss, updates, missed = 0.0, 0, 0
    for pos in _ref_positions(order, len(ratings)):
        if ratings[pos] < pos_threshold:
            continue
        u, p = int(users_idx[pos]), int(items_idx[pos])
        rated = {int(x) for x in items_idx[indptr[u] : indptr[u + 1]]}
        free = span - len(rated)
        if free <= 0:
            missed += 1
            continue
        x_p = _ref_dot(P, u, Q, p) + (float(bi[p]) if len(bi) else 0.0)
        neg, trials, x_n = -1, 0, 0.0
        for trial in range(max_trials):
            base = (pos * max_trials + trial) * max_tries
            cand = next(
                (c for a in range(max_tries) if (c := reference_draw(seed, base + a, item_lo, span)) not in rated),
                -1,
            )
            if cand < 0:
                continue
            if trace is not None:
                trace.append(cand)
            trials = trial + 1
            x_c = _ref_dot(P, u, Q, cand) + (float(bi[cand]) if len(bi) else 0.0)
            if x_c > x_p - margin:
                neg, x_n = cand, x_c
                break
        if neg < 0:
            missed += 1
            continue
        total = int(user_neg_total[u]) if len(user_neg_total) else free
        rank = (total - 1) // trials
        if rank < 1:
            continue
        g = harmonic(rank)
        loss += g * (margin - x_p + x_n)
        _ref_update(P, u, Q, p, neg, bi, g, lr, reg_user, reg_item, reg_bias)
        if max_norm > 0:
            for M, row in ((P, u), (Q, p), (Q, neg)):
                sq = 0.0
                for f in range(M.shape[1]):
                    sq += float(M[row, f]) * float(M[row, f])
                if sq > max_norm * max_norm:
                    scale = max_norm / math.sqrt(sq)
                    M[row] = [float(x) * scale for x in M[row]]
        updates += 1
    return loss, updates, missed
