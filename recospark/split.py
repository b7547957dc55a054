"""Train/test split strategies as pure DataFrame transforms, plus the `split` stage.

Every random choice comes from a hash of (seed, user_id, movie_id), never from row order, so a
split is a pure function of its input and seed: the same rows land on the same side whatever
the partitioning (unlike `DataFrame.randomSplit`, which depends on the input order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config, SplitConf, UserError
from recospark.frames import with_write_order
from recospark.runtime import stage_run
from recospark.schema import CANONICAL, IS_VALIDATION, MOVIE_ID, RATED_AT, RATINGS, SIDE, SPLIT_NAME, USER_ID

log = logging.getLogger(__name__)

_HASH_RANGE = 1 << 30


class SplitError(UserError):
    """The configured split cannot be made from the published ratings."""


_TEST = "_is_test"


def uniform(seed: int, salt: str = "") -> Column:
    """A deterministic pseudo-uniform number in [0, 1) per (user, movie) pair."""
    h = F.xxhash64(F.lit(f"{seed}:{salt}"), F.col(USER_ID), F.col(MOVIE_ID))
    return F.pmod(h, F.lit(_HASH_RANGE)).cast("double") / F.lit(float(_HASH_RANGE))


def _sides(flagged: DataFrame) -> tuple[DataFrame, DataFrame]:
    cols = [f.name for f in RATINGS.fields]
    return (
        flagged.filter(~F.col(_TEST)).select(*cols),
        flagged.filter(F.col(_TEST)).select(*cols),
    )


def with_random_test_flag(test_fraction: float, seed: int) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(_TEST, uniform(seed, "test") < F.lit(test_fraction))

    return transform


def with_stratified_test_flag(test_fraction: float, seed: int, min_user_ratings: int) -> Callable[[DataFrame], DataFrame]:
    """Each user's ratings split by the ratio (rounded); users below the minimum stay in train."""

    def transform(df: DataFrame) -> DataFrame:
        by_user = Window.partitionBy(USER_ID)
        order = by_user.orderBy(uniform(seed, "stratified"), F.col(MOVIE_ID))
        n = F.count(F.lit(1)).over(by_user)
        n_test = F.round(n * F.lit(test_fraction))
        return df.withColumn(_TEST, (n >= F.lit(min_user_ratings)) & (F.row_number().over(order) <= n_test))

    return transform


def with_leave_last_k_test_flag(k: int, min_user_ratings: int) -> Callable[[DataFrame], DataFrame]:
    """Each user's k latest ratings (ties by movie_id) go to test; users below the minimum stay in train."""

    def transform(df: DataFrame) -> DataFrame:
        by_user = Window.partitionBy(USER_ID)
        latest_first = by_user.orderBy(F.col(RATED_AT).desc(), F.col(MOVIE_ID).desc())
        n = F.count(F.lit(1)).over(by_user)
        return df.withColumn(_TEST, (n >= F.lit(max(min_user_ratings, k + 1))) & (F.row_number().over(latest_first) <= F.lit(k)))

    return transform


def time_cutoff(df: DataFrame, quantile: float) -> datetime:
    """Exact quantile of rating time (relative error 0), so the cut does not depend on partitioning."""
    seconds = df.select(F.unix_timestamp(F.col(RATED_AT)).cast("double").alias("t"))
    (cut,) = seconds.approxQuantile("t", [quantile], 0.0)
    return datetime.fromtimestamp(cut, tz=timezone.utc)


def with_time_cut_test_flag(cutoff: datetime) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(_TEST, F.col(RATED_AT) >= F.lit(cutoff))

    return transform


def random_split(df: DataFrame, test_fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    return _sides(df.transform(with_random_test_flag(test_fraction, seed)))


def stratified_split(df: DataFrame, test_fraction: float, seed: int, min_user_ratings: int = 5) -> tuple[DataFrame, DataFrame]:
    return _sides(df.transform(with_stratified_test_flag(test_fraction, seed, min_user_ratings)))


def leave_last_k_split(df: DataFrame, k: int = 1, min_user_ratings: int = 5) -> tuple[DataFrame, DataFrame]:
    return _sides(df.transform(with_leave_last_k_test_flag(k, min_user_ratings)))


def chronological_split(df: DataFrame, quantile: float | None = None, cutoff: datetime | None = None) -> tuple[DataFrame, DataFrame]:
    """Global time cut: train strictly before the cut, test at or after it."""
    if cutoff is None:
        if quantile is None:
            raise ValueError("chronological_split needs a quantile or a cutoff")
        cutoff = time_cutoff(df, quantile)
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=timezone.utc)
    return _sides(df.transform(with_time_cut_test_flag(cutoff)))


def with_validation_flag(train: DataFrame, fraction: float, seed: int) -> DataFrame:
    """Mark a hash-chosen share of train for early stopping and tuning (never the test split)."""
    return train.withColumn(IS_VALIDATION, uniform(seed, "validation") < F.lit(fraction))


def canonical_split(canonical: DataFrame, name: str) -> tuple[DataFrame, DataFrame]:
    """(train, test) of one canonical split (u1..ub) from ingest's `canonical/` rows."""
    rows = canonical.filter(F.col(SPLIT_NAME) == F.lit(name))
    cols = [f.name for f in RATINGS.fields]
    return rows.filter(F.col(SIDE) == "train").select(*cols), rows.filter(F.col(SIDE) == "test").select(*cols)


def split_ratings(ratings: DataFrame, conf: SplitConf) -> tuple[DataFrame, DataFrame]:
    """The (train, test) pair of a computed strategy; `canonical` splits come from `canonical_split`."""
    if conf.strategy == "random":
        return random_split(ratings, conf.test_fraction, conf.seed)
    if conf.strategy == "stratified":
        return stratified_split(ratings, conf.test_fraction, conf.seed, conf.min_user_ratings)
    if conf.strategy == "leave_last_k":
        return leave_last_k_split(ratings, conf.last_k, conf.min_user_ratings)
    if conf.strategy == "chronological":
        return chronological_split(ratings, conf.time_quantile, conf.cutoff)
    raise ValueError(f"split.strategy={conf.strategy!r} is not computed from ratings/")


def required(cfg: Config) -> list[str]:
    """What this stage reads: ingest's `canonical/` for canonical splits, `ratings/` otherwise."""
    return ["canonical"] if cfg.split.strategy == "canonical" else ["ratings"]


@stage_run("split")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Split the published ratings and publish splits/<name>/{train,test}.

    Examples
    --------
    >>> from recospark import ingest, split
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "split.test_fraction=0.5"])
    >>> _ = ingest.run(spark, cfg)
    >>> result = split.run(spark, cfg)
    >>> result["train"]["rows"] + result["test"]["rows"]
    10
    """
    name = cfg.split.effective_name
    if cfg.split.strategy == "canonical":
        src = io.source(cfg, "canonical", needed_by="split (strategy canonical)")
        train, test = canonical_split(src.read(spark, CANONICAL), cfg.split.canonical)
    else:
        src = io.source(cfg, "ratings", needed_by="split")
        train, test = split_ratings(src.read(spark, RATINGS), cfg.split)
    sides = {"train": train.cache(), "test": test.cache()}
    try:
        counts = {side: df.count() for side, df in sides.items()}
        if counts["train"] == 0:
            raise SplitError(f"split {name}: the train side would be empty (strategy {cfg.split.strategy}); check the split.* settings")
        extra = {"strategy": cfg.split.strategy, "seed": cfg.split.seed}
        out: dict[str, Any] = {}
        for side, df in sides.items():
            published = io.publish_dataframe(
                df.transform(with_write_order(USER_ID, MOVIE_ID)),
                cfg,
                f"splits/{name}/{side}",
                inputs=[src],
                extra=extra,
                rows=counts[side],
            )
            out[side] = {"path": published.path, "rows": published.rows}
            log.info("split %s/%s: %d rows -> %s", name, side, published.rows, published.path)
    finally:
        for df in sides.values():
            df.unpersist()
    return {"name": name, "strategy": cfg.split.strategy, **out}
