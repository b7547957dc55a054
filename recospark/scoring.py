"""Top-N per user for any model, excluding already-rated items: the one ranking code path.

Models, the `recommend` stage, `tune` and the blend all rank through `recommend_for`, so the
lists a user receives and the lists that `evaluate` scores are the same by construction. It
dispatches on what the fitted model offers:

- ``blockScorer()`` (a `BlockScorer`: EASE, neural nets, a blend of them): `top_n_scored` asks
  it for a block of users' scores against every candidate item, given their history;
- otherwise the factor path, `top_n`: the dot product of ``scoringFactors()`` (or MLlib's
  ``userFactors``/``itemFactors``), with the item matrix broadcast once.

Both paths end in the same selection (`rank_block`): excluded pairs masked to -inf, the n best
per user, ties broken by the smaller movie_id everywhere, at the cut too. Users travel to the
Python workers as Arrow batches (`mapInArrow`) and list columns are read as numpy views; no
user x item matrix larger than one block ever exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType

from recospark.schema import FACTOR_ID, FEATURES, MOVIE_ID, RANK, RATING, SCORE, TOP_N, USER_ID

__all__ = [
    "BlockScorer",
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
# Cap on one block's score matrix (cells); keeps a block's memory near 64 MB in float32.
_MAX_BLOCK_CELLS = 16_000_000
_TOP_N_ARROW = pa.schema([(USER_ID, pa.int32()), (RANK, pa.int32()), (MOVIE_ID, pa.int32()), (SCORE, pa.float64())])


@runtime_checkable
class BlockScorer(Protocol):
    """Scores blocks of users against every candidate item on the executors.

    Pickled into the task closure: keep it small, hold heavy arrays as Spark Broadcast objects
    and read ``.value`` lazily inside `score`.
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


def _select_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, ties broken by the smaller column index.

    Columns are items in ascending id order, so "smaller index" is "smaller movie_id". Exact
    at the cut: where more items tie with the k-th score than places are left, the smallest
    ids among them win.
    """
    n_rows, n_cols = scores.shape
    if k >= n_cols:
        return np.tile(np.arange(n_cols), (n_rows, 1))
    cand = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.min(np.take_along_axis(scores, cand, axis=1), axis=1)  # the k-th best score per row
    above = (scores > kth[:, None]).sum(axis=1)
    tied = (scores == kth[:, None]).sum(axis=1)
    # rows where argpartition had to choose among tied items: redo those rows exactly
    for r in np.flatnonzero(above + tied > k):
        row = scores[r]
        better = np.flatnonzero(row > kth[r])
        same = np.flatnonzero(row == kth[r])[: k - len(better)]  # ascending index = ascending id
        cand[r] = np.concatenate([better, same])
    return cand


def _known_positions(item_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    items = np.asarray(items)
    pos = np.searchsorted(item_ids, items)
    inside = pos < len(item_ids)
    pos, items = pos[inside], items[inside]
    return pos[item_ids[pos] == items]


def rank_block(
    user_ids: np.ndarray,
    scores: np.ndarray,
    excluded: Sequence[np.ndarray | None],
    item_ids: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The one selection rule: each row's n best columns, excluded items left out, ties by smaller id.

    `scores` is [len(user_ids), len(item_ids)] (overwritten: excluded cells become -inf) and
    `item_ids` is sorted ascending. -inf scores are never recommended. Returns flat
    (user_id, rank, movie_id, score) arrays, ordered by score descending then movie_id
    ascending; a user with fewer than n candidates gets a shorter list.
    """
    rows, cols = [], []
    for r, items in enumerate(excluded):
        if items is None or len(items) == 0:
            continue
        pos = _known_positions(item_ids, items)
        rows.append(np.full(len(pos), r))
        cols.append(pos)
    if rows:
        scores[np.concatenate(rows), np.concatenate(cols)] = -np.inf
    k = min(n, scores.shape[1])
    if k == 0 or scores.shape[0] == 0:
        empty = np.zeros(0, np.int32)
        return empty, empty, empty, np.zeros(0)
    cand = _select_top(scores, k)
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((item_ids[cand], -cand_scores), axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    cand_scores = np.take_along_axis(cand_scores, order, axis=1)
    keep = cand_scores != -np.inf
    ranks = np.cumsum(keep, axis=1)
    return (
        np.repeat(np.asarray(user_ids, np.int32), k).reshape(-1, k)[keep],
        ranks[keep].astype(np.int32),
        item_ids[cand][keep].astype(np.int32),
        cand_scores[keep].astype(np.float64),
    )


def top_n_block(
    user_ids: np.ndarray,
    user_mat: np.ndarray,
    rated: Sequence[np.ndarray | None],
    item_ids: np.ndarray,
    item_mat: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best n unrated items for each user of one block, scored by `user_mat @ item_mat.T`.

    `item_ids` must be sorted ascending; see `rank_block` for the output.
    """
    return rank_block(user_ids, user_mat @ item_mat.T, rated, item_ids, n)


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


def _factor_batches(batches: Iterator[pa.RecordBatch], ids_bc: Any, mat_bc: Any, n: int, block: int) -> Iterator[pa.RecordBatch]:
    item_ids, item_mat = ids_bc.value, mat_bc.value
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
            yield _batch(*top_n_block(user_ids[start:stop], user_mat, _split(x_off, x_val, start, stop), item_ids, item_mat, n))


def _scored_batches(
    batches: Iterator[pa.RecordBatch], scorer: BlockScorer, dropped_bc: Any, n: int, block: int, separate_exclude: bool
) -> Iterator[pa.RecordBatch]:
    item_ids = np.asarray(scorer.item_ids())
    dropped = None if dropped_bc is None else dropped_bc.value
    for batch in batches:
        user_ids = batch.column(0).to_numpy().astype(np.int32, copy=False)
        h_off, h_items = _list_parts(batch.column(1), np.int32)
        _, h_ratings = _list_parts(batch.column(2), np.float32)
        x_off, x_items = _list_parts(batch.column(3), np.int32) if separate_exclude else (h_off, h_items)
        for start in range(0, len(user_ids), block):
            stop = min(start + block, len(user_ids))
            scores = scorer.score(user_ids[start:stop], _split(h_off, h_items, start, stop), _split(h_off, h_ratings, start, stop))
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (stop - start, len(item_ids)):
                raise ValueError(f"{type(scorer).__name__}.score returned shape {scores.shape}, expected {(stop - start, len(item_ids))}")
            if dropped is not None:
                scores[:, dropped] = -np.inf
            yield _batch(*rank_block(user_ids[start:stop], scores, _split(x_off, x_items, start, stop), item_ids, n))


def _block_size(user_block_size: int, n_items: int) -> int:
    return max(1, min(user_block_size, _MAX_BLOCK_CELLS // max(1, n_items)))


def _pair_lists(pairs: DataFrame, name: str) -> DataFrame:
    """user_id, <name> array<int>: each user's movie_ids."""
    return pairs.groupBy(USER_ID).agg(F.collect_list(F.col(MOVIE_ID).cast("int")).alias(name))


def _non_null_list(name: str, element: Any) -> Any:
    return F.coalesce(F.col(name), F.array().cast(ArrayType(element))).alias(name)


# --------------------------------------------------------------------------- the two paths (driver)


def top_n(
    users: DataFrame,
    items: DataFrame,
    rated: DataFrame | None,
    n: int,
    user_block_size: int = 2048,
) -> DataFrame:
    """Top-n per user (`users`/`items`: id, features), excluding (user_id, movie_id) pairs in `rated`.

    Parameters
    ----------
    users, items : DataFrame
        `id int, features array<float>`; the score of a pair is their dot product.
    rated : DataFrame or None
        `user_id, movie_id` pairs never recommended (a user's training items).
    n : int
        List length; users with fewer candidates get shorter lists.
    user_block_size : int
        Users scored per matrix product (capped so a block's scores stay near 64 MB).

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
    block = _block_size(user_block_size, len(item_ids))
    sc = spark.sparkContext
    ids_bc, mat_bc = sc.broadcast(item_ids), sc.broadcast(item_mat)
    user_rows = users.select(F.col(FACTOR_ID).cast("int").alias(USER_ID), F.col(FEATURES).cast(ArrayType(FloatType())))
    if rated is not None:
        user_rows = user_rows.join(_pair_lists(rated, _EXCLUDED), USER_ID, "left")
    else:
        user_rows = user_rows.withColumn(_EXCLUDED, F.lit(None).cast(ArrayType(IntegerType())))
    user_rows = user_rows.select(USER_ID, FEATURES, _non_null_list(_EXCLUDED, IntegerType()))

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _factor_batches(batches, ids_bc, mat_bc, n, block)

    return user_rows.mapInArrow(score, TOP_N)


def top_n_scored(
    users: DataFrame | None,
    history: DataFrame,
    scorer: BlockScorer,
    n: int,
    user_block_size: int = 2048,
    exclude: DataFrame | None = None,
    items: DataFrame | None = None,
) -> DataFrame:
    """Top-n per user for a `BlockScorer`: the same selection as `top_n`, another score function.

    Parameters
    ----------
    users : DataFrame or None
        Column `user_id`: the users to rank for; None: every user in `history`.
    history : DataFrame
        `user_id, movie_id, rating` rows handed to the scorer (usually the train split).
    scorer : BlockScorer
    n : int
        List length; users with fewer candidates get shorter lists.
    user_block_size : int
        Users per `score` call (capped so a block's scores stay near 64 MB).
    exclude : DataFrame or None
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
    spark = history.sparkSession
    item_ids = np.asarray(scorer.item_ids())
    if item_ids.ndim != 1 or (np.diff(item_ids) <= 0).any():
        raise ValueError(f"{type(scorer).__name__}.item_ids() must be sorted ascending and unique")
    dropped_bc = None
    if items is not None:
        keep = np.array(sorted({int(r[0]) for r in items.select(F.col(MOVIE_ID).cast("int")).distinct().collect()}), np.int64)
        dropped = np.flatnonzero(~np.isin(item_ids, keep))
        dropped_bc = spark.sparkContext.broadcast(dropped) if len(dropped) else None
    block = _block_size(user_block_size, len(item_ids))
    hist = history.groupBy(USER_ID).agg(
        F.sort_array(
            F.collect_list(F.struct(F.col(MOVIE_ID).cast("int").alias(MOVIE_ID), F.col(RATING).cast("float").alias(RATING)))
        ).alias("_h")
    )
    hist = hist.select(USER_ID, F.col(f"_h.{MOVIE_ID}").alias(_HIST_ITEMS), F.col(f"_h.{RATING}").alias(_HIST_RATINGS))
    rows = hist if users is None else users.select(F.col(USER_ID).cast("int")).distinct().join(hist, USER_ID, "left")
    columns = [USER_ID, _non_null_list(_HIST_ITEMS, IntegerType()), _non_null_list(_HIST_RATINGS, FloatType())]
    separate = exclude is not None
    if exclude is not None:
        rows = rows.join(_pair_lists(exclude, _EXCLUDED), USER_ID, "left")
        columns.append(_non_null_list(_EXCLUDED, IntegerType()))
    rows = rows.select(*columns)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _scored_batches(batches, scorer, dropped_bc, n, block, separate)

    return rows.mapInArrow(score, TOP_N)


# --------------------------------------------------------------------------- dispatch


def candidate_items(model: Any) -> DataFrame:
    """Column `id`: the items `model` can rank (its scorer's items or its item factor table)."""
    if hasattr(model, "blockScorer"):
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        assert spark is not None, "candidate_items needs an active SparkSession"
        ids = model.blockScorer().item_ids()
        return spark.createDataFrame([(int(i),) for i in ids], f"{FACTOR_ID} int")
    return scoring_factors(model)[1].select(F.col(FACTOR_ID).cast("int"))


def recommend_for(
    model: Any,
    history: DataFrame,
    n: int,
    user_block_size: int = 2048,
    *,
    users: DataFrame | None = None,
    exclude: DataFrame | None = None,
    items: DataFrame | None = None,
) -> DataFrame:
    """Top-n lists of any fitted model: through its `blockScorer()` if it has one, else its factors.

    Parameters
    ----------
    model : fitted pyspark.ml Model
        A model with `blockScorer()`, `scoringFactors()` or `userFactors`/`itemFactors`.
    history : DataFrame
        `user_id, movie_id, rating`: what the users rated (the train split); a scorer reads it,
        and by default these pairs are never recommended.
    n, user_block_size : int
        List length; users per scored block.
    users : DataFrame or None
        Column `user_id`: whom to rank for; None: every user the model knows (factor path) or
        every user in `history` (scorer path).
    exclude : DataFrame or None
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
    if hasattr(model, "blockScorer"):
        return top_n_scored(users, history, model.blockScorer(), n, user_block_size, exclude=exclude, items=items)
    if exclude is None:
        exclude = history.select(USER_ID, MOVIE_ID)
    user_factors, item_factors = scoring_factors(model)
    if users is not None:
        user_factors = user_factors.join(users.select(F.col(USER_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "left_semi")
    if items is not None:
        item_factors = item_factors.join(items.select(F.col(MOVIE_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "left_semi")
    return top_n(user_factors, item_factors, exclude, n, user_block_size)
