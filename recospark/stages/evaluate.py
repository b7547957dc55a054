"""The `evaluate` stage: every model judged on the same test split and the lists users receive.

Ranking metrics score exactly the lists that `recommend` published (recommendations/<model>/),
so there is one ranking code path. Rating metrics (RMSE, MAE, R2) are computed for rating
models only (`objective` in the model table): a ranking model's score is not a rating, and an
RMSE row for it would mean nothing.

Cold start policy (`evaluate.cold_start`): test rows whose user or item never appears in train
get no prediction from a factor model. With `drop` (default) they are left out of RMSE/MAE/R2
and counted (`n_unseen_users`, `n_unseen_items`, `n_cold_rows`, `coverage = n_scored/n_test`);
with `fallback` they are predicted by the published bias model (models/bias, so `bias` must be
trained), so every test row is scored. Under `drop` every rating model (baselines included) is
scored on the same warm rows: RMSE differences are never differences in which rows were scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pyspark.ml import Model
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io, ranking
from recospark.config import Config
from recospark.errors import EvaluateError, PrerequisiteError
from recospark.frames import first_row
from recospark.models.table import MODELS
from recospark.runtime import for_each_model, stage_run
from recospark.schema import MOVIE_ID, PREDICTION, RATING, RATINGS, RECOMMENDATIONS, USER_ID

__all__ = ["RATING_METRICS", "cold_start_counts", "predict", "rating_metrics", "run", "summary_table", "with_seen_flags"]

log = logging.getLogger(__name__)

RATING_METRICS = ("rmse", "mae", "r2")
_SEEN_USER = "_seen_user"
_SEEN_ITEM = "_seen_item"


def rating_metrics(predictions: DataFrame) -> dict[str, float]:
    """RMSE, MAE and R2 with MLlib's RegressionEvaluator, rows without a prediction excluded."""
    scored = predictions.filter(F.col(PREDICTION).isNotNull() & ~F.isnan(F.col(PREDICTION))).cache()
    try:
        evaluator = RegressionEvaluator(labelCol=RATING, predictionCol=PREDICTION)
        return {m: float(evaluator.setMetricName(m).evaluate(scored)) for m in RATING_METRICS}  # type: ignore[arg-type]
    finally:
        scored.unpersist()


def with_seen_flags(train: DataFrame) -> Callable[[DataFrame], DataFrame]:
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
    row = first_row(
        flagged.agg(
            F.count(F.lit(1)).alias("n_test"),
            F.countDistinct(F.when(~F.col(_SEEN_USER), F.col(USER_ID))).alias("n_unseen_users"),
            F.countDistinct(F.when(~F.col(_SEEN_ITEM), F.col(MOVIE_ID))).alias("n_unseen_items"),
            F.sum(F.when(~F.col(_SEEN_USER) | ~F.col(_SEEN_ITEM), 1).otherwise(0)).alias("n_cold_rows"),
        )
    )
    return {k: int(row[k] or 0) for k in ("n_test", "n_unseen_users", "n_unseen_items", "n_cold_rows")}


def predict(model: Model, test: DataFrame, fallback: Model | None = None) -> DataFrame:
    """Model predictions for the test rows; NaN where the model cannot score, unless a fallback fills them."""
    predicted = model.transform(test)
    if fallback is None:
        return predicted
    backup = fallback.transform(test).select(USER_ID, MOVIE_ID, F.col(PREDICTION).alias("_fallback"))
    filled = F.when(F.isnan(F.col(PREDICTION)) | F.col(PREDICTION).isNull(), F.col("_fallback")).otherwise(F.col(PREDICTION))
    return predicted.join(backup, [USER_ID, MOVIE_ID], "left").withColumn(PREDICTION, filled.cast("float")).drop("_fallback")


def rating_side(model: Model, rows: DataFrame, fallback: Model | None) -> dict[str, Any]:
    predictions = predict(model, rows, fallback).cache()
    try:
        metrics: dict[str, Any] = dict(rating_metrics(predictions))
        metrics["n_scored"] = predictions.filter(F.col(PREDICTION).isNotNull() & ~F.isnan(F.col(PREDICTION))).count()
    finally:
        predictions.unpersist()
    return metrics


def ranking_side(recs: DataFrame, train: DataFrame, test: DataFrame, cfg: Config, n_items: int) -> dict[str, Any]:
    """Ranking metrics of the published lists, plus how much of the catalogue and how popular they are."""
    recs = recs.cache()
    try:
        result = ranking.ranking_metrics(recs, test, cfg.evaluate.k, cfg.evaluate.relevance_threshold)
        result["catalog_coverage"] = ranking.catalog_coverage(recs, n_items)
        result["mean_popularity"] = ranking.mean_popularity(recs, train)
        return result
    finally:
        recs.unpersist()


_TABLE_COLUMNS = (
    "rmse",
    "mae",
    "r2",
    "precision@{k}",
    "recall@{k}",
    "ndcg@{k}",
    "map@{k}",
    "map_recommenders@{k}",
    "catalog_coverage",
    "validation_ndcg@{k}",
    "train_seconds",
)


def summary_table(models: dict[str, dict[str, Any]], k: int) -> str:
    """A fixed-width table: 4 decimals, '-' where a metric does not apply (e.g. RMSE of a ranking model)."""
    cols = [c.format(k=k) for c in _TABLE_COLUMNS]
    name_width = max([len("model"), *(len(n) for n in models)]) + 2
    widths = [max(8, len(c)) + 2 for c in cols]
    header = f"{'model':<{name_width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    lines = [header, "-" * len(header)]
    for name, m in models.items():
        cells = []
        for c, w in zip(cols, widths, strict=True):
            v = m.get(c)
            text = "-" if v is None else f"{v:.1f}" if c == "train_seconds" else f"{v:.4f}" if isinstance(v, float) else str(v)
            cells.append(f"{text:>{w}}")
        lines.append(f"{name:<{name_width}}" + "".join(cells))
    return "\n".join(lines)


@stage_run("evaluate")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Score every model of `train.models` on the test split; publish metrics/ (<model>.json, summary.json).

    Examples
    --------
    >>> from recospark.stages import evaluate, ingest, recommend, split, train
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "train.models=bias"])
    >>> for stage in (ingest, split, train, recommend):
    ...     _ = stage.run(spark, cfg)
    >>> result = evaluate.run(spark, cfg)
    >>> sorted(result["models"]["bias"])
    ['ndcg@10', 'path', 'rmse']
    """
    split = cfg.split.effective_name
    k = cfg.evaluate.k
    train_src = io.source(cfg, f"splits/{split}/train", needed_by="evaluate")
    test_src = io.source(cfg, f"splits/{split}/test", needed_by="evaluate")
    rec_srcs = {name: io.source(cfg, f"recommendations/{name}", needed_by="evaluate") for name in cfg.train.models}
    recommended_src = _optional(cfg, "recommendations/recommended")
    for name, src in rec_srcs.items():
        n = int(src.manifest.get("n") or 0)
        if n < k:
            raise EvaluateError(
                f"recommendations/{name} holds {n} items per user, fewer than evaluate.k={k}: set recommend.n >= {k} and run recommend again"
            )
    rating_models = [n for n in cfg.train.models if MODELS[n].objective == "rating"]
    model_srcs = {name: io.source(cfg, f"models/{name}", needed_by="evaluate") for name in cfg.train.models}
    fallback = None
    fallback_src = None
    if cfg.evaluate.cold_start == "fallback" and rating_models:
        fallback_src = io.source(
            cfg, "models/bias", needed_by="evaluate (evaluate.cold_start=fallback uses the bias model; add bias to train.models)"
        )
        fallback = MODELS["bias"].load(fallback_src.uri)

    train = train_src.read(spark, RATINGS).cache()
    flagged = test_src.read(spark, RATINGS).transform(with_seen_flags(train)).cache()
    results: dict[str, dict[str, Any]] = {}
    try:
        counts = cold_start_counts(flagged)
        test = flagged.drop(_SEEN_USER, _SEEN_ITEM)
        warm = flagged.filter(F.col(_SEEN_USER) & F.col(_SEEN_ITEM)).drop(_SEEN_USER, _SEEN_ITEM)
        n_items = train.select(MOVIE_ID).distinct().count()

        def evaluate_one(name: str) -> dict[str, Any]:
            spec = MODELS[name]
            manifest = dict(model_srcs[name].manifest)
            metrics: dict[str, Any] = {"model": name, "objective": spec.objective, **dict.fromkeys(RATING_METRICS), "n_scored": None}
            if spec.objective == "rating":
                model = spec.load(model_srcs[name].uri)
                rows = test if cfg.evaluate.cold_start == "fallback" else warm
                metrics.update(rating_side(model, rows, fallback))
            recs = rec_srcs[name].read(spark, RECOMMENDATIONS)
            metrics.update(ranking_side(recs, train, test, cfg, n_items))
            metrics.update(counts)
            metrics.update(
                split=split,
                k=k,
                relevance_threshold=cfg.evaluate.relevance_threshold,
                cold_start=cfg.evaluate.cold_start,
                coverage=(metrics["n_scored"] / counts["n_test"]) if metrics["n_scored"] is not None and counts["n_test"] else None,
                train_seconds=manifest.get("train_seconds"),
                validation=manifest.get("validation"),
                **{f"validation_ndcg@{k}": (manifest.get("validation") or {}).get(f"ndcg@{k}")},
                params=manifest.get("params", {}),
                history=manifest.get("history", []),
                score=spec.score,
            )
            log.info("evaluate %s: rmse=%s ndcg@%d=%s", name, _fmt(metrics["rmse"]), k, _fmt(metrics.get(f"ndcg@{k}")))
            return metrics

        names = list(cfg.train.models)
        results = dict(zip(names, for_each_model(spark, evaluate_one, names), strict=True))
    finally:
        flagged.unpersist()
        train.unpersist()
    summary: dict[str, Any] = {
        "split": split,
        "k": k,
        "relevance_threshold": cfg.evaluate.relevance_threshold,
        "cold_start": cfg.evaluate.cold_start,
        "models": {n: {key: v for key, v in m.items() if key not in ("history", "params")} for n, m in results.items()},
        "recommended": _recommended(recommended_src, results, k),
    }
    files = {f"{name}.json": io.to_json(m) for name, m in results.items()}
    files["summary.json"] = io.to_json(summary)
    inputs: list[io.Source] = [train_src, test_src, *rec_srcs.values(), *model_srcs.values()]
    inputs += [s for s in (fallback_src, recommended_src) if s is not None]
    published = io.publish_files(spark, cfg, "metrics", files, inputs=inputs)
    table = summary_table(summary["models"], k)
    if summary["recommended"]:
        pick = summary["recommended"]
        table += (
            f"\nrecommended lists: {pick['model']} (validation ndcg@{k} {pick[f'validation_ndcg@{k}']:.4f}, chosen on a carve of train; "
            f"test ndcg@{k} {pick[f'ndcg@{k}']:.4f}) -> {pick['path']}"
        )
    return {
        "path": published.path,
        "models": {
            n: {"rmse": m["rmse"], f"ndcg@{k}": m.get(f"ndcg@{k}"), "path": io.output_path(cfg, "metrics", f"{n}.json")}
            for n, m in results.items()
        },
        "table": table,
    }


def _optional(cfg: Config, relpath: str) -> io.Source | None:
    try:
        return io.source(cfg, relpath)
    except PrerequisiteError:
        return None


def _recommended(src: io.Source | None, results: dict[str, dict[str, Any]], k: int) -> dict[str, Any] | None:
    """The lists `recommend` published at recommendations/recommended/: which model (chosen on
    validation data by `recommend`), its validation score, and its test metrics from this stage."""
    if src is None or src.manifest.get("model") not in results:
        return None
    name = src.manifest["model"]
    metrics = results[name]
    return {
        "model": name,
        f"validation_ndcg@{k}": src.manifest.get("validation"),
        "how": src.manifest.get("how"),
        "path": src.relpath,
        **{key: metrics.get(key) for key in (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", "catalog_coverage")},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
