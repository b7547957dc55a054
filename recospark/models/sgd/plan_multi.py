"""The multi-task plan (tasks > 1, a cluster): one fat task per executor, one Spark stage per stratum.

Each task owns its user groups for the whole run (`layout.owner`); item groups move to the
next stratum's task through a shuffle of factor records (`layout.item_home`), keyed by task
index so the one partition function is the identity. An epoch is B stratum stages and, with
validation, a boundary stage that scores the validation ratings against every item group
(replicated to every task for that stage). The tasks agree on an index built once on the driver.
Ratings are streamed in the first epoch (one cached RDD per shift: each stage reads only its
own sub-blocks, |R| bytes per epoch) and written to each executor's store; later epochs read the
stores, and if a task misses its blocks (Spark places tasks by host, not executor) the epoch is
redone and blocks are streamed from then on.

Driver half, `MultiTask`: the epoch loop (`epochs.run_epochs`) with one epoch = one Spark job
over the stage chain; the tasks' `TaskStats` (scalars) are all it collects. Task half:
`initial_state`, `stratum_task`, `boundary_task`, `extract_stats`, `state_blobs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial

from pyspark.rdd import RDD
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.faults import fail_first_attempt
from recospark.models.sgd import codec
from recospark.models.sgd.epochs import EpochCosts, EpochOutcome, EpochRecord, Progress, Sums, early_stopping, run_epochs, total
from recospark.models.sgd.export import BLOB_SCHEMA, factor_frames
from recospark.models.sgd.layout import FactorBlock, item_home, owner, strata_order
from recospark.models.sgd.pool import Timer, ensure_warm
from recospark.models.sgd.run import LEVEL, FitOutput, Run
from recospark.models.sgd.settings import TaskConfig
from recospark.models.sgd.source import Source, absorb
from recospark.models.sgd.stratum import group_factors, train_stratum, validation_sums

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskStats:
    """One task's running totals over the stages of one epoch: the "L" record that follows the
    task's factor records from stage to stage, and all the driver collects."""

    sums: Sums = field(default_factory=dict)
    val_sums: Sums = field(default_factory=dict)
    kernel_seconds: float = 0.0
    kernel_cpu_seconds: float = 0.0
    kernel_calls: int = 0
    task_seconds: float = 0.0
    compile_seconds: float = 0.0
    streamed_bytes: int = 0
    streamed_val_bytes: int = 0
    factor_bytes: int = 0
    missing: int = 0
    stages: int = 0


@dataclass(frozen=True)
class StagePlan:
    """What one stage's tasks run: stratum `shift` of `epoch` (or, `validation`, the boundary)."""

    cfg: TaskConfig
    epoch: int
    shift: int
    next_shift: int  # the next stratum's shift (items are keyed for it)
    lr: float
    first: bool  # the epoch's first stage: starts the epoch's stats
    validation: bool = False  # boundary stage: compute the validation SSE
    replicate: bool = False  # route every item group to every task (for the boundary's validation)
    fail_partition: int | None = None


# ---------------------------------------------------------------------------------------------
# task half


def initial_state(index: int, records: Iterable, *, cfg: TaskConfig, shift: int) -> Iterator[tuple]:
    """The initial factor records of task `index`: its user groups ("U", G) and the item groups
    it holds in stratum `shift` ("I", J), all keyed by `index`."""
    for _ in records:
        pass
    for G in range(cfg.B):
        if owner(G, cfg.tasks) == index:
            yield index, ("U", group_factors(cfg, "U", G))
    for J in range(cfg.B):
        if item_home(J, shift, cfg.B, cfg.tasks) == index:
            yield index, ("I", group_factors(cfg, "I", J))


def _split_state(records: list) -> tuple[dict[int, FactorBlock], dict[int, FactorBlock], TaskStats | None, int]:
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


def _route(index: int, users, items, stats: TaskStats, cfg: TaskConfig, next_shift: int, replicate: bool) -> Iterator:
    for _G, fb in sorted(users.items()):
        yield index, ("U", fb)
    for J, fb in sorted(items.items()):
        if replicate:
            for t in range(cfg.tasks):
                yield t, ("I", fb)
        else:
            yield item_home(J, next_shift, cfg.B, cfg.tasks), ("I", fb)
    yield index, ("L", stats)


def stratum_task(index: int, records: Iterable, *, plan: StagePlan) -> Iterator[tuple]:
    """One outer stratum in task `index`: trains its user groups against the item groups it
    holds, then yields users (kept here), items keyed for the next stratum and the epoch's
    running stats ("L"). Inputs are private copies (unpickled), so they are updated in place; a
    retry unpickles them again."""
    started = time.perf_counter()
    fail_first_attempt(plan.fail_partition, "DSGD stratum")
    compile_s = ensure_warm(plan.cfg.ranking)
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, rest, streamed_bytes = absorb(records, store)
    users, items, stats, nbytes = _split_state(rest)
    if plan.first or stats is None:
        stats = TaskStats()
    source = Source(cfg, store, blobs)
    groups = sorted(users)
    missing_items = [(G + plan.shift) % cfg.B for G in groups if (G + plan.shift) % cfg.B not in items]
    if missing_items:
        raise RuntimeError(f"DSGD stratum {plan.shift}: task {index} lacks item groups {missing_items}")
    sums = {k: list(v) for k, v in stats.sums.items()}
    timer = Timer()
    if not stats.missing:
        source.prefetch(
            [("R", G, (G + plan.shift) % cfg.B, a, b) for G in groups for a, b in cfg.subs("R", G, (G + plan.shift) % cfg.B)], cfg.threads
        )
        timer = train_stratum(cfg, plan.shift, groups, users, items, source, lr=plan.lr, epoch=plan.epoch, sums=sums)
    stats = replace(
        stats,
        sums=sums,
        missing=stats.missing + len(source.missing),
        kernel_seconds=stats.kernel_seconds + timer.wall,
        kernel_cpu_seconds=stats.kernel_cpu_seconds + timer.cpu,
        kernel_calls=stats.kernel_calls + timer.calls,
        compile_seconds=stats.compile_seconds + compile_s,
        streamed_bytes=stats.streamed_bytes + streamed_bytes["R"],
        factor_bytes=stats.factor_bytes + nbytes,
        stages=stats.stages + 1,
        task_seconds=stats.task_seconds + time.perf_counter() - started,
    )
    yield from _route(index, users, items, stats, cfg, plan.next_shift, plan.replicate)


def boundary_task(index: int, records: Iterable, *, plan: StagePlan) -> Iterator[tuple]:
    """The end of an epoch: validation SSE of this task's user groups against every item group
    (replicated here) and the state for the next epoch (items this task holds in stratum
    `plan.next_shift`; the other replicas are dropped)."""
    started = time.perf_counter()
    compile_s = ensure_warm()
    cfg = plan.cfg
    store = cfg.store()
    blobs, rest, streamed_bytes = absorb(records, store)
    users, items, stats, nbytes = _split_state(rest)
    stats = stats or TaskStats()
    source = Source(cfg, store, blobs)
    vsums, timer = validation_sums(cfg, sorted(users), users, items, source)
    stats = replace(
        stats,
        val_sums=vsums,
        missing=stats.missing + len(source.missing),
        kernel_seconds=stats.kernel_seconds + timer.wall,
        kernel_cpu_seconds=stats.kernel_cpu_seconds + timer.cpu,
        compile_seconds=stats.compile_seconds + compile_s,
        streamed_val_bytes=stats.streamed_val_bytes + streamed_bytes["V"],
        factor_bytes=stats.factor_bytes + nbytes,
        stages=stats.stages + 1,
        task_seconds=stats.task_seconds + time.perf_counter() - started,
    )
    kept = {J: fb for J, fb in items.items() if item_home(J, plan.next_shift, cfg.B, cfg.tasks) == index}
    yield from _route(index, users, kept, stats, cfg, plan.next_shift, False)


def extract_stats(records: Iterable) -> Iterator[TaskStats]:
    """The "L" record of each task (the driver needs scalars only)."""
    for _, (tag, payload) in records:
        if tag == "L":
            yield payload


def state_blobs(records: Iterable) -> Iterator[tuple]:
    """Factor records -> (kind, grp, blob) rows for `BLOB_SCHEMA`."""
    for _, (tag, payload) in records:
        if tag in ("U", "I"):
            yield (payload.kind, payload.group, codec.encode_factors(payload))


# ---------------------------------------------------------------------------------------------
# driver half


def _block_partition(key: int) -> int:
    """The one partition function of every DSGD RDD: record key = task index."""
    return key


class MultiTask:
    """The multi-task plan's driver for one run: cached blocks per stratum, the stage chain of an
    epoch, and `fit`, the epoch loop over those chains."""

    def __init__(self, run: Run):
        self.run = run
        self._shift_rdds: dict[int, RDD] = {}
        self._val_rdd: RDD | None = None

    def _keyed_blobs(self, frame: DataFrame, key) -> RDD:
        E = self.run.plan.tasks
        return frame.select("G", "blob").rdd.map(lambda row: (key(row), ("B", row.blob))).partitionBy(E, _block_partition)

    def ratings_shift(self, shift: int) -> RDD:
        """The training sub-blocks of outer stratum `shift`, each in its user group's task (cached)."""
        if shift not in self._shift_rdds:
            run = self.run
            B, E = run.B, run.plan.tasks
            frame = run.packed.filter((F.col("kind") == "R") & (F.col("J") == F.pmod(F.col("G") + F.lit(shift), F.lit(B))))
            rdd = self._keyed_blobs(frame, lambda row, E=E: owner(row.G, E)).persist(LEVEL)
            rdd.setName(f"dsgd-ratings-shift-{shift}")
            self._shift_rdds[shift] = rdd
            run.persisted.append(rdd)
        return self._shift_rdds[shift]

    def validation_blobs(self) -> RDD:
        """The validation sub-blocks, each in its user group's task (cached once for every epoch)."""
        if self._val_rdd is None:
            E = self.run.plan.tasks
            rdd = self._keyed_blobs(self.run.packed.filter(F.col("kind") == "V"), lambda row, E=E: owner(row.G, E)).persist(LEVEL)
            rdd.setName("dsgd-validation")
            self._val_rdd = rdd
            self.run.persisted.append(rdd)
        return self._val_rdd

    def initial_state(self) -> RDD:
        """The seeded initial factors, built in the tasks: each task's user groups and the item groups it holds at shift 0 (no factor crosses the driver)."""
        E = self.run.plan.tasks
        tokens = self.run.sc.parallelize([(t, ("T", None)) for t in range(E)], E).partitionBy(E, _block_partition)
        return tokens.mapPartitionsWithIndex(partial(initial_state, cfg=self.run.cfg, shift=0), preservesPartitioning=True)

    def run_epoch(self, state: RDD, epoch: int, lr: float, offset: int, streamed: bool, fail: int | None) -> tuple[RDD, list[int]]:
        """The lazy RDD of one epoch from `state` (item groups at shift `offset`): B stratum
        stages, then (with validation) the boundary stage."""
        run = self.run
        B, E, cfg = run.B, run.plan.tasks, run.cfg
        order = strata_order(run.p.seed, epoch, B, first=offset)
        validation = run.n_validation > 0
        rdd = state
        for k, shift in enumerate(order):
            last = k == B - 1
            plan = StagePlan(
                cfg,
                epoch,
                shift,
                next_shift=(order[k + 1] if not last else shift),
                lr=lr,
                first=k == 0,
                replicate=last and validation,
                fail_partition=fail if k == 0 else None,
            )
            inp = rdd if k == 0 else rdd.partitionBy(E, _block_partition)
            if streamed:
                inp = inp.union(self.ratings_shift(shift))
            rdd = run.with_profile(
                inp.mapPartitionsWithIndex(partial(stratum_task, plan=plan), preservesPartitioning=last and not validation)
            )
        if validation:
            plan = StagePlan(cfg, epoch, order[-1], next_shift=order[-1], lr=lr, first=False, validation=True)
            inp = rdd.partitionBy(E, _block_partition)
            if streamed:
                inp = inp.union(self.validation_blobs())
            rdd = run.with_profile(inp.mapPartitionsWithIndex(partial(boundary_task, plan=plan), preservesPartitioning=True))
        return rdd, order

    def _cut_lineage(self, rdd: RDD) -> None:
        if self.run.sc.getCheckpointDir():
            rdd.checkpoint()
        else:
            rdd.localCheckpoint()

    def fit(self) -> FitOutput:
        """Train: the epoch loop, one Spark job per epoch; the best epoch's factors exported."""
        run, p = self.run, self.run.p
        validation = run.n_validation > 0
        early = early_stopping(p, validation)
        state: RDD = self.initial_state().persist(LEVEL)
        best: RDD | None = None
        live = [state]
        streamed = True  # the first epoch streams the blocks; tasks write them to their stores
        always_stream = not p.resident
        misses = 0
        fail = run.fail_partition(run.plan.tasks)

        def keep_best(_: Progress) -> None:
            nonlocal best
            best = state

        def step(progress: Progress) -> EpochOutcome:
            nonlocal state, streamed, always_stream, misses, fail, live
            epoch = progress.epoch
            while True:
                started = time.monotonic()
                out, order = self.run_epoch(state, epoch, progress.lr, progress.offset, streamed, fail)
                fail = None
                out.persist(LEVEL)
                if p.checkpointInterval > 0 and (epoch + 1) % p.checkpointInterval == 0:
                    self._cut_lineage(out)
                parts: list[TaskStats] = out.mapPartitions(extract_stats).collect()
                run.record.jobs += 1
                if not any(s.missing for s in parts):
                    break
                out.unpersist()
                if streamed:
                    raise RuntimeError(f"DSGD epoch {epoch + 1}: blocks missing although streamed")
                misses += 1
                # a task ran where its store is not (tasks are placed by host, not by executor):
                # redo the epoch streaming each stratum's blocks, and keep streaming from now on
                log.warning("DSGD epoch %d: a task missed its blocks; streaming blocks from now on (|R| per epoch)", epoch + 1)
                streamed = always_stream = True
            sums = {k: v for s in parts for k, v in s.sums.items()}
            val_sums = {k: v for s in parts for k, v in s.val_sums.items()}
            _, n = total(sums)
            if n != run.n_train:
                raise AssertionError(f"epoch {epoch + 1} visited {n} ratings, expected {run.n_train}")
            if run.n_validation:
                run.n_validation = total(val_sums)[1]  # the exact count, unknown ids dropped
            costs = EpochCosts(
                seconds=round(time.monotonic() - started, 4),
                task_seconds=max(s.task_seconds for s in parts),
                kernel_seconds=max(s.kernel_seconds for s in parts),
                kernel_cpu_seconds=sum(s.kernel_cpu_seconds for s in parts),
                compile_seconds=max(s.compile_seconds for s in parts),
                streamed_bytes=sum(s.streamed_bytes for s in parts),
                streamed_val_bytes=sum(s.streamed_val_bytes for s in parts),
                factor_bytes=sum(s.factor_bytes for s in parts),
                streamed=streamed,
                stages=max(s.stages for s in parts),
            )
            streamed = always_stream
            live.append(out)
            kept = [out, best]
            for r in live:
                if all(r is not k for k in kept):
                    r.unpersist()
            live = [r for r in live if any(r is k for k in kept)]
            state = out
            return EpochOutcome(sums, val_sums, order[-1], costs)

        def logged(record: EpochRecord) -> None:
            log.info(
                "epoch %d/%d %s step=%.5f %.1fs", record.epoch, p.maxIter, record.metrics.text(), record.step_size, record.costs.seconds
            )

        history, progress, _ = run_epochs(p, Progress(lr=p.stepSize), step, validation=validation, keep_best=keep_best, on_epoch=logged)
        final = state if best is None or progress.best_epoch == progress.epoch else best
        run.record.misses = misses
        users, items = factor_frames(run, run.spark.createDataFrame(final.mapPartitions(state_blobs), BLOB_SCHEMA, verifySchema=False))
        for r in live:
            r.unpersist()
        return FitOutput(users, items, history, progress.best_epoch if early else progress.epoch)


def fit_multi(run: Run) -> FitOutput:
    """Train by the multi-task plan."""
    return MultiTask(run).fit()


__all__ = [
    "MultiTask",
    "StagePlan",
    "TaskStats",
    "boundary_task",
    "extract_stats",
    "fit_multi",
    "initial_state",
    "state_blobs",
    "stratum_task",
]
