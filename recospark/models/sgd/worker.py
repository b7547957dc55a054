"""What DSGD's Spark tasks run: top-level pure functions over iterators, unit-tested without Spark.

* `pack_user_block` (pandas, in `applyInPandas`): the one setup pass that cuts the ratings into
  sub-block blobs (see blocks.py) and, when asked, writes them to the executor-local store.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from recospark.models.sgd import blocks as bk
from recospark.models.sgd.blocks import FactorBlock, Progress, Store, SubBlock
from recospark.models.sgd.kernel import NO_ORDER, sgd_block, sse_block, warm_up

PACKED_SCHEMA = "kind string, G int, J int, a int, b int, n long, rsum double, blob binary"
BLOB_SCHEMA = "kind string, grp int, blob binary"

# ---------------------------------------------------------------------------------------------
# per-process state: compiled kernels and a thread pool, both created once per Python worker

_WARM: dict[str, float] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def ensure_warm() -> float:
    """Load/compile the kernels once per Python worker; returns the seconds this call took."""
    if "s" in _WARM:
        return 0.0
    s = warm_up()
    _WARM["s"] = s
    return s


def _pool(threads: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsgd")
        return pool


def run_jobs(jobs: list[Callable[[], Any]], threads: int) -> list[Any]:
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

    def add(self, other: "Timer") -> None:
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
    # (kind, G, J, a, b) -> n for every non-empty train ("R") / validation ("V") sub-block
    sub_counts: dict = field(default_factory=dict)
    # ("U", G, a) -> number of user ids, for every non-empty user inner block
    id_counts: dict = field(default_factory=dict)
    # (J, b) -> the item ids of inner block b of item group J, ascending (an item's row there)
    item_ids: dict = field(default_factory=dict)
    root: str | None = None  # the store's root directory; None: blocks.store_root() (tests pass a tmp dir)

    def store(self) -> Store:
        return Store(self.run_id, self.root)

    def subs(self, kind: str, G: int, J: int) -> list[tuple[int, int]]:
        return [(a, b) for a in range(self.K) for b in range(self.K) if self.sub_counts.get((kind, G, J, a, b), 0) > 0]


# ---------------------------------------------------------------------------------------------
# setup: the one packing pass (pandas UDFs)


def item_keys(item_ids: dict[tuple[int, int], np.ndarray], K: int, D: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, start of each of the D inner blocks) with key = (J * K + b) << 32 | id: an
    item's row in its inner block is searchsorted(keys, key) - start[J * K + b]."""
    blocks = sorted(item_ids)
    parts, start = [], np.zeros(D + 1, np.int64)
    for J, b in blocks:
        ids = np.asarray(item_ids[(J, b)], np.int64)
        parts.append(((J * K + b) << 32) | ids)
    keys = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    blk = keys >> 32
    start[:] = np.searchsorted(blk, np.arange(D + 1))
    return keys, start


def pack_user_block(pdf: pd.DataFrame, *, B: int, K: int, item_ids: dict, run_id: str | None) -> pd.DataFrame:
    """All ratings of user inner block (G, a) -> one row per sub-block (G, J, a, b) of training
    ("R") and validation ("V") ratings, each sorted by (user, item), plus the block's user ids
    ("U"). Input columns: G, a, user, item, J, b, r, v (is validation). Users are numbered by
    ascending id among those with training ratings; items by their row in `item_ids` (J, b) ->
    sorted ids. Validation rows with a user or item unknown to training are dropped. With
    `run_id`, blobs also go to this executor's store (the single-task plan reads them there, so
    its ratings never cross JVM<->Python again)."""
    G, a = int(pdf["G"].iloc[0]), int(pdf["a"].iloc[0])
    is_val = pdf["v"].to_numpy(bool)
    users = pdf["user"].to_numpy(np.int64)
    ids = np.unique(users[~is_val])
    ul = np.minimum(np.searchsorted(ids, users), max(len(ids) - 1, 0))
    known = (ids[ul] == users) if len(ids) else np.zeros(len(users), bool)
    blk = pdf["J"].to_numpy(np.int64) * K + pdf["b"].to_numpy(np.int64)
    keys, start = item_keys(item_ids, K, B * K)
    key = (blk << 32) | pdf["item"].to_numpy(np.int64)
    if len(keys):
        pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        known &= keys[pos] == key
        il = pos - start[blk]
    else:
        known[:] = False
        il = np.zeros(len(key), np.int64)
    r = pdf["r"].to_numpy(np.float32)
    store = Store(run_id) if run_id else None
    out = []
    for kind, mask in (("R", ~is_val & known), ("V", is_val & known)):
        k_, u_, i_, r_ = blk[mask], ul[mask].astype(np.int32), il[mask].astype(np.int32), r[mask]
        order = np.lexsort((i_, u_, k_))
        k_, u_, i_, r_ = k_[order], u_[order], i_[order], r_[order]
        cuts = np.flatnonzero(np.diff(k_)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(k_)]):
            if hi == lo:
                continue
            J, b = divmod(int(k_[lo]), K)
            blob = bk.encode_sub(kind, G, J, a, b, u_[lo:hi], i_[lo:hi], r_[lo:hi])
            if store is not None:
                store.put(bk.sub_name(kind, G, J, a, b), blob)
            out.append((kind, G, J, a, b, int(hi - lo), float(r_[lo:hi].astype(np.float64).sum()), blob))
    blob = bk.encode("U", G, 0, a, 0, [ids.astype(np.int32)], len(ids))
    if store is not None:
        store.put(bk.ids_name("U", G, a), blob)
    out.append(("U", G, 0, a, 0, len(ids), 0.0, blob))
    return pd.DataFrame(out, columns=["kind", "G", "J", "a", "b", "n", "rsum", "blob"])


def blob_name(blob) -> str:
    h = bk.header(blob)
    if h.kind in ("R", "V"):
        return bk.sub_name(h.kind, h.G, h.J, h.a, h.b)
    if h.kind == "U":
        return bk.ids_name("U", h.G, h.a)
    if h.kind == "I":
        return bk.ids_name("I", h.G, h.b)
    raise ValueError(f"unexpected blob kind {h.kind}")


# ---------------------------------------------------------------------------------------------
# the SGD core shared by both plans


class Source:
    """Sub-blocks for a task: streamed blobs (this task's input) first, else the local store."""

    def __init__(self, store: Store, streamed: dict[str, Any] | None = None):
        self.store = store
        self.streamed = streamed or {}
        self.missing: list[str] = []

    def sub(self, kind: str, G: int, J: int, a: int, b: int) -> SubBlock | None:
        name = bk.sub_name(kind, G, J, a, b)
        buf = self.streamed.get(name)
        if buf is None:
            buf = self.store.get(name)
        if buf is None:
            self.missing.append(name)
            return None
        return bk.decode_sub(buf)

    def ids(self, kind: str, group: int, inner: int) -> np.ndarray | None:
        name = bk.ids_name(kind, group, inner)
        buf = self.streamed.get(name)
        if buf is None:
            buf = self.store.get(name)
        if buf is None:
            self.missing.append(name)
            return None
        return bk.decode_ids(buf)[1]


def absorb(records: Iterable, store: Store | None) -> tuple[dict[str, Any], list, dict[str, int]]:
    """Split a task's input into streamed blobs (name -> bytes, written to the store when given
    and absent there) and the other records; returns (blobs, others, streamed bytes per kind:
    "R" training sub-blocks, "V" validation sub-blocks, "U" user ids)."""
    blobs: dict[str, Any] = {}
    others = []
    nbytes = {"R": 0, "V": 0, "U": 0}
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


def train_stratum(cfg: TaskConfig, shift: int, groups: list[int], users: dict[int, FactorBlock],
                  items: dict[int, FactorBlock], source: Source, *, lr: float, epoch: int,
                  sums: dict[tuple[int, int], list[float]], trace: list | None = None) -> Timer:
    """One outer stratum for the user groups `groups`: K inner steps, each running its disjoint
    sub-blocks on `cfg.threads` threads. Adds (sse, n) per outer block (G, J) into `sums`, summed
    in a fixed order so any plan gives identical floats. Factors are updated in place."""
    timer = Timer()
    for t, step in enumerate(bk.step_blocks(cfg.seed, epoch, shift, groups, cfg.B, cfg.K)):
        jobs, keys = [], []
        for (G, J, a, b) in step:
            if cfg.sub_counts.get(("R", G, J, a, b), 0) == 0:
                continue
            sub = source.sub("R", G, J, a, b)
            if sub is None:
                continue
            P, bu = _views(users[G], a)
            Q, bi = _views(items[J], b)
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
        results = [None] * len(jobs)
        for x, res in zip(order, done):
            results[x] = res
        for (G, J, n), (sse, secs) in zip(keys, results):
            acc = sums.setdefault((G, J), [0.0, 0])
            acc[0] += sse
            acc[1] += n
            timer.cpu += secs
            timer.calls += 1
    return timer


def _kernel_job(sub: SubBlock, P, Q, bu, bi, mu, lr, reg, bias_reg):
    def job():
        t0 = time.perf_counter()
        sse = sgd_block(sub.users, sub.items, sub.ratings, NO_ORDER, P, Q, bu, bi, mu, lr, reg, bias_reg)
        return sse, time.perf_counter() - t0

    return job


def validation_sums(cfg: TaskConfig, groups: list[int], users: dict[int, FactorBlock], items: dict[int, FactorBlock],
                    source: Source) -> tuple[dict[tuple[int, int], list[float]], Timer]:
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
    for (G, J, n), (sse, secs) in zip(keys, results):  # job order is fixed: (G, J, a, b)
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


def _rmse(sse: float, n: int) -> float | None:
    return float(np.sqrt(sse / n)) if n else None


def group_factors(cfg: TaskConfig, kind: str, group: int, source: Source) -> FactorBlock | None:
    """The initial factors of one group from its ids per inner block: items from the config,
    users from their id blobs (store or streamed)."""
    parts = []
    for inner in range(cfg.K):
        if kind == "I":
            parts.append(np.asarray(cfg.item_ids.get((group, inner), np.zeros(0, np.int32)), np.int32))
            continue
        if cfg.id_counts.get(("U", group, inner), 0) == 0:
            parts.append(np.zeros(0, np.int32))
            continue
        ids = source.ids("U", group, inner)
        if ids is None:
            return None
        parts.append(np.array(ids))
    return bk.init_factors(kind, group, parts, cfg.rank, cfg.init_std, cfg.seed)


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
    users, items = {}, {}
    for kind, out in (("U", users), ("I", items)):
        for g in range(cfg.B):
            if version == 0:
                fb = group_factors(cfg, kind, g, source)
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
    history = []
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
        sse, n = total(sums)
        val_rmse, val_n = None, 0
        if plan.validation:
            vsums, vt = validation_sums(cfg, groups, users, items, source)
            if source.missing:
                return history, pr, best
            vsse, val_n = total(vsums)
            val_rmse = _rmse(vsse, val_n)
            timer.add(vt)
        train_rmse = float(np.sqrt(sse / n)) if n else float("nan")
        nxt, _ = bk.advance(pr, train_rmse, val_rmse, early_rounds=plan.early_rounds, schedule=plan.schedule,
                            step_decay=plan.step_decay, last_shift=order[-1])
        history.append({
            "epoch": pr.epoch + 1, "train_rmse": train_rmse, "val_rmse": val_rmse, "step_size": pr.lr,
            "updates": int(n), "val_n": int(val_n), "task_seconds": time.perf_counter() - t0,
            "kernel_seconds": timer.wall, "kernel_cpu_seconds": timer.cpu, "kernel_calls": timer.calls,
        })
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
    from recospark import faults

    started = time.perf_counter()
    faults.fail_first_attempt(plan.fail_partition, "DSGD single-task epochs")
    compile_s = ensure_warm()
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, _, streamed_bytes = absorb(records, store)
    source = Source(store, blobs)
    users, items = _load_version(store, cfg, plan.progress.epoch, source)
    stats: dict[str, Any] = {"compile_seconds": compile_s, "streamed_bytes": streamed_bytes["R"],
                             "streamed_val_bytes": streamed_bytes["V"], "streamed_id_bytes": streamed_bytes["U"], "pid": os.getpid(),
                             "threads": cfg.threads, "missing": 0}
    if users is None:
        stats.update(missing=len(source.missing), missing_example=source.missing[:3], history=[],
                     task_seconds=time.perf_counter() - started)
        yield ("S", 0, json.dumps(stats).encode())
        return
    load_s = time.perf_counter() - started
    history, pr, best = run_epochs(plan, users, items, source)
    if source.missing:
        stats.update(missing=len(source.missing), missing_example=source.missing[:3], history=[],
                     task_seconds=time.perf_counter() - started)
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
                stats.update(missing=len(source.missing), missing_example=source.missing[:3], history=[],
                             task_seconds=time.perf_counter() - started)
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
    stats.update(history=history, progress=pr.__dict__, finished=finished, load_seconds=load_s,
                 output_seconds=time.perf_counter() - t_out, output_bytes=out_bytes,
                 task_seconds=time.perf_counter() - started)
    yield ("S", 0, json.dumps(stats).encode())
    yield from rows


# ---------------------------------------------------------------------------------------------
# the multi-task plan


def initial_state(index: int, records: Iterable, *, cfg: TaskConfig, shift: int) -> Iterator[tuple]:
    """Id blobs ("B") of this task's user groups and of the item groups it holds in stratum
    `shift` -> initial factor records ("U", G) / ("I", J), keyed by this task."""
    blobs, _, _ = absorb(records, None)
    source = Source(cfg.store(), blobs)
    for G in range(cfg.B):
        if bk.owner(G, cfg.tasks) == index:
            yield index, ("U", group_factors(cfg, "U", G, source))
    for J in range(cfg.B):
        if bk.item_home(J, shift, cfg.B, cfg.tasks) == index:
            yield index, ("I", group_factors(cfg, "I", J, source))
    if source.missing:
        raise RuntimeError(f"DSGD initial state: id blobs missing from the input: {source.missing[:3]}")


@dataclass(frozen=True)
class StagePlan:
    cfg: TaskConfig
    epoch: int
    shift: int
    next_shift: int | None  # the next stratum's shift (items are keyed for it); None: last stage
    lr: float
    first: bool  # the epoch's first stage: starts the epoch's stats
    validation: bool = False  # boundary stage: compute the validation SSE
    replicate: bool = False  # route every item group to every task (for the boundary's validation)
    fail_partition: int | None = None


def _split_state(records: list) -> tuple[dict[int, FactorBlock], dict[int, FactorBlock], dict | None, int]:
    users, items, stats, nbytes = {}, {}, None, 0
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


def _route(index: int, users, items, stats, cfg: TaskConfig, next_shift: int | None, replicate: bool) -> Iterator:
    for G, fb in sorted(users.items()):
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
    from recospark import faults

    started = time.perf_counter()
    faults.fail_first_attempt(plan.fail_partition, "DSGD stratum")
    compile_s = ensure_warm()
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, rest, streamed_bytes = absorb(records, store)
    users, items, stats, nbytes = _split_state(rest)
    if plan.first or stats is None:
        stats = {"sums": {}, "kernel_seconds": 0.0, "kernel_cpu_seconds": 0.0, "kernel_calls": 0, "task_seconds": 0.0,
                 "compile_seconds": 0.0, "streamed_bytes": 0, "factor_bytes": 0, "missing": 0, "stages": 0}
    stats = dict(stats)
    source = Source(store, blobs)
    groups = sorted(users)
    missing_items = [(G + plan.shift) % cfg.B for G in groups if (G + plan.shift) % cfg.B not in items]
    if missing_items:
        raise RuntimeError(f"DSGD stratum {plan.shift}: task {index} lacks item groups {missing_items}")
    sums = {k: list(v) for k, v in stats["sums"].items()}
    timer = Timer()
    if not stats["missing"]:
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
    source = Source(store, blobs)
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
    import pyarrow as pa

    for batch in batches:
        for blob in batch.column("blob").to_pylist():
            fb = bk.decode_factors(blob, writable=False)
            n, k = fb.factors.shape
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                values = pa.array(np.ascontiguousarray(fb.factors[lo:hi]).reshape(-1), type=pa.float32())
                offsets = pa.array(np.arange(0, (hi - lo) * k + 1, k, dtype=np.int32))
                columns = [pa.array(fb.ids[lo:hi], type=pa.int32()), pa.ListArray.from_arrays(offsets, values),
                           pa.array(fb.biases[lo:hi], type=pa.float32())]
                names = ["id", "features", "bias"]
                if with_kind:
                    columns, names = [pa.array([fb.kind] * (hi - lo), type=pa.string())] + columns, ["kind"] + names
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
    "cleanup_task",
    "ensure_warm",
    "extract_stats",
    "group_factors",
    "initial_state",
    "item_keys",
    "pack_user_block",
    "run_epochs",
    "run_jobs",
    "single_task",
    "state_blobs",
    "stratum_task",
    "total",
    "train_stratum",
    "validation_sums",
]
