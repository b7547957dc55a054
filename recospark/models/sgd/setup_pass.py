"""The setup pass: the one pass over the ratings, map side only, that cuts them into blocks.

Task half, `pack_partition` (in `mapInArrow`, no shuffle, no JVM sort): every input partition
of the training (and validation) ratings is cut into partial sub-blocks with global ids. Blocks
are hashes of the ids, so no index is needed yet; whoever reads a sub-block merges its partials
(codec.merge_subs). For the single-task plan the partials also go to the executor-local store.

Driver half, `prepare`: launches that pass, caches its output (the fallback copy of the ratings,
|R| bytes in the JVM), and reads back one small row per partial blob (counts, rating sums), from
which it builds the `TaskConfig`. For the multi-task plan it first builds the index on the
driver from the distinct ids (4 bytes per id; no ratings, no factors), so that every task agrees
on every id's row; ranking losses add one count per user (|N_u|, next to the index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.models.sgd import codec
from recospark.models.sgd.layout import ITEM_SALT, USER_SALT, Index, hash_blocks
from recospark.models.sgd.pool import ensure_warm
from recospark.models.sgd.run import LEVEL, Run, udf_of
from recospark.models.sgd.settings import TaskConfig
from recospark.models.sgd.store import Store, blob_name
from recospark.models.sgd.stratum import neg_totals_from_counts

log = logging.getLogger(__name__)

# The engine's input columns: `fit_dsgd` takes (USER int, ITEM int, RATING float) frames.
USER = "user"
ITEM = "item"
RATING = "r"
RATING_BYTES = 12  # per rating in a sub-block: int32 user, int32 item, float32 rating
PACKED_SCHEMA = "kind string, G int, J int, a int, b int, part int, n long, rsum double, blob binary"


def pack_partition(batches: Iterator, *, kind: str, seed: int, B: int, K: int, run_id: str | None, part: int | None = None) -> Iterator:
    """mapInArrow, the one setup pass: the ratings of one input partition (columns user, item, r)
    -> one partial blob of kind `kind` ("R" training, "V" validation) per sub-block (G, J, a, b),
    with global ids. Blocks are hashes of the ids, so this needs no index and no shuffle; whoever
    reads a sub-block merges its partials (codec.merge_subs: ids to rows, sorted). With `run_id`,
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
    ub = hash_blocks(user, seed, B * K, USER_SALT)
    ib = hash_blocks(item, seed, B * K, ITEM_SALT)
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
        blob = codec.encode_sub(kind, G_, J_, a_, b_, user[lo:hi], item[lo:hi], r[lo:hi], part=part)
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


def _columns(df: DataFrame) -> DataFrame:
    return df.select(F.col(USER).cast("int").alias("user"), F.col(ITEM).cast("int").alias("item"), F.col(RATING).cast("float").alias("r"))


def prepare(run: Run, train: DataFrame, validation: DataFrame | None) -> None:
    """`train`/`validation`: columns user (int), item (int), r (float). One pass over the ratings
    packs every sub-block (and, for the single-task plan, writes them to the store); fills
    `run.cfg`, `run.packed` and the counts."""
    started = time.monotonic()
    p, B, K = run.p, run.B, run.K
    write = run.run_id if (run.plan.single and p.resident) else None
    train = _columns(train)
    if run.ranking and validation is not None:
        if p.earlyStoppingRounds > 0:
            raise ValueError(f"DSGD: early_stopping_rounds must be 0 with loss={p.loss!r} (no validation metric for ranking losses)")
        log.info("DSGD loss=%s: no validation metric for ranking losses; the validation rows are not used", p.loss)
        validation = None
    users = items = None
    neg_total = None
    if not run.plan.single:
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
        users = Index.build(idv[k == 0], p.seed, B, K, USER_SALT)
        items = Index.build(idv[k == 1], p.seed, B, K, ITEM_SALT)
        if run.ranking:  # |N_u| needs each user's number of rated items: one int per user, like the index
            counts = train.groupBy("user").agg(F.countDistinct("item").alias("n")).toArrow()
            neg_total = neg_totals_from_counts(
                users, len(items.ids), B, K, counts.column("user").to_numpy(), counts.column("n").to_numpy().astype(np.int64)
            )
        run.record.setup_index_seconds = round(time.monotonic() - started, 3)
    slots = run.plan.tasks * run.plan.threads if run.plan.local else run.sc.defaultParallelism

    def pack(frame: DataFrame, kind: str) -> DataFrame:
        if frame.rdd.getNumPartitions() > slots:
            frame = frame.coalesce(slots)  # fewer partial blobs, same parallelism
        return frame.mapInArrow(udf_of(pack_partition, kind=kind, seed=p.seed, B=B, K=K, run_id=write), PACKED_SCHEMA)

    # the one pass over the ratings, map side only: partial sub-blocks with global ids (single
    # task: also written to the store); their readers merge them into rows of the inner blocks
    packed = pack(train, "R")
    if validation is not None:
        packed = packed.unionByName(pack(_columns(validation), "V"))
    run.packed = packed.persist(LEVEL)
    run.persisted.append(run.packed)
    t_pack = time.monotonic()
    # one small row per partial blob (no shuffle), summed here in a fixed order
    meta = sorted(tuple(r) for r in run.packed.select("kind", "G", "J", "a", "b", "part", "n", "rsum", F.length("blob")).collect())
    run.record.setup_pack_seconds = round(time.monotonic() - t_pack, 3)
    run.prepared = True
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
    run.n_train, run.n_validation, run.mu = n_train, n_val, (0.0 if run.ranking else rsum / n_train)
    run.record.partials = {kind: sum(c for k, c in part_counts.items() if k[0] == kind) for kind in ("R", "V")}
    run.record.packed_bytes = packed_bytes
    run.cfg = TaskConfig(
        params=p,
        run_id=run.run_id,
        B=B,
        K=K,
        mu=run.mu,
        threads=run.plan.threads,
        tasks=run.plan.tasks,
        users=users,
        items=items,
        sub_counts=sub_counts,
        part_counts=part_counts,
        n_items=len(items.ids) if items is not None else 0,
        neg_total=neg_total,
    )
    run.record.setup_seconds = round(time.monotonic() - started, 3)
    run.record.store_written_at_setup = bool(write)
    log.info(
        "DSGD setup: %d train, %d validation ratings, %d x %d blocks, %s, %.1fs",
        n_train,
        n_val,
        B,
        K,
        run.plan.reason,
        run.record.setup_seconds,
    )


__all__ = ["ITEM", "PACKED_SCHEMA", "RATING", "RATING_BYTES", "USER", "pack_partition", "prepare"]
