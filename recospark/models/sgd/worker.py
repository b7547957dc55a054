"""What DSGD's Spark tasks run: top-level pure functions over iterators, unit-tested without Spark.

* `pack_partition` (Arrow, in `mapInArrow`): the one setup pass, map side only: each input
  partition cut into partial sub-block blobs (see blocks.py), written to the executor-local store
  when asked; a sub-block's reader merges its partials.
* `single_task`: the single-task plan (all groups in one fat task, local mode): every epoch of a
  job in one task, threads over disjoint sub-blocks, factors and ratings resident in the store,
  validation RMSE, step schedule and early stopping in the task, the best factors exported.
* `initial_state`, `stratum_task`, `boundary_task`, `extract_stats`, `state_blobs`: the
  multi-task plan (one task per executor): one Spark stage per outer stratum, factor groups as
  RDD records (item groups move between tasks), ratings resident or streamed.
* `blobs_to_factor_rows` (Arrow, in `mapInArrow`): factor blobs -> BIASED_FACTORS rows.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from pyspark import TaskContext

from recospark import faults
from recospark.models.sgd import blocks as bk
from recospark.models.sgd.blocks import FactorBlock, Progress, Store, SubBlock
from recospark.models.sgd.kernel import NO_ORDER, sgd_block, sse_block, warm_up
from recospark.models.sgd.ranking import NO_TRACE, NO_WEIGHTS, bpr_block, csr_indptr, warp_block
from recospark.models.sgd.ranking import warm_up as ranking_warm_up

USER_SALT, ITEM_SALT = 1, 2  # blocks.hash_blocks salts
PACKED_SCHEMA = "kind string, G int, J int, a int, b int, part int, n long, rsum double, blob binary"
BLOB_SCHEMA = "kind string, grp int, blob binary"
RANKING = ("bpr", "warp")  # the ranking losses (ranking.py); "squared" runs kernel.py
MAX_TRIES = 32  # ranking: redraws of a negative the user rated before it is skipped
NO_BIAS = np.zeros(0, np.float32)  # warp trains without item biases (score p_u . q_i)

# ---------------------------------------------------------------------------------------------
# per-process state: compiled kernels and a thread pool, both created once per Python worker

_WARM: dict[str, float] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def ensure_warm(ranking: bool = False) -> float:
    """Load/compile the kernels (with `ranking`, the ranking kernels too) once per Python worker;
    returns the seconds this call took."""
    s = 0.0
    if "s" not in _WARM:
        _WARM["s"] = warm_up()
        s += _WARM["s"]
    if ranking and "r" not in _WARM:
        _WARM["r"] = ranking_warm_up()
        s += _WARM["r"]
    return s


def _pool(threads: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsgd")
        return pool


def run_jobs(jobs: Sequence[Callable[..., Any]], threads: int) -> list[Any]:
    """Run independent jobs (largest first) on `threads` threads; results in job order."""
    if threads <= 1 or len(jobs) <= 1:
        return [j() for j in jobs]
    futures = [_pool(threads).submit(j) for j in jobs]
    return [f.result() for f in futures]


@dataclass
class Timer:
    """Kernel time of one task: `wall` (inner steps, dispatch to last thread done) and `cpu`
    (sum of kernel calls' durations over threads)."""

    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0

    def add(self, other: Timer) -> None:
        self.wall += other.wall
        self.cpu += other.cpu
        self.calls += other.calls


# ---------------------------------------------------------------------------------------------
# the configuration a task needs (small, pickled into the closure)


@dataclass(frozen=True)
class TaskConfig:
    run_id: str
    B: int
    K: int
    rank: int
    reg: float
    bias_reg: float
    init_std: float
    seed: int
    mu: float
    threads: int
    tasks: int
    users: bk.Index | None  # every user's (group, inner block, row); None: the single task builds it
    items: bk.Index | None
    # (kind, G, J, a, b) -> n for every non-empty train ("R") / validation ("V") sub-block
    sub_counts: dict = field(default_factory=dict)
    # (kind, G, J, a, b) -> number of partial blobs the setup pass wrote for it
    part_counts: dict = field(default_factory=dict)
    root: str | None = None  # the store's root directory; None: blocks.store_root() (tests pass a tmp dir)
    # ranking losses (ranking.py); "squared" ignores these
    loss: str = "squared"
    num_negatives: int = 1
    pos_threshold: float = float("-inf")  # a rating >= this is a positive
    block_weighting: bool = True
    margin: float = 1.0
    max_trials: int = 100
    max_norm: float = 0.0
    n_items: int = 0  # the catalogue: items with training ratings
    # user group -> |N_u| (n_items minus the user's rated items) per row of P_G; set before training
    neg_total: dict | None = None

    @property
    def ranking(self) -> bool:
        return self.loss in RANKING

    def store(self) -> Store:
        return Store(self.run_id, self.root)

    def subs(self, kind: str, G: int, J: int) -> list[tuple[int, int]]:
        return [(a, b) for a in range(self.K) for b in range(self.K) if self.sub_counts.get((kind, G, J, a, b), 0) > 0]


# ---------------------------------------------------------------------------------------------
# setup: the one packing pass (Arrow, map side only)


def pack_partition(batches: Iterator, *, kind: str, seed: int, B: int, K: int, run_id: str | None, part: int | None = None) -> Iterator:
    """mapInArrow, the one setup pass: the ratings of one input partition (columns user, item, r)
    -> one partial blob of kind `kind` ("R" training, "V" validation) per sub-block (G, J, a, b),
    with global ids. Blocks are hashes of the ids, so this needs no index and no shuffle; whoever
    reads a sub-block merges its partials (blocks.merge_subs: ids to rows, sorted). With `run_id`,
    the partials also go to this executor's store. Output: PACKED_SCHEMA rows."""

    if part is None:
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
    cols: dict[str, list] = {"user": [], "item": [], "r": []}
    for batch in batches:
        for c in cols:
            cols[c].append(batch.column(c).to_numpy(zero_copy_only=False))
    if not cols["r"]:
        return
    user, item = np.concatenate(cols["user"]).astype(np.int64), np.concatenate(cols["item"]).astype(np.int64)
    r = np.concatenate(cols["r"]).astype(np.float32)
    ub = bk.hash_blocks(user, seed, B * K, USER_SALT)
    ib = bk.hash_blocks(item, seed, B * K, ITEM_SALT)
    # the sub-block of each row; a stable radix sort on that small key groups the rows
    key = (((ub // K) * B + ib // K) * K + ub % K) * K + ib % K
    narrow = np.int16 if (B * K) ** 2 < (1 << 15) else np.int32
    order = np.argsort(key.astype(narrow), kind="stable")
    key, user, item, r = key[order], user[order].astype(np.int32), item[order].astype(np.int32), r[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    store = Store(run_id) if run_id else None
    rows = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(key)], strict=False):
        if hi == lo:
            continue
        rest, b_ = divmod(int(key[lo]), K)
        rest, a_ = divmod(rest, K)
        G_, J_ = divmod(rest, B)
        blob = bk.encode_sub(kind, G_, J_, a_, b_, user[lo:hi], item[lo:hi], r[lo:hi], part=part)
        if store is not None:
            store.put(blob_name(blob), blob)
        rows.append((kind, G_, J_, a_, b_, part, int(hi - lo), float(r[lo:hi].astype(np.float64).sum()), blob))
    if run_id:
        ensure_warm()  # the single task's job runs in these Python workers next
    if rows:
        types = {
            "kind": pa.string(),
            "G": pa.int32(),
            "J": pa.int32(),
            "a": pa.int32(),
            "b": pa.int32(),
            "part": pa.int32(),
            "n": pa.int64(),
            "rsum": pa.float64(),
            "blob": pa.binary(),
        }
        yield pa.RecordBatch.from_arrays(
            [pa.array([row[x] for row in rows], type=t) for x, t in enumerate(types.values())], names=list(types)
        )


def blob_name(blob) -> str:
    """The store name of a sub-block blob: merged "R-G-J-a-b", partial "R-G-J-a-b.p<part>"."""
    h = bk.header(blob)
    if h.kind not in ("R", "V"):
        raise ValueError(f"unexpected blob kind {h.kind}")
    name = bk.sub_name(h.kind, h.G, h.J, h.a, h.b)
    return f"{name}.p{h.rank - 1}" if h.rank else name


# ---------------------------------------------------------------------------------------------
# the SGD core shared by both plans


class Source:
    """Sub-blocks for a task: merged from its partial blobs (streamed in this task's input, or in
    the store) on first use, then kept merged in memory and in the store."""

    def __init__(self, cfg: TaskConfig, store: Store | None, streamed: dict[str, Any] | None = None):
        self.cfg = cfg
        self.store = store
        self.streamed = streamed or {}
        self.merged: dict[str, SubBlock] = {}
        self.csr: dict[str, tuple] = {}  # ranking: (users, items, ratings, indptr) per sub-block
        self.missing: list[str] = []
        self._listing: list[str] | None = None
        self._lock = threading.Lock()

    def partials(self, kind: str, G: int, J: int, a: int, b: int) -> list | None:
        """Every partial blob of a sub-block (None, and recorded as missing, if any is absent)."""
        name = bk.sub_name(kind, G, J, a, b)
        parts = self._partials(name)
        if len(parts) != self.cfg.part_counts.get((kind, G, J, a, b), 0) or not parts:
            with self._lock:
                self.missing.append(name)
            return None
        return parts

    def _partials(self, name: str) -> list:
        prefix = name + ".p"
        found = {n: b for n, b in self.streamed.items() if n.startswith(prefix)}
        if self.store is not None:
            if self._listing is None:
                self._listing = self.store.names()
            for n in self._listing:
                if n.startswith(prefix) and n not in found:
                    buf = self.store.get(n)
                    if buf is not None:
                        found[n] = buf
        return [found[n] for n in sorted(found)]

    def sub(self, kind: str, G: int, J: int, a: int, b: int) -> SubBlock | None:
        name = bk.sub_name(kind, G, J, a, b)
        with self._lock:
            sub = self.merged.get(name)
        if sub is not None:
            return sub
        buf = self.streamed.get(name)
        if buf is None and self.store is not None:
            buf = self.store.get(name)
        if buf is None:
            parts = self.partials(kind, G, J, a, b)
            if parts is None:
                return None
            cfg = self.cfg
            assert cfg.users is not None and cfg.items is not None  # set before any merge
            buf = bk.merge_subs(parts, cfg.users.block(G, a), cfg.items.block(J, b))
            if self.store is not None:
                self.store.put(name, buf)
        sub = bk.decode_sub(buf)
        with self._lock:
            self.merged[name] = sub
        return sub

    def ranking_sub(self, sub: SubBlock, n_users: int) -> tuple:
        """(users, items, ratings, indptr) of a training sub-block as the ranking kernels take
        them: writable copies, a repeated (user, item) pair kept once (its highest rating, which
        merge_subs sorts last), indptr the CSR over the inner block's `n_users` users. Cached."""
        name = bk.sub_name("R", sub.G, sub.J, sub.a, sub.b)
        with self._lock:
            got = self.csr.get(name)
        if got is not None:
            return got
        u, i, r = np.array(sub.users, np.int32), np.array(sub.items, np.int32), np.array(sub.ratings, np.float32)
        if len(u) > 1:
            key = (u.astype(np.int64) << 32) | i.astype(np.int64)
            last = np.r_[np.diff(key) != 0, True]
            if not last.all():
                u, i, r = u[last], i[last], r[last]
        got = (u, i, r, csr_indptr(u, n_users))
        with self._lock:
            self.csr[name] = got
        return got

    def prefetch(self, keys: list[tuple], threads: int) -> None:
        """Merge the sub-blocks `keys` ((kind, G, J, a, b)) on `threads` threads."""
        run_jobs([lambda k=k: self.sub(*k) for k in keys], threads)


def absorb(records: Iterable, store: Store | None) -> tuple[dict[str, Any], list, dict[str, int]]:
    """Split a task's input into streamed blobs (name -> bytes, written to the store when given
    and absent there) and the other records; returns (blobs, others, streamed bytes per kind:
    "R" training sub-blocks, "V" validation sub-blocks)."""
    blobs: dict[str, Any] = {}
    others = []
    nbytes = {"R": 0, "V": 0}
    for rec in records:
        if hasattr(rec, "blob"):  # a Row of the packed frame, streamed as is
            tag, payload = "B", rec.blob
        else:
            _, (tag, payload) = rec
        if tag == "B":
            name = blob_name(payload)
            blobs[name] = payload
            nbytes[name[0]] += len(payload)
            if store is not None and not store.has(name):
                store.put(name, bytes(payload))
        else:
            others.append(rec)
    return blobs, others, nbytes


def _views(fb: FactorBlock, inner: int):
    lo, hi = int(fb.lo[inner]), int(fb.lo[inner + 1])
    return fb.factors[lo:hi], fb.biases[lo:hi]


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
    sums: dict[tuple[int, int], list[float]],
    trace: list | None = None,
    neg_trace: dict | None = None,
) -> Timer:
    """One outer stratum for the user groups `groups`: K inner steps, each running its disjoint
    sub-blocks on `cfg.threads` threads. Adds (loss, ratings, updates) per outer block (G, J) into
    `sums` (squared: loss = sse, updates = ratings), summed in a fixed order so any plan gives
    identical floats. Factors are updated in place. Ranking losses: `neg_trace` (tests), when
    given, receives (epoch, G, J, a, b) -> the first negatives each sub-block's kernel drew, as
    rows of the item inner block's view."""
    timer = Timer()
    for t, step in enumerate(bk.step_blocks(cfg.seed, epoch, shift, groups, cfg.B, cfg.K)):
        jobs, keys = [], []
        for G, J, a, b in step:
            if cfg.sub_counts.get(("R", G, J, a, b), 0) == 0:
                continue
            sub = source.sub("R", G, J, a, b)
            if sub is None:
                continue
            P, bu = _views(users[G], a)
            Q, bi = _views(items[J], b)
            if cfg.ranking:
                rtrace = NO_TRACE
                if neg_trace is not None:
                    rtrace = neg_trace[(epoch, G, J, a, b)] = np.full(4096, -1, np.int64)
                jobs.append(_ranking_job(cfg, source.ranking_sub(sub, P.shape[0]), users[G], a, P, Q, bi, lr, epoch, (G, J, a, b), rtrace))
            else:
                jobs.append(_kernel_job(sub, P, Q, bu, bi, cfg.mu, lr, cfg.reg, cfg.bias_reg))
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
    ss = bk.seed_seq(seed, 5, epoch, G, J, a, b)
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1)), ss


def _ranking_job(cfg: TaskConfig, csr: tuple, fb: FactorBlock, a: int, P, Q, bi, lr: float, epoch: int, key: tuple, trace):
    """A ranking kernel over one sub-block: negatives from the item inner block's rows only (the
    view Q: rows [0, len(Q))), positions visited in a seeded permutation, the block weight
    |N_u ∩ B_b| / (share * |N_u|) with share = the item block's part of the catalogue."""
    users_idx, items_idx, ratings, indptr = csr
    seed, ss = sub_seed(cfg.seed, epoch, *key)
    order = np.random.default_rng(ss).permutation(len(ratings)).astype(np.int64)
    span = Q.shape[0]
    if cfg.block_weighting:
        assert cfg.neg_total is not None, "ranking: neg_total must be set before training"
        neg_total = cfg.neg_total[fb.group][int(fb.lo[a]) : int(fb.lo[a + 1])]
    else:
        neg_total = NO_WEIGHTS
    share = span / cfg.n_items if cfg.n_items else 1.0

    def job():
        t0 = time.perf_counter()
        if cfg.loss == "bpr":
            loss, updates, _ = bpr_block(
                users_idx, items_idx, ratings, indptr, order, P, Q, bi, 0, span,
                cfg.num_negatives, lr, cfg.reg, cfg.reg, cfg.bias_reg, cfg.pos_threshold, neg_total, share,
                seed, MAX_TRIES, trace,
            )  # fmt: skip
        else:
            loss, updates, _ = warp_block(
                users_idx, items_idx, ratings, indptr, order, P, Q, NO_BIAS, 0, span,
                lr, cfg.reg, cfg.reg, 0.0, cfg.pos_threshold, neg_total, cfg.margin, cfg.max_trials,
                cfg.max_norm, seed, MAX_TRIES, trace,
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


def neg_totals_from_counts(users: bk.Index, n_items: int, B: int, K: int, ids: np.ndarray, counts: np.ndarray) -> dict[int, np.ndarray]:
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
) -> tuple[dict[tuple[int, int], list[float]], Timer]:
    """(sse, n) per outer block (G, J) of the validation ratings against the current factors."""
    jobs, keys = [], []
    for G in groups:
        for J in range(cfg.B):
            for a, b in cfg.subs("V", G, J):
                sub = source.sub("V", G, J, a, b)
                if sub is None:
                    continue
                P, bu = _views(users[G], a)
                Q, bi = _views(items[J], b)

                def job(sub=sub, P=P, Q=Q, bu=bu, bi=bi):
                    t0 = time.perf_counter()
                    return sse_block(sub.users, sub.items, sub.ratings, P, Q, bu, bi, cfg.mu), time.perf_counter() - t0

                jobs.append(job)
                keys.append((G, J, len(sub.ratings)))
    timer = Timer()
    sums: dict[tuple[int, int], list[float]] = {}
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


def total(sums: dict[tuple[int, int], list[float]]) -> tuple[float, int]:
    """Sum per-outer-block (sse, n) in (G, J) order: the same float whatever plan produced them."""
    sse, n = 0.0, 0
    for key in sorted(sums):
        sse += sums[key][0]
        n += int(sums[key][1])
    return sse, n


def epoch_fields(loss: str, sums: dict[tuple[int, int], list[float]], val_rmse: float | None) -> tuple[float, dict[str, Any]]:
    """(the training metric the step schedule watches, history fields) of one epoch from the
    training `sums` (loss, ratings, updates per outer block). Squared: RMSE over the ratings and
    validation RMSE. Ranking: the objective's mean loss per update (bpr: -log sigmoid per pair;
    warp: H(rank)-weighted hinge per update) and no validation metric (val_loss None)."""
    value, n = total(sums)
    updates = sum(int(sums[key][2]) for key in sorted(sums))
    if loss in RANKING:
        train_loss = value / updates if updates else float("nan")
        return train_loss, {"objective": loss, "train_loss": train_loss, "val_loss": None, "updates": updates, "ratings": int(n)}
    train_rmse = float(np.sqrt(value / n)) if n else float("nan")
    return train_rmse, {"train_rmse": train_rmse, "val_rmse": val_rmse, "updates": int(n)}


def _rmse(sse: float, n: int) -> float | None:
    return float(np.sqrt(sse / n)) if n else None


def build_index(cfg: TaskConfig, source: Source) -> tuple[bk.Index, bk.Index] | None:
    """The single task's index from every training sub-block's partials: the users of inner block
    (G, a) are the ids in sub-blocks (G, *, a, *), the items of (J, b) those in (*, J, *, b)."""
    D = cfg.B * cfg.K
    users: list[list] = [[] for _ in range(D)]
    items: list[list] = [[] for _ in range(D)]
    for kind, G, J, a, b in cfg.part_counts:
        if kind != "R":
            continue
        parts = source.partials(kind, G, J, a, b)
        if parts is None:
            return None
        for buf in parts:
            sub = bk.decode_sub(buf)
            users[G * cfg.K + a].append(sub.users)
            items[J * cfg.K + b].append(sub.items)

    def unique(lists):
        return np.unique(np.concatenate(lists)).astype(np.int32) if lists else np.zeros(0, np.int32)

    blocks = run_jobs([lambda x=x: unique(x) for x in users + items], cfg.threads)
    return bk.Index.from_blocks(blocks[:D], cfg.K), bk.Index.from_blocks(blocks[D:], cfg.K)


def with_index(cfg: TaskConfig, store: Store | None, source: Source) -> TaskConfig | None:
    """`cfg` with its index: given, else from the store, else built from the partials (and stored)."""
    if cfg.users is not None:
        return cfg
    bufs = [store.get(f"IX-{kind}") for kind in "UI"] if store is not None else [None, None]
    if all(b is not None for b in bufs):
        users, items = (bk.Index.decode(b) for b in bufs)
    else:
        built = build_index(cfg, source)
        if built is None:
            return None
        users, items = built
        if store is not None:
            store.put("IX-U", users.encode())
            store.put("IX-I", items.encode())
    out = replace(cfg, users=users, items=items)
    source.cfg = out
    return out


def group_factors(cfg: TaskConfig, kind: str, group: int) -> FactorBlock:
    """The initial factors of one user ("U") or item ("I") group, its rows ordered by (inner block, id)."""
    index = cfg.users if kind == "U" else cfg.items
    assert index is not None  # the multi-task plan ships its index; the single task builds it first
    return bk.init_factors(kind, group, [index.block(group, inner) for inner in range(cfg.K)], cfg.rank, cfg.init_std, cfg.seed)


# ---------------------------------------------------------------------------------------------
# the single-task plan


@dataclass(frozen=True)
class SinglePlan:
    """One job of the single-task plan: run epochs from `progress` (factors at store version
    `progress.epoch`, or the initial factors when 0) until `max_iter`, early stopping or
    `max_epochs` epochs in this job."""

    cfg: TaskConfig
    progress: Progress
    max_iter: int
    max_epochs: int
    early_rounds: int
    schedule: str
    step_decay: float
    validation: bool
    keep_best: bool  # early stopping on: the best epoch's factors are kept apart
    fail_partition: int | None = None


def _load_version(store: Store, cfg: TaskConfig, version: int, source: Source):
    users: dict[int, FactorBlock] = {}
    items: dict[int, FactorBlock] = {}
    for kind, out in (("U", users), ("I", items)):
        for g in range(cfg.B):
            if version == 0:
                fb = group_factors(cfg, kind, g)
            else:
                buf = store.read(bk.factors_name(kind, g, version))
                if buf is None:
                    source.missing.append(bk.factors_name(kind, g, version))
                    fb = None
                else:
                    fb = bk.decode_factors(buf)
            if fb is None:
                return None, None
            out[g] = fb
    return users, items


def _copy(groups: dict[int, FactorBlock]) -> dict[int, FactorBlock]:
    return {g: fb._replace(factors=fb.factors.copy(), biases=fb.biases.copy()) for g, fb in groups.items()}


def _write_version(store: Store, version: int, users, items) -> None:
    for fb in list(users.values()) + list(items.values()):
        store.put(bk.factors_name(fb.kind, fb.group, version), bk.encode_factors(fb))


def _drop_versions(store: Store, keep: set[int]) -> None:
    for name in store.names():
        if name.startswith(("PU-", "PI-")) and int(name.rsplit("-v", 1)[1]) not in keep:
            store.remove(name)


def run_epochs(plan: SinglePlan, users, items, source: Source):
    """The epochs of one job on in-memory factors (the pure heart of `single_task`).

    Returns (history entries, final progress, best) where `best` is a copy (users, items, epoch)
    of the best epoch's factors when that is not the last epoch run here (else None: the current
    factors are the best, or the best is an earlier job's version in the store)."""
    cfg, pr = plan.cfg, plan.progress
    groups = list(range(cfg.B))
    history: list[dict[str, Any]] = []
    best = None
    for _ in range(plan.max_epochs):
        if pr.stopped or pr.epoch >= plan.max_iter:
            break
        if plan.keep_best and pr.epoch > 0 and pr.best_epoch == pr.epoch:
            best = (_copy(users), _copy(items), pr.epoch)  # the next epoch overwrites the best factors
        t0 = time.perf_counter()
        sums: dict = {}
        timer = Timer()
        order = bk.strata_order(cfg.seed, pr.epoch, cfg.B, first=pr.offset)
        for shift in order:
            timer.add(train_stratum(cfg, shift, groups, users, items, source, lr=pr.lr, epoch=pr.epoch, sums=sums))
            if source.missing:
                return history, pr, best
        val_rmse, val_n = None, 0
        if plan.validation:
            vsums, vt = validation_sums(cfg, groups, users, items, source)
            if source.missing:
                return history, pr, best
            vsse, val_n = total(vsums)
            val_rmse = _rmse(vsse, val_n)
            timer.add(vt)
        train_metric, fields = epoch_fields(cfg.loss, sums, val_rmse)
        nxt, _ = bk.advance(
            pr,
            train_metric,
            val_rmse,
            early_rounds=plan.early_rounds,
            schedule=plan.schedule,
            step_decay=plan.step_decay,
            last_shift=order[-1],
        )
        history.append(
            {
                "epoch": pr.epoch + 1,
                **fields,
                "step_size": pr.lr,
                "val_n": int(val_n),
                "task_seconds": time.perf_counter() - t0,
                "kernel_seconds": timer.wall,
                "kernel_cpu_seconds": timer.cpu,
                "kernel_calls": timer.calls,
            }
        )
        pr = nxt
    if best is not None and best[2] != pr.best_epoch:
        best = None
    if pr.best_epoch == pr.epoch:
        best = None
    return history, pr, best


def single_task(index: int, records: Iterable, *, plan: SinglePlan) -> Iterator[tuple]:
    """The single-task plan's job: (kind, grp, blob) rows for `BLOB_SCHEMA`.

    Input: nothing (resident) or streamed blobs ("B") of every sub-block and id list, written to
    the store first. Yields one stats row ("S", JSON) and, when training ended in this job, the
    best factors ("U"/"I" factor blobs). When something it needs is neither streamed nor in the
    store (another executor, lost files) it trains nothing and reports `missing`; the driver then
    streams everything and starts over (deterministic, so the result is the same).
    """

    started, started_at = time.perf_counter(), time.time()
    faults.fail_first_attempt(plan.fail_partition, "DSGD single-task epochs")
    compile_s = ensure_warm(plan.cfg.ranking)
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, _, streamed_bytes = absorb(records, store)
    source = Source(cfg, store, blobs)
    t_index = time.perf_counter()
    indexed = with_index(cfg, store, source)
    index_s = time.perf_counter() - t_index
    if indexed is not None:
        cfg = indexed
        plan = replace(plan, cfg=cfg)
        users, items = _load_version(store, cfg, plan.progress.epoch, source)
    else:
        users = items = None
    stats: dict[str, Any] = {
        "compile_seconds": compile_s,
        "streamed_bytes": streamed_bytes["R"],
        "streamed_val_bytes": streamed_bytes["V"],
        "pid": os.getpid(),
        "threads": cfg.threads,
        "missing": 0,
        "index_seconds": index_s,
        "started_at": started_at,
    }
    if users is not None:  # merge every sub-block up front, on the task's threads
        t_merge = time.perf_counter()
        keys = [k for k in cfg.sub_counts if k[0] == "R" or plan.validation]
        source.prefetch(keys, cfg.threads)
        stats["merge_seconds"] = time.perf_counter() - t_merge
        if not source.missing:  # ratings kept after merging (validation rows of unknown ids dropped)
            stats["n_train"] = sum(len(source.merged[bk.sub_name(*k)].ratings) for k in keys if k[0] == "R")
            stats["n_validation"] = sum(len(source.merged[bk.sub_name(*k)].ratings) for k in keys if k[0] == "V")
            if cfg.ranking and cfg.neg_total is None:  # |N_u| from every training sub-block, here in the task
                assert cfg.items is not None
                cfg = replace(cfg, n_items=len(cfg.items.ids), neg_total=user_neg_totals(cfg, source))
                plan = replace(plan, cfg=cfg)
    if users is None or source.missing:
        stats.update(
            missing=len(source.missing), missing_example=source.missing[:3], history=[], task_seconds=time.perf_counter() - started
        )
        yield ("S", 0, json.dumps(stats).encode())
        return
    load_s = time.perf_counter() - started
    history, pr, best = run_epochs(plan, users, items, source)
    if source.missing:
        stats.update(
            missing=len(source.missing), missing_example=source.missing[:3], history=[], task_seconds=time.perf_counter() - started
        )
        yield ("S", 0, json.dumps(stats).encode())
        return
    finished = pr.stopped or pr.epoch >= plan.max_iter
    t_out = time.perf_counter()
    best_version = pr.best_epoch if plan.keep_best else pr.epoch
    if finished:
        if best_version == pr.epoch:
            out_users, out_items = users, items
        elif best is not None:
            out_users, out_items = best[0], best[1]
        else:  # the best epoch ended an earlier job of this run: its version is in the store
            out_users, out_items = _load_version(store, cfg, best_version, source)
            if out_users is None:
                stats.update(
                    missing=len(source.missing), missing_example=source.missing[:3], history=[], task_seconds=time.perf_counter() - started
                )
                yield ("S", 0, json.dumps(stats).encode())
                return
        rows = [(fb.kind, fb.group, bk.encode_factors(fb)) for fb in list(out_users.values()) + list(out_items.values())]
        out_bytes = sum(len(r[2]) for r in rows)
    else:
        _write_version(store, pr.epoch, users, items)
        if best is not None:
            _write_version(store, best_version, best[0], best[1])
        _drop_versions(store, {pr.epoch, best_version})
        rows, out_bytes = [], 0
    stats.update(
        history=history,
        progress=pr.__dict__,
        finished=finished,
        load_seconds=load_s,
        output_seconds=time.perf_counter() - t_out,
        output_bytes=out_bytes,
        task_seconds=time.perf_counter() - started,
    )
    yield ("S", 0, json.dumps(stats).encode())
    yield from rows


class _Blob(NamedTuple):
    blob: bytes


def single_task_arrow(batches: Iterator, *, plan: SinglePlan, chunk: int = 8192) -> Iterator:
    """`single_task` as a mapInArrow function (the setup pass's Python workers run it, already
    warm). Input batches carry streamed blobs in a `blob` column, or anything (resident). Output:
    SINGLE_OUT_SCHEMA rows, the stats row (kind "S", JSON in `blob`) then, when training ended,
    the best factors as rows (kind "U"/"I", id, features, bias), ready to be checkpointed."""

    def records():
        for batch in batches:
            if "blob" in batch.schema.names:
                for blob in batch.column("blob").to_pylist():
                    yield _Blob(blob)

    rows = list(single_task(0, records(), plan=plan))
    empty = pa.array([[]], pa.list_(pa.float32()))
    yield pa.RecordBatch.from_arrays(
        [pa.array(["S"]), pa.array([0], pa.int32()), empty, pa.array([0.0], pa.float32()), pa.array([rows[0][2]], pa.binary())],
        names=["kind", "id", "features", "bias", "blob"],
    )
    for _kind, _, blob in rows[1:]:
        for batch in blobs_to_factor_rows(iter([pa.RecordBatch.from_pydict({"blob": [blob]})]), chunk=chunk, with_kind=True):
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array([b""] * batch.num_rows, pa.binary())], names=["kind", "id", "features", "bias", "blob"]
            )


# ---------------------------------------------------------------------------------------------
# the multi-task plan


def initial_state(index: int, records: Iterable, *, cfg: TaskConfig, shift: int) -> Iterator[tuple]:
    """The initial factor records of task `index`: its user groups ("U", G) and the item groups
    it holds in stratum `shift` ("I", J), all keyed by `index`."""
    for _ in records:
        pass
    for G in range(cfg.B):
        if bk.owner(G, cfg.tasks) == index:
            yield index, ("U", group_factors(cfg, "U", G))
    for J in range(cfg.B):
        if bk.item_home(J, shift, cfg.B, cfg.tasks) == index:
            yield index, ("I", group_factors(cfg, "I", J))


@dataclass(frozen=True)
class StagePlan:
    cfg: TaskConfig
    epoch: int
    shift: int
    next_shift: int  # the next stratum's shift (items are keyed for it)
    lr: float
    first: bool  # the epoch's first stage: starts the epoch's stats
    validation: bool = False  # boundary stage: compute the validation SSE
    replicate: bool = False  # route every item group to every task (for the boundary's validation)
    fail_partition: int | None = None


def _split_state(records: list) -> tuple[dict[int, FactorBlock], dict[int, FactorBlock], dict | None, int]:
    users: dict[int, FactorBlock] = {}
    items: dict[int, FactorBlock] = {}
    stats, nbytes = None, 0
    for _, (tag, payload) in records:
        if tag == "U":
            users[payload.group] = payload
            nbytes += payload.factors.nbytes
        elif tag == "I":
            items.setdefault(payload.group, payload)
            nbytes += payload.factors.nbytes
        elif tag == "L":
            stats = payload
    return users, items, stats, nbytes


def _route(index: int, users, items, stats, cfg: TaskConfig, next_shift: int, replicate: bool) -> Iterator:
    for _G, fb in sorted(users.items()):
        yield index, ("U", fb)
    for J, fb in sorted(items.items()):
        if replicate:
            for t in range(cfg.tasks):
                yield t, ("I", fb)
        else:
            yield bk.item_home(J, next_shift, cfg.B, cfg.tasks), ("I", fb)
    yield index, ("L", stats)


def stratum_task(index: int, records: Iterable, *, plan: StagePlan) -> Iterator[tuple]:
    """One outer stratum of the multi-task plan in task `index`: trains its user groups against
    the item groups it holds, then yields users (kept here), items keyed for the next stratum
    and the epoch's running stats ("L"). Inputs are private copies (unpickled), so they are
    updated in place; a retry unpickles them again."""

    started = time.perf_counter()
    faults.fail_first_attempt(plan.fail_partition, "DSGD stratum")
    compile_s = ensure_warm(plan.cfg.ranking)
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, rest, streamed_bytes = absorb(records, store)
    users, items, stats, nbytes = _split_state(rest)
    if plan.first or stats is None:
        stats = {
            "sums": {},
            "kernel_seconds": 0.0,
            "kernel_cpu_seconds": 0.0,
            "kernel_calls": 0,
            "task_seconds": 0.0,
            "compile_seconds": 0.0,
            "streamed_bytes": 0,
            "factor_bytes": 0,
            "missing": 0,
            "stages": 0,
        }
    stats = dict(stats)
    source = Source(cfg, store, blobs)
    groups = sorted(users)
    missing_items = [(G + plan.shift) % cfg.B for G in groups if (G + plan.shift) % cfg.B not in items]
    if missing_items:
        raise RuntimeError(f"DSGD stratum {plan.shift}: task {index} lacks item groups {missing_items}")
    sums = {k: list(v) for k, v in stats["sums"].items()}
    timer = Timer()
    if not stats["missing"]:
        source.prefetch(
            [("R", G, (G + plan.shift) % cfg.B, a, b) for G in groups for a, b in cfg.subs("R", G, (G + plan.shift) % cfg.B)], cfg.threads
        )
        timer = train_stratum(cfg, plan.shift, groups, users, items, source, lr=plan.lr, epoch=plan.epoch, sums=sums)
    stats["missing"] += len(source.missing)
    stats["sums"] = sums
    stats["kernel_seconds"] += timer.wall
    stats["kernel_cpu_seconds"] += timer.cpu
    stats["kernel_calls"] += timer.calls
    stats["compile_seconds"] += compile_s
    stats["streamed_bytes"] += streamed_bytes["R"]
    stats["factor_bytes"] += nbytes
    stats["stages"] += 1
    stats["task_seconds"] += time.perf_counter() - started
    yield from _route(index, users, items, stats, cfg, plan.next_shift, plan.replicate)


def boundary_task(index: int, records: Iterable, *, plan: StagePlan) -> Iterator[tuple]:
    """The end of a multi-task epoch: validation SSE of this task's user groups against every
    item group (replicated here) and the state for the next epoch (items this task holds in
    stratum `plan.next_shift`; the other replicas are dropped)."""
    started = time.perf_counter()
    compile_s = ensure_warm()
    cfg = plan.cfg
    store = cfg.store()
    blobs, rest, streamed_bytes = absorb(records, store)
    users, items, stats, nbytes = _split_state(rest)
    stats = dict(stats or {})
    source = Source(cfg, store, blobs)
    vsums, timer = validation_sums(cfg, sorted(users), users, items, source)
    stats["missing"] = stats.get("missing", 0) + len(source.missing)
    stats["val_sums"] = vsums
    stats["kernel_seconds"] = stats.get("kernel_seconds", 0.0) + timer.wall
    stats["kernel_cpu_seconds"] = stats.get("kernel_cpu_seconds", 0.0) + timer.cpu
    stats["compile_seconds"] = stats.get("compile_seconds", 0.0) + compile_s
    stats["streamed_val_bytes"] = stats.get("streamed_val_bytes", 0) + streamed_bytes["V"]
    stats["factor_bytes"] = stats.get("factor_bytes", 0) + nbytes
    stats["stages"] = stats.get("stages", 0) + 1
    stats["task_seconds"] = stats.get("task_seconds", 0.0) + time.perf_counter() - started
    kept = {J: fb for J, fb in items.items() if bk.item_home(J, plan.next_shift, cfg.B, cfg.tasks) == index}
    yield from _route(index, users, kept, stats, cfg, plan.next_shift, False)


def extract_stats(records: Iterable) -> Iterator[dict]:
    """The "L" record of each task (the driver needs scalars only)."""
    for _, (tag, payload) in records:
        if tag == "L":
            yield payload


def state_blobs(records: Iterable) -> Iterator[tuple]:
    """Factor records -> (kind, grp, blob) rows for `BLOB_SCHEMA`."""
    for _, (tag, payload) in records:
        if tag in ("U", "I"):
            yield (payload.kind, payload.group, bk.encode_factors(payload))


# ---------------------------------------------------------------------------------------------
# export and cleanup


def blobs_to_factor_rows(batches: Iterator, *, chunk: int = 8192, with_kind: bool = False) -> Iterator:
    """mapInArrow: (kind, grp, blob) batches -> (id int, features array<float>, bias float)
    batches, preceded by a `kind` column ("U"/"I") when `with_kind`."""

    for batch in batches:
        for blob in batch.column("blob").to_pylist():
            fb = bk.decode_factors(blob, writable=False)
            n, k = fb.factors.shape
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                values = pa.array(np.ascontiguousarray(fb.factors[lo:hi]).reshape(-1), type=pa.float32())
                offsets = pa.array(np.arange(0, (hi - lo) * k + 1, k, dtype=np.int32))
                columns = [
                    pa.array(fb.ids[lo:hi], type=pa.int32()),
                    pa.ListArray.from_arrays(offsets, values),
                    pa.array(fb.biases[lo:hi], type=pa.float32()),
                ]
                names = ["id", "features", "bias"]
                if with_kind:
                    columns, names = [pa.array([fb.kind] * (hi - lo), type=pa.string()), *columns], ["kind", *names]
                yield pa.RecordBatch.from_arrays(columns, names=names)


def cleanup_task(_index: int, _records: Iterable, *, run_id: str) -> Iterator[tuple[str, bool]]:
    """Delete this executor's store of run `run_id` (every file this run wrote here)."""
    for _ in _records:
        pass
    store = Store(run_id)
    yield store.dir, store.destroy()


__all__ = [
    "BLOB_SCHEMA",
    "PACKED_SCHEMA",
    "SinglePlan",
    "Source",
    "StagePlan",
    "TaskConfig",
    "Timer",
    "absorb",
    "blob_name",
    "blobs_to_factor_rows",
    "boundary_task",
    "build_index",
    "cleanup_task",
    "ensure_warm",
    "epoch_fields",
    "extract_stats",
    "group_factors",
    "initial_state",
    "neg_totals_from_counts",
    "pack_partition",
    "run_epochs",
    "run_jobs",
    "single_task",
    "single_task_arrow",
    "state_blobs",
    "stratum_task",
    "sub_seed",
    "total",
    "train_stratum",
    "user_neg_totals",
    "validation_sums",
    "with_index",
]
