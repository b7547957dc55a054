"""Stratified distributed SGD (DSGD, Gemulla, Nijkamp, Haas, Sismanis, KDD 2011) on RDDs.

Layout (d = numBlocks):

* users and items are hashed into d blocks each by `xxhash64(seed, salt, id) mod d`, so the
  assignment depends on (seed, d, id) only, never on how the input happens to be partitioned;
  within a block, rows of the factor matrix are the block's ids in ascending order.
* `ratings`: one record per user block i, in partition i, holding the d sub-blocks (i, j) as
  numpy arrays of local indices; partitioned once by `_block_partition`, persisted, never
  shuffled again.
* `users`: one record (user block i, P_i, b_u) per partition i, same partitioner, so it stays
  where its ratings are.
* `items`: one record (item block j, Q_j, b_i) per partition. For the stratum with shift s,
  item block j is re-keyed to user block (j - s) mod d and moved by `partitionBy` with the same
  partitioner: per stratum only d small item-factor blocks cross the network.

Because all three RDDs carry the same JVM partitioner (`PythonPartitioner(d, id(_block_partition))`),
`ratings.union(users).union(items)` is a `PartitionerAwareUnionRDD` with d partitions: partition i
holds ratings block i, user block i and item block (i + s) mod d; `mapPartitionsWithIndex` runs the
compiled kernel on sub-block (i, (i + s) mod d). No two tasks touch the same factor row.

The driver holds scalars only (SSE sums, counts, step size); factors become DataFrames at the end
without passing through the driver. Losses come back as RDD records, not accumulators, so a task
retry cannot count twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.rdd import RDD
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recospark import faults
from recospark.models.sgd.kernel import sgd_block, sse_block
from recospark.schema import BIASED_FACTORS

log = logging.getLogger(__name__)

# The engine's input columns: `fit_dsgd` takes (USER int, ITEM int, RATING float) frames.
USER = "user"
ITEM = "item"
RATING = "r"

_USER_SALT = "user"
_ITEM_SALT = "item"
_RATINGS, _USERS, _ITEMS, _MOVED, _LOSS = "R", "U", "I", "M", "L"
_LEVEL = StorageLevel.MEMORY_AND_DISK

_EMPTY_I32 = np.zeros(0, np.int32)
_EMPTY_F32 = np.zeros(0, np.float32)


class RatingsBlock(NamedTuple):
    """All ratings of one user block: `sub[j]` = (user_local int32, item_local int32, rating float32)."""

    block: int
    sub: tuple


class FactorBlock(NamedTuple):
    """One block of users or items: sorted ids, factor rows (float32 n x k) and biases (float32 n)."""

    block: int
    ids: np.ndarray
    factors: np.ndarray
    biases: np.ndarray


@dataclass(frozen=True)
class DSGDParams:
    rank: int = 128
    max_iter: int = 40
    reg: float = 0.08
    bias_reg: float = 0.01
    step_size: float = 0.03
    step_decay: float = 0.93
    schedule: str = "decay"
    num_blocks: int = 4
    init_std: float = 0.02
    seed: int = 42
    early_stopping_rounds: int = 3
    checkpoint_interval: int = 5


@dataclass
class DSGDResult:
    user_factors: DataFrame  # BIASED_FACTORS: id, features, bias
    item_factors: DataFrame
    global_mean: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_validation: int = 0


# ---------------------------------------------------------------------------------------------
# pure helpers (no Spark): these run inside Python workers and are unit-tested directly


def _block_partition(key: int) -> int:
    """The one partition function of every DSGD RDD: record key = partition index."""
    return key


def seed_seq(seed: int, *parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) % (1 << 63), *[int(p) for p in parts]])


def block_order(seed: int, epoch: int, user_block: int, item_block: int, n: int) -> np.ndarray:
    """The visiting order of sub-block (i, j) in one epoch: a seeded permutation, int64."""
    rng = np.random.default_rng(seed_seq(seed, 1, epoch, user_block, item_block))
    return rng.permutation(n).astype(np.int64, copy=False)


def strata_order(seed: int, epoch: int, d: int, first: int = 0) -> list[int]:
    """The shifts s of one epoch (stratum s pairs user block i with item block (i + s) mod d):
    a seeded permutation, rotated so it starts with `first`, the shift the item blocks already
    sit at after the previous epoch, which saves one item shuffle per epoch."""
    rest = [s for s in np.random.default_rng(seed_seq(seed, 2, epoch)).permutation(d).tolist() if s != first % d]
    return [first % d] + [int(s) for s in rest]


def init_factor_block(block: int, ids: np.ndarray, rank: int, init_std: float, seed: int, salt: int) -> FactorBlock:
    rng = np.random.default_rng(seed_seq(seed, 3, salt, block))
    ids = np.asarray(ids, dtype=np.int32)
    factors = (rng.standard_normal((len(ids), rank)) * init_std).astype(np.float32)
    return FactorBlock(block, ids, factors, np.zeros(len(ids), np.float32))


def _fresh(a: np.ndarray, dtype) -> np.ndarray:
    """A private, writable, C-contiguous copy: the worker never mutates its inputs, so a retried
    or recomputed task starts from exactly the same factors."""
    return np.array(a, dtype=dtype, order="C", copy=True)


def _split_records(records: Iterable):
    """(ratings block, user block, moved item blocks, resident item blocks, carried loss) of one
    partition's records."""
    ratings, user, moved, resident, loss = None, None, [], [], None
    for _, (tag, payload) in records:
        if tag == _RATINGS:
            ratings = payload
        elif tag == _USERS:
            user = payload
        elif tag == _MOVED:
            moved.append(payload)
        elif tag == _ITEMS:
            resident.append(payload)
        elif tag == _LOSS:
            loss = payload
    return ratings, user, moved, resident, loss


def train_stratum_partition(
    records: Iterable,
    *,
    lr: float,
    reg: float,
    bias_reg: float,
    mu: float,
    seed: int,
    epoch: int,
    carry_loss: bool = False,
) -> Iterator[tuple[int, tuple[str, Any]]]:
    """The worker of one stratum: SGD over sub-block (i, j) of the ratings of user block i.

    `records` are (key, (tag, payload)) with exactly one ratings block "R" (user block i), one
    user block "U" and item block j: either moved here for this stratum ("M"; the previous
    stratum's "I" left here is then ignored) or, with no "M", the resident "I" itself. The
    previous stratum's "L" may be present. Yields, all keyed by i, the
    updated user block "U", the updated item block "I" and the epoch's running loss "L" =
    (sse, n): squared errors before each update and the number of ratings visited, plus the
    carried "L" of the previous stratum when `carry_loss` (every stratum but an epoch's first).
    The inputs are never mutated.
    """
    ratings, user, moved, resident, loss = _split_records(records)
    items = moved or resident  # no "M": the stratum uses the item block already resident here
    if ratings is None or user is None or len(items) != 1:
        raise ValueError(
            f"stratum partition needs one ratings, one user and one item block; got "
            f"{ratings is not None}, {user is not None}, {len(items)}"
        )
    item = items[0]
    i, j = ratings.block, item.block
    u_idx, i_idx, r = ratings.sub[j]
    P, bu = _fresh(user.factors, np.float32), _fresh(user.biases, np.float32)
    Q, bi = _fresh(item.factors, np.float32), _fresh(item.biases, np.float32)
    order = block_order(seed, epoch, i, j, len(r))
    sse = float(sgd_block(u_idx, i_idx, r, order, P, Q, bu, bi, float(mu), float(lr), float(reg), float(bias_reg)))
    n = len(r)
    if carry_loss and loss is not None:
        sse, n = sse + loss[0], n + loss[1]
    yield i, (_USERS, FactorBlock(user.block, user.ids, P, bu))
    yield i, (_ITEMS, FactorBlock(item.block, item.ids, Q, bi))
    yield i, (_LOSS, (sse, n))


def sse_partition(records: Iterable, *, mu: float) -> Iterator[tuple[float, int]]:
    """(sse, n) of one user block's ratings against its user block and all item blocks ("M", or
    the resident "I" when d = 1); no update."""
    ratings, user, moved, resident, _ = _split_records(records)
    if ratings is None:
        return
    by_block = {it.block: it for it in (moved or resident)}
    sse, n = 0.0, 0
    for j, (u_idx, i_idx, r) in enumerate(ratings.sub):
        if len(r) == 0:
            continue
        item = by_block[j]
        sse += float(sse_block(u_idx, i_idx, r, user.factors, item.factors, user.biases, item.biases, float(mu)))
        n += len(r)
    yield sse, n


def factor_rows(record, tag: str) -> Iterator[tuple[int, list[float], float]]:
    """Rows (id, features, bias) of a state record of kind `tag` ("U" users, "I" items)."""
    _, (kind, block) = record
    if kind != tag:
        return
    for row in range(len(block.ids)):
        yield int(block.ids[row]), block.factors[row].tolist(), float(block.biases[row])


# ---------------------------------------------------------------------------------------------
# building the blocked RDDs


def _pack_sub_block(pdf: pd.DataFrame) -> pd.DataFrame:
    """One (user block, item block) group -> one row of raw arrays, in a canonical sorted order."""
    pdf = pdf.sort_values(["ul", "il", "r"], kind="mergesort")
    return pd.DataFrame(
        {
            "ub": [int(pdf["ub"].iloc[0])],
            "ib": [int(pdf["ib"].iloc[0])],
            "ul": [pdf["ul"].to_numpy(np.int32).tobytes()],
            "il": [pdf["il"].to_numpy(np.int32).tobytes()],
            "r": [pdf["r"].to_numpy(np.float32).tobytes()],
        }
    )


def _pack_ids(pdf: pd.DataFrame) -> pd.DataFrame:
    pdf = pdf.sort_values("local")
    return pd.DataFrame({"block": [int(pdf["block"].iloc[0])], "ids": [pdf["id"].to_numpy(np.int32).tobytes()]})


def _sub_block_pair(row) -> tuple[int, tuple[int, tuple]]:
    arrays = (
        np.frombuffer(row["ul"], np.int32).copy(),
        np.frombuffer(row["il"], np.int32).copy(),
        np.frombuffer(row["r"], np.float32).copy(),
    )
    return int(row["ub"]), (int(row["ib"]), arrays)


def _assemble_ratings(index: int, pairs: Iterable, d: int) -> Iterator:
    subs: dict[int, tuple] = {}
    for key, (j, arrays) in pairs:
        if key != index:
            raise AssertionError(f"ratings of user block {key} landed in partition {index}")
        subs[j] = arrays
    empty = (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32)
    yield index, (_RATINGS, RatingsBlock(index, tuple(subs.get(j, empty) for j in range(d))))


def _assemble_factors(index: int, pairs: Iterable, tag: str, rank: int, init_std: float, seed: int, salt: int) -> Iterator:
    ids = _EMPTY_I32
    for key, raw in pairs:
        ids = np.frombuffer(raw, np.int32).copy()
    yield index, (tag, init_factor_block(index, ids, rank, init_std, seed, salt))


def _identity_partitions(it):
    return it


def _block_col(col: str, seed: int, d: int, salt: str):
    return F.pmod(F.xxhash64(F.lit(int(seed)), F.lit(salt), F.col(col)), F.lit(d)).cast("int")


def _index(ids: DataFrame, seed: int, d: int, salt: str) -> DataFrame:
    """id -> (block, local row) with rows numbered by ascending id within a block."""
    w = Window.partitionBy("block").orderBy("id")
    return ids.distinct().withColumn("block", _block_col("id", seed, d, salt)).withColumn(
        "local", (F.row_number().over(w) - 1).cast("int")
    )


def _ratings_rdd(indexed: DataFrame, d: int) -> RDD:
    packed = indexed.groupBy("ub", "ib").applyInPandas(
        _pack_sub_block, "ub int, ib int, ul binary, il binary, r binary"
    )
    return (
        packed.rdd.map(_sub_block_pair)
        .partitionBy(d, _block_partition)
        .mapPartitionsWithIndex(partial(_assemble_ratings, d=d), preservesPartitioning=True)
    )


def _factor_rdd(index: DataFrame, d: int, tag: str, p: DSGDParams, salt: int) -> RDD:
    packed = index.groupBy("block").applyInPandas(_pack_ids, "block int, ids binary")
    return (
        packed.rdd.map(lambda row: (int(row["block"]), row["ids"]))
        .partitionBy(d, _block_partition)
        .mapPartitionsWithIndex(
            partial(_assemble_factors, tag=tag, rank=p.rank, init_std=p.init_std, seed=p.seed, salt=salt),
            preservesPartitioning=True,
        )
    )


def _retarget(record, shift: int, d: int) -> list:
    _, (tag, block) = record
    if tag != _ITEMS:
        return []
    return [((block.block - shift) % d, (_MOVED, block))]


def _replicate(record, d: int) -> list:
    _, (tag, block) = record
    if tag != _ITEMS:
        return []
    return [(i, (_MOVED, block)) for i in range(d)]


def move_items(state: RDD, shift: int, d: int) -> RDD:
    """Item block j of `state` -> partition (j - shift) mod d, as "M"; only factor blocks are shuffled."""
    return (
        state.flatMap(partial(_retarget, shift=shift, d=d))
        .partitionBy(d, _block_partition)
        .mapPartitions(_identity_partitions, preservesPartitioning=True)
    )


def broadcast_items(state: RDD, d: int) -> RDD:
    """Every item block to every partition, as "M" (for evaluation: d x the item factors, still small)."""
    return (
        state.flatMap(partial(_replicate, d=d))
        .partitionBy(d, _block_partition)
        .mapPartitions(_identity_partitions, preservesPartitioning=True)
    )


def _never(_record) -> bool:
    return False


def _stratum_task(index: int, records: Iterable, *, fail_partition: int | None, **kwargs) -> Iterator:
    faults.fail_first_attempt(fail_partition, "DSGD stratum")
    return train_stratum_partition(records, **kwargs)


def _train_loss(records: Iterable) -> Iterator:
    for _, (tag, payload) in records:
        if tag == _LOSS:
            yield "train", payload[0], payload[1]


def _val_loss(records: Iterable, mu: float) -> Iterator:
    for sse, n in sse_partition(records, mu=mu):
        yield "val", sse, n


# ---------------------------------------------------------------------------------------------
# the driver


class DSGD:
    """One training run. `fit` returns factors as DataFrames; the driver only sees scalars."""

    def __init__(self, spark: SparkSession, params: DSGDParams):
        self.spark = spark
        self.sc = spark.sparkContext
        self.p = params
        self.d = params.num_blocks

    # -- setup -------------------------------------------------------------------------------

    def prepare(self, train: DataFrame, validation: DataFrame | None) -> None:
        """`train`/`validation`: columns user (int), item (int), r (float)."""
        p, d = self.p, self.d
        train = train.cache()
        stats = train.agg(F.count(F.lit(1)).alias("n"), F.avg(RATING).alias("mu")).first()
        self.n_train = int(stats["n"])
        if self.n_train == 0:
            raise ValueError("SGDMatrixFactorization: no training ratings")
        self.mu = float(stats["mu"])
        uidx = _index(train.select(F.col(USER).alias("id")), p.seed, d, _USER_SALT).cache()
        iidx = _index(train.select(F.col(ITEM).alias("id")), p.seed, d, _ITEM_SALT).cache()
        self._frames = [train, uidx, iidx]

        def indexed(df: DataFrame, how: str) -> DataFrame:
            u = uidx.select(F.col("id").alias(USER), F.col("block").alias("ub"), F.col("local").alias("ul"))
            i = iidx.select(F.col("id").alias(ITEM), F.col("block").alias("ib"), F.col("local").alias("il"))
            return df.join(u, USER, how).join(i, ITEM, how).select("ub", "ib", "ul", "il", F.col(RATING).alias("r"))

        self.ratings = _ratings_rdd(indexed(train, "inner"), d).persist(_LEVEL)
        self.ratings.setName("dsgd-ratings")
        users = _factor_rdd(uidx, d, _USERS, p, 0)
        items = _factor_rdd(iidx, d, _ITEMS, p, 1)
        # the training state: user block i and (at rest) item block i in partition i
        self.state = users.union(items).persist(_LEVEL)
        self.offset = 0  # partition i holds item block (i + offset) mod d
        self.validation = None
        self.n_validation = 0
        if validation is not None:
            val = indexed(validation, "inner").cache()
            self.n_validation = val.count()
            self._frames.append(val)
            if self.n_validation:
                self.validation = _ratings_rdd(val, d).persist(_LEVEL)
        # Materialize the blocked data once; the source frames are then no longer needed.
        counts = self.sc.union(
            [self.ratings.filter(_never), self.state.filter(_never)]
            + ([self.validation.filter(_never)] if self.validation is not None else [])
        ).count()
        assert counts == 0
        for frame in self._frames:
            frame.unpersist()

    # -- one epoch ---------------------------------------------------------------------------

    def stratum_input(self, state: RDD, shift: int, offset: int = 0) -> RDD:
        """Partition i: ratings block i + the state's records of partition i (user block i) + item
        block (i + shift) mod d. A PartitionerAwareUnionRDD: d partitions, no ratings shuffle.
        `offset`: the state holds item block (i + offset) mod d in partition i; when that is
        already the stratum's, nothing moves."""
        if shift % self.d == offset % self.d:
            return self.ratings.union(state)
        return self.ratings.union(state).union(move_items(state, shift, self.d))

    def run_epoch(self, epoch: int, state: RDD, lr: float) -> tuple[RDD, list[RDD]]:
        """Chain the d strata of one epoch lazily; returns the final state and every stratum's output."""
        p = self.p
        fail = faults.partition_for("sgd")
        outs = []
        for position, shift in enumerate(strata_order(p.seed, epoch, self.d, first=self.offset)):
            task = partial(
                _stratum_task,
                fail_partition=fail if (epoch == 0 and position == 0) else None,
                lr=lr,
                reg=p.reg,
                bias_reg=p.bias_reg,
                mu=self.mu,
                seed=p.seed,
                epoch=epoch,
                carry_loss=position > 0,
            )
            state = self.stratum_input(state, shift, self.offset).mapPartitionsWithIndex(task, preservesPartitioning=True)
            state.persist(_LEVEL)
            outs.append(state)
            self.offset = shift
        return state, outs

    def validation_loss(self, state: RDD) -> RDD:
        joined = self.validation.union(state)
        if self.d > 1:
            joined = joined.union(broadcast_items(state, self.d))
        return joined.mapPartitions(partial(_val_loss, mu=self.mu))

    def _cut_lineage(self, rdd: RDD) -> None:
        if self.sc.getCheckpointDir():
            rdd.checkpoint()
        else:
            rdd.localCheckpoint()

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> DSGDResult:
        p = self.p
        state = self.state
        lr = p.step_size
        history: list[dict[str, Any]] = []
        early = self.validation is not None and p.early_stopping_rounds > 0
        best_val, best, best_epoch, since_best = math.inf, state, 0, 0
        last_cut: RDD | None = None
        live: list[RDD] = [state]  # persisted states that may still be needed
        prev_train = math.inf
        for epoch in range(p.max_iter):
            started = time.monotonic()
            state, outs = self.run_epoch(epoch, state, lr)
            cut = p.checkpoint_interval > 0 and (epoch + 1) % p.checkpoint_interval == 0
            if cut:
                self._cut_lineage(state)
            # one job per epoch: runs the d strata, then the losses (and validation) as scalars
            parts = [state.mapPartitions(_train_loss)]
            if self.validation is not None:
                parts.append(self.validation_loss(state))
            sums: dict[str, list[float]] = {"train": [0.0, 0], "val": [0.0, 0]}
            for kind, sse, n in self.sc.union(parts).collect():
                sums[kind][0] += sse
                sums[kind][1] += n
            for out in outs[:-1]:
                out.unpersist()
            sse, n = sums["train"]
            if n != self.n_train:
                raise AssertionError(f"epoch {epoch + 1} visited {n} ratings, expected {self.n_train}")
            train_rmse = math.sqrt(sse / n)
            val_rmse = math.sqrt(sums["val"][0] / sums["val"][1]) if sums["val"][1] else None
            seconds = time.monotonic() - started
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_rmse": train_rmse,
                    "val_rmse": val_rmse,
                    "step_size": lr,
                    "seconds": round(seconds, 3),
                    "updates": int(n),
                }
            )
            log.info(
                "epoch %d/%d train_rmse=%.4f val_rmse=%.4f step=%.5f %.1fs",
                epoch + 1,
                p.max_iter,
                train_rmse,
                float("nan") if val_rmse is None else val_rmse,
                lr,
                seconds,
            )
            stop = False
            if early and val_rmse is not None:
                if val_rmse < best_val:
                    best_val, best, best_epoch, since_best = val_rmse, state, epoch + 1, 0
                else:
                    since_best += 1
                    stop = since_best >= p.early_stopping_rounds
            else:
                best, best_epoch = state, epoch + 1
            if cut:
                last_cut = state
            # keep the current state, the best one and the last lineage cut; drop the rest
            live.append(state)
            keep = [r for r in (state, best, last_cut) if r is not None]
            for r in live:
                if all(r is not k for k in keep):
                    r.unpersist()
            live = [r for r in live if any(r is k for k in keep)]
            if p.schedule == "bold_driver":
                lr = lr * 1.05 if train_rmse < prev_train else lr * 0.5
            else:
                lr = lr * p.step_decay
            prev_train = train_rmse
            if stop:
                log.info("early stopping after epoch %d: best validation RMSE %.4f at epoch %d", epoch + 1, best_val, best_epoch)
                break
        user_df = self._factor_frame(best, _USERS)
        item_df = self._factor_frame(best, _ITEMS)
        for r in live + [self.ratings] + ([self.validation] if self.validation is not None else []):
            r.unpersist()
        return DSGDResult(
            user_factors=user_df,
            item_factors=item_df,
            global_mean=self.mu,
            history=history,
            best_epoch=best_epoch,
            n_train=self.n_train,
            n_validation=self.n_validation,
        )

    def _factor_frame(self, state: RDD, tag: str) -> DataFrame:
        df = self.spark.createDataFrame(state.flatMap(partial(factor_rows, tag=tag)), BIASED_FACTORS)
        if self.sc.getCheckpointDir():
            return df.checkpoint(eager=True)
        return df.localCheckpoint(eager=True)


def fit_dsgd(spark: SparkSession, train: DataFrame, validation: DataFrame | None, params: DSGDParams) -> DSGDResult:
    """`train`/`validation` with columns USER, ITEM (int) and RATING (float); validation may be None."""
    driver = DSGD(spark, params)
    driver.prepare(train, validation)
    return driver.fit()


__all__ = [
    "DSGD",
    "ITEM",
    "RATING",
    "USER",
    "DSGDParams",
    "DSGDResult",
    "FactorBlock",
    "RatingsBlock",
    "block_order",
    "broadcast_items",
    "factor_rows",
    "fit_dsgd",
    "init_factor_block",
    "move_items",
    "sse_partition",
    "strata_order",
    "train_stratum_partition",
]
