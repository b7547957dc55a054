"""Ranking metrics of top-k lists against the test split, with MLlib's RankingEvaluator.

Who counts: every user with at least one relevant test rating (rating >= threshold, or every
test rating when the threshold is None, as in Microsoft Recommenders' benchmark). A user
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
  map_recommenders@k = sum_{i<=k, rec_i relevant} (hits@i / i)  /  |relevant|
each averaged over the users above. `map_recommenders@k` is the MAP of Microsoft Recommenders'
published benchmark tables (normalised by the user's number of relevant items, as their `map`
and their earlier `map_at_k`), reported next to Spark's under its own name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recospark.frames import first_row
from recospark.schema import MOVIE_ID, RANK, RATING, USER_ID

_PREDICTED = "predicted"
_RELEVANT = "relevant"
_POPULARITY = "_popularity"
METRICS = {"precision": "precisionAtK", "recall": "recallAtK", "ndcg": "ndcgAtK", "map": "meanAveragePrecisionAtK"}


def filter_relevant(threshold: float | None) -> Callable[[DataFrame], DataFrame]:
    """Test rows that count as relevant: rated at or above `threshold`; every row when None."""

    def transform(test: DataFrame) -> DataFrame:
        rows = test.filter(F.col(USER_ID).isNotNull() & F.col(MOVIE_ID).isNotNull())
        return rows if threshold is None else rows.filter(F.col(RATING) >= F.lit(threshold))

    return transform


def relevant_items(test: DataFrame, threshold: float | None) -> DataFrame:
    """user_id, relevant: distinct relevant test items, as doubles (MLlib's label type)."""
    return (
        test.transform(filter_relevant(threshold))
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
        return relevant.join(lists, USER_ID, "left").withColumn(_PREDICTED, F.coalesce(F.col(_PREDICTED), F.array().cast("array<double>")))

    return transform


def map_recommenders(recs: DataFrame, test: DataFrame, k: int, threshold: float | None) -> float | None:
    """MAP@k normalised by each user's number of relevant items (Recommenders' benchmark MAP).

    Averaged over the users with a relevant item; a user without hits counts 0.
    """
    relevant = test.transform(filter_relevant(threshold)).select(USER_ID, MOVIE_ID).distinct()
    n_relevant = relevant.groupBy(USER_ID).agg(F.count(F.lit(1)).alias("_n_rel"))
    hits = recs.filter(F.col(RANK) <= F.lit(k)).join(relevant, [USER_ID, MOVIE_ID], "inner")
    running = Window.partitionBy(USER_ID).orderBy(RANK).rowsBetween(Window.unboundedPreceding, 0)
    precision_at_hit = F.count(F.lit(1)).over(running) / F.col(RANK)
    per_user = hits.withColumn("_p", precision_at_hit).groupBy(USER_ID).agg(F.sum("_p").alias("_sum"))
    table = n_relevant.join(per_user, USER_ID, "left").select((F.coalesce(F.col("_sum"), F.lit(0.0)) / F.col("_n_rel")).alias("_ap"))
    value = first_row(table.agg(F.avg("_ap")))[0]
    return None if value is None else float(value)


def ranking_metrics(recs: DataFrame, test: DataFrame, k: int, threshold: float | None) -> dict[str, Any]:
    """precision/recall/ndcg/map @k (Spark's RankingEvaluator) and map_recommenders@k, averaged over
    test users with a relevant item (see module docstring)."""
    keys = [f"{name}@{k}" for name in METRICS] + [f"map_recommenders@{k}"]
    table = relevant_items(test, threshold).transform(with_predicted(recs, k)).cache()
    try:
        n_users = table.count()
        if n_users == 0:
            return {**dict.fromkeys(keys), "n_ranking_users": 0}
        evaluator = RankingEvaluator(predictionCol=_PREDICTED, labelCol=_RELEVANT, k=k)
        out: dict[str, Any] = {
            f"{name}@{k}": float(evaluator.setMetricName(metric).evaluate(table))  # type: ignore[arg-type]
            for name, metric in METRICS.items()
        }
        out[f"map_recommenders@{k}"] = map_recommenders(recs, test, k, threshold)
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
    value = first_row(recs.transform(with_popularity(train)).agg(F.avg(_POPULARITY)))[0]
    return None if value is None else float(value)
