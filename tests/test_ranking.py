import math
import random

import pytest
from chispa import assert_df_equality
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StructField, StructType

from recospark.ranking import catalog_coverage, mean_popularity, predicted_lists, ranking_metrics, relevant_items
from recospark.schema import MOVIE_ID, RATING, TOP_N, USER_ID

TEST = StructType([StructField(USER_ID, IntegerType()), StructField(MOVIE_ID, IntegerType()), StructField(RATING, DoubleType())])


@pytest.fixture(scope="module")
def test_split(spark):
    return spark.createDataFrame(
        [
            # user 1: relevant {10, 11, 13}; 12 is below the threshold; 10 appears twice (duplicate row)
            (1, 10, 5.0),
            (1, 10, 5.0),
            (1, 11, 4.0),
            (1, 12, 2.0),
            (1, 13, 4.5),
            # user 2: relevant {20}; a null rating is no relevance signal
            (2, 20, 4.0),
            (2, 22, None),
            # user 3: relevant {30, 31}, but no recommendations at all (a user unseen in train)
            (3, 30, 5.0),
            (3, 31, 4.0),
            # user 4: nothing relevant -> not part of the average
            (4, 10, 3.0),
        ],
        TEST,
    )


@pytest.fixture(scope="module")
def recs(spark):
    # rows deliberately out of rank order; user 1's rank 4 is beyond k=3 and must be ignored
    return spark.createDataFrame(
        [
            (1, 3, 11, 0.7),
            (1, 1, 10, 0.9),
            (1, 4, 13, 0.6),
            (1, 2, 12, 0.8),
            (2, 2, 20, 0.4),
            (2, 1, 21, 0.5),
            (4, 1, 10, 0.9),
        ],
        TOP_N,
    )


def test_relevant_items_dedups_and_skips_nulls_and_low_ratings(spark, test_split):
    schema = StructType([StructField(USER_ID, IntegerType()), StructField("relevant", ArrayType(DoubleType(), False), False)])
    expected = spark.createDataFrame([(1, [10.0, 11.0, 13.0]), (2, [20.0]), (3, [30.0, 31.0])], schema)
    assert_df_equality(relevant_items(test_split, 4.0), expected, ignore_row_order=True, ignore_nullable=True)


def test_predicted_lists_follow_rank_not_row_order(spark, recs):
    schema = StructType([StructField(USER_ID, IntegerType()), StructField("predicted", ArrayType(DoubleType()))])
    expected = spark.createDataFrame([(1, [10.0, 12.0, 11.0]), (2, [21.0, 20.0]), (4, [10.0])], schema)
    assert_df_equality(predicted_lists(recs, 3), expected, ignore_row_order=True, ignore_nullable=True)


def test_ranking_metrics_hand_computed_three_users(recs, test_split):
    # k = 3, relevant = rating >= 4. Users averaged: 1, 2, 3 (user 4 has nothing relevant).
    # user 1: list [10, 12, 11], relevant {10, 11, 13}: hits at ranks 1 and 3
    #   precision = 2/3, recall = 2/3
    #   dcg = 1/log2(2) + 1/log2(4) = 1.5; idcg = 1/log2(2) + 1/log2(3) + 1/log2(4)
    #   ap = (1/1 + 2/3) / min(3, 3)
    # user 2: list [21, 20] (shorter than k), relevant {20}: hit at rank 2
    #   precision = 1/3 (still divided by k), recall = 1/1
    #   dcg = 1/log2(3); idcg = 1/log2(2) = 1
    #   ap = (1/2) / min(3, 1)
    # user 3: no list -> 0 for every metric
    l2 = math.log2
    ndcg1 = (1 / l2(2) + 1 / l2(4)) / (1 / l2(2) + 1 / l2(3) + 1 / l2(4))
    ndcg2 = (1 / l2(3)) / 1.0
    expected = {
        "precision@3": (2 / 3 + 1 / 3 + 0) / 3,  # = 1/3
        "recall@3": (2 / 3 + 1 + 0) / 3,  # = 5/9
        "ndcg@3": (ndcg1 + ndcg2 + 0) / 3,  # = (0.70392 + 0.63093) / 3 = 0.44495
        "map@3": ((1 + 2 / 3) / 3 + 0.5 + 0) / 3,  # = 0.35185
        "map_recommenders@3": ((1 + 2 / 3) / 3 + 0.5 + 0) / 3,  # |relevant| <= k for every user: the same
    }
    got = ranking_metrics(recs, test_split, 3, 4.0)
    assert got["n_ranking_users"] == 3
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_ranking_metrics_without_relevant_users_are_none(recs, test_split):
    got = ranking_metrics(recs, test_split, 3, 6.0)
    assert got == {
        "precision@3": None,
        "recall@3": None,
        "ndcg@3": None,
        "map@3": None,
        "map_recommenders@3": None,
        "n_ranking_users": 0,
    }


def test_map_recommenders_divides_by_every_relevant_item_and_spark_by_min_k(spark):
    """One user, k = 3, list [1, 2, 3], five relevant items {1, 3, 4, 5, 6} (no threshold: every
    test item is relevant). Hits at ranks 1 and 3: sum of precisions = 1/1 + 2/3 = 5/3.
    Spark's MAP@3 divides by min(3, 5) = 3 -> 5/9; Recommenders' benchmark MAP by 5 -> 1/3.
    A second user with no hit counts 0 in both."""
    recs = spark.createDataFrame([(9, 1, 1, 0.9), (9, 2, 2, 0.8), (9, 3, 3, 0.7), (8, 1, 1, 0.5)], TOP_N)
    test = spark.createDataFrame([(9, m, 1.0) for m in (1, 3, 4, 5, 6)] + [(8, 7, 2.0)], f"{USER_ID} int, {MOVIE_ID} int, {RATING} double")
    got = ranking_metrics(recs, test, 3, None)
    assert got["n_ranking_users"] == 2
    assert got["map@3"] == pytest.approx((5 / 9 + 0) / 2, abs=1e-12)
    assert got["map_recommenders@3"] == pytest.approx((1 / 3 + 0) / 2, abs=1e-12)
    assert got["precision@3"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-12)


def test_catalog_coverage_counts_distinct_recommended_items(recs):
    # distinct recommended: 10, 11, 12, 13, 20, 21 -> 6 of a 12-item catalog
    assert catalog_coverage(recs, 12) == pytest.approx(0.5)
    assert catalog_coverage(recs, 0) == 0.0


def test_mean_popularity_averages_train_counts_over_recommended_rows(spark, recs):
    train = spark.createDataFrame([(1, 10, 4.0), (2, 10, 3.0), (3, 10, 5.0), (1, 11, 2.0), (2, 12, 1.0), (5, 20, 4.0), (5, 20, 4.0)], TEST)
    # counts: 10 -> 3, 11 -> 1, 12 -> 1, 20 -> 2 (duplicate row counts), 13 and 21 unseen -> 0
    # rows: user 1: 11, 10, 13, 12 -> 1 + 3 + 0 + 1; user 2: 20, 21 -> 2 + 0; user 4: 10 -> 3
    assert mean_popularity(recs, train) == pytest.approx((1 + 3 + 0 + 1 + 2 + 0 + 3) / 7)


def _oracle(lists: dict[int, list[int]], relevant: dict[int, set[int]], k: int) -> dict[str, float]:
    """Per-user metrics written out loop by loop, independently of recospark.ranking's expressions."""
    sums = dict.fromkeys(("precision", "recall", "ndcg", "map", "map_recommenders"), 0.0)
    for user, rel in relevant.items():
        top = lists.get(user, [])[:k]
        hits, dcg, ap = 0, 0.0, 0.0
        for i, item in enumerate(top):
            if item in rel:
                hits += 1
                dcg += 1 / math.log2(i + 2)
                ap += hits / (i + 1)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        sums["precision"] += hits / k
        sums["recall"] += hits / len(rel)
        sums["ndcg"] += dcg / idcg
        sums["map"] += ap / min(k, len(rel))
        sums["map_recommenders"] += ap / len(rel)
    return {f"{name}@{k}": value / len(relevant) for name, value in sums.items()}


def test_ranking_metrics_equal_an_independent_computation_and_mllibs_evaluator(spark):
    """Random lists (some shorter than k, some users without a list, relevant sets larger and
    smaller than k): every metric equals a loop-by-loop oracle, and the four Spark metrics equal
    MLlib's RankingEvaluator on the same rows."""
    rng = random.Random(5)
    k = 5
    lists = {u: rng.sample(range(40), rng.randint(1, 8)) for u in range(60) if u % 7 != 0}
    relevant = {u: set(rng.sample(range(40), rng.randint(1, 12))) for u in range(60) if u % 11 != 3}
    recs = spark.createDataFrame([(u, r + 1, m, 1.0 / (r + 1)) for u, items in lists.items() for r, m in enumerate(items)], TOP_N)
    test = spark.createDataFrame([(u, m, 5.0) for u, items in relevant.items() for m in items], TEST)
    got = ranking_metrics(recs, test, k, None)
    expected = _oracle(lists, relevant, k)
    assert got["n_ranking_users"] == len(relevant)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    table = relevant_items(test, None).join(predicted_lists(recs, k), USER_ID, "left")
    table = table.selectExpr("relevant", "coalesce(predicted, cast(array() as array<double>)) as predicted")
    evaluator = RankingEvaluator(predictionCol="predicted", labelCol="relevant", k=k)
    for name, metric in (("precision", "precisionAtK"), ("recall", "recallAtK"), ("ndcg", "ndcgAtK"), ("map", "meanAveragePrecisionAtK")):
        assert got[f"{name}@{k}"] == pytest.approx(evaluator.setMetricName(metric).evaluate(table), abs=1e-12), name
