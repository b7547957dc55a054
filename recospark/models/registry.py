"""Every model by name: how to build its estimator from config and how to load it back.

Downstream code (train, evaluate, recommend, tune) goes through here only, so ALS, the DSGD
model and the baselines share one code path.
"""

from __future__ import annotations

from typing import Any, Mapping

from pyspark.ml import Estimator, Model

from recospark.config import Config
from recospark.schema import IS_VALIDATION, MOVIE_ID, PREDICTION, RATING, USER_ID

_COLUMNS = dict(userCol=USER_ID, itemCol=MOVIE_ID, ratingCol=RATING, predictionCol=PREDICTION)

SGD_PARAM_NAMES = {
    "rank": "rank",
    "max_iter": "maxIter",
    "reg_param": "regParam",
    "bias_reg_param": "biasRegParam",
    "step_size": "stepSize",
    "step_decay": "stepDecay",
    "schedule": "schedule",
    "num_blocks": "numBlocks",
    "init_std": "initStd",
    "seed": "seed",
    "early_stopping_rounds": "earlyStoppingRounds",
    "checkpoint_interval": "checkpointInterval",
}
BIAS_PARAM_NAMES = {"reg_user": "regUser", "reg_item": "regItem"}


def param_names(name: str) -> dict[str, str]:
    """Config key -> estimator Param name, for tuning grids and tuned overrides."""
    from recospark.models.als import PARAM_NAMES

    return {"als": PARAM_NAMES, "sgd": SGD_PARAM_NAMES, "bias": BIAS_PARAM_NAMES}.get(name, {})


def build_estimator(
    name: str,
    cfg: Config,
    overrides: Mapping[str, Any] | None = None,
    *,
    cold_start_strategy: str = "nan",
    validation: bool = False,
) -> Estimator:
    """`overrides` use config names (rank, reg_param, ...), e.g. tuned params."""
    overrides = dict(overrides or {})
    if name == "als":
        from recospark.models.als import build_als

        return build_als(cfg.als, {"cold_start_strategy": cold_start_strategy, **overrides})
    if name == "sgd":
        from recospark.models.sgd import SGDMatrixFactorization

        values = {**cfg.sgd.model_dump(), **overrides}
        params = {SGD_PARAM_NAMES[k]: v for k, v in values.items() if k in SGD_PARAM_NAMES}
        if validation:
            params["validationIndicatorCol"] = IS_VALIDATION
        return SGDMatrixFactorization(coldStartStrategy=cold_start_strategy, **_COLUMNS, **params)
    if name == "bias":
        from recospark.models.baselines import BiasBaseline

        values = {**cfg.bias.model_dump(), **overrides}
        params = {BIAS_PARAM_NAMES[k]: v for k, v in values.items() if k in BIAS_PARAM_NAMES}
        return BiasBaseline(coldStartStrategy=cold_start_strategy, **_COLUMNS, **params)
    if name == "global_mean":
        from recospark.models.baselines import GlobalMean

        return GlobalMean(coldStartStrategy=cold_start_strategy, **_COLUMNS)
    raise ValueError(f"unknown model {name!r}; known: als, sgd, bias, global_mean")


def model_class(name: str) -> type[Model]:
    if name == "als":
        from pyspark.ml.recommendation import ALSModel

        return ALSModel
    if name == "sgd":
        from recospark.models.sgd import SGDMatrixFactorizationModel

        return SGDMatrixFactorizationModel
    if name == "bias":
        from recospark.models.baselines import BiasBaselineModel

        return BiasBaselineModel
    if name == "global_mean":
        from recospark.models.baselines import GlobalMeanModel

        return GlobalMeanModel
    raise ValueError(f"unknown model {name!r}; known: als, sgd, bias, global_mean")


def load_model(name: str, path: str) -> Model:
    return model_class(name).load(path)
