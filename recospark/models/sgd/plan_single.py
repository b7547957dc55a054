"""The single-task plan (tasks = 1, local mode): ONE fat task runs every epoch in its Python worker.

Driver half, `fit_single`: launches the task as a mapInArrow job (so it reuses the setup pass's
warm Python workers), reads its one stats row (`JobStats`, JSON) and, when training ended, the
best factors as BIASED_FACTORS rows, checkpointed. `epochs_per_job` > 0 splits training into
several jobs (factors kept in the store between them) so a retry redoes at most one job.
Fallback: when the task finds a block missing (it landed where the store is not, files lost) it
trains nothing and says so; the driver streams the cached setup frame (|R| bytes) into a new
task, which writes its store and starts over: deterministic, so the same result.

Task half, `single_task`: builds the index from the blocks, keeps ratings and factors in memory
and in the executor-local store, and runs the epoch loop (`epochs.run_epochs`) itself: every
stratum on its threads, validation RMSE, step schedule and early stopping in the task, so per
epoch nothing crosses JVM<->Python and the driver is not involved.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from recospark.faults import fail_first_attempt
from recospark.frames import first_row
from recospark.models.sgd import codec
from recospark.models.sgd.epochs import EpochCosts, EpochOutcome, EpochRecord, Progress, Sums, TaskProgress, early_stopping, run_epochs
from recospark.models.sgd.export import blobs_to_factor_rows, split_kinds
from recospark.models.sgd.layout import FactorBlock, strata_order
from recospark.models.sgd.pool import Timer, ensure_warm
from recospark.models.sgd.records import JobReport, JobStats
from recospark.models.sgd.run import LEVEL, FitOutput, Run, udf_of
from recospark.models.sgd.settings import TaskConfig
from recospark.models.sgd.source import Source, absorb, with_index
from recospark.models.sgd.store import Store, factors_name, sub_name
from recospark.models.sgd.stratum import group_factors, train_stratum, user_neg_totals, validation_sums
from recospark.schema import BIASED_FACTORS

log = logging.getLogger(__name__)

Groups = dict[int, FactorBlock]


@dataclass(frozen=True)
class SinglePlan:
    """One job of the single-task plan: run epochs from `progress` (factors at store version
    `progress.epoch`, or the initial factors when 0) until maxIter, early stopping or
    `max_epochs` epochs in this job."""

    cfg: TaskConfig
    progress: Progress
    max_epochs: int
    validation: bool  # validation sub-blocks exist: score them after every epoch
    fail_partition: int | None = None

    @property
    def keep_best(self) -> bool:
        """Early stopping is on: the best epoch's factors are kept apart."""
        return early_stopping(self.cfg.params, self.validation)


# ---------------------------------------------------------------------------------------------
# task half


def _load_version(store: Store, cfg: TaskConfig, version: int, source: Source) -> tuple[Groups, Groups] | None:
    """The factors at store version `version` (0: the initial factors), or None if one is missing."""
    users: Groups = {}
    items: Groups = {}
    for kind, out in (("U", users), ("I", items)):
        for g in range(cfg.B):
            if version == 0:
                out[g] = group_factors(cfg, kind, g)
                continue
            buf = store.read(factors_name(kind, g, version))
            if buf is None:
                source.missing.append(factors_name(kind, g, version))
                return None
            out[g] = codec.decode_factors(buf)
    return users, items


def _copy(groups: Groups) -> Groups:
    return {g: fb._replace(factors=fb.factors.copy(), biases=fb.biases.copy()) for g, fb in groups.items()}


def _write_version(store: Store, version: int, users: Groups, items: Groups) -> None:
    for fb in list(users.values()) + list(items.values()):
        store.put(factors_name(fb.kind, fb.group, version), codec.encode_factors(fb))


def _drop_versions(store: Store, keep: set[int]) -> None:
    for name in store.names():
        if name.startswith(("PU-", "PI-")) and int(name.rsplit("-v", 1)[1]) not in keep:
            store.remove(name)


class Trained(NamedTuple):
    """What one job's epochs left: the epochs, the progress, and a copy of the best epoch's
    factors (users, items, epoch) when they are not the current ones and were made in this job."""

    history: list[EpochRecord]
    progress: Progress
    best: tuple[Groups, Groups, int] | None


def train_in_task(plan: SinglePlan, users: Groups, items: Groups, source: Source) -> Trained:
    """The epochs of one job on in-memory factors (updated in place): the epoch loop with one
    epoch = every stratum on the task's threads, then the validation sums."""
    cfg = plan.cfg
    groups = list(range(cfg.B))
    best: tuple[Groups, Groups, int] | None = None

    def keep_best(pr: Progress) -> None:  # the next epoch overwrites the best factors
        nonlocal best
        best = (_copy(users), _copy(items), pr.epoch)

    def step(pr: Progress) -> EpochOutcome | None:
        t0 = time.perf_counter()
        sums: Sums = {}
        timer = Timer()
        order = strata_order(cfg.params.seed, pr.epoch, cfg.B, first=pr.offset)
        for shift in order:
            timer.add(train_stratum(cfg, shift, groups, users, items, source, lr=pr.lr, epoch=pr.epoch, sums=sums))
            if source.missing:
                return None
        val_sums: Sums = {}
        if plan.validation:
            val_sums, vt = validation_sums(cfg, groups, users, items, source)
            if source.missing:
                return None
            timer.add(vt)
        costs = EpochCosts(
            task_seconds=time.perf_counter() - t0, kernel_seconds=timer.wall, kernel_cpu_seconds=timer.cpu, kernel_calls=timer.calls
        )
        return EpochOutcome(sums, val_sums, order[-1], costs)

    progress = TaskProgress(cfg.params.maxIter)
    history, pr, _ = run_epochs(
        cfg.params,
        plan.progress,
        step,
        validation=plan.validation,
        keep_best=keep_best,
        max_epochs=plan.max_epochs,
        on_epoch=progress,
    )
    progress.finish(pr)
    if best is not None and (best[2] != pr.best_epoch or pr.best_epoch == pr.epoch):
        best = None
    return Trained(history, pr, best)


def single_task(index: int, records: Iterable, *, plan: SinglePlan) -> Iterator[tuple[str, int, bytes]]:
    """The single-task plan's job: (kind, grp, blob) rows, the stats row ("S", `JobStats` JSON)
    and, when training ended in this job, the best factors ("U"/"I" factor blobs).

    Input: nothing (resident) or streamed blobs (rows with a `blob`) of every sub-block, written
    to the store first. When something it needs is neither streamed nor in the store (another
    executor, lost files) it trains nothing and reports `missing`.
    """
    started, started_at = time.perf_counter(), time.time()
    fail_first_attempt(plan.fail_partition, "DSGD single-task epochs")
    compile_s = ensure_warm(plan.cfg.ranking)
    cfg = plan.cfg
    store = cfg.store()
    store.forget_other_runs()
    blobs, _, streamed_bytes = absorb(records, store)
    source = Source(cfg, store, blobs)
    t_index = time.perf_counter()
    indexed = with_index(cfg, store, source)
    stats = JobStats(
        compile_seconds=compile_s,
        streamed_bytes=streamed_bytes["R"],
        streamed_val_bytes=streamed_bytes["V"],
        pid=os.getpid(),
        threads=cfg.threads,
        index_seconds=time.perf_counter() - t_index,
        started_at=started_at,
    )

    def missing() -> tuple[str, int, bytes]:
        return (
            "S",
            0,
            replace(
                stats, missing=len(source.missing), missing_example=tuple(source.missing[:3]), task_seconds=time.perf_counter() - started
            ).to_json(),
        )

    loaded = None
    if indexed is not None:
        cfg = indexed
        plan = replace(plan, cfg=cfg)
        loaded = _load_version(store, cfg, plan.progress.epoch, source)
    if loaded is None:
        yield missing()
        return
    users, items = loaded
    t_merge = time.perf_counter()  # every sub-block merged up front, on the task's threads
    keys = [k for k in cfg.sub_counts if k[0] == "R" or plan.validation]
    source.prefetch(keys, cfg.threads)
    stats = replace(stats, merge_seconds=time.perf_counter() - t_merge)
    if source.missing:
        yield missing()
        return
    merged = source.merged
    stats = replace(
        stats,
        n_train=sum(len(merged[sub_name(*k)].ratings) for k in keys if k[0] == "R"),
        n_validation=sum(len(merged[sub_name(*k)].ratings) for k in keys if k[0] == "V"),
    )
    if cfg.ranking and cfg.neg_total is None:  # |N_u| from every training sub-block, here in the task
        assert cfg.items is not None
        cfg = replace(cfg, n_items=len(cfg.items.ids), neg_total=user_neg_totals(cfg, source))
        plan = replace(plan, cfg=cfg)
    load_s = time.perf_counter() - started
    history, pr, best = train_in_task(plan, users, items, source)
    if source.missing:
        yield missing()
        return
    finished = pr.stopped or pr.epoch >= cfg.params.maxIter
    t_out = time.perf_counter()
    best_version = pr.best_epoch if plan.keep_best else pr.epoch
    rows: list[tuple[str, int, bytes]] = []
    if finished:
        if best_version == pr.epoch:
            out = (users, items)
        elif best is not None:
            out = (best[0], best[1])
        else:  # the best epoch ended an earlier job of this run: its version is in the store
            found = _load_version(store, cfg, best_version, source)
            if found is None:
                yield missing()
                return
            out = found
        rows = [(fb.kind, fb.group, codec.encode_factors(fb)) for fb in list(out[0].values()) + list(out[1].values())]
    else:
        _write_version(store, pr.epoch, users, items)
        if best is not None:
            _write_version(store, best_version, best[0], best[1])
        _drop_versions(store, {pr.epoch, best_version})
    stats = replace(
        stats,
        history=tuple(history),
        progress=pr,
        finished=finished,
        load_seconds=load_s,
        output_seconds=time.perf_counter() - t_out,
        output_bytes=sum(len(r[2]) for r in rows),
        task_seconds=time.perf_counter() - started,
    )
    yield ("S", 0, stats.to_json())
    yield from rows


class _Blob(NamedTuple):
    blob: bytes


# the single task's output: one stats row (kind "S", JSON in blob), then factor rows (kind "U"/"I")
SINGLE_OUT = StructType([StructField("kind", StringType(), False), *BIASED_FACTORS.fields, StructField("blob", BinaryType(), False)])


def single_task_arrow(batches: Iterator, *, plan: SinglePlan, chunk: int = 8192) -> Iterator:
    """`single_task` as a mapInArrow function (the setup pass's Python workers run it, already
    warm). Input batches carry streamed blobs in a `blob` column, or anything (resident). Output:
    SINGLE_OUT rows, the stats row (kind "S", JSON in `blob`) then, when training ended, the best
    factors as rows (kind "U"/"I", id, features, bias), ready to be checkpointed."""

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
# driver half


def _job_epochs(stats: JobStats, job_seconds: float, streamed: bool) -> list[EpochRecord]:
    """The job's epochs with the job's own costs (scheduling, kernel loading, streamed blocks) on its first epoch."""
    overhead = job_seconds - sum(h.costs.task_seconds for h in stats.history)
    out = []
    for k, h in enumerate(stats.history):
        first = k == 0
        costs = replace(
            h.costs,
            seconds=round(h.costs.task_seconds + (overhead if first else 0.0), 4),
            streamed_bytes=stats.streamed_bytes if first else 0,
            streamed_val_bytes=stats.streamed_val_bytes if first else 0,
            factor_bytes=0,
            compile_seconds=stats.compile_seconds if first else 0.0,
            streamed=streamed and first,
        )
        out.append(replace(h, costs=costs))
    return out


def fit_single(run: Run) -> FitOutput:
    """Train by the single-task plan: one job (or one per `epochs_per_job` epochs) of one task."""
    p = run.p
    validation = run.n_validation > 0
    early = early_stopping(p, validation)
    progress = Progress(lr=p.stepSize)
    history: list[EpochRecord] = []
    streamed = not (p.resident and run.record.store_written_at_setup)
    misses, first = 0, True
    always_stream = not p.resident
    jobs: list[JobReport] = []
    while True:
        plan = SinglePlan(
            cfg=run.cfg,
            progress=progress,
            max_epochs=p.epochs_per_job or p.maxIter,
            validation=run.n_validation > 0,
            fail_partition=run.fail_partition(1) if first else None,
        )
        first = False
        # a DataFrame job (mapInArrow): it runs in the setup pass's Python workers, already warm
        src: DataFrame = run.packed.select("blob").coalesce(1) if streamed else run.spark.range(0, 1, 1, numPartitions=1)
        started, submitted_at = time.monotonic(), time.time()
        out = src.mapInArrow(udf_of(single_task_arrow, plan=plan), SINGLE_OUT, profile=run.profile_or_none()).persist(LEVEL)
        stats = JobStats.from_json(bytes(first_row(out.filter(F.col("kind") == "S").select("blob"))["blob"]))
        job_s = time.monotonic() - started
        run.record.jobs += 1
        jobs.append(JobReport(stats, round(job_s, 3), streamed, round(stats.started_at - submitted_at, 3)))
        if stats.missing:
            out.unpersist()
            if streamed:
                raise RuntimeError(f"DSGD: blocks missing although streamed: {list(stats.missing_example)}")
            misses += 1
            # the task ran where the store is not (or it was lost): stream the blocks into a new
            # task, which writes its store and starts over (deterministic: the same result)
            log.warning(
                "DSGD single task missed %d blocks (%s): streaming the blocks and starting over", stats.missing, list(stats.missing_example)
            )
            streamed, progress, history = True, Progress(lr=p.stepSize), []
            always_stream = misses > 1  # missed twice: this cluster moves tasks around, keep streaming
            continue
        if stats.n_validation is not None:
            run.n_validation = stats.n_validation
        for record in _job_epochs(stats, job_s, streamed):
            history.append(record)
            log.info("epoch %d/%d %s step=%.5f", record.epoch, p.maxIter, record.metrics.text(), record.step_size)
        assert stats.progress is not None  # a job that missed nothing reports its progress
        progress = stats.progress
        streamed = always_stream  # else the store is now where the task ran
        if stats.finished:  # `out` holds the best factors as rows: cut them loose from training
            started = time.monotonic()
            users, items = split_kinds(run.checkpointed(out.filter(F.col("kind") != "S").drop("blob")))
            run.record.export_seconds = round(time.monotonic() - started, 3)
            out.unpersist()
            break
        out.unpersist()
    run.record.single_jobs = jobs
    run.record.misses = misses
    return FitOutput(users, items, history, progress.best_epoch if early else progress.epoch)


__all__ = ["SINGLE_OUT", "SinglePlan", "fit_single", "single_task", "single_task_arrow", "train_in_task"]
