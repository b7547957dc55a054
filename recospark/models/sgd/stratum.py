"""One outer stratum in a task: its K inner steps, each running disjoint sub-blocks on threads.

This is the SGD core both plans share: `train_stratum` (and `validation_sums` after an epoch)
run wherever the factor groups are, the single task's every group or one multi-task task's own.
Inside a step no two sub-blocks share a user row or an item row (layout.py), so the threads
update their views of P_G and Q_J in place without locks. Per outer block (G, J), losses and
counts are added in a fixed order, so any plan and thread count gives the same floats.

Ranking losses run where the squared kernel would, one kernel call per sub-block: positives
against negatives drawn from the sub-block's own item inner block, visited in a permutation
seeded by (seed, epoch, sub-block) (`sub_seed`), with the block weight's |N_u| per user counted
from the blocks (`user_neg_totals`, single task) or by the driver (`neg_totals_from_counts`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from recospark.models.sgd.epochs import Sums
from recospark.models.sgd.kernel_ranking import NO_TRACE, NO_WEIGHTS, bpr_block, warp_block
from recospark.models.sgd.kernel_squared import NO_ORDER, sgd_block, sse_block
from recospark.models.sgd.layout import FactorBlock, Index, SubBlock, init_factors, seed_seq, step_blocks
from recospark.models.sgd.pool import Timer, run_jobs
from recospark.models.sgd.settings import TaskConfig
from recospark.models.sgd.source import Source

MAX_TRIES = 32  # ranking: redraws of a negative the user rated before it is skipped
NO_BIAS = np.zeros(0, np.float32)  # warp trains without item biases (score p_u . q_i)


def train_stratum(
    cfg: TaskConfig,
    shift: int,
    groups: list[int],
    users: dict[int, FactorBlock],
    items: dict[int, FactorBlock],
    source: Source,
    *,
    lr: float,
    epoch: int,
    sums: Sums,
    trace: list | None = None,
    neg_trace: dict | None = None,
) -> Timer:
    """One outer stratum for the user groups `groups`: K inner steps, each running its disjoint
    sub-blocks on `cfg.threads` threads. Adds (loss, ratings, updates) per outer block (G, J) into
    `sums` (squared: loss = sse, updates = ratings), summed in a fixed order so any plan gives
    identical floats. Factors are updated in place. `trace` (tests), when given, receives each
    sub-block's rows; ranking losses: `neg_trace` receives (epoch, G, J, a, b) -> the first
    negatives each sub-block's kernel drew, as rows of the item inner block's view."""
    timer = Timer()
    for t, step in enumerate(step_blocks(cfg.params.seed, epoch, shift, groups, cfg.B, cfg.K)):
        jobs, keys = [], []
        for G, J, a, b in step:
            if cfg.sub_counts.get(("R", G, J, a, b), 0) == 0:
                continue
            sub = source.sub("R", G, J, a, b)
            if sub is None:
                continue
            P, bu = users[G].views(a)
            Q, bi = items[J].views(b)
            if cfg.ranking:
                rtrace = NO_TRACE
                if neg_trace is not None:
                    rtrace = neg_trace[(epoch, G, J, a, b)] = np.full(4096, -1, np.int64)
                jobs.append(_ranking_job(cfg, source.ranking_sub(sub, P.shape[0]), users[G], a, P, Q, bi, lr, epoch, (G, J, a, b), rtrace))
            else:
                jobs.append(_kernel_job(sub, P, Q, bu, bi, cfg.mu, lr, cfg.params.regParam, cfg.params.biasRegParam))
            keys.append((G, J, len(sub.ratings)))
            if trace is not None:  # (step, G, J, a, b, user rows of P_G, item rows of Q_J, ratings)
                ul, il = users[G].lo, items[J].lo
                trace.append((shift, t, G, J, a, b, (int(ul[a]), int(ul[a + 1])), (int(il[b]), int(il[b + 1])), len(sub.ratings)))
        if source.missing:
            return timer
        order = sorted(range(len(jobs)), key=lambda x: -keys[x][2])  # longest first
        t0 = time.perf_counter()
        done = run_jobs([jobs[x] for x in order], cfg.threads)
        timer.wall += time.perf_counter() - t0
        results: list[Any] = [None] * len(jobs)
        for x, res in zip(order, done, strict=False):
            results[x] = res
        for (G, J, n), (loss, updates, secs) in zip(keys, results, strict=False):
            acc = sums.setdefault((G, J), [0.0, 0, 0])
            acc[0] += loss
            acc[1] += n
            acc[2] += updates
            timer.cpu += secs
            timer.calls += 1
    return timer


def _kernel_job(sub: SubBlock, P, Q, bu, bi, mu, lr, reg, bias_reg):
    def job():
        t0 = time.perf_counter()
        sse = sgd_block(sub.users, sub.items, sub.ratings, NO_ORDER, P, Q, bu, bi, mu, lr, reg, bias_reg)
        return sse, len(sub.ratings), time.perf_counter() - t0

    return job


def sub_seed(seed: int, epoch: int, G: int, J: int, a: int, b: int) -> tuple[int, np.random.SeedSequence]:
    """(negative-sampling seed in [0, 2^63), the seeded generator of the visiting order) of one
    sub-block in one epoch: functions of (seed, epoch, sub-block) only, never of the plan."""
    ss = seed_seq(seed, 5, epoch, G, J, a, b)
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1)), ss


def _ranking_job(cfg: TaskConfig, csr: tuple, fb: FactorBlock, a: int, P, Q, bi, lr: float, epoch: int, key: tuple, trace):
    """A ranking kernel over one sub-block: negatives from the item inner block's rows only (the
    view Q: rows [0, len(Q))), positions visited in a seeded permutation, the block weight
    |N_u ∩ B_b| / (share * |N_u|) with share = the item block's part of the catalogue."""
    p = cfg.params
    users_idx, items_idx, ratings, indptr = csr
    seed, ss = sub_seed(p.seed, epoch, *key)
    order = np.random.default_rng(ss).permutation(len(ratings)).astype(np.int64)
    span = Q.shape[0]
    if p.blockWeighting:
        assert cfg.neg_total is not None, "ranking: neg_total must be set before training"
        neg_total = cfg.neg_total[fb.group][int(fb.lo[a]) : int(fb.lo[a + 1])]
    else:
        neg_total = NO_WEIGHTS
    share = span / cfg.n_items if cfg.n_items else 1.0
    floor = cfg.positive_floor

    def job():
        t0 = time.perf_counter()
        if p.loss == "bpr":
            loss, updates, _ = bpr_block(
                users_idx, items_idx, ratings, indptr, order, P, Q, bi, 0, span,
                p.numNegatives, lr, p.regParam, p.regParam, p.biasRegParam, floor, neg_total, share,
                seed, MAX_TRIES, trace,
            )  # fmt: skip
        else:
            loss, updates, _ = warp_block(
                users_idx, items_idx, ratings, indptr, order, P, Q, NO_BIAS, 0, span,
                lr, p.regParam, p.regParam, 0.0, floor, neg_total, p.margin, p.maxTrials,
                p.maxNorm, seed, MAX_TRIES, trace,
            )  # fmt: skip
        return loss, updates, time.perf_counter() - t0

    return job


def user_neg_totals(cfg: TaskConfig, source: Source) -> dict[int, np.ndarray]:
    """|N_u| = catalogue size minus the user's rated items (all item blocks), per row of every
    user group's P_G: from the training sub-blocks this task holds (every one, single task)."""
    assert cfg.users is not None and cfg.items is not None
    n_items = len(cfg.items.ids)
    out = {}
    for G in range(cfg.B):
        sizes = [cfg.users.size(G, a) for a in range(cfg.K)]
        lo = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        count = np.zeros(int(lo[-1]), np.int64)
        for J in range(cfg.B):
            for a, b in cfg.subs("R", G, J):
                sub = source.sub("R", G, J, a, b)
                if sub is None:
                    return {}
                u = source.ranking_sub(sub, sizes[a])[0]
                count[lo[a] : lo[a + 1]] += np.bincount(u, minlength=sizes[a])
        out[G] = n_items - count
    return out


def neg_totals_from_counts(users: Index, n_items: int, B: int, K: int, ids: np.ndarray, counts: np.ndarray) -> dict[int, np.ndarray]:
    """`user_neg_totals` from (user id, distinct rated items) pairs (the multi-task plan's driver
    aggregates these next to its index: one int per user, no ratings, no factors)."""
    known, group, inner, row = users.lookup(ids)
    out = {}
    for G in range(B):
        sizes = [users.size(G, a) for a in range(K)]
        lo = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        count = np.zeros(int(lo[-1]), np.int64)
        sel = known & (group == G)
        count[lo[inner[sel]] + row[sel]] = counts[sel]
        out[G] = n_items - count
    return out


def validation_sums(
    cfg: TaskConfig, groups: list[int], users: dict[int, FactorBlock], items: dict[int, FactorBlock], source: Source
) -> tuple[Sums, Timer]:
    """(sse, n) per outer block (G, J) of the validation ratings against the current factors."""
    jobs, keys = [], []
    for G in groups:
        for J in range(cfg.B):
            for a, b in cfg.subs("V", G, J):
                sub = source.sub("V", G, J, a, b)
                if sub is None:
                    continue
                P, bu = users[G].views(a)
                Q, bi = items[J].views(b)

                def job(sub=sub, P=P, Q=Q, bu=bu, bi=bi):
                    t0 = time.perf_counter()
                    return sse_block(sub.users, sub.items, sub.ratings, P, Q, bu, bi, cfg.mu), time.perf_counter() - t0

                jobs.append(job)
                keys.append((G, J, len(sub.ratings)))
    timer = Timer()
    sums: Sums = {}
    if source.missing:
        return sums, timer
    t0 = time.perf_counter()
    results = run_jobs(jobs, cfg.threads)
    timer.wall = time.perf_counter() - t0
    for (G, J, n), (sse, secs) in zip(keys, results, strict=False):  # job order is fixed: (G, J, a, b)
        acc = sums.setdefault((G, J), [0.0, 0])
        acc[0] += sse
        acc[1] += n
        timer.cpu += secs
        timer.calls += 1
    return sums, timer


def group_factors(cfg: TaskConfig, kind: str, group: int) -> FactorBlock:
    """The initial factors of one user ("U") or item ("I") group, its rows ordered by (inner block, id)."""
    index = cfg.users if kind == "U" else cfg.items
    assert index is not None  # the multi-task plan ships its index; the single task builds it first
    p = cfg.params
    return init_factors(kind, group, [index.block(group, inner) for inner in range(cfg.K)], p.rank, p.initStd, p.seed)


__all__ = [
    "MAX_TRIES",
    "group_factors",
    "neg_totals_from_counts",
    "sub_seed",
    "train_stratum",
    "user_neg_totals",
    "validation_sums",
]
