"""Ranking metrics of top-k lists against the test split, with MLlib's RankingEvaluator.

Who counts: every user with at least one relevant test rating (rating >= threshold). A user
with relevant items but no list (e.g. unseen in train, so no factors) counts with an empty
list and scores 0: leaving them out would flatter every model. Users without relevant items
are left out (Spark would score them 0 and warn; they carry no ranking signal). Relevant
items the model could never recommend (unseen in train) stay in the label set, the same for
every model.

Definitions (Spark's RankingMetrics; `hits@i` = relevant items among the first i recommended):
  precision@k = hits@k / k                (a list shorter than k is still divided by k)
  recall@k    = hits@k / |relevant|
  ndcg@k      = sum_{i<=k, rec_i relevant} 1/log2(i+1)  /  sum_{i<=min(k,|relevant|)} 1/log2(i+1)
  map@k       = sum_{i<=k, rec_i relevant} (hits@i / i)  /  min(k, |relevant|)
each averaged over the users above.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.schema import MOVIE_ID, RANK, RATING, USER_ID

_PREDICTED = "predicted"
_RELEVANT = "relevant"
_POPULARITY = "_popularity"
METRICS = {"precision": "precisionAtK", "recall": "recallAtK", "ndcg": "ndcgAtK", "map": "meanAveragePrecisionAtK"}


def relevant_items(test: DataFrame, threshold: float) -> DataFrame:
    """user_id, relevant: distinct test items rated at or above the threshold, as doubles (MLlib's label type)."""
    return (
        test.filter(F.col(RATING) >= F.lit(threshold))
        .filter(F.col(USER_ID).isNotNull() & F.col(MOVIE_ID).isNotNull())
        .groupBy(USER_ID)
        .agg(F.array_sort(F.collect_set(F.col(MOVIE_ID).cast("double"))).alias(_RELEVANT))
    )


def predicted_lists(recs: DataFrame, k: int) -> DataFrame:
    """user_id, predicted: each user's first k recommended items in rank order, as doubles."""
    ordered = F.array_sort(F.collect_list(F.struct(F.col(RANK), F.col(MOVIE_ID))))
    return (
        recs.filter(F.col(RANK) <= F.lit(k))
        .groupBy(USER_ID)
        .agg(ordered.alias("_ranked"))
        .select(USER_ID, F.transform("_ranked", lambda s: s[MOVIE_ID].cast("double")).alias(_PREDICTED))
    )


def with_predicted(recs: DataFrame, k: int):
    """Attach each user's top-k list; users without recommendations get an empty list, not a dropped row."""

    def transform(relevant: DataFrame) -> DataFrame:
        lists = predicted_lists(recs, k)
        return relevant.join(lists, USER_ID, "left").withColumn(
            _PREDICTED, F.coalesce(F.col(_PREDICTED), F.array().cast("array<double>"))
        )

    return transform


def ranking_metrics(recs: DataFrame, test: DataFrame, k: int, threshold: float) -> dict[str, Any]:
    """precision/recall/ndcg/map @k averaged over test users with a relevant item (see module docstring)."""
    keys = [f"{name}@{k}" for name in METRICS]
    table = relevant_items(test, threshold).transform(with_predicted(recs, k)).cache()
    try:
        n_users = table.count()
        if n_users == 0:
            return {**{key: None for key in keys}, "n_ranking_users": 0}
        evaluator = RankingEvaluator(predictionCol=_PREDICTED, labelCol=_RELEVANT, k=k)
        out: dict[str, Any] = {
            f"{name}@{k}": float(evaluator.setMetricName(metric).evaluate(table)) for name, metric in METRICS.items()
        }
        out["n_ranking_users"] = n_users
        return out
    finally:
        table.unpersist()


def catalog_coverage(recs: DataFrame, n_items: int) -> float:
    """Share of the catalog (items in train) that appears in at least one list: low means the same few items for everyone."""
    if n_items <= 0:
        return 0.0
    return recs.select(MOVIE_ID).distinct().count() / n_items


def with_popularity(train: DataFrame):
    """Each row gets the number of train ratings of its item (0 for an item unseen in train)."""

    def transform(recs: DataFrame) -> DataFrame:
        counts = train.groupBy(MOVIE_ID).agg(F.count(F.lit(1)).alias(_POPULARITY))
        return recs.join(counts, MOVIE_ID, "left").withColumn(_POPULARITY, F.coalesce(F.col(_POPULARITY), F.lit(0)))

    return transform


def mean_popularity(recs: DataFrame, train: DataFrame) -> float | None:
    """Mean train-rating count over all recommended (user, item) rows: high means a popularity-biased model."""
    value = recs.transform(with_popularity(train)).agg(F.avg(_POPULARITY)).first()[0]
    return None if value is None else float(value)
