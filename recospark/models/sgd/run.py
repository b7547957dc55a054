"""One DSGD run's driver state, its execution plan, and its cleanup on the driver and executors.

`Run` is what both plans and the setup pass work on: the settings, how many tasks and threads
(`plan_execution`), the run id that names the executor-local store, what the setup pass found
(the task config, counts, the packed blocks) and what the run reports (`RunInfo`). The driver
sees scalars only: counts, sums, timings, never factors or ratings.

Threads: a task runs `threads` threads. On standalone/YARN/Kubernetes with static allocation a
TaskResourceProfile asks Spark for that many CPUs per DSGD task (spark.executor.cores by
default: one fat task per executor). Local mode rejects TaskResourceProfiles ("only supported
for Standalone, Yarn and Kubernetes") and a barrier stage reserving the cores adds latency to
every job, so in local mode the single task uses all local[N] cores while Spark accounts
it one: fine when fit() is the only job running, else set `threads` (e.g. 1) explicitly.

Cleanup: every run writes under `<SparkFiles root>/recospark-dsgd/<run_id>/`; `fit` deletes it on
success and on failure (driver-side in local mode, a cleanup job on executors otherwise) and
unpersists what it cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, NamedTuple

from pyspark import StorageLevel
from pyspark.files import SparkFiles
from pyspark.rdd import RDD
from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests
from pyspark.sql import DataFrame, SparkSession

from recospark import jvm
from recospark.models.sgd.records import EpochRecord, ExecutionPlan, RunInfo
from recospark.models.sgd.settings import RANKING_LOSSES, DSGDParams, TaskConfig
from recospark.models.sgd.store import Store

log = logging.getLogger(__name__)

LEVEL = StorageLevel.MEMORY_AND_DISK  # every DSGD cache: blocks, factor states


class FitOutput(NamedTuple):
    """What a plan's `fit` returns: the best factors (BIASED_FACTORS frames, checkpointed), the
    epochs it ran and the epoch whose factors they are."""

    users: DataFrame
    items: DataFrame
    history: list[EpochRecord]
    best_epoch: int


def local_cores(master: str) -> int | None:
    """N of local[N] / local[N,F]; os.cpu_count() for local[*]; 1 for local; None otherwise."""
    if master == "local":
        return 1
    m = re.fullmatch(r"local\[(\*|\d+)(,\s*\d+)?\]", master)
    if not m:
        return None
    return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))


def plan_execution(spark: SparkSession, p: DSGDParams) -> ExecutionPlan:
    """How many fat tasks and threads: see the module docstring (Threads)."""
    sc = spark.sparkContext
    conf = sc.getConf()
    cores = local_cores(sc.master or "")
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    if cores is not None:  # local mode: one executor, the driver
        tasks = max(1, min(p.numBlocks, p.tasks or 1))
        threads = p.threads or max(1, cores // tasks)
        return ExecutionPlan(
            tasks,
            threads,
            True,
            False,
            f"local mode ({sc.master}): {tasks} task(s) x {threads} thread(s); no stage-level scheduling in local mode",
        )
    executors = jvm.executor_count(spark)
    tasks = max(1, min(p.numBlocks, p.tasks or executors))
    executor_cores = conf.get("spark.executor.cores")
    dynamic = conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true"
    threads = p.threads or (int(executor_cores) if executor_cores else task_cpus)
    use_profile = threads > task_cpus and not dynamic
    if threads > task_cpus and dynamic and not p.threads:
        threads = task_cpus
    return ExecutionPlan(
        tasks,
        threads,
        False,
        use_profile,
        f"{executors} executor(s), spark.executor.cores={executor_cores}, spark.task.cpus={task_cpus}: "
        f"{tasks} task(s) x {threads} thread(s)" + (" (TaskResourceProfile)" if use_profile else ""),
    )


def udf_of(fn: Callable[..., Any], **kwargs: Any) -> Callable[[Any], Any]:
    """A plain function for mapInArrow (it inspects type hints, which a functools.partial lacks)."""

    def udf(batches):
        return fn(batches, **kwargs)

    return udf


def cleanup_task(_index: int, _records: Iterable, *, run_id: str) -> Iterator[tuple[str, bool]]:
    """Delete this executor's store of run `run_id` (every file this run wrote here)."""
    for _ in _records:
        pass
    store = Store(run_id)
    yield store.dir, store.destroy()


class Run:
    """One training run's driver state; the setup pass fills `cfg` and the counts."""

    def __init__(self, spark: SparkSession, params: DSGDParams, fault_partition: int | None = None):
        self.spark = spark
        self.sc = spark.sparkContext
        self.p = params
        self.B = params.numBlocks
        self.K = params.innerBlocks
        if self.B < 1 or self.K < 1:
            raise ValueError(f"DSGD needs numBlocks >= 1 and innerBlocks >= 1, got {self.B}, {self.K}")
        if params.loss != "squared" and params.loss not in RANKING_LOSSES:
            raise ValueError(f"DSGD: loss must be 'squared' or one of {RANKING_LOSSES}, got {params.loss!r}")
        self.ranking = params.ranking
        self.fault_partition = fault_partition  # the task whose first attempt fails (fault injection)
        self.run_id = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.plan = plan_execution(spark, params)
        self.record = RunInfo(self.plan, self.run_id)
        self.persisted: list[Any] = []  # RDDs and DataFrames cached for this run
        self.prepared = False
        # set by the setup pass (setup_pass.prepare)
        self.cfg: TaskConfig
        self.packed: DataFrame
        self.n_train = 0
        self.n_validation = 0
        self.mu = 0.0
        self._profile: Any = None

    @property
    def info(self) -> dict[str, Any]:
        """The run's report as a plain dict (`RunInfo.to_dict`)."""
        return self.record.to_dict()

    def fail_partition(self, partitions: int) -> int | None:
        """The partition of a `partitions`-task job whose first attempt fails, or None."""
        return None if self.fault_partition is None else self.fault_partition % partitions

    def profile_or_none(self):
        """The TaskResourceProfile asking `threads` CPUs per DSGD task, when the plan uses one."""
        if not self.plan.use_profile:
            return None
        if self._profile is None:
            self._profile = ResourceProfileBuilder().require(TaskResourceRequests().cpus(self.plan.threads)).build
        return self._profile

    def with_profile(self, rdd: RDD) -> RDD:
        """`rdd` with the plan's TaskResourceProfile (so Spark gives each task `threads` CPUs), or unchanged without one."""
        profile = self.profile_or_none()
        return rdd if profile is None else rdd.withResources(profile)

    def checkpointed(self, frame: DataFrame) -> DataFrame:
        """`frame` materialized and cut loose from its lineage (the blocks and the store can go)."""
        return frame.checkpoint(eager=True) if self.sc.getCheckpointDir() else frame.localCheckpoint(eager=True)

    def cleanup(self) -> None:
        """Delete this run's store everywhere it may be and drop cached blocks (also on failure)."""
        for r in self.persisted:
            with contextlib.suppress(Exception):
                r.unpersist()
        self.persisted = []
        if self.plan.local:
            try:
                Store(self.run_id, os.path.join(SparkFiles.getRootDirectory(), "recospark-dsgd")).destroy()
            except Exception:
                log.warning("DSGD: could not delete the local store of run %s", self.run_id, exc_info=True)
            return
        try:
            n = max(2, 2 * self.plan.tasks)
            self.sc.parallelize(range(n), n).mapPartitionsWithIndex(partial(cleanup_task, run_id=self.run_id)).collect()
        except Exception:
            log.warning("DSGD: store cleanup job failed for run %s", self.run_id, exc_info=True)


__all__ = ["LEVEL", "FitOutput", "Run", "cleanup_task", "local_cores", "plan_execution", "udf_of"]
