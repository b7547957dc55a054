"""Ranking metrics of top-k lists against the test split, with MLlib's definitions, in one pass.

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

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recospark.frames import first_row
from recospark.schema import MOVIE_ID, RANK, RATING, USER_ID
from recospark.scoring import scoring_factors, top_n

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


def _per_user_metrics(k: int) -> list[Column]:
    """Spark's RankingMetrics definitions (module docstring) as column expressions over one row per
    user holding `predicted` (rank order) and `relevant`, so every metric is one aggregation."""
    top = F.slice(F.col(_PREDICTED), 1, k)
    hit = F.transform(top, lambda x: F.array_contains(F.col(_RELEVANT), x).cast("int"))
    n_hits = F.aggregate(hit, F.lit(0), lambda acc, h: acc + h)
    n_rel = F.size(F.col(_RELEVANT))
    gain = F.transform(hit, lambda h, i: h.cast("double") / F.log2(i + F.lit(2)))
    dcg = F.aggregate(gain, F.lit(0.0), lambda acc, g: acc + g)
    ideal = F.sequence(F.lit(0), F.least(n_rel, F.lit(k)) - 1)
    idcg = F.aggregate(ideal, F.lit(0.0), lambda acc, i: acc + F.lit(1.0) / F.log2(i + F.lit(2)))
    # precision at each hit: hits so far / rank, summed (average precision's numerator)
    running = F.transform(hit, lambda h, i: F.aggregate(F.slice(hit, 1, i + 1), F.lit(0), lambda acc, x: acc + x))
    at_hits = F.aggregate(
        F.zip_with(hit, running, lambda h, c: F.struct(h.alias("h"), c.alias("c"))),
        F.struct(F.lit(0).alias("i"), F.lit(0.0).alias("s")),
        lambda acc, x: F.struct(
            (acc["i"] + 1).alias("i"),
            (acc["s"] + F.when(x["h"] == 1, x["c"] / (acc["i"] + F.lit(1.0))).otherwise(F.lit(0.0))).alias("s"),
        ),
    )["s"]
    return [
        (n_hits / F.lit(float(k))).alias("precision"),
        (n_hits / n_rel).alias("recall"),
        (dcg / idcg).alias("ndcg"),
        (at_hits / F.least(n_rel, F.lit(k))).alias("map"),
        (at_hits / n_rel).alias("map_recommenders"),
    ]


def ranking_metrics(recs: DataFrame, test: DataFrame, k: int, threshold: float | None) -> dict[str, Any]:
    """precision/recall/ndcg/map @k (Spark's RankingMetrics definitions) and map_recommenders@k,
    averaged over test users with a relevant item (see module docstring), in one Spark job.

    `tests/test_ranking.py` checks the figures against MLlib's `RankingEvaluator` and against an
    independent per-user computation.
    """
    names = [*METRICS, "map_recommenders"]
    table = relevant_items(test, threshold).transform(with_predicted(recs, k)).select(*_per_user_metrics(k))
    row = first_row(table.agg(F.count(F.lit(1)).alias("n"), *[F.avg(n).alias(n) for n in names]))
    n_users = int(row["n"] or 0)
    out: dict[str, Any] = {f"{n}@{k}": (float(row[n]) if n_users else None) for n in names}
    out["n_ranking_users"] = n_users
    return out


def validation_metrics(
    model: Any, fit_rows: DataFrame, validation: DataFrame, k: int, threshold: float | None, user_block_size: int = 2048
) -> dict[str, Any]:
    """Ranking metrics of `model`'s top-k lists (the items of `fit_rows` excluded, as `recommend`
    excludes train) against `validation`: how `tune` and `train` judge a model without the test split."""
    users, items = scoring_factors(model)
    recs = top_n(users, items, fit_rows.select(USER_ID, MOVIE_ID), k, user_block_size)
    return ranking_metrics(recs, validation, k, threshold)


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
