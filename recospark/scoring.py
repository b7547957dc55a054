"""Top-N per user for any model, excluding already-rated items: the one ranking code path.

Models, the `recommend` stage and anything else that ranks go through `top_n`, so the lists a
user receives and the lists that `evaluate` scores are the same by construction.

Scoring is blocked and vectorized: users arrive in Arrow batches, each block of users is one
BLAS matmul against the item matrix, `argpartition` keeps the N best, and rated items are
masked to -inf before that. Ties are broken by the smaller movie_id everywhere, at the cut too
(`argpartition` alone picks arbitrarily among items tied with the N-th). The item matrix
(items x rank floats, a few MB even for ml-32m) is broadcast once; no user x item matrix larger
than one block ever exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

from recospark.schema import FACTOR_ID, FEATURES, MOVIE_ID, RANK, SCORE, TOP_N, USER_ID

__all__ = ["scoring_factors", "top_n", "top_n_block"]

_RATED = "rated"
# Cap on one block's score matrix (cells); keeps a block's memory near 64 MB in float32.
_MAX_BLOCK_CELLS = 16_000_000

_USER_BLOCK = StructType(
    [
        StructField(USER_ID, IntegerType(), False),
        StructField(FEATURES, ArrayType(FloatType(), False), False),
        StructField(_RATED, ArrayType(IntegerType(), False), True),
    ]
)


def scoring_factors(model: Any) -> tuple[DataFrame, DataFrame]:
    """(users, items) as `id, features` whose dot product ranks a user's items for `model`.

    Models with biases or no factors at all (baselines) define `scoringFactors()`; MLlib's
    ALSModel ranks by `userFactors . itemFactors` directly.
    """
    if hasattr(model, "scoringFactors"):
        return model.scoringFactors()
    return model.userFactors, model.itemFactors


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


def top_n_block(
    user_ids: np.ndarray,
    user_mat: np.ndarray,
    rated: list[np.ndarray | None],
    item_ids: np.ndarray,
    item_mat: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best n unrated items for each user of one block; `item_ids` must be sorted ascending.

    Returns flat (user_id, rank, movie_id, score) arrays, ordered by score descending then
    movie_id ascending; a user with fewer than n unrated items gets a shorter list.
    """
    scores = user_mat @ item_mat.T
    rows, cols = [], []
    for r, items in enumerate(rated):
        if items is None or len(items) == 0:
            continue
        pos = _known_positions(item_ids, items)
        rows.append(np.full(len(pos), r))
        cols.append(pos)
    if rows:
        scores[np.concatenate(rows), np.concatenate(cols)] = -np.inf
    k = min(n, scores.shape[1])
    if k == 0:
        empty = np.zeros(0, np.int32)
        return empty, empty, empty, np.zeros(0)
    cand = _select_top(scores, k)
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((item_ids[cand], -cand_scores), axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    cand_scores = np.take_along_axis(cand_scores, order, axis=1)
    keep = np.isfinite(cand_scores)
    ranks = np.cumsum(keep, axis=1)
    return (
        np.repeat(user_ids, k).reshape(-1, k)[keep],
        ranks[keep].astype(np.int32),
        item_ids[cand][keep],
        cand_scores[keep].astype(np.float64),
    )


def _known_positions(item_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    items = np.asarray(items)
    pos = np.searchsorted(item_ids, items)
    inside = pos < len(item_ids)
    pos, items = pos[inside], items[inside]
    return pos[item_ids[pos] == items]


def _score_batches(batches: Iterator[pd.DataFrame], item_ids_bc: Any, item_mat_bc: Any, n: int, block: int) -> Iterator[pd.DataFrame]:
    item_ids, item_mat = item_ids_bc.value, item_mat_bc.value
    for pdf in batches:
        for start in range(0, len(pdf), block):
            part = pdf.iloc[start : start + block]
            user_mat = np.stack(part[FEATURES].to_numpy()).astype(np.float32, copy=False)
            rated = [None if r is None else np.asarray(r) for r in part[_RATED]]
            u, rk, m, s = top_n_block(part[USER_ID].to_numpy(np.int32), user_mat, rated, item_ids, item_mat, n)
            yield pd.DataFrame({USER_ID: u.astype(np.int32), RANK: rk, MOVIE_ID: m.astype(np.int32), SCORE: s})


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
    block = max(1, min(user_block_size, _MAX_BLOCK_CELLS // max(1, len(item_ids))))
    sc = spark.sparkContext
    ids_bc, mat_bc = sc.broadcast(item_ids), sc.broadcast(item_mat)
    user_rows = users.select(F.col(FACTOR_ID).cast("int").alias(USER_ID), F.col(FEATURES).cast(ArrayType(FloatType())))
    if rated is not None:
        rated_lists = rated.groupBy(USER_ID).agg(F.collect_list(F.col(MOVIE_ID).cast("int")).alias(_RATED))
        user_rows = user_rows.join(rated_lists, USER_ID, "left")
    else:
        user_rows = user_rows.withColumn(_RATED, F.lit(None).cast(ArrayType(IntegerType())))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _score_batches(batches, ids_bc, mat_bc, n, block)

    return user_rows.select(*[f.name for f in _USER_BLOCK.fields]).mapInPandas(score, TOP_N)
