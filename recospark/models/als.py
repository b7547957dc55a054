"""MLlib ALS as a pipeline model: the learning curve that `train` records for it.

MLlib's ALS exposes no per-iteration loss, so its curve is measured by refitting at a few
`maxIter` values (the same seed gives the same iterates) on train minus the validation carve
and scoring both sides; `train` publishes it in the model's manifest, `report` only draws it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pyspark.ml import Estimator
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame

from recospark.schema import PREDICTION, RATING

__all__ = ["als_curve"]


def als_curve(estimator: Estimator, fit_rows: DataFrame, validation: DataFrame, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RMSE on `fit_rows` and on `validation` after each maxIter of `values["curve_iters"]` and at
    the configured `max_iter` (rows of unseen ids dropped); nothing when `curve_iters` is empty.

    Returns history records shaped like the SGD model's: `epoch` (= maxIter), `train_rmse`, `val_rmse`.
    """
    iters = list(values.get("curve_iters", ()))
    if not iters:
        return []
    als = cast(ALS, estimator)
    evaluator = RegressionEvaluator(metricName="rmse", labelCol=RATING, predictionCol=PREDICTION)
    history = []
    for n in sorted({*iters, int(values["max_iter"])}):
        model = als.copy({als.maxIter: n, als.coldStartStrategy: "drop"}).fit(fit_rows)
        history.append(
            {
                "epoch": n,
                "train_rmse": float(evaluator.evaluate(model.transform(fit_rows))),
                "val_rmse": float(evaluator.evaluate(model.transform(validation))),
            }
        )
    return history
