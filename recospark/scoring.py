"""Top-N per user for any model, excluding already-rated items: the one ranking code path.

Models, the `recommend` stage, `tune` and the blend all rank through `recommend_for`, so the
lists a user receives and the lists that `evaluate` scores are the same by construction. It
dispatches on what the fitted model offers:

- ``blockScorer()`` (a `BlockScorer`: EASE, neural nets, a blend of them): `top_n_scored` asks
  it for a block of users' scores against every candidate item, given their history;
- otherwise (no such method, or it returns None) the factor path, `top_n`: the dot product of ``scoringFactors()`` (or MLlib's
  ``userFactors``/``itemFactors``), with the item matrix broadcast once.

Both paths end in the same selection (`recospark.topn_kernels.scan_tile`, behind `rank_block`):
the n best per user, excluded pairs and -inf never, ties broken by the smaller movie_id
everywhere, at the cut too. The scan keeps each user's running n-th best as a threshold, so
nearly every cell costs one compare. The factor path never holds a user block x catalogue
matrix: BLAS writes a cache-sized tile of scores and the scan reads it while it is still in
cache. Users travel to the Python workers as Arrow batches (`mapInArrow`) and list columns are
read as numpy views.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType

from recospark import topn_kernels as kernels
from recospark.frames import id_frame
from recospark.schema import FACTOR_ID, FEATURES, MOVIE_ID, RANK, RATING, SCORE, TOP_N, USER_ID

__all__ = [
    "BlockScorer",
    "UserHistory",
    "block_scorer",
    "candidate_items",
    "rank_block",
    "recommend_for",
    "scoring_factors",
    "top_n",
    "top_n_block",
    "top_n_scored",
]

_EXCLUDED = "rated"
_HIST_ITEMS = "_hist_items"
_HIST_RATINGS = "_hist_ratings"
_USER_VECTOR = "_user_vector"
# Cap on one block's score matrix (cells); keeps a block's memory near 64 MB in float32.
_MAX_BLOCK_CELLS = 16_000_000
_TOP_N_ARROW = pa.schema([(USER_ID, pa.int32()), (RANK, pa.int32()), (MOVIE_ID, pa.int32()), (SCORE, pa.float64())])


@runtime_checkable
class BlockScorer(Protocol):
    """Scores blocks of users against every candidate item on the executors.

    Pickled into the task closure: keep it small, hold heavy arrays as Spark Broadcast objects
    and read ``.value`` lazily inside `score`.

    Optional: a scorer that needs a vector per user (a blend with factor components) defines
    ``user_factors() -> DataFrame`` (`id, features`, read on the driver and never pickled);
    `top_n_scored` then joins it to the users and calls ``score(..., user_features=M)`` with
    M float32 [len(user_ids), f], NaN rows for users without a vector.
    """

    def item_ids(self) -> np.ndarray:
        """int32, sorted ascending, unique: the candidate items, one per score column."""
        ...

    def score(self, user_ids: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [len(user_ids), len(item_ids())]; higher ranks first, -inf never recommended, no NaN.

        `user_ids` are raw user_id values (int32); `hist_items[r]` the raw movie_ids user r has in
        the history (int32, any order, possibly empty) and `hist_ratings[r]` their ratings (float32).
        """
        ...


def scoring_factors(model: Any) -> tuple[DataFrame, DataFrame]:
    """(users, items) as `id, features` whose dot product ranks a user's items for `model`.

    Models with biases or no factors at all (baselines) define `scoringFactors()`; MLlib's
    ALSModel ranks by `userFactors . itemFactors` directly.
    """
    if hasattr(model, "scoringFactors"):
        return model.scoringFactors()
    return model.userFactors, model.itemFactors


# --------------------------------------------------------------------------- selection (workers)

# One score tile (users x items, float32) stays within a core's L2 cache (1 MB on the bench machine):
# the matrix product writes it and the selection scan reads it while it is still there.
TILE_CELLS = 131_072
TILE_ROWS = 256
# Users whose mean factor orders the items for the scan (any order gives the same lists).
_DIRECTION_SAMPLE = 2048


def _flat(lists: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a sequence of id arrays (None: empty)."""
    arrays = [np.zeros(0, np.int32) if x is None else np.asarray(x, np.int32) for x in lists]
    offsets = np.zeros(len(arrays) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in arrays])
    return offsets, (np.concatenate(arrays) if arrays else np.zeros(0, np.int32))


def _ranked(user_ids: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return kernels.ranked(np.asarray(user_ids, np.int32), state[0], state[1], state[2])


def _select(
    user_ids: np.ndarray, scores: np.ndarray, x_off: np.ndarray, x_val: np.ndarray, item_ids: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ptr, pos = kernels.excluded_positions(x_off, x_val, item_ids, np.arange(len(item_ids), dtype=np.int64))
    state = kernels.heaps(len(user_ids), min(n, len(item_ids)))
    kernels.scan_tile(np.ascontiguousarray(scores, dtype=np.float32), 0, item_ids, ptr, pos, *state)
    return _ranked(user_ids, state)


def rank_block(
    user_ids: np.ndarray,
    scores: np.ndarray,
    excluded: Sequence[np.ndarray | None],
    item_ids: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The one selection rule: each row's n best columns, excluded items left out, ties by smaller id.

    `scores` is float32 [len(user_ids), len(item_ids)] and `item_ids` is sorted ascending;
    `excluded[r]` holds the ids row r must not get (any order; ids not in `item_ids` are
    ignored). -inf and NaN scores are never recommended. Returns flat
    (user_id, rank, movie_id, score) arrays, ordered by score descending then movie_id
    ascending; a user with fewer than n candidates gets a shorter list.
    """
    x_off, x_val = _flat(excluded)
    return _select(user_ids, scores, x_off, x_val, np.asarray(item_ids, np.int32), n)


@dataclass(frozen=True)
class ScanPlan:
    """The item side of the factor path, prepared once on the driver and broadcast.

    Items are scanned in descending order of their score for a typical user (`direction`, e.g.
    the mean user factor), so thresholds rise early; the scan order changes no list (ties are
    compared by id). For each tile of `width` items the per-dimension range of its factors lets
    `kernels.tile_below` skip a tile that provably holds nothing for any user of a block: for
    models whose ranking is nearly the same for everyone (popularity, item biases) that is
    almost every tile after the first few.
    """

    ids: np.ndarray  # int32, scan order
    mat: np.ndarray  # float32 [items, rank], scan order
    sorted_ids: np.ndarray  # int32, ascending
    scan_pos: np.ndarray  # int64: scan position of sorted_ids[j]
    width: int
    q_max: np.ndarray  # float64 [tiles, rank]
    q_min: np.ndarray
    q_abs: np.ndarray  # max |q| per tile and dimension
    gamma: float  # float32 rounding bound of a rank-long dot product, with slack


def scan_plan(item_ids: np.ndarray, item_mat: np.ndarray, direction: np.ndarray | None = None) -> ScanPlan:
    """A `ScanPlan` for items (`item_ids` ascending, rows of `item_mat`), ordered along `direction`."""
    item_ids = np.asarray(item_ids, np.int32)
    item_mat = np.ascontiguousarray(item_mat, dtype=np.float32)
    n_items, rank = item_mat.shape
    if direction is None or not np.isfinite(direction).all():
        direction = np.zeros(rank)
    typical = item_mat.astype(np.float64) @ np.asarray(direction, np.float64)
    order = np.lexsort((item_ids, -typical))  # best first, ties by id: deterministic
    scan_pos = np.empty(n_items, np.int64)
    scan_pos[order] = np.arange(n_items)
    mat = np.ascontiguousarray(item_mat[order])
    width = max(64, TILE_CELLS // TILE_ROWS)
    tiles = [mat[i : i + width].astype(np.float64) for i in range(0, n_items, width)]
    empty = np.zeros((0, rank))
    u = 2.0**-24
    gamma = 2.0 * (rank + 2) * u / (1 - (rank + 2) * u)
    return ScanPlan(
        ids=item_ids[order],
        mat=mat,
        sorted_ids=item_ids,
        scan_pos=scan_pos,
        width=width,
        q_max=np.array([t.max(axis=0) for t in tiles]) if tiles else empty,
        q_min=np.array([t.min(axis=0) for t in tiles]) if tiles else empty,
        q_abs=np.array([np.abs(t).max(axis=0) for t in tiles]) if tiles else empty,
        gamma=gamma,
    )


def _factor_select(
    user_ids: np.ndarray,
    user_mat: np.ndarray,
    x_off: np.ndarray,
    x_val: np.ndarray,
    plan: ScanPlan,
    n: int,
    stats: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_select` of `user_mat @ plan.mat.T` without ever holding it: L2-sized tiles, each computed
    by BLAS and scanned at once, tiles that cannot matter to any user of the block skipped."""
    n_users, n_items = len(user_ids), len(plan.ids)
    k = min(n, n_items)
    ptr, pos = kernels.excluded_positions(x_off, x_val, plan.sorted_ids, plan.scan_pos)
    state = kernels.heaps(n_users, k)
    user_mat = np.ascontiguousarray(user_mat, dtype=np.float32)
    rows, width = TILE_ROWS, plan.width
    buf = np.empty((rows, width), np.float32)
    skipped = 0
    for u0 in range(0, n_users, rows):
        u1 = min(u0 + rows, n_users)
        part = tuple(a[u0:u1] for a in state)
        users = user_mat[u0:u1]
        for t, i0 in enumerate(range(0, n_items, width)):
            i1 = min(i0 + width, n_items)
            if t and kernels.tile_below(users, plan.q_max[t], plan.q_min[t], plan.q_abs[t], plan.gamma, part[3], part[2], k):
                skipped += 1
                continue
            tile = buf if (u1 - u0, i1 - i0) == buf.shape else np.empty((u1 - u0, i1 - i0), np.float32)
            np.matmul(users, plan.mat[i0:i1].T, out=tile)
            kernels.scan_tile(tile, i0, plan.ids, ptr[u0 : u1 + 1], pos, *part)
    if stats is not None:
        stats["tiles"] = stats.get("tiles", 0) + -(-n_users // rows) * -(-n_items // width)
        stats["skipped"] = stats.get("skipped", 0) + skipped
    return _ranked(user_ids, state)


def top_n_block(
    user_ids: np.ndarray,
    user_mat: np.ndarray,
    rated: Sequence[np.ndarray | None],
    item_ids: np.ndarray,
    item_mat: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best n unrated items for each user of one block, scored by `user_mat @ item_mat.T`.

    `item_ids` must be sorted ascending; see `rank_block` for the rule and the output.
    """
    x_off, x_val = _flat(rated)
    user_mat = np.asarray(user_mat, np.float32)
    plan = scan_plan(item_ids, item_mat, user_mat.mean(axis=0) if len(user_mat) else None)
    return _factor_select(user_ids, user_mat, x_off, x_val, plan, n)


# --------------------------------------------------------------------------- Arrow plumbing (workers)


def _list_parts(column: Any, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of an Arrow list column without nulls, as numpy (values usually a view)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return offsets, values


def _split(offsets: np.ndarray, values: np.ndarray, start: int, stop: int) -> list[np.ndarray]:
    return [values[offsets[r] : offsets[r + 1]] for r in range(start, stop)]


def _batch(u: np.ndarray, rk: np.ndarray, m: np.ndarray, s: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(u), pa.array(rk), pa.array(m), pa.array(s)], schema=_TOP_N_ARROW)


_WARM = False


def _warm() -> None:
    """Load the selection kernels once per Python worker (numba's on-disk cache, or a compile)."""
    global _WARM
    if not _WARM:
        kernels.warm_up()
        _WARM = True


def _factor_batches(batches: Iterator[pa.RecordBatch], plan_bc: Any, n: int, block: int) -> Iterator[pa.RecordBatch]:
    _warm()
    plan = plan_bc.value
    for batch in batches:
        user_ids = batch.column(0).to_numpy().astype(np.int32, copy=False)
        f_off, f_val = _list_parts(batch.column(1), np.float32)
        x_off, x_val = _list_parts(batch.column(2), np.int32)
        for start in range(0, len(user_ids), block):
            stop = min(start + block, len(user_ids))
            lengths = np.diff(f_off[start : stop + 1])
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError("user factor vectors of different lengths")
            user_mat = f_val[f_off[start] : f_off[stop]].reshape(stop - start, -1)
            yield _batch(*_factor_select(user_ids[start:stop], user_mat, x_off[start : stop + 1], x_val, plan, n))


def _feature_matrix(column: Any) -> np.ndarray:
    """float32 [rows, f] of an Arrow list<float> column whose non-null rows all have f values; null rows NaN."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    lengths = np.diff(offsets)[valid]
    width = int(lengths[0]) if len(lengths) else 0
    if (lengths != width).any():
        raise ValueError("user factor vectors of different lengths")
    out = np.full((len(offsets) - 1, width), np.nan, np.float32)
    out[valid] = values[offsets[:-1][valid][:, None] + np.arange(width)]
    return out


def _scored_batches(
    batches: Iterator[pa.RecordBatch], scorer: BlockScorer, dropped_bc: Any, n: int, block: int, separate_exclude: bool, with_features: bool
) -> Iterator[pa.RecordBatch]:
    _warm()
    item_ids = np.asarray(scorer.item_ids(), np.int32)
    dropped = None if dropped_bc is None else dropped_bc.value
    for batch in batches:
        user_ids = batch.column(0).to_numpy().astype(np.int32, copy=False)
        h_off, h_items = _list_parts(batch.column(1), np.int32)
        _, h_ratings = _list_parts(batch.column(2), np.float32)
        x_off, x_items = _list_parts(batch.column(3), np.int32) if separate_exclude else (h_off, h_items)
        features = _feature_matrix(batch.column(batch.num_columns - 1)) if with_features else None
        for start in range(0, len(user_ids), block):
            stop = min(start + block, len(user_ids))
            args = (user_ids[start:stop], _split(h_off, h_items, start, stop), _split(h_off, h_ratings, start, stop))
            if features is None:
                scores = scorer.score(*args)
            else:
                scores = scorer.score(*args, user_features=features[start:stop])  # type: ignore[call-arg]
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (stop - start, len(item_ids)):
                raise ValueError(f"{type(scorer).__name__}.score returned shape {scores.shape}, expected {(stop - start, len(item_ids))}")
            if dropped is not None:
                scores[:, dropped] = -np.inf
            yield _batch(*_select(user_ids[start:stop], scores, x_off[start : stop + 1], x_items, item_ids, n))


def _block_size(user_block_size: int, n_items: int) -> int:
    return max(1, min(user_block_size, _MAX_BLOCK_CELLS // max(1, n_items)))


class UserHistory:
    """Each user's history grouped once: `lists` is `user_id, _hist_items array<int>, _hist_ratings
    array<float>`, items and ratings in the same order (ratings NaN when the table has none).

    Ranking several models on the same history (the recommend stage, tune's grid) groups the
    ratings once instead of once per model: build it, `persist()`, pass it wherever a history or
    an exclusion table is taken, `unpersist()` when done.
    """

    def __init__(self, ratings: DataFrame) -> None:
        rating = F.col(RATING).cast("float") if RATING in ratings.columns else F.lit(float("nan")).cast("float")
        # Two lists filled by one aggregation, row by row, stay aligned; sorting structs instead took
        # twice as long at ML-10M's shape (the scorers take the history in any order).
        self.lists = ratings.groupBy(F.col(USER_ID).cast("int").alias(USER_ID)).agg(
            F.collect_list(F.col(MOVIE_ID).cast("int")).alias(_HIST_ITEMS), F.collect_list(rating).alias(_HIST_RATINGS)
        )

    def persist(self) -> UserHistory:
        """Keep the grouped lists (memory, spilling to disk) for every model that ranks on them; returns self."""
        self.lists = self.lists.persist(StorageLevel.MEMORY_AND_DISK)
        return self

    def unpersist(self) -> None:
        """Release the grouped lists once every model is ranked."""
        self.lists.unpersist()


def _history(table: DataFrame | UserHistory) -> UserHistory:
    return table if isinstance(table, UserHistory) else UserHistory(table)


def _pair_lists(pairs: DataFrame | UserHistory, name: str) -> DataFrame:
    """user_id, <name> array<int>: each user's movie_ids."""
    return _history(pairs).lists.select(USER_ID, F.col(_HIST_ITEMS).alias(name))


def _non_null_list(name: str, element: Any) -> Any:
    return F.coalesce(F.col(name), F.array().cast(ArrayType(element))).alias(name)


# --------------------------------------------------------------------------- the two paths (driver)


def top_n(
    users: DataFrame,
    items: DataFrame,
    rated: DataFrame | UserHistory | None,
    n: int,
    user_block_size: int = 2048,
) -> DataFrame:
    """Top-n per user (`users`/`items`: id, features), excluding (user_id, movie_id) pairs in `rated`.

    Parameters
    ----------
    users, items : DataFrame
        `id int, features array<float>`; the score of a pair is their dot product.
    rated : DataFrame, UserHistory or None
        `user_id, movie_id` pairs never recommended (a user's training items).
    n : int
        List length; users with fewer candidates get shorter lists.
    user_block_size : int
        Users per worker call; scores are computed in cache-sized tiles whatever the block.

    Returns
    -------
    DataFrame
        `user_id, rank, movie_id, score` (recospark.schema.TOP_N), rank 1..n.

    Examples
    --------
    >>> users = spark.createDataFrame([(1, [1.0]), (2, [-1.0])], "id int, features array<float>")
    >>> items = spark.createDataFrame([(10, [2.0]), (11, [1.0]), (12, [2.0])], "id int, features array<float>")
    >>> rated = spark.createDataFrame([(1, 10)], "user_id int, movie_id int")
    >>> [tuple(r) for r in top_n(users, items, rated, 2).orderBy("user_id", "rank").collect()]
    [(1, 1, 12, 2.0), (1, 2, 11, 1.0), (2, 1, 11, -1.0), (2, 2, 10, -2.0)]
    """
    spark = users.sparkSession
    item_pdf = items.select(F.col(FACTOR_ID).cast("int"), FEATURES).toPandas().sort_values(FACTOR_ID)
    item_ids = item_pdf[FACTOR_ID].to_numpy(np.int32)
    item_mat = np.stack(item_pdf[FEATURES].to_numpy()).astype(np.float32) if len(item_pdf) else np.zeros((0, 1), np.float32)
    block = max(1, user_block_size)  # scores are tiled: no block ever holds users x all items
    sample = [r[0] for r in users.select(FEATURES).limit(_DIRECTION_SAMPLE).collect()]
    direction = np.mean(np.array(sample, np.float64), axis=0) if sample and len({len(x) for x in sample}) == 1 else None
    plan_bc = spark.sparkContext.broadcast(scan_plan(item_ids, item_mat, direction))
    user_rows = users.select(F.col(FACTOR_ID).cast("int").alias(USER_ID), F.col(FEATURES).cast(ArrayType(FloatType())))
    if rated is not None:
        user_rows = user_rows.join(_pair_lists(rated, _EXCLUDED), USER_ID, "left")
    else:
        user_rows = user_rows.withColumn(_EXCLUDED, F.lit(None).cast(ArrayType(IntegerType())))
    user_rows = user_rows.select(USER_ID, FEATURES, _non_null_list(_EXCLUDED, IntegerType()))

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _factor_batches(batches, plan_bc, n, block)

    return user_rows.mapInArrow(score, TOP_N)


def top_n_scored(
    users: DataFrame | None,
    history: DataFrame | UserHistory,
    scorer: BlockScorer,
    n: int,
    user_block_size: int = 2048,
    exclude: DataFrame | UserHistory | None = None,
    items: DataFrame | None = None,
) -> DataFrame:
    """Top-n per user for a `BlockScorer`: the same selection as `top_n`, another score function.

    Parameters
    ----------
    users : DataFrame or None
        Column `user_id`: the users to rank for; None: every user in `history`.
    history : DataFrame or UserHistory
        `user_id, movie_id, rating` rows handed to the scorer (usually the train split).
    scorer : BlockScorer
    n : int
        List length; users with fewer candidates get shorter lists.
    user_block_size : int
        Users per `score` call (capped so a block's scores stay near 64 MB).
    exclude : DataFrame, UserHistory or None
        `user_id, movie_id` pairs never recommended; None: the history pairs.
    items : DataFrame or None
        Column `movie_id`: only these of the scorer's items may be recommended; None: all.

    Returns
    -------
    DataFrame
        `user_id, rank, movie_id, score` (recospark.schema.TOP_N), rank 1..n.

    Examples
    --------
    >>> import numpy as np
    >>> class Popular:  # scores every item by a fixed weight, whatever the history
    ...     def item_ids(self):
    ...         return np.array([10, 11, 12], np.int32)
    ...     def score(self, user_ids, hist_items, hist_ratings):
    ...         return np.tile(np.array([1.0, 3.0, 3.0], np.float32), (len(user_ids), 1))
    >>> history = spark.createDataFrame([(1, 11, 4.0), (2, 10, 3.0)], "user_id int, movie_id int, rating double")
    >>> [tuple(r) for r in top_n_scored(None, history, Popular(), 2).orderBy("user_id", "rank").collect()]
    [(1, 1, 12, 3.0), (1, 2, 10, 1.0), (2, 1, 11, 3.0), (2, 2, 12, 3.0)]
    """
    hist = _history(history).lists
    spark = hist.sparkSession
    item_ids = np.asarray(scorer.item_ids())
    if item_ids.ndim != 1 or (np.diff(item_ids) <= 0).any():
        raise ValueError(f"{type(scorer).__name__}.item_ids() must be sorted ascending and unique")
    dropped_bc = None
    if items is not None:
        keep = np.array(sorted({int(r[0]) for r in items.select(F.col(MOVIE_ID).cast("int")).distinct().collect()}), np.int64)
        dropped = np.flatnonzero(~np.isin(item_ids, keep))
        dropped_bc = spark.sparkContext.broadcast(dropped) if len(dropped) else None
    block = _block_size(user_block_size, len(item_ids))
    rows = hist if users is None else users.select(F.col(USER_ID).cast("int")).distinct().join(hist, USER_ID, "left")
    columns = [USER_ID, _non_null_list(_HIST_ITEMS, IntegerType()), _non_null_list(_HIST_RATINGS, FloatType())]
    separate = exclude is not None
    if exclude is not None:
        rows = rows.join(_pair_lists(exclude, _EXCLUDED), USER_ID, "left")
        columns.append(_non_null_list(_EXCLUDED, IntegerType()))
    user_factors = scorer.user_factors() if hasattr(scorer, "user_factors") else None
    if user_factors is not None:
        vectors = user_factors.select(
            F.col(FACTOR_ID).cast("int").alias(USER_ID), F.col(FEATURES).cast(ArrayType(FloatType())).alias(_USER_VECTOR)
        )
        rows = rows.join(vectors, USER_ID, "left")
        columns.append(F.col(_USER_VECTOR))
    rows = rows.select(*columns)
    with_features = user_factors is not None

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _scored_batches(batches, scorer, dropped_bc, n, block, separate, with_features)

    return rows.mapInArrow(score, TOP_N)


# --------------------------------------------------------------------------- dispatch


def block_scorer(model: Any) -> BlockScorer | None:
    """The model's `blockScorer()`, or None when its factors rank it (no such method, or it returns None).

    A composite model (the blend) returns None when all its parts are factor models, so it
    keeps the factor path, the fast one for dot products.
    """
    return model.blockScorer() if hasattr(model, "blockScorer") else None


def candidate_items(model: Any) -> DataFrame:
    """Column `id`: the items `model` can rank (its scorer's items or its item factor table)."""
    scorer = block_scorer(model)
    if scorer is not None:
        # the active session is per thread (recommend ranks models on driver threads): fall back to the application's
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        return id_frame(spark, scorer.item_ids())
    return scoring_factors(model)[1].select(F.col(FACTOR_ID).cast("int"))


def recommend_for(
    model: Any,
    history: DataFrame | UserHistory,
    n: int,
    user_block_size: int = 2048,
    *,
    users: DataFrame | None = None,
    exclude: DataFrame | UserHistory | None = None,
    items: DataFrame | None = None,
) -> DataFrame:
    """Top-n lists of any fitted model: through its `blockScorer()` if it gives one, else its factors.

    Parameters
    ----------
    model : fitted pyspark.ml Model
        A model with `blockScorer()`, `scoringFactors()` or `userFactors`/`itemFactors`.
    history : DataFrame or UserHistory
        `user_id, movie_id, rating`: what the users rated (the train split); a scorer reads it,
        and by default these pairs are never recommended. A persisted `UserHistory` is grouped
        once for all the models ranked on it.
    n, user_block_size : int
        List length; users per scored block.
    users : DataFrame or None
        Column `user_id`: whom to rank for; None: every user the model knows (factor path) or
        every user in `history` (scorer path).
    exclude : DataFrame, UserHistory or None
        `user_id, movie_id` pairs never recommended; None: the history pairs.
    items : DataFrame or None
        Column `movie_id`: only these may be recommended (e.g. the catalogue); None: all.

    Returns
    -------
    DataFrame
        `user_id, rank, movie_id, score` (recospark.schema.TOP_N), ties by the smaller movie_id.

    Examples
    --------
    >>> from recospark.models.baselines import GlobalMean
    >>> history = spark.createDataFrame([(1, 10, 4.0), (2, 10, 2.0), (2, 11, 3.0), (3, 12, 5.0)], ["user_id", "movie_id", "rating"])
    >>> recs = recommend_for(GlobalMean().fit(history), history, 2)
    >>> [tuple(r)[:3] for r in recs.orderBy("user_id", "rank").collect()]
    [(1, 1, 11), (1, 2, 12), (2, 1, 12), (3, 1, 10), (3, 2, 11)]
    """
    scorer = block_scorer(model)
    if scorer is not None:
        return top_n_scored(users, history, scorer, n, user_block_size, exclude=exclude, items=items)
    if exclude is None:
        exclude = history
    user_factors, item_factors = scoring_factors(model)
    if users is not None:
        user_factors = user_factors.join(users.select(F.col(USER_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "left_semi")
    if items is not None:
        item_factors = item_factors.join(items.select(F.col(MOVIE_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "left_semi")
    return top_n(user_factors, item_factors, exclude, n, user_block_size)
