"""Train/test splits and the validation carve as pure DataFrame transforms.

Every random choice comes from a hash of (seed, user_id, movie_id), never from row order, so a
split is a pure function of its input and seed: the same rows land on the same side whatever
the partitioning (unlike `DataFrame.randomSplit`, which depends on the input order). The `split`
stage publishes these; `train` and `tune` carve their validation rows with `with_validation_flag`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recospark.config import SplitConf
from recospark.schema import IS_VALIDATION, MOVIE_ID, RATED_AT, RATINGS, SIDE, SPLIT_NAME, USER_ID

__all__ = [
    "canonical_split",
    "chronological_split",
    "leave_last_k_split",
    "random_split",
    "split_ratings",
    "stratified_split",
    "uniform",
    "with_validation_flag",
]

_HASH_RANGE = 1 << 30


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
