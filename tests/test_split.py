from datetime import datetime, timezone

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recospark.schema import MOVIE_ID, RATED_AT, RATINGS, USER_ID
from recospark.splitting import (
    chronological_split,
    leave_last_k_split,
    random_split,
    stratified_split,
    with_validation_flag,
)


def _ts(day: int) -> datetime:
    return datetime(2000, 1, 1 + day, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ratings(spark):
    rows = []
    # user 1: 10 ratings, user 2: 20 ratings, user 3: 3 ratings (below the stratified minimum)
    for user, count in ((1, 10), (2, 20), (3, 3)):
        for i in range(count):
            rows.append((user, 100 + i, float(1 + i % 5), _ts(i)))
    # edge: two users rating the same movie at the same time
    rows.append((4, 100, 5.0, _ts(3)))
    rows.append((4, 101, 4.0, _ts(3)))
    return spark.createDataFrame(rows, RATINGS)


def _assert_partition(full, train, test):
    assert train.join(test, [USER_ID, MOVIE_ID]).count() == 0
    assert_df_equality(train.unionByName(test), full, ignore_row_order=True)


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(lambda df: random_split(df, 0.3, seed=7), id="random"),
        pytest.param(lambda df: stratified_split(df, 0.3, seed=7, min_user_ratings=5), id="stratified", marks=pytest.mark.slow),
        pytest.param(lambda df: leave_last_k_split(df, k=2, min_user_ratings=5), id="leave_last_k", marks=pytest.mark.slow),
        pytest.param(lambda df: chronological_split(df, quantile=0.5), id="chronological", marks=pytest.mark.slow),
    ],
)
def test_split_is_a_partition_and_ignores_partitioning(ratings, split):
    train, test = split(ratings)
    _assert_partition(ratings, train, test)
    assert test.count() > 0 and train.count() > 0
    train2, test2 = split(ratings.repartition(5).orderBy(F.rand(3)))
    assert_df_equality(test2, test, ignore_row_order=True)
    assert_df_equality(train2, train, ignore_row_order=True)


def test_random_split_depends_on_seed(ratings):
    _, a = random_split(ratings, 0.3, seed=1)
    _, b = random_split(ratings, 0.3, seed=2)
    assert sorted(a.collect()) != sorted(b.collect())


def test_stratified_split_keeps_each_users_ratio(ratings):
    _, test = stratified_split(ratings, 0.3, seed=7, min_user_ratings=5)
    per_user = dict(test.groupBy(USER_ID).count().collect())
    assert per_user == {1: 3, 2: 6}  # round(10*0.3), round(20*0.3); users 3 and 4 stay in train


def test_leave_last_k_takes_each_users_latest(ratings):
    _, test = leave_last_k_split(ratings, k=2, min_user_ratings=5)
    got = sorted((r[USER_ID], r[MOVIE_ID]) for r in test.collect())
    assert got == [(1, 108), (1, 109), (2, 118), (2, 119)]


def test_chronological_split_cuts_globally(ratings):
    cutoff = _ts(5)
    train, test = chronological_split(ratings, cutoff=cutoff)
    assert train.agg(F.max(RATED_AT)).first()[0] < cutoff.replace(tzinfo=None)
    assert test.agg(F.min(RATED_AT)).first()[0] >= cutoff.replace(tzinfo=None)
    _assert_partition(ratings, train, test)


def test_validation_flag_is_deterministic_and_near_the_fraction(spark):
    df = spark.createDataFrame([(u, m, 3.0, _ts(0)) for u in range(50) for m in range(40)], RATINGS)
    flagged = with_validation_flag(df, 0.1, seed=3)
    share = flagged.filter("is_validation").count() / df.count()
    assert 0.08 < share < 0.12
    again = with_validation_flag(df.repartition(3), 0.1, seed=3)
    assert_df_equality(again, flagged, ignore_row_order=True)
