import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recospark.schema import FACTORS, MOVIE_ID, MOVIES, RANK, RECOMMENDATIONS, SCORE, TOP_N, USER_ID
from recospark.scoring import top_n, top_n_block
from recospark.stages.recommend import with_titles


def test_top_n_block_excludes_rated_and_orders_by_score():
    item_ids = np.array([10, 20, 30, 40], dtype=np.int32)
    items = np.array([[1.0], [4.0], [3.0], [2.0]], dtype=np.float32)
    users = np.array([[1.0], [-1.0]], dtype=np.float32)
    # user 1 rated 20 (best) and an item the model never saw (99); user 2 rated nothing
    u, r, m, s = top_n_block(np.array([1, 2]), users, [np.array([20, 99]), None], item_ids, items, 2)
    assert list(zip(u, r, m, s)) == [(1, 1, 30, 3.0), (1, 2, 40, 2.0), (2, 1, 10, -1.0), (2, 2, 40, -2.0)]


def test_top_n_block_returns_fewer_when_user_rated_almost_everything():
    item_ids = np.array([1, 2, 3], dtype=np.int32)
    items = np.eye(3, dtype=np.float32)
    u, r, m, _ = top_n_block(np.array([7]), np.ones((1, 3), np.float32), [np.array([1, 3])], item_ids, items, 5)
    assert list(zip(u, r, m)) == [(7, 1, 2)]


@pytest.fixture(scope="module")
def factors(spark):
    users = spark.createDataFrame([(1, [1.0, 0.0]), (2, [0.0, 1.0]), (3, [1.0, 1.0])], FACTORS)
    items = spark.createDataFrame([(10, [3.0, 0.0]), (11, [2.0, 2.5]), (12, [0.0, 1.0]), (13, [1.0, 0.0])], FACTORS)
    return users, items


def test_top_n_invariants(spark, factors):
    users, items = factors
    rated = spark.createDataFrame([(1, 10), (1, 10), (2, 11), (3, 10), (3, 11), (3, 12), (9, 10)], [USER_ID, MOVIE_ID])
    recs = top_n(users, items, rated, n=2, user_block_size=1)
    expected = spark.createDataFrame(
        [
            (1, 1, 11, 2.0),
            (1, 2, 13, 1.0),
            (2, 1, 12, 1.0),
            (2, 2, 10, 0.0),
            (3, 1, 13, 1.0),
        ],
        TOP_N,
    )
    assert_df_equality(recs, expected, ignore_row_order=True)
    # no rated item recommended, ranks 1..k ordered by score
    assert recs.join(rated, [USER_ID, MOVIE_ID]).count() == 0


def test_top_n_same_result_whatever_the_block_size(spark, factors):
    users, items = factors
    a = top_n(users, items, None, n=3, user_block_size=1)
    b = top_n(users.repartition(3), items, None, n=3, user_block_size=1000)
    assert_df_equality(a, b, ignore_row_order=True)
    by_user = a.groupBy(USER_ID).agg(F.count("*").alias("n"), F.collect_list(F.struct(RANK, SCORE)).alias("rs")).collect()
    for row in by_user:
        assert row.n == 3
        scores = [s for _, s in sorted(row.rs)]
        assert scores == sorted(scores, reverse=True)


def test_with_titles_joins_titles_and_keeps_unknown_movies(spark):
    recs = spark.createDataFrame([(1, 1, 10, 2.0), (1, 2, 99, 1.0)], TOP_N)
    movies = spark.createDataFrame([(10, "Heat (1995)", 1995, ["Action"])], MOVIES)
    expected = spark.createDataFrame([(1, 1, 10, 2.0, "Heat (1995)"), (1, 2, 99, 1.0, None)], RECOMMENDATIONS)
    assert_df_equality(recs.transform(with_titles(movies)), expected, ignore_row_order=True, ignore_nullable=True)


def test_ties_at_the_cut_go_to_the_smaller_movie_id():
    """argpartition alone picks arbitrarily among items tied with the n-th score; the smaller ids must win."""
    rng = np.random.default_rng(0)
    item_ids = np.arange(100, 160, dtype=np.int32)
    scores = np.array([5.0, 4.0] + [3.0] * 58, dtype=np.float32)  # 58 items tie for the 3rd place
    perm = rng.permutation(len(item_ids))
    item_mat = scores[perm][:, None]  # shuffled, so ties sit all over the matrix
    ids = item_ids
    users = np.array([1, 2], dtype=np.int32)
    user_mat = np.ones((2, 1), np.float32)
    rated = [None, np.array([ids[np.flatnonzero(scores[perm] == 5.0)[0]]])]  # user 2 rated the best item
    u, r, m, s = top_n_block(users, user_mat, rated, ids, item_mat, 5)
    tied = sorted(ids[scores[perm] == 3.0])
    best, second = ids[scores[perm] == 5.0][0], ids[scores[perm] == 4.0][0]
    assert list(m[u == 1]) == [best, second, *tied[:3]]
    assert list(m[u == 2]) == [second, *tied[:4]]
    assert list(r[u == 1]) == [1, 2, 3, 4, 5] and list(s[u == 2]) == [4.0, 3.0, 3.0, 3.0, 3.0]
