"""The `tune` stage: grid search on validation data carved from the train split, never the test split.

For every model that has a grid in `tune.grids` and is listed in `train.models`, the estimator
comes from the registry (the same builder `train` uses, so ALS, the DSGD model and the bias
baseline share one code path), the grid's config names are mapped to Param names, and MLlib's
`TrainValidationSplit` or `CrossValidator` picks the params with the lowest validation RMSE.
Cold rows of a validation fold (user or item absent from its training part) are dropped
(`coldStartStrategy=drop`), otherwise a single NaN would make every RMSE NaN.

`CrossValidator` folds come from a hash of (seed, user, movie), like the splits, so they do not
depend on partitioning; `TrainValidationSplit` draws `rand(seed)` per row, which is stable for
the same published train split read the same way.

Writes metrics/tuning.json; `train` reads `models.<name>.best_params` from it when
`train.use_tuned` is set.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Mapping

from pyspark.ml import Estimator
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config, ConfigError
from recospark.models import registry
from recospark.schema import PREDICTION, RATING, RATINGS
from recospark.split import uniform

log = logging.getLogger(__name__)

METRIC = "rmse"
_FOLD = "_fold"


def param_grid(estimator: Estimator, name: str, grid: Mapping[str, list[Any]]) -> tuple[list[dict], list[dict[str, Any]]]:
    """(MLlib param maps, the same points in config names), in the same order."""
    names = registry.param_names(name)
    unknown = sorted(k for k in grid if k not in names)
    if unknown:
        raise ConfigError(f"tune.grids.{name}: unknown key(s) {unknown}; known: {sorted(names)}")
    empty = sorted(k for k, v in grid.items() if not v)
    if empty:
        raise ConfigError(f"tune.grids.{name}: no values for {empty}")
    keys = sorted(grid)
    builder = ParamGridBuilder()
    for key in keys:
        builder.addGrid(estimator.getParam(names[key]), list(grid[key]))
    maps = builder.build()
    # ParamGridBuilder enumerates the cartesian product in the same order as itertools.product.
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    by_param = [{p.name: v for p, v in m.items()} for m in maps]
    if any(pm[names[k]] != v for point, pm in zip(points, by_param) for k, v in point.items()):
        raise RuntimeError("ParamGridBuilder order differs from the config grid order")
    return maps, points


def with_fold(num_folds: int, seed: int):
    """A fold number per rating from a hash of (seed, user, movie): folds do not depend on partitioning."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(_FOLD, F.floor(uniform(seed, "tune-fold") * F.lit(num_folds)).cast("int"))

    return transform


def tune_model(name: str, cfg: Config, train: DataFrame) -> dict[str, Any]:
    """Grid search for one model; returns best params (config names), every point's RMSE, seconds."""
    started = time.monotonic()
    estimator = registry.build_estimator(name, cfg, cold_start_strategy="drop")
    maps, points = param_grid(estimator, name, cfg.tune.grids[name])
    evaluator = RegressionEvaluator(metricName=METRIC, labelCol=RATING, predictionCol=PREDICTION)
    seed = cfg.split.seed
    if cfg.tune.method == "cross_validator":
        search = CrossValidator(
            estimator=estimator, estimatorParamMaps=maps, evaluator=evaluator, numFolds=cfg.tune.num_folds, foldCol=_FOLD, seed=seed
        )
        fitted = search.fit(train.transform(with_fold(cfg.tune.num_folds, seed)))
        scores = list(fitted.avgMetrics)
    else:
        search = TrainValidationSplit(
            estimator=estimator, estimatorParamMaps=maps, evaluator=evaluator, trainRatio=cfg.tune.train_ratio, seed=seed
        )
        fitted = search.fit(train)
        scores = list(fitted.validationMetrics)
    best = min(range(len(scores)), key=lambda i: scores[i])
    grid = [{"params": point, METRIC: float(score)} for point, score in zip(points, scores)]
    log.info("tune %s: best %s rmse=%.4f over %d points", name, points[best], scores[best], len(points))
    return {"best_params": points[best], f"best_{METRIC}": float(scores[best]), "grid": grid, "seconds": round(time.monotonic() - started, 2)}


def models_to_tune(cfg: Config) -> list[str]:
    skipped = [n for n in cfg.tune.grids if n not in cfg.train.models]
    if skipped:
        log.warning("tune: grids for %s ignored (not in train.models)", skipped)
    return [n for n in cfg.train.models if cfg.tune.grids.get(n)]


def run(spark: SparkSession, cfg: Config) -> dict:
    """Tune every model with a grid on the split's train side; publish metrics/tuning.json."""
    started = time.monotonic()
    split = cfg.split.effective_name
    names = models_to_tune(cfg)
    for name in names:  # fail on a bad grid before any fitting
        param_grid(registry.build_estimator(name, cfg, cold_start_strategy="drop"), name, cfg.tune.grids[name])
    train = io.read_output(spark, cfg, f"splits/{split}/train", RATINGS, needed_by="tune").cache()
    models: dict[str, Any] = {}
    try:
        for name in names:
            models[name] = tune_model(name, cfg, train)
    finally:
        train.unpersist()
    result = {
        "method": cfg.tune.method,
        "metric": METRIC,
        "split": split,
        "data": f"splits/{split}/train only (validation carved from it; test untouched)",
        "train_ratio": cfg.tune.train_ratio if cfg.tune.method == "train_validation_split" else None,
        "num_folds": cfg.tune.num_folds if cfg.tune.method == "cross_validator" else None,
        "seed": cfg.split.seed,
        "models": models,
    }
    path = io.output_path(cfg, "metrics", "tuning.json")
    io.write_json_atomic(path, result)
    return {
        "stage": "tune",
        "path": path,
        "models": {n: {"best_params": m["best_params"], "rmse": m[f"best_{METRIC}"]} for n, m in models.items()},
        "seconds": round(time.monotonic() - started, 2),
    }
