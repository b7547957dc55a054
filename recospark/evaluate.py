"""The `evaluate` stage: one code path that scores every model on the same test split.

Cold start policy (`evaluate.cold_start`): test rows whose user or item never appears in train
get no prediction from a factor model. With `drop` (default) they are left out of RMSE/MAE/R2
and counted (`n_unseen_users`, `n_unseen_items`, `n_cold_rows`, `coverage = n_scored/n_test`);
with `fallback` they are predicted by the regularized bias baseline fitted on the same train
side (global mean plus whatever bias is known), so every test row is scored. The baselines
can always predict, so under `drop` every model (baselines included) is scored on the same
warm rows: RMSE differences are never differences in which rows were scored.

Ranking metrics come from each model's top-k over items not rated in train (see
recospark.ranking for who counts). The `global_mean` model's ranking side is the popularity
recommender (most-rated train items first): a constant prediction cannot rank.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config
from recospark.models import registry
from recospark.recommend import scoring_factors, top_n
from recospark.schema import MOVIE_ID, PREDICTION, RATING, RATINGS, USER_ID

log = logging.getLogger(__name__)

RATING_METRICS = ("rmse", "mae", "r2")
_SEEN_USER = "_seen_user"
_SEEN_ITEM = "_seen_item"


def rating_metrics(predictions: DataFrame) -> dict[str, float]:
    """RMSE, MAE and R2 with MLlib's RegressionEvaluator, rows without a prediction excluded."""
    scored = predictions.filter(F.col(PREDICTION).isNotNull() & ~F.isnan(F.col(PREDICTION))).cache()
    try:
        evaluator = RegressionEvaluator(labelCol=RATING, predictionCol=PREDICTION)
        return {m: float(evaluator.setMetricName(m).evaluate(scored)) for m in RATING_METRICS}
    finally:
        scored.unpersist()


def with_seen_flags(train: DataFrame):
    """Flag each test row by whether its user and its item appear in train."""

    def transform(test: DataFrame) -> DataFrame:
        users = train.select(USER_ID).distinct().withColumn(_SEEN_USER, F.lit(True))
        items = train.select(MOVIE_ID).distinct().withColumn(_SEEN_ITEM, F.lit(True))
        return (
            test.join(users, USER_ID, "left")
            .join(items, MOVIE_ID, "left")
            .withColumn(_SEEN_USER, F.coalesce(F.col(_SEEN_USER), F.lit(False)))
            .withColumn(_SEEN_ITEM, F.coalesce(F.col(_SEEN_ITEM), F.lit(False)))
        )

    return transform


def cold_start_counts(flagged: DataFrame) -> dict[str, int]:
    row = flagged.agg(
        F.count(F.lit(1)).alias("n_test"),
        F.countDistinct(F.when(~F.col(_SEEN_USER), F.col(USER_ID))).alias("n_unseen_users"),
        F.countDistinct(F.when(~F.col(_SEEN_ITEM), F.col(MOVIE_ID))).alias("n_unseen_items"),
        F.sum(F.when(~F.col(_SEEN_USER) | ~F.col(_SEEN_ITEM), 1).otherwise(0)).alias("n_cold_rows"),
    ).first()
    return {k: int(row[k] or 0) for k in ("n_test", "n_unseen_users", "n_unseen_items", "n_cold_rows")}


def predict(model, test: DataFrame, fallback=None) -> DataFrame:
    """Model predictions for the test rows; NaN where the model cannot score, unless a fallback fills them."""
    predicted = model.transform(test)
    if fallback is None:
        return predicted
    backup = fallback.transform(test).select(USER_ID, MOVIE_ID, F.col(PREDICTION).alias("_fallback"))
    filled = F.when(F.isnan(F.col(PREDICTION)) | F.col(PREDICTION).isNull(), F.col("_fallback")).otherwise(F.col(PREDICTION))
    return predicted.join(backup, [USER_ID, MOVIE_ID], "left").withColumn(PREDICTION, filled.cast("float")).drop("_fallback")


def evaluate_model(
    name: str, model, train: DataFrame, test: DataFrame, cfg: Config, fallback=None, rating_rows: DataFrame | None = None
) -> dict[str, Any]:
    """Rating metrics on `rating_rows` (default: all of `test`), ranking metrics against all of `test`."""
    predictions = predict(model, test if rating_rows is None else rating_rows, fallback).cache()
    try:
        metrics = rating_metrics(predictions)
        n_scored = predictions.filter(F.col(PREDICTION).isNotNull() & ~F.isnan(F.col(PREDICTION))).count()
    finally:
        predictions.unpersist()
    out: dict[str, Any] = {"model": name, **metrics, "n_scored": n_scored}
    out.update(ranking_for(model, train, test, cfg))
    return out


def ranking_for(model, train: DataFrame, test: DataFrame, cfg: Config) -> dict[str, Any]:
    """Ranking metrics on top-k lists that exclude the user's training items only."""
    from recospark import ranking

    k = cfg.evaluate.k
    users, items = scoring_factors(model)
    recs = top_n(users, items, train.select(USER_ID, MOVIE_ID), k, cfg.recommend.user_block_size).cache()
    try:
        n_items = train.select(MOVIE_ID).distinct().count()
        result = ranking.ranking_metrics(recs, test, k, cfg.evaluate.relevance_threshold)
        result["catalog_coverage"] = ranking.catalog_coverage(recs, n_items)
        result["mean_popularity"] = ranking.mean_popularity(recs, train)
        return result
    finally:
        recs.unpersist()


def summary_table(models: dict[str, dict[str, Any]], k: int) -> str:
    cols = ["rmse", "mae", "r2", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", "catalog_coverage", "coverage", "train_seconds"]
    widths = [max(10, len(c)) + 2 for c in cols]
    header = f"{'model':<12}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))
    lines = [header, "-" * len(header)]
    for name, m in models.items():
        cells = []
        for c, w in zip(cols, widths):
            v = m.get(c)
            cells.append(f"{v:>{w}.4f}" if isinstance(v, float) else f"{str(v if v is not None else '-'):>{w}}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)


def run(spark: SparkSession, cfg: Config) -> dict:
    started = time.monotonic()
    split = cfg.split.effective_name
    train = io.read_output(spark, cfg, f"splits/{split}/train", RATINGS, needed_by="evaluate").cache()
    test = io.read_output(spark, cfg, f"splits/{split}/test", RATINGS, needed_by="evaluate")
    flagged = test.transform(with_seen_flags(train)).cache()
    counts = cold_start_counts(flagged)
    test = flagged.drop(_SEEN_USER, _SEEN_ITEM)
    warm = None
    if cfg.evaluate.cold_start == "drop":
        warm = flagged.filter(F.col(_SEEN_USER) & F.col(_SEEN_ITEM)).drop(_SEEN_USER, _SEEN_ITEM)
    fallback = None
    if cfg.evaluate.cold_start == "fallback":
        fallback = registry.build_estimator("bias", cfg).fit(train)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in cfg.train.models:
            model_path = io.output_path(cfg, "models", name)
            model = registry.load_model(name, model_path)
            t0 = time.monotonic()
            metrics = evaluate_model(name, model, train, test, cfg, fallback, rating_rows=warm)
            manifest = io.read_manifest(cfg, f"models/{name}") or {}
            metrics.update(counts)
            metrics.update(
                split=split,
                cold_start=cfg.evaluate.cold_start,
                coverage=metrics["n_scored"] / counts["n_test"] if counts["n_test"] else 0.0,
                train_seconds=manifest.get("train_seconds"),
                evaluate_seconds=round(time.monotonic() - t0, 2),
                params=manifest.get("params", {}),
                history=manifest.get("history", []),
            )
            io.write_json_atomic(io.output_path(cfg, "metrics", f"{name}.json"), metrics)
            results[name] = metrics
            log.info("evaluate %s: rmse=%.4f mae=%.4f scored %d/%d", name, metrics["rmse"], metrics["mae"], metrics["n_scored"], counts["n_test"])
    finally:
        flagged.unpersist()
        train.unpersist()
    summary = {
        "split": split,
        "k": cfg.evaluate.k,
        "relevance_threshold": cfg.evaluate.relevance_threshold,
        "cold_start": cfg.evaluate.cold_start,
        "models": {n: {k: v for k, v in m.items() if k not in ("history", "params")} for n, m in results.items()},
    }
    io.write_json_atomic(io.output_path(cfg, "metrics", "summary.json"), summary)
    table = summary_table(summary["models"], cfg.evaluate.k)
    return {"stage": "evaluate", "models": {n: {"rmse": m["rmse"], "path": io.output_path(cfg, "metrics", f"{n}.json")} for n, m in results.items()}, "table": table, "seconds": round(time.monotonic() - started, 2)}
