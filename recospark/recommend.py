"""Top-N per user for any model, excluding already-rated items, plus the `recommend` stage.

Scoring is blocked and vectorized: users arrive in Arrow batches, each block of users is one
BLAS matmul against the item matrix, `argpartition` keeps the N best, and rated items are
masked to -inf before that. The item matrix (items x rank floats, a few MB even for ml-32m)
is broadcast once; no user x item matrix larger than one block ever exists.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

from recospark import io
from recospark.config import Config
from recospark.schema import (
    FACTOR_ID,
    FEATURES,
    MOVIE_ID,
    MOVIES,
    RANK,
    RATINGS,
    RECOMMENDATIONS,
    SCORE,
    TITLE,
    USER_ID,
)

log = logging.getLogger(__name__)

_RATED = "rated"
# Cap on one block's score matrix (cells); keeps a block's memory near 64 MB in float32.
_MAX_BLOCK_CELLS = 16_000_000

TOP_N = StructType([f for f in RECOMMENDATIONS.fields if f.name != TITLE])
_USER_BLOCK = StructType(
    [
        StructField(USER_ID, IntegerType(), False),
        StructField(FEATURES, ArrayType(FloatType(), False), False),
        StructField(_RATED, ArrayType(IntegerType(), False), True),
    ]
)


def scoring_factors(model) -> tuple[DataFrame, DataFrame]:
    """(users, items) as `id, features` whose dot product is the model's ranking score."""
    if hasattr(model, "scoringFactors"):
        return model.scoringFactors()
    return model.userFactors, model.itemFactors


def top_n_block(
    user_ids: np.ndarray,
    user_mat: np.ndarray,
    rated: list[np.ndarray | None],
    item_ids: np.ndarray,
    item_mat: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best n unrated items for each user of one block; item_ids must be sorted ascending.

    Returns flat (user_id, rank, movie_id, score) arrays; ties go to the smaller movie_id.
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
        empty = np.zeros(0)
        return empty.astype(np.int32), empty.astype(np.int32), empty.astype(np.int32), empty
    cand = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    # Sort candidates by score desc, then movie_id asc, for a deterministic order.
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


def _score_batches(batches: Iterator[pd.DataFrame], item_ids_bc, item_mat_bc, n: int, block: int) -> Iterator[pd.DataFrame]:
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
    """Top-n per user (`users`/`items`: id, features), excluding (user_id, movie_id) pairs in `rated`."""
    spark = users.sparkSession
    item_pdf = items.select(F.col(FACTOR_ID).cast("int"), FEATURES).toPandas().sort_values(FACTOR_ID)
    item_ids = item_pdf[FACTOR_ID].to_numpy(np.int32)
    item_mat = (
        np.stack(item_pdf[FEATURES].to_numpy()).astype(np.float32)
        if len(item_pdf)
        else np.zeros((0, 1), np.float32)
    )
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


def with_titles(movies: DataFrame):
    def transform(recs: DataFrame) -> DataFrame:
        titled = recs.join(F.broadcast(movies.select(MOVIE_ID, TITLE)), MOVIE_ID, "left")
        return titled.select(*[f.name for f in RECOMMENDATIONS.fields])

    return transform


def run(spark: SparkSession, cfg: Config) -> dict:
    """Write recommendations/<model>/ for every trained model: N per user, rated items excluded."""
    from recospark.models import registry

    started = time.monotonic()
    split = cfg.split.effective_name
    train = io.read_output(spark, cfg, f"splits/{split}/train", RATINGS, needed_by="recommend")
    movies = io.read_output(spark, cfg, "movies", MOVIES, needed_by="recommend")
    rated = train.select(USER_ID, MOVIE_ID)
    out = {}
    for name in cfg.train.models:
        t0 = time.monotonic()
        model = registry.load_model(name, io.output_path(cfg, "models", name))
        users, items = scoring_factors(model)
        recs = (
            top_n(users, items, rated, cfg.recommend.n, cfg.recommend.user_block_size)
            .transform(with_titles(movies))
            .orderBy(USER_ID, RANK)
        )
        published = io.publish_dataframe(
            recs,
            cfg,
            f"recommendations/{name}",
            inputs=[io.output_path(cfg, "models", name), io.output_path(cfg, "splits", split, "train")],
            extra={"n": cfg.recommend.n},
        )
        out[name] = {"path": published.path, "rows": published.rows, "seconds": round(time.monotonic() - t0, 2)}
        log.info("recommend %s: %d rows -> %s", name, published.rows, published.path)
    return {"stage": "recommend", "models": out, "seconds": round(time.monotonic() - started, 2)}
