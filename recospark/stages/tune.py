"""The `tune` stage: grid search on validation data carved from the train split, never the test split.

For every model of `train.models` with a grid in `tune.grids`, the estimator comes from the
model table (the same builder `train` uses) and each grid point is judged on the metric that
fits the model (`objective` in the table):

* rating models: RMSE, by MLlib's `TrainValidationSplit` or `CrossValidator` (lowest wins).
  Cold rows of a validation fold are dropped (`coldStartStrategy=drop`), otherwise a single
  NaN would make every RMSE NaN.
* ranking models: NDCG@k (`evaluate.k`, `evaluate.relevance_threshold`) of each user's top-k
  list over items not in the fitting part, on a validation carve of `split.validation_fraction`
  of train (highest wins). The lists come from `recospark.scoring.top_n`, the same code that
  publishes recommendations.

`CrossValidator` folds and the ranking carve come from a hash of (seed, user, movie), like the
splits, so they do not depend on partitioning; `TrainValidationSplit` draws `rand(seed)` per
row, which is stable for the same published train split read the same way.

Publishes tuning/tuning.json; `train` starts from `models.<name>.best_params` when
`train.use_tuned` is set.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from pyspark.ml import Estimator
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io, ranking
from recospark.config import Config
from recospark.models.table import MODELS, ModelSpec
from recospark.runtime import stage_run
from recospark.schema import IS_VALIDATION, MOVIE_ID, PREDICTION, RATING, RATINGS, USER_ID
from recospark.scoring import scoring_factors, top_n
from recospark.splitting import uniform, with_validation_flag

__all__ = ["models_to_tune", "param_grid", "run", "tune_model", "with_fold"]

log = logging.getLogger(__name__)

_FOLD = "_fold"


def param_grid(estimator: Estimator, spec: ModelSpec, grid: Mapping[str, list[Any]]) -> tuple[list[dict], list[dict[str, Any]]]:
    """(MLlib param maps, the same points in config names), in the same order."""
    keys = sorted(grid)
    builder = ParamGridBuilder()
    for key in keys:
        builder.addGrid(estimator.getParam(spec.param_map()[key]), list(grid[key]))
    maps = builder.build()
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    if len(maps) != len(points):
        raise RuntimeError("ParamGridBuilder and the config grid disagree on the number of points")
    return maps, points


def with_fold(num_folds: int, seed: int):
    """A fold number per rating from a hash of (seed, user, movie): folds do not depend on partitioning."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(_FOLD, F.floor(uniform(seed, "tune-fold") * F.lit(num_folds)).cast("int"))

    return transform


def _tune_rating(spec: ModelSpec, cfg: Config, train: DataFrame) -> tuple[list[dict[str, Any]], list[float]]:
    estimator = spec.build(cfg, cold_start_strategy="drop")
    maps, points = param_grid(estimator, spec, cfg.tune.grids[spec.name])
    evaluator = RegressionEvaluator(metricName="rmse", labelCol=RATING, predictionCol=PREDICTION)
    seed = cfg.split.seed
    if cfg.tune.method == "cross_validator":
        search = CrossValidator(
            estimator=estimator, estimatorParamMaps=maps, evaluator=evaluator, numFolds=cfg.tune.num_folds, foldCol=_FOLD, seed=seed
        )
        return points, list(search.fit(train.transform(with_fold(cfg.tune.num_folds, seed))).avgMetrics)
    split = TrainValidationSplit(
        estimator=estimator, estimatorParamMaps=maps, evaluator=evaluator, trainRatio=cfg.tune.train_ratio, seed=seed
    )
    return points, list(split.fit(train).validationMetrics)


def _tune_ranking(
    spec: ModelSpec, cfg: Config, train: DataFrame, tuned: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[float]]:
    """NDCG@k on the validation carve for every grid point; `fitMultiple` lets a model share work
    across points (a blend fits its components once)."""
    k = cfg.evaluate.k
    carved = with_validation_flag(train, cfg.split.validation_fraction or 0.1, cfg.split.seed).cache()
    fit_rows = carved.filter(~F.col(IS_VALIDATION)).drop(IS_VALIDATION).cache()
    validation = carved.filter(F.col(IS_VALIDATION)).drop(IS_VALIDATION)
    estimator = spec.build(cfg, tuned=tuned)
    maps, points = param_grid(estimator, spec, cfg.tune.grids[spec.name])
    scores = [0.0] * len(points)
    try:
        for index, model in estimator.fitMultiple(fit_rows, maps):
            point = points[index]
            users, items = scoring_factors(model)
            recs = top_n(users, items, fit_rows.select(USER_ID, MOVIE_ID), k, cfg.recommend.user_block_size)
            ndcg = ranking.ranking_metrics(recs, validation, k, cfg.evaluate.relevance_threshold)[f"ndcg@{k}"]
            scores[index] = float(ndcg or 0.0)
            log.info("tune %s %s: validation ndcg@%d=%.4f", spec.name, point, k, scores[index])
    finally:
        fit_rows.unpersist()
        carved.unpersist()
    return points, scores


def tune_model(name: str, cfg: Config, train: DataFrame, tuned: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Grid search for one model: best params (config names), every point's score, seconds.

    `tuned`: best params of the models tuned before it in this run (a blend's components).
    """
    started = time.monotonic()
    spec = MODELS[name]
    metric = "rmse" if spec.objective == "rating" else f"ndcg@{cfg.evaluate.k}"
    if spec.objective == "rating":
        points, scores = _tune_rating(spec, cfg, train)
    else:
        points, scores = _tune_ranking(spec, cfg, train, tuned or {})
    pick = min if spec.objective == "rating" else max
    best = pick(range(len(scores)), key=lambda i: scores[i])
    log.info("tune %s: best %s %s=%.4f over %d points", name, points[best], metric, scores[best], len(points))
    return {
        "metric": metric,
        "best_params": points[best],
        "best_score": float(scores[best]),
        "grid": [{"params": p, metric: float(s)} for p, s in zip(points, scores, strict=True)],
        "seconds": round(time.monotonic() - started, 2),
    }


def models_to_tune(cfg: Config) -> list[str]:
    skipped = [n for n in cfg.tune.grids if n not in cfg.train.models]
    if skipped:
        log.warning("tune: grids for %s ignored (not in train.models)", skipped)
    return [n for n in cfg.train.models if cfg.tune.grids.get(n)]


@stage_run("tune")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Tune every model with a grid on the split's train side; publish tuning/tuning.json.

    Examples
    --------
    >>> from recospark.stages import ingest, split, tune
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "train.models=bias",
    ...                          "tune.grids={bias: {reg_user: [0.0, 5.0]}}"])
    >>> _ = ingest.run(spark, cfg); _ = split.run(spark, cfg)
    >>> result = tune.run(spark, cfg)
    >>> sorted(result["models"]["bias"]["best_params"])
    ['reg_user']
    """
    split = cfg.split.effective_name
    names = models_to_tune(cfg)
    src = io.source(cfg, f"splits/{split}/train", needed_by="tune")
    train = src.read(spark, RATINGS).cache()
    models: dict[str, Any] = {}
    try:
        for name in names:
            models[name] = tune_model(name, cfg, train, {n: m["best_params"] for n, m in models.items()})
    finally:
        train.unpersist()
    result = {
        "method": cfg.tune.method,
        "split": split,
        "data": f"splits/{split}/train only (validation carved from it; test untouched)",
        "train_ratio": cfg.tune.train_ratio if cfg.tune.method == "train_validation_split" else None,
        "num_folds": cfg.tune.num_folds if cfg.tune.method == "cross_validator" else None,
        "seed": cfg.split.seed,
        "models": models,
    }
    published = io.publish_files(spark, cfg, "tuning", {"tuning.json": io.to_json(result)}, inputs=[src])
    return {
        "path": published.path,
        "models": {n: {"best_params": m["best_params"], m["metric"]: m["best_score"]} for n, m in models.items()},
    }
