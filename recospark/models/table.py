"""The model table: one entry per model name, and the only place that knows the models.

An entry holds the estimator and model classes, the config-key -> Param map of its config
section (`Config.<name>`), fixed Params, what its `score` column means and whether it is
judged as a rating model (RMSE and ranking metrics) or a ranking model (ranking metrics only).
Stages build, tune and load every model through `MODELS`; adding a model is one entry here
plus its config section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pyspark.ml import Estimator, Model
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame

from recospark.config import Config, ModelSection
from recospark.models.als import als_curve
from recospark.models.baselines import BiasBaseline, BiasBaselineModel, GlobalMean, GlobalMeanModel
from recospark.models.blend import Blend, BlendModel
from recospark.models.puresvd import PureSVD, PureSVDModel
from recospark.models.sgd.estimator import SGDMatrixFactorization, SGDMatrixFactorizationModel
from recospark.schema import IS_VALIDATION, MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = ["MODELS", "ModelSpec", "spec"]

# Every estimator gets the ratings dataset's columns.
_COLUMNS = {"userCol": USER_ID, "itemCol": MOVIE_ID, "ratingCol": RATING, "predictionCol": PREDICTION}


@dataclass(frozen=True)
class ModelSpec:
    """How the pipeline builds, tunes, loads and judges one model."""

    name: str
    estimator: type[Estimator]
    model: type[Model]
    params: Mapping[str, str | tuple[str, ...]]  # config key -> Param name(s)
    objective: Literal["rating", "ranking"]
    score: str  # what the `score` column of recommendations/<name>/ means
    fixed: Mapping[str, Any] = field(default_factory=dict)  # Params every instance gets
    settings: tuple[str, ...] = ()  # config keys that are pipeline settings, not Params
    early_stopping: bool = False  # takes validationIndicatorCol; `train` then refits on all of train
    # builds the estimator when Params alone cannot (a blend of other models): see `build`
    builder: Callable[..., Estimator] | None = None
    # the models it is built from (`train` fits or loads them first; the DAG orders their tasks)
    components: Callable[[Config], Sequence[str]] | None = None
    # (estimator, fit rows, validation rows, config section) -> learning-curve records, for models
    # whose fitted object keeps no history of its own
    curve: Callable[[Estimator, DataFrame, DataFrame, ModelSection], list[dict[str, Any]]] | None = None

    @property
    def tune_metric(self) -> str:
        """What `tune` optimises: RMSE for rating models, NDCG@k for ranking models."""
        return "rmse" if self.objective == "rating" else "ndcg"

    def param_values(self, cfg: Config, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Param name -> value from the model's config section, then `overrides` (config names)."""
        values = {**cfg.model_conf(self.name).model_dump(), **dict(overrides or {})}
        unknown = sorted(k for k in values if k not in self.params and k not in self.settings)
        if unknown:
            raise ValueError(f"{self.name}: config keys {unknown} map to no Param")
        out: dict[str, Any] = dict(self.fixed)
        for key, value in values.items():
            names = self.params.get(key, ())
            for param in (names,) if isinstance(names, str) else names:
                out[param] = value
        return out

    def build(
        self,
        cfg: Config,
        overrides: Mapping[str, Any] | None = None,
        *,
        cold_start_strategy: str = "nan",
        validation: bool = False,
        tuned: Mapping[str, Mapping[str, Any]] | None = None,
        fitted: Mapping[str, Model] | None = None,
    ) -> Estimator:
        """The configured estimator; `overrides` use config names (e.g. tuned params).

        `tuned` (model -> config-name overrides) and `fitted` (model -> a model fitted in this
        run on the same data) reach models built from other models (the blend), so a component
        is tuned once and fitted once.
        """
        estimator = self.estimator() if self.builder is None else self.builder(cfg, tuned or {}, fitted or {})
        values = {**_COLUMNS, "coldStartStrategy": cold_start_strategy, **self.param_values(cfg, overrides)}
        if validation and self.early_stopping:
            values["validationIndicatorCol"] = IS_VALIDATION
        for name, value in values.items():
            estimator.set(estimator.getParam(name), value)
        return estimator

    def uses_validation(self, cfg: Config) -> bool:
        """Whether `train` carves validation rows for this model's early stopping."""
        conf = cfg.model_conf(self.name)
        return self.early_stopping and cfg.split.validation_fraction > 0 and getattr(conf, "early_stopping_rounds", 0) > 0

    def load(self, path: str) -> Model:
        return cast(Any, self.model).load(path)


_ALS_COMMON: dict[str, str | tuple[str, ...]] = {
    "rank": "rank",
    "max_iter": "maxIter",
    "reg_param": "regParam",
    "nonnegative": "nonnegative",
    "seed": "seed",
    "num_blocks": ("numUserBlocks", "numItemBlocks"),
    "checkpoint_interval": "checkpointInterval",
}
_SGD_COMMON: dict[str, str | tuple[str, ...]] = {
    "rank": "rank",
    "max_iter": "maxIter",
    "reg_param": "regParam",
    "bias_reg_param": "biasRegParam",
    "step_size": "stepSize",
    "step_decay": "stepDecay",
    "schedule": "schedule",
    "num_blocks": "numBlocks",
    "inner_blocks": "innerBlocks",
    "threads": "threads",
    "tasks": "tasks",
    "init_std": "initStd",
    "seed": "seed",
    "early_stopping_rounds": "earlyStoppingRounds",
    "checkpoint_interval": "checkpointInterval",
}

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "als",
            ALS,
            ALSModel,
            _ALS_COMMON,
            "rating",
            "the dot product of ALS's user and item factors: the predicted rating",
            settings=("curve_iters",),
            curve=als_curve,
        ),
        ModelSpec(
            "als_implicit",
            ALS,
            ALSModel,
            {**_ALS_COMMON, "alpha": "alpha"},
            "ranking",
            "implicit ALS's preference estimate (about 0 to 1): higher means more likely to be watched",
            fixed={"implicitPrefs": True},
        ),
        ModelSpec(
            "sgd",
            SGDMatrixFactorization,
            SGDMatrixFactorizationModel,
            _SGD_COMMON,
            "rating",
            "the predicted rating minus the user's constant part (mu + b_u): b_i + p_u . q_i",
            fixed={"loss": "squared"},
            early_stopping=True,
        ),
        ModelSpec(
            "sgd_rank",
            SGDMatrixFactorization,
            SGDMatrixFactorizationModel,
            {
                **_SGD_COMMON,
                "loss": "loss",
                "num_negatives": "numNegatives",
                "positive_threshold": "positiveThreshold",
                "block_weighting": "blockWeighting",
                "margin": "margin",
                "max_trials": "maxTrials",
                "max_norm": "maxNorm",
            },
            "ranking",
            "the ranking loss's score b_i + p_u . q_i: higher ranks first; not a rating",
            early_stopping=True,
        ),
        ModelSpec(
            "puresvd",
            PureSVD,
            PureSVDModel,
            {"rank": "rank", "binary": "binary"},
            "ranking",
            "PureSVD's projection r_u V V_i: higher ranks first; not a rating",
        ),
        ModelSpec(
            "blend",
            Blend,
            BlendModel,
            {"weights": "weights"},
            "ranking",
            "the weighted sum of the components' per-user standardized scores: higher ranks first; not a rating",
            settings=("components",),
            builder=lambda cfg, tuned, fitted: _build_blend(cfg, tuned, fitted),
            components=lambda cfg: list(cfg.blend.components),
        ),
        ModelSpec(
            "bias",
            BiasBaseline,
            BiasBaselineModel,
            {"reg_user": "regUser", "reg_item": "regItem"},
            "rating",
            "the predicted rating mu + b_u + b_i (the user's list is ordered by b_i)",
        ),
        ModelSpec(
            "global_mean",
            GlobalMean,
            GlobalMeanModel,
            {},
            "rating",
            "the movie's number of ratings in train (popularity); the predicted rating is the global mean",
        ),
    )
}


def _build_blend(cfg: Config, tuned: Mapping[str, Mapping[str, Any]], fitted: Mapping[str, Model]) -> Blend:
    """A Blend over the configured components: each fitted in this run if it was, else built
    from its own section (with its tuned params)."""
    names = list(cfg.blend.components)
    parts: list[Estimator | Model] = [
        fitted[n] if n in fitted else MODELS[n].build(cfg, tuned.get(n), tuned=tuned, fitted=fitted) for n in names
    ]
    return Blend(parts, names=names)


def spec(name: str) -> ModelSpec:
    """The table entry of `name`; unknown names list the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
