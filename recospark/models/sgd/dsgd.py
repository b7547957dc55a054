"""Hierarchical stratified distributed SGD (DSGD, Gemulla et al., KDD 2011; inner strata on
threads as in FPSGD/LIBMF, Chin et al. 2015) for biased matrix factorization, on Spark.

Layout and schedule (blocks.py): users and items hashed into B = `num_blocks` outer groups of
K = `inner_blocks` inner blocks. An epoch visits B outer strata (user group G with item group
(G + S) mod B), each as K inner steps of pairwise row-disjoint sub-blocks. The schedule depends
on (seed, B, K, epoch) only, never on how many tasks or threads run it: for a given seed and
layout the factors are bit-identical in local mode, on a cluster, with 1 or 8 threads.

Data contract for kernels (SGD here, ranking losses in ranking.py): a sub-block (G, J, a, b) is a
`blocks.SubBlock`: `users`, `items` (int32) and `ratings` (float32) sorted by (user, item), with
`indptr(n_users)` giving a CSR over its users. `users` index rows of the user inner block's view
P_G[lo_a:lo_(a+1)] and `items` rows of Q_J[lo_b:lo_(b+1)], where `FactorBlock.lo` holds the row
offsets: an inner item block is a CONTIGUOUS row range [item_lo, item_hi) of the item group's
factor matrix, owned by exactly one thread during a step, so a kernel may read and write any row
of it (e.g. sample negatives) without touching another thread's rows. `worker.train_stratum` is
where a kernel runs; it passes the views, so a kernel sees rows [0, n) of its own blocks.

Losses: `loss="squared"` runs kernel.py's biased-MF SGD on the ratings. The ranking losses
("bpr", "warp"; ranking.py) run where the squared kernel would, one kernel call per sub-block:
positives (ratings >= `positive_threshold`; 0: every rated item, a repeated pair once) against
negatives drawn from the sub-block's own item inner block, so the no-conflict rule holds for
the sampled rows too. Negatives and the visiting order (a permutation of the sub-block) are
seeded by (seed, epoch, G, J, a, b) (`worker.sub_seed`), so ranking fits are bit-identical across
plans like squared ones. The block weight needs |N_u| (catalogue minus the user's rated items)
per user: the single task counts it from the blocks it holds; the multi-task plan's driver
aggregates one count per user next to its index (no ratings, no factors). Ranking models have
mu = 0 and no user bias (score b_i + p_u . q_i; warp: no item bias either, p_u . q_i), and no
validation metric: validation rows are ignored, early stopping with them is an error.

Per fit, in Spark jobs:

1. Setup, one map-only pass (`mapInArrow`, no shuffle, no JVM sort): every input partition of
   the training (and validation) ratings is cut into partial sub-blocks with global ids; blocks
   are hashes of the ids, so no index is needed yet. The partials are cached as a DataFrame (the
   fallback copy of the ratings, |R| bytes in the JVM) and, for the single-task plan, written to
   the executor-local store. Their reader merges them: ids to rows, sorted (blocks.merge_subs).
2. Training, by one of two plans (`plan_execution`):

* single task (tasks = 1; local mode): ONE fat task (a mapInArrow job, so it reuses the setup
  pass's warm Python workers) runs every epoch, its threads running each inner step's
  sub-blocks. It builds the index from the blocks, keeps ratings and factors in memory and in
  the executor-local store (memory-mapped files under SparkFiles' root directory), computes the
  validation RMSE after every epoch and applies the step schedule and early stopping itself, so
  per epoch nothing crosses JVM<->Python and the driver is not involved. Its output is one stats
  row (per-epoch history) and the best factors as BIASED_FACTORS rows, checkpointed.
  `epochs_per_job` > 0 splits training into several jobs (factors kept in the store between
  them) so a retry redoes at most one job. Fallback: when the task finds a block missing (it
  landed on another executor, files lost) it reports it; the driver streams the cached setup
  frame (|R| bytes) into a new task, which writes its store and starts over; same result.
* multi task (tasks > 1; a cluster): one fat task per executor, one Spark stage per outer
  stratum; user groups stay in their task, item groups move to the next stratum's task through a
  shuffle of factor records; the epoch ends with a stage computing validation RMSE against all
  item groups (replicated). The tasks agree on an index built once on the driver from the
  distinct ids (4 bytes per id; no ratings, no factors). Ratings are streamed in the first epoch
  (one cached RDD per shift: each stage reads only its own sub-blocks, |R| bytes per epoch) and
  written to each executor's store; later epochs read the stores, and if a task misses its
  blocks (Spark places tasks by host, not executor) the epoch is redone and blocks are streamed
  from then on.

Threads: a task runs `threads` threads. On standalone/YARN/Kubernetes with static allocation a
TaskResourceProfile asks Spark for that many CPUs per DSGD task (spark.executor.cores by
default: one fat task per executor). Local mode rejects TaskResourceProfiles ("only supported
for Standalone, Yarn and Kubernetes") and a barrier stage reserving the cores cost ~1 s per job
here, so in local mode the single task uses all local[N] cores while Spark accounts it one: fine
when fit() is the only job running, else set `threads` (e.g. 1) explicitly.

Cleanup: every run writes under `<SparkFiles root>/recospark-dsgd/<run_id>/`; `fit` deletes it on
success and on failure (driver-side in local mode, a cleanup job on executors otherwise) and
unpersists what it cached. The driver sees scalars only: counts, sums, timings, never factors or
ratings; losses come back as task results, not accumulators, so a retried task cannot count twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.files import SparkFiles
from pyspark.rdd import RDD
from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from recospark import faults
from recospark.frames import first_row
from recospark.models.sgd import blocks as bk
from recospark.models.sgd.blocks import FactorBlock, Progress, Store, SubBlock, strata_order
from recospark.models.sgd.params import SGD_DEFAULTS as _D
from recospark.models.sgd.worker import (
    BLOB_SCHEMA,
    ITEM_SALT,
    PACKED_SCHEMA,
    RANKING,
    USER_SALT,
    SinglePlan,
    StagePlan,
    TaskConfig,
    blobs_to_factor_rows,
    boundary_task,
    cleanup_task,
    epoch_fields,
    extract_stats,
    initial_state,
    neg_totals_from_counts,
    pack_partition,
    single_task_arrow,
    state_blobs,
    stratum_task,
    total,
)
from recospark.schema import BIASED_FACTORS

log = logging.getLogger(__name__)

# The engine's input columns: `fit_dsgd` takes (USER int, ITEM int, RATING float) frames.
USER = "user"
ITEM = "item"
RATING = "r"

_LEVEL = StorageLevel.MEMORY_AND_DISK
RATING_BYTES = 12  # per rating in a sub-block: int32 user, int32 item, float32 rating


@dataclass(frozen=True)
class DSGDParams:
    """The engine's settings; model defaults are the estimator's (`SGD_DEFAULTS`, one source)."""

    rank: int = _D["rank"]
    max_iter: int = _D["maxIter"]
    reg: float = _D["regParam"]
    bias_reg: float = _D["biasRegParam"]
    step_size: float = _D["stepSize"]
    step_decay: float = _D["stepDecay"]
    schedule: str = _D["schedule"]
    num_blocks: int = _D["numBlocks"]  # B: outer user/item groups; Spark-level strata
    init_std: float = _D["initStd"]
    seed: int = _D["seed"]
    early_stopping_rounds: int = _D["earlyStoppingRounds"]
    checkpoint_interval: int = _D["checkpointInterval"]
    inner_blocks: int = _D["innerBlocks"]  # K: inner blocks per group; a task's threads run K*B/tasks sub-blocks per step
    threads: int = _D["threads"]  # per task; 0: the executor's cores (local[N]: N; cluster: spark.executor.cores)
    tasks: int = _D["tasks"]  # Spark tasks per stratum; 0: 1 in local mode, else min(B, executors)
    loss: str = _D["loss"]  # squared | bpr | warp (ranking.py): ranking losses have mu = 0, no user bias, no validation
    num_negatives: int = _D["numNegatives"]  # bpr: negatives per positive
    positive_threshold: float = _D["positiveThreshold"]  # ranking: ratings >= this are positives; 0: every rated item
    block_weighting: bool = _D["blockWeighting"]  # ranking: unbiased block-restricted negatives (catalogue-wide |N_u|)
    margin: float = _D["margin"]  # warp
    max_trials: int = _D["maxTrials"]  # warp
    max_norm: float = _D["maxNorm"]  # warp: row norm projection; 0 disables
    resident: bool = True  # keep ratings (and, single task, factors) in executor-local files
    epochs_per_job: int = 0  # single task: epochs per Spark job (0: all; a retry redoes at most one job)


@dataclass
class DSGDResult:
    user_factors: DataFrame  # BIASED_FACTORS: id, features, bias
    item_factors: DataFrame
    global_mean: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_validation: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # plan, setup/export seconds, jobs


@dataclass(frozen=True)
class ExecutionPlan:
    tasks: int
    threads: int
    local: bool
    use_profile: bool
    reason: str

    @property
    def single(self) -> bool:
        return self.tasks == 1


def _block_partition(key: int) -> int:
    """The one partition function of every DSGD RDD: record key = task index."""
    return key


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
        tasks = max(1, min(p.num_blocks, p.tasks or 1))
        threads = p.threads or max(1, cores // tasks)
        return ExecutionPlan(
            tasks,
            threads,
            True,
            False,
            f"local mode ({sc.master}): {tasks} task(s) x {threads} thread(s); no stage-level scheduling in local mode",
        )
    executors = max(1, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
    tasks = max(1, min(p.num_blocks, p.tasks or executors))
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


# the single task's output: one stats row (kind "S", JSON in blob), then factor rows (kind "U"/"I")
_SINGLE_OUT = StructType([StructField("kind", StringType(), False), *BIASED_FACTORS.fields, StructField("blob", BinaryType(), False)])


def _metrics_text(h: dict[str, Any]) -> str:
    """An epoch's training/validation metrics for the progress log."""
    if "train_loss" in h:
        return f"{h['objective']} train_loss={h['train_loss']:.4f} updates={h['updates']}"
    return f"train_rmse={h['train_rmse']:.4f} val_rmse=" + ("-" if h["val_rmse"] is None else f"{h['val_rmse']:.4f}")


def _udf(fn, **kwargs):
    """A plain function for applyInPandas (it inspects type hints, which a functools.partial lacks)."""

    def udf(pdf):
        return fn(pdf, **kwargs)

    return udf


class DSGD:
    """One training run. `prepare` cuts the data into blocks once; `fit` trains and returns
    factors as DataFrames. The driver only sees scalars."""

    def __init__(self, spark: SparkSession, params: DSGDParams):
        self.spark = spark
        self.sc = spark.sparkContext
        self.p = params
        self.B = params.num_blocks
        self.K = params.inner_blocks
        if self.B < 1 or self.K < 1:
            raise ValueError(f"DSGD needs num_blocks >= 1 and inner_blocks >= 1, got {self.B}, {self.K}")
        if params.loss != "squared" and params.loss not in RANKING:
            raise ValueError(f"DSGD: loss must be 'squared' or one of {RANKING}, got {params.loss!r}")
        self.ranking = params.loss in RANKING
        self.run_id = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.plan = plan_execution(spark, params)
        self.info: dict[str, Any] = {"plan": asdict(self.plan), "run_id": self.run_id, "jobs": 0}
        self._persisted: list = []
        self._prepared = False

    # -- setup -------------------------------------------------------------------------------

    def prepare(self, train: DataFrame, validation: DataFrame | None) -> None:
        """`train`/`validation`: columns user (int), item (int), r (float). One pass over the
        ratings packs every sub-block (and, for the single-task plan, writes them to the store)."""
        started = time.monotonic()
        p, B, K = self.p, self.B, self.K
        write = self.run_id if (self.plan.single and p.resident) else None

        def cols(df: DataFrame) -> DataFrame:
            return df.select(
                F.col(USER).cast("int").alias("user"), F.col(ITEM).cast("int").alias("item"), F.col(RATING).cast("float").alias("r")
            )

        train = cols(train)
        if self.ranking and validation is not None:
            if p.early_stopping_rounds > 0:
                raise ValueError(f"DSGD: early_stopping_rounds must be 0 with loss={p.loss!r} (no validation metric for ranking losses)")
            log.info("DSGD loss=%s: no validation metric for ranking losses; the validation rows are not used", p.loss)
            validation = None
        users = items = None
        neg_total = None
        if not self.plan.single:
            # several tasks must agree on every id's row: the index (4 bytes per id, no ratings, no
            # factors) is built on the driver from the distinct ids and travels in task closures.
            # The single task builds its own from the blocks it reads.
            ids = (
                train.select(F.lit(0).alias("k"), F.col("user").alias("id"))
                .union(train.select(F.lit(1).alias("k"), F.col("item").alias("id")))
                .distinct()
                .toArrow()
            )
            k, idv = ids.column("k").to_numpy(), ids.column("id").to_numpy()
            users = bk.Index.build(idv[k == 0], p.seed, B, K, USER_SALT)
            items = bk.Index.build(idv[k == 1], p.seed, B, K, ITEM_SALT)
            if self.ranking:  # |N_u| needs each user's number of rated items: one int per user, like the index
                counts = train.groupBy("user").agg(F.countDistinct("item").alias("n")).toArrow()
                neg_total = neg_totals_from_counts(
                    users, len(items.ids), B, K, counts.column("user").to_numpy(), counts.column("n").to_numpy().astype(np.int64)
                )
            self.info["setup_index_seconds"] = round(time.monotonic() - started, 3)
        slots = self.plan.tasks * self.plan.threads if self.plan.local else self.sc.defaultParallelism

        def pack(frame: DataFrame, kind: str) -> DataFrame:
            if frame.rdd.getNumPartitions() > slots:
                frame = frame.coalesce(slots)  # fewer partial blobs, same parallelism
            return frame.mapInArrow(_udf(pack_partition, kind=kind, seed=p.seed, B=B, K=K, run_id=write), PACKED_SCHEMA)

        # the one pass over the ratings, map side only: partial sub-blocks with global ids (single
        # task: also written to the store); their readers merge them into rows of the inner blocks
        packed = pack(train, "R")
        if validation is not None:
            packed = packed.unionByName(pack(cols(validation), "V"))
        self.packed = packed.persist(_LEVEL)
        self._persisted.append(self.packed)
        t_pack = time.monotonic()
        # one small row per partial blob (no shuffle), summed here in a fixed order
        meta = sorted(tuple(r) for r in self.packed.select("kind", "G", "J", "a", "b", "part", "n", "rsum", F.length("blob")).collect())
        self.info["setup_pack_seconds"] = round(time.monotonic() - t_pack, 3)
        self._prepared = True
        sub_counts: dict = {}
        part_counts: dict = {}
        n_train, rsum, n_val = 0, 0.0, 0
        packed_bytes = {"R": 0, "V": 0}
        for kind, G, J, a, b, _part, n, s, nbytes in meta:
            key = (kind, G, J, a, b)
            packed_bytes[kind] += int(nbytes)
            sub_counts[key] = sub_counts.get(key, 0) + int(n)
            part_counts[key] = part_counts.get(key, 0) + 1
            if kind == "R":
                n_train += int(n)
                rsum += float(s)
            else:
                n_val += int(n)
        if n_train == 0:
            raise ValueError("SGDMatrixFactorization: no training ratings")
        # n_val counts validation ratings of users/items unknown to training too: merging drops them,
        # and the exact count comes back from the first epoch
        # ranking losses score b_i + p_u . q_i: no global mean (and no user bias: their kernels leave b_u at 0)
        self.n_train, self.n_validation, self.mu = n_train, n_val, (0.0 if self.ranking else rsum / n_train)
        self.info["partials"] = {kind: sum(c for k, c in part_counts.items() if k[0] == kind) for kind in ("R", "V")}
        self.info["packed_bytes"] = packed_bytes  # |R| as blobs: 12 bytes per rating + 64 per partial
        self.cfg = TaskConfig(
            run_id=self.run_id,
            B=B,
            K=K,
            rank=p.rank,
            reg=p.reg,
            bias_reg=p.bias_reg,
            init_std=p.init_std,
            seed=p.seed,
            mu=self.mu,
            threads=self.plan.threads,
            tasks=self.plan.tasks,
            users=users,
            items=items,
            sub_counts=sub_counts,
            part_counts=part_counts,
            loss=p.loss,
            num_negatives=p.num_negatives,
            pos_threshold=p.positive_threshold if p.positive_threshold > 0 else float("-inf"),
            block_weighting=p.block_weighting,
            margin=p.margin,
            max_trials=p.max_trials,
            max_norm=p.max_norm,
            n_items=len(items.ids) if items is not None else 0,
            neg_total=neg_total,
        )
        self.info["setup_seconds"] = round(time.monotonic() - started, 3)
        self.info["store_written_at_setup"] = bool(write)
        log.info(
            "DSGD setup: %d train, %d validation ratings, %d x %d blocks, %s, %.1fs",
            n_train,
            n_val,
            B,
            K,
            self.plan.reason,
            self.info["setup_seconds"],
        )

    # -- shared helpers ----------------------------------------------------------------------

    def _with_profile(self, rdd: RDD) -> RDD:
        profile = self._profile_or_none()
        return rdd if profile is None else rdd.withResources(profile)

    def _profile_or_none(self):
        """The TaskResourceProfile asking `threads` CPUs per DSGD task, when the plan uses one."""
        if not self.plan.use_profile:
            return None
        if not hasattr(self, "_profile"):
            self._profile = ResourceProfileBuilder().require(TaskResourceRequests().cpus(self.plan.threads)).build
        return self._profile

    def _fail_partition(self, partitions: int) -> int | None:
        fail = faults.partition_for("sgd")
        return None if fail is None else fail % partitions

    def _factor_frames(self, blobs: DataFrame) -> tuple[DataFrame, DataFrame]:
        """(users, items) BIASED_FACTORS frames from (kind, grp, blob) rows: one Arrow pass and one
        checkpoint (so the blocks, the store and the training lineage can go)."""
        schema = StructType([StructField("kind", StringType(), False), *BIASED_FACTORS.fields])
        rows = blobs.select("blob").mapInArrow(_udf(blobs_to_factor_rows, with_kind=True), schema)
        both = rows.checkpoint(eager=True) if self.sc.getCheckpointDir() else rows.localCheckpoint(eager=True)
        return both.filter(F.col("kind") == "U").drop("kind"), both.filter(F.col("kind") == "I").drop("kind")

    def _entry(self, h: dict[str, Any], seconds: float) -> dict[str, Any]:
        out = dict(h)
        out["seconds"] = round(seconds, 4)
        return out

    # -- the single-task plan ----------------------------------------------------------------

    def _streamed_all(self) -> DataFrame:
        """Every blob of the cached setup frame in one partition (the single task's fallback)."""
        return self.packed.select("blob").coalesce(1)

    def _fit_single(self) -> DSGDResult:
        p = self.p
        early = self.n_validation > 0 and p.early_stopping_rounds > 0
        progress = Progress(lr=p.step_size)
        history: list[dict[str, Any]] = []
        streamed = not (p.resident and self.info["store_written_at_setup"])
        misses, first = 0, True
        always_stream = not p.resident
        jobs = []
        while True:
            plan = SinglePlan(
                cfg=self.cfg,
                progress=progress,
                max_iter=p.max_iter,
                max_epochs=p.epochs_per_job or p.max_iter,
                early_rounds=p.early_stopping_rounds if early else 0,
                schedule=p.schedule,
                step_decay=p.step_decay,
                validation=self.n_validation > 0,
                keep_best=early,
                fail_partition=self._fail_partition(1) if first else None,
            )
            first = False
            # a DataFrame job (mapInArrow): it runs in the setup pass's Python workers, already warm
            src = self._streamed_all() if streamed else self.spark.range(0, 1, 1, numPartitions=1)
            started, submitted_at = time.monotonic(), time.time()
            out = src.mapInArrow(_udf(single_task_arrow, plan=plan), _SINGLE_OUT, profile=self._profile_or_none()).persist(_LEVEL)
            stats = json.loads(bytes(first_row(out.filter(F.col("kind") == "S").select("blob"))["blob"]))
            job_s = time.monotonic() - started
            self.info["jobs"] += 1
            jobs.append(
                {k: v for k, v in stats.items() if k not in ("history", "progress", "started_at")}
                | {"job_seconds": round(job_s, 3), "streamed": streamed, "task_start_delay": round(stats["started_at"] - submitted_at, 3)}
            )
            if stats["missing"]:
                out.unpersist()
                if streamed:
                    raise RuntimeError(f"DSGD: blocks missing although streamed: {stats.get('missing_example')}")
                misses += 1
                # the task ran where the store is not (or it was lost): stream the blocks into a new
                # task, which writes its store and starts over (deterministic: the same result)
                log.warning(
                    "DSGD single task missed %d blocks (%s): streaming the blocks and starting over",
                    stats["missing"],
                    stats.get("missing_example"),
                )
                streamed, progress, history = True, Progress(lr=p.step_size), []
                always_stream = misses > 1  # missed twice: this cluster moves tasks around, keep streaming
                continue
            epochs = stats["history"]
            if "n_validation" in stats:
                self.n_validation = stats["n_validation"]
            overhead = job_s - sum(h["task_seconds"] for h in epochs)
            for k, h in enumerate(epochs):
                # the job's own costs (scheduling, kernel loading, streamed blocks) go to its first epoch
                h = {
                    **h,
                    "streamed_bytes": stats["streamed_bytes"] if k == 0 else 0,
                    "streamed_val_bytes": stats["streamed_val_bytes"] if k == 0 else 0,
                    "factor_bytes": 0,
                    "compile_seconds": stats["compile_seconds"] if k == 0 else 0.0,
                    "streamed": streamed and k == 0,
                }
                history.append(self._entry(h, h["task_seconds"] + (overhead if k == 0 else 0.0)))
                log.info("epoch %d/%d %s step=%.5f", h["epoch"], p.max_iter, _metrics_text(h), h["step_size"])
            progress = Progress(**stats["progress"])
            streamed = always_stream  # else the store is now where the task ran
            if stats["finished"]:  # `out` holds the best factors as rows: cut them loose from training
                started = time.monotonic()
                rows = out.filter(F.col("kind") != "S").drop("blob")
                both = rows.checkpoint(eager=True) if self.sc.getCheckpointDir() else rows.localCheckpoint(eager=True)
                users, items = (both.filter(F.col("kind") == kind).drop("kind") for kind in ("U", "I"))
                self.info["export_seconds"] = round(time.monotonic() - started, 3)
                out.unpersist()
                break
            out.unpersist()
        self.info["single_jobs"] = jobs
        self.info["misses"] = misses
        best_epoch = progress.best_epoch if early else progress.epoch
        return self._result(users, items, history, best_epoch)

    # -- the multi-task plan -----------------------------------------------------------------

    def _keyed_blobs(self, frame: DataFrame, key) -> RDD:
        E = self.plan.tasks
        return frame.select("G", "blob").rdd.map(lambda row: (key(row), ("B", row.blob))).partitionBy(E, _block_partition)

    def _ratings_shift(self, shift: int) -> RDD:
        """The training sub-blocks of outer stratum `shift`, each in its user group's task (cached)."""
        cache = self.__dict__.setdefault("_shift_rdds", {})
        if shift not in cache:
            B, E = self.B, self.plan.tasks
            frame = self.packed.filter((F.col("kind") == "R") & (F.col("J") == F.pmod(F.col("G") + F.lit(shift), F.lit(B))))
            rdd = self._keyed_blobs(frame, lambda row, E=E: bk.owner(row.G, E)).persist(_LEVEL)
            rdd.setName(f"dsgd-ratings-shift-{shift}")
            cache[shift] = rdd
            self._persisted.append(rdd)
        return cache[shift]

    def _validation_blobs(self) -> RDD:
        if not hasattr(self, "_val_rdd"):
            E = self.plan.tasks
            rdd = self._keyed_blobs(self.packed.filter(F.col("kind") == "V"), lambda row, E=E: bk.owner(row.G, E)).persist(_LEVEL)
            rdd.setName("dsgd-validation")
            self._val_rdd = rdd
            self._persisted.append(rdd)
        return self._val_rdd

    def _initial_state(self) -> RDD:
        E = self.plan.tasks
        tokens = self.sc.parallelize([(t, ("T", None)) for t in range(E)], E).partitionBy(E, _block_partition)
        return tokens.mapPartitionsWithIndex(partial(initial_state, cfg=self.cfg, shift=0), preservesPartitioning=True)

    def run_epoch(self, state: RDD, epoch: int, lr: float, offset: int, streamed: bool, fail: int | None) -> tuple[RDD, list[int]]:
        """The lazy RDD of one multi-task epoch from `state` (item groups at shift `offset`):
        B stratum stages, then (with validation) the boundary stage."""
        B, E, cfg = self.B, self.plan.tasks, self.cfg
        order = strata_order(self.p.seed, epoch, B, first=offset)
        validation = self.n_validation > 0
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
                inp = inp.union(self._ratings_shift(shift))
            rdd = self._with_profile(
                inp.mapPartitionsWithIndex(partial(stratum_task, plan=plan), preservesPartitioning=last and not validation)
            )
        if validation:
            plan = StagePlan(cfg, epoch, order[-1], next_shift=order[-1], lr=lr, first=False, validation=True)
            inp = rdd.partitionBy(E, _block_partition)
            if streamed:
                inp = inp.union(self._validation_blobs())
            rdd = self._with_profile(inp.mapPartitionsWithIndex(partial(boundary_task, plan=plan), preservesPartitioning=True))
        return rdd, order

    def _cut_lineage(self, rdd: RDD) -> None:
        if self.sc.getCheckpointDir():
            rdd.checkpoint()
        else:
            rdd.localCheckpoint()

    def _fit_multi(self) -> DSGDResult:
        p = self.p
        early = self.n_validation > 0 and p.early_stopping_rounds > 0
        state = self._initial_state().persist(_LEVEL)
        progress = Progress(lr=p.step_size)
        history: list[dict[str, Any]] = []
        best = state
        live = [state]
        streamed = True  # the first epoch streams the blocks; tasks write them to their stores
        always_stream = not p.resident
        misses = 0
        fail = self._fail_partition(self.plan.tasks)
        while not progress.stopped and progress.epoch < p.max_iter:
            epoch = progress.epoch
            started = time.monotonic()
            out, order = self.run_epoch(state, epoch, progress.lr, progress.offset, streamed, fail)
            fail = None
            out.persist(_LEVEL)
            cut = p.checkpoint_interval > 0 and (epoch + 1) % p.checkpoint_interval == 0
            if cut:
                self._cut_lineage(out)
            parts = out.mapPartitions(extract_stats).collect()
            self.info["jobs"] += 1
            if any(s["missing"] for s in parts):
                out.unpersist()
                if streamed:
                    raise RuntimeError(f"DSGD epoch {epoch + 1}: blocks missing although streamed")
                misses += 1
                # a task ran where its store is not (tasks are placed by host, not by executor):
                # redo the epoch streaming each stratum's blocks, and keep streaming from now on
                log.warning("DSGD epoch %d: a task missed its blocks; streaming blocks from now on (|R| per epoch)", epoch + 1)
                streamed = always_stream = True
                continue
            sums = {k: v for s in parts for k, v in s["sums"].items()}
            vsums = {k: v for s in parts for k, v in s.get("val_sums", {}).items()}
            _, n = total(sums)
            if n != self.n_train:
                raise AssertionError(f"epoch {epoch + 1} visited {n} ratings, expected {self.n_train}")
            vsse, vn = total(vsums)
            if self.n_validation:
                self.n_validation = int(vn)  # the exact count, unknown ids dropped
            val_rmse = math.sqrt(vsse / vn) if vn else None
            train_metric, fields = epoch_fields(p.loss, sums, val_rmse)
            nxt, improved = bk.advance(
                progress,
                train_metric,
                val_rmse,
                early_rounds=p.early_stopping_rounds if early else 0,
                schedule=p.schedule,
                step_decay=p.step_decay,
                last_shift=order[-1],
            )
            seconds = time.monotonic() - started
            history.append(
                {
                    "epoch": epoch + 1,
                    **fields,
                    "step_size": progress.lr,
                    "seconds": round(seconds, 4),
                    "val_n": int(vn),
                    "kernel_seconds": max(s["kernel_seconds"] for s in parts),
                    "kernel_cpu_seconds": sum(s["kernel_cpu_seconds"] for s in parts),
                    "task_seconds": max(s["task_seconds"] for s in parts),
                    "streamed_bytes": sum(s["streamed_bytes"] for s in parts),
                    "streamed_val_bytes": sum(s.get("streamed_val_bytes", 0) for s in parts),
                    "factor_bytes": sum(s["factor_bytes"] for s in parts),
                    "compile_seconds": max(s["compile_seconds"] for s in parts),
                    "stages": max(s["stages"] for s in parts),
                    "streamed": streamed,
                }
            )
            log.info("epoch %d/%d %s step=%.5f %.1fs", epoch + 1, p.max_iter, _metrics_text(fields), progress.lr, seconds)
            if improved:
                best = out
            progress = nxt
            streamed = always_stream
            live.append(out)
            keep = [out, best]
            for r in live:
                if all(r is not k for k in keep):
                    r.unpersist()
            live = [r for r in live if any(r is k for k in keep)]
            state = out
        self.info["misses"] = misses
        users, items = self._factor_frames(self.spark.createDataFrame(best.mapPartitions(state_blobs), BLOB_SCHEMA, verifySchema=False))
        for r in live:
            r.unpersist()
        best_epoch = progress.best_epoch if early else progress.epoch
        return self._result(users, items, history, best_epoch)

    # -- the run -----------------------------------------------------------------------------

    def _result(self, users: DataFrame, items: DataFrame, history: list, best_epoch: int) -> DSGDResult:
        return DSGDResult(
            user_factors=users,
            item_factors=items,
            global_mean=self.mu,
            history=history,
            best_epoch=best_epoch,
            n_train=self.n_train,
            n_validation=self.n_validation,
            info=self.info,
        )

    def fit(self) -> DSGDResult:
        started = time.monotonic()
        try:
            result = self._fit_single() if self.plan.single else self._fit_multi()
        finally:
            self.cleanup()
        self.info["fit_seconds"] = round(time.monotonic() - started, 3)
        return result

    def cleanup(self) -> None:
        """Delete this run's store everywhere it may be and drop cached blocks (also on failure)."""
        for r in self._persisted:
            with contextlib.suppress(Exception):
                r.unpersist()
        self._persisted = []
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


def fit_dsgd(spark: SparkSession, train: DataFrame, validation: DataFrame | None, params: DSGDParams) -> DSGDResult:
    """`train`/`validation` with columns USER, ITEM (int) and RATING (float); validation may be None."""
    driver = DSGD(spark, params)
    try:
        driver.prepare(train, validation)
    except BaseException:
        driver.cleanup()
        raise
    return driver.fit()


__all__ = [
    "DSGD",
    "ITEM",
    "RATING",
    "RATING_BYTES",
    "USER",
    "DSGDParams",
    "DSGDResult",
    "ExecutionPlan",
    "FactorBlock",
    "SubBlock",
    "fit_dsgd",
    "local_cores",
    "plan_execution",
    "strata_order",
]
