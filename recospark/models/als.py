"""MLlib ALS as a pipeline model: the learning curve that `train` records for it.

MLlib's ALS exposes no per-iteration loss, so its curve is measured by refitting at a few
`maxIter` values (the same seed gives the same iterates) on train minus the validation carve
and scoring both sides; `train` publishes it in the model's manifest, `report` only draws it.
"""

from __future__ import annotations

from typing import Any, Sequence

from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame

from recospark.schema import PREDICTION, RATING

__all__ = ["als_curve"]


def als_curve(estimator: ALS, fit_rows: DataFrame, validation: DataFrame, iters: Sequence[int]) -> list[dict[str, Any]]:
    """RMSE on `fit_rows` and on `validation` after each maxIter in `iters` (rows of unseen ids dropped).

    Returns history records shaped like the SGD model's: `epoch` (= maxIter), `train_rmse`, `val_rmse`.
    """
    evaluator = RegressionEvaluator(metricName="rmse", labelCol=RATING, predictionCol=PREDICTION)
    history = []
    for n in sorted(set(iters)):
        model = estimator.copy({estimator.maxIter: n, estimator.coldStartStrategy: "drop"}).fit(fit_rows)
        history.append(
            {
                "epoch": n,
                "train_rmse": float(evaluator.evaluate(model.transform(fit_rows))),
                "val_rmse": float(evaluator.evaluate(model.transform(validation))),
            }
        )
    return history
