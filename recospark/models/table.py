"""The model table: one entry per model name, and the only place that knows the models.

An entry names the estimator and model classes, whether the model is judged as a rating model
(RMSE and ranking metrics) or a ranking model (ranking metrics only), and what its `score`
column means. Its knobs are not declared here: they are the estimator's Params (`knobs()` reads
them, with their docs, defaults and accepted values). An entry only adds what is this model's
own: defaults that differ from the estimator's (`defaults`, e.g. `sgd_rank` is the SGD estimator
with a ranking loss and its own step size), Params it fixes (`fixed`) or hides (`exclude`), and
pipeline settings that are not Params (`settings`). The configuration builds one section per
entry from `knobs()`, so adding a model is one entry here.

This module imports no configuration: values arrive as mappings of configuration keys, and a
model built from other models (the blend) reads theirs through `ModelValues`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.recommendation import ALS, ALSModel, _ALSParams
from pyspark.sql import DataFrame

from recospark.models.als import als_curve
from recospark.models.baselines import BiasBaseline, BiasBaselineModel, GlobalMean, GlobalMeanModel
from recospark.models.blend import Blend, BlendModel
from recospark.models.ease import EASE, EASEModel
from recospark.models.neural import estimator as nn
from recospark.models.neural import require_torch
from recospark.models.params import Bounds, check_params, conf_key
from recospark.models.puresvd import PureSVD, PureSVDModel
from recospark.models.sgd.estimator import SGDMatrixFactorization, SGDMatrixFactorizationModel
from recospark.models.sgd.params import ranking_stopping_problems
from recospark.schema import IS_VALIDATION, MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = ["MODELS", "Knob", "ModelSpec", "ModelValues", "Objective", "Setting", "spec"]

Objective = Literal["rating", "ranking"]

# Every estimator gets the ratings dataset's columns; the pipeline sets these, never a user.
COLUMNS = {"userCol": USER_ID, "itemCol": MOVIE_ID, "ratingCol": RATING, "predictionCol": PREDICTION}
_PIPELINE_PARAMS = {*COLUMNS, "coldStartStrategy", "validationIndicatorCol"}

_TYPES: dict[Callable[..., Any], type | Any] = {
    TypeConverters.toInt: int,
    TypeConverters.toFloat: float,
    TypeConverters.toBoolean: bool,
    TypeConverters.toString: str,
    TypeConverters.toListFloat: tuple[float, ...],
    TypeConverters.toListInt: tuple[int, ...],
    TypeConverters.toListString: tuple[str, ...],
}


class ModelValues(Protocol):
    """Where a model built from other models finds their configured values (the configuration)."""

    def model_values(self, name: str) -> Mapping[str, Any]:
        """Model `name`'s configured values by configuration key (snake_case of the Param names)."""


@dataclass(frozen=True)
class Setting:
    """A pipeline setting of one model that is not a Param of its estimator (declared once, here)."""

    key: str
    type: Any
    default: Any
    doc: str
    bounds: Bounds = field(default_factory=Bounds)


@dataclass(frozen=True)
class Knob:
    """One configurable value of a model: a Param (`param` set) or a pipeline setting."""

    key: str  # configuration key (snake_case of the Param name)
    param: str | None  # the Param it sets, None for a setting
    type: Any
    default: Any
    doc: str
    bounds: Bounds


@dataclass(frozen=True)
class ModelSpec:
    """How the pipeline builds, tunes, loads and judges one model."""

    name: str
    estimator: type[Estimator]
    model: type[Model]
    objective: Objective
    score: str  # what the `score` column of recommendations/<name>/ means
    # a Params class that lists the estimator's Params without a JVM (MLlib's ALS needs one to instantiate)
    schema: type[Params] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # Param -> this model's default, where it differs
    fixed: Mapping[str, Any] = field(default_factory=dict)  # Params every instance gets; not knobs
    exclude: tuple[str, ...] = ()  # Params that mean nothing for this model; not knobs
    checks: Mapping[str, Bounds] = field(default_factory=dict)  # accepted values of Params declared outside recospark
    settings: tuple[Setting, ...] = ()
    early_stopping: bool = False  # takes validationIndicatorCol; `train` then refits on all of train
    # builds the estimator when Params alone cannot (a blend of other models): see `build`
    builder: Callable[..., Estimator] | None = None
    # the models it is built from (`train` fits or loads them first; the DAG orders their tasks)
    components: Callable[[Mapping[str, Any]], Sequence[str]] | None = None
    # (estimator, fit rows, validation rows, this model's values) -> learning-curve records, for models
    # whose fitted object keeps no history of its own
    curve: Callable[[Estimator, DataFrame, DataFrame, Mapping[str, Any]], list[dict[str, Any]]] | None = None
    # cross-knob rules on the configured values (one message per problem), e.g. one weight per component
    rules: Callable[[Mapping[str, Any]], list[str]] | None = None
    # raises a UserError before Spark starts when something the model needs is not installed
    requires: Callable[[str], None] | None = None

    @property
    def tune_metric(self) -> str:
        """What `tune` optimises: RMSE for rating models, NDCG@k for ranking models."""
        return "rmse" if self.objective == "rating" else "ndcg"

    def _schema_instance(self) -> Params:
        return (self.schema or self.estimator)()

    def knobs(self) -> list[Knob]:
        """Every configurable value, in declaration order: the estimator's Params (minus the columns,
        the fixed and excluded ones), then the settings; defaults as this model uses them."""
        instance = self._schema_instance()
        unknown = sorted(set(self.defaults) | set(self.fixed) | set(self.exclude) | set(self.checks))
        unknown = [p for p in unknown if not instance.hasParam(p)]
        if unknown:
            raise ValueError(f"model table entry {self.name!r} names Params its estimator lacks: {unknown}")
        out = []
        for param in _declared(instance):
            if param.name in _PIPELINE_PARAMS or param.name in self.fixed or param.name in self.exclude:
                continue
            if param.typeConverter not in _TYPES:
                raise TypeError(f"{self.name}: Param {param.name} has a type converter the configuration cannot map")
            default = self.defaults.get(param.name, instance.getOrDefault(param) if instance.hasDefault(param) else None)
            bounds = self.checks.get(param.name) or getattr(param, "bounds", None) or Bounds()
            if isinstance(default, list):
                default = tuple(default)
            out.append(Knob(conf_key(param.name), param.name, _TYPES[param.typeConverter], default, param.doc, bounds))
        out += [Knob(s.key, None, s.type, s.default, s.doc, s.bounds) for s in self.settings]
        return out

    def param_map(self) -> dict[str, str]:
        """Configuration key -> Param name, for the knobs that are Params."""
        return {k.key: k.param for k in self.knobs() if k.param is not None}

    def param_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Param name -> value: the fixed Params, then every configured knob that is a Param.

        `values` uses configuration keys; a key that names no knob is an error, never dropped."""
        knobs = {k.key: k for k in self.knobs()}
        unknown = sorted(k for k in values if k not in knobs)
        if unknown:
            raise ValueError(f"{self.name}: keys {unknown} name no knob; known: {sorted(knobs)}")
        out: dict[str, Any] = dict(self.fixed)
        for key, value in values.items():
            param = knobs[key].param
            if param is not None:
                out[param] = list(value) if isinstance(value, tuple) else value
        return out

    def build(
        self,
        values: ModelValues,
        overrides: Mapping[str, Any] | None = None,
        *,
        cold_start_strategy: str = "nan",
        validation: bool = False,
        tuned: Mapping[str, Mapping[str, Any]] | None = None,
        fitted: Mapping[str, Model] | None = None,
    ) -> Estimator:
        """The configured estimator; `overrides` use configuration keys (e.g. tuned params).

        `tuned` (model -> configuration-key overrides) and `fitted` (model -> a model fitted in this
        run on the same data) reach models built from other models (the blend), so a component
        is tuned once and fitted once.
        """
        mine = {**values.model_values(self.name), **dict(overrides or {})}
        if self.builder is None:
            estimator = self.estimator()
        else:
            estimator = self.builder(values, mine, tuned or {}, fitted or {})
        params = {**COLUMNS, "coldStartStrategy": cold_start_strategy, **self.param_values(mine)}
        if validation and self.early_stopping:
            params["validationIndicatorCol"] = IS_VALIDATION
        for name, value in params.items():
            estimator.set(estimator.getParam(name), value)
        return estimator

    def problems(self, values: Mapping[str, Any]) -> list[str]:
        """Every refused value among `values` (configuration keys), checked without a JVM."""
        instance = self._schema_instance()
        for name, value in self.param_values(values).items():
            instance.set(instance.getParam(name), value)
        problems = [_in_conf_keys(p) for p in check_params(instance, self.checks)]
        for setting in self.settings:
            need = setting.bounds.problem(values.get(setting.key, setting.default))
            if need is not None:
                problems.append(f"{setting.key} must be {need}, got {values.get(setting.key)!r}")
        return problems + (self.rules(values) if self.rules is not None else [])

    def uses_validation(self, values: Mapping[str, Any], validation_fraction: float) -> bool:
        """Whether `train` carves validation rows for this model's early stopping."""
        return self.early_stopping and validation_fraction > 0 and values.get("early_stopping_rounds", 0) > 0

    def load(self, path: str) -> Model:
        """The fitted model saved at `path` (by `train`), read through this entry's model class."""
        return cast(Any, self.model).load(path)


def _declared(instance: Params) -> list[Param]:
    """The instance's Params in the order their classes declare them (the most derived class first)."""
    order: dict[str, int] = {}
    for cls in type(instance).__mro__:
        for name, attr in vars(cls).items():
            if isinstance(attr, Param) and name not in order:
                order[name] = len(order)
    return sorted(instance.params, key=lambda p: order.get(p.name, len(order)))


_ALS_DEFAULTS = {"maxIter": 20, "numUserBlocks": 4, "numItemBlocks": 4, "checkpointInterval": 5, "seed": 42}
_ALS_CHECKS = {
    "rank": Bounds(ge=1),
    "maxIter": Bounds(ge=0),
    "regParam": Bounds(ge=0),
    "alpha": Bounds(ge=0),
    "numUserBlocks": Bounds(ge=1),
    "numItemBlocks": Bounds(ge=1),
    "checkpointInterval": Bounds(ge=1),
    "blockSize": Bounds(ge=1),
}
_ALS_HIDDEN = ("intermediateStorageLevel", "finalStorageLevel", "blockSize")


def _blend_rules(values: Mapping[str, Any]) -> list[str]:
    components, weights = list(values.get("components", ())), list(values.get("weights", ()))
    problems = []
    if len(weights) != len(components):
        problems.append(f"weights: {len(weights)} weights for {len(components)} components")
    if weights and not any(weights):
        problems.append("weights: not all 0")
    if "blend" in components:
        problems.append("components: a blend cannot contain itself")
    unknown = [c for c in components if c not in MODELS]
    if unknown:
        problems.append(f"components: unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    return problems


def _in_conf_keys(problem: str) -> str:
    """A problem message that starts with a Param name, starting with its configuration key instead."""
    name, rest = problem.split(" ", 1)
    return f"{conf_key(name)} {rest}"


def _ranking_sgd_rules(values: Mapping[str, Any]) -> list[str]:
    # the estimator refuses this only when fitted with a validation column, after ingest and split
    problems = ranking_stopping_problems(values.get("loss", ""), values.get("early_stopping_rounds") or 0)
    return [_in_conf_keys(p) for p in problems]


def _build_blend(
    values: ModelValues, mine: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]], fitted: Mapping[str, Model]
) -> Blend:
    """A Blend over the configured components: each fitted in this run if it was, else built
    from its own section (with its tuned params)."""
    names = list(mine["components"])
    parts: list[Estimator | Model] = [
        fitted[n] if n in fitted else MODELS[n].build(values, tuned.get(n), tuned=tuned, fitted=fitted) for n in names
    ]
    return Blend(parts, names=names)


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "als",
            ALS,
            ALSModel,
            "rating",
            "the dot product of ALS's user and item factors: the predicted rating",
            schema=_ALSParams,
            defaults=_ALS_DEFAULTS,
            fixed={"implicitPrefs": False},
            exclude=("alpha", *_ALS_HIDDEN),
            checks=_ALS_CHECKS,
            settings=(
                Setting(
                    "curve_iters",
                    tuple[int, ...],
                    (),
                    "train records ALS's RMSE curve by refitting at these maxIter values (and at max_iter) on train "
                    "minus the validation carve, e.g. [1, 5, 10]: one extra ALS fit per point; [] skips it",
                    Bounds(ge=1),
                ),
            ),
            curve=als_curve,
        ),
        ModelSpec(
            "als_implicit",
            ALS,
            ALSModel,
            "ranking",
            "implicit ALS's preference estimate (about 0 to 1): higher means more likely to be watched",
            schema=_ALSParams,
            defaults={**_ALS_DEFAULTS, "rank": 30, "maxIter": 15, "regParam": 0.2, "alpha": 0.1},
            fixed={"implicitPrefs": True},
            exclude=_ALS_HIDDEN,
            checks=_ALS_CHECKS,
        ),
        ModelSpec(
            "sgd",
            SGDMatrixFactorization,
            SGDMatrixFactorizationModel,
            "rating",
            "the predicted rating minus the user's constant part (mu + b_u): b_i + p_u . q_i",
            fixed={"loss": "squared"},
            exclude=("numNegatives", "positiveThreshold", "blockWeighting", "margin", "maxTrials", "maxNorm"),
            early_stopping=True,
        ),
        ModelSpec(
            "sgd_rank",
            SGDMatrixFactorization,
            SGDMatrixFactorizationModel,
            "ranking",
            "the ranking loss's score b_i + p_u . q_i: higher ranks first; not a rating",
            defaults={
                "loss": "bpr",
                "maxIter": 110,
                "regParam": 0.02,
                "stepSize": 0.01,
                "stepDecay": 1.0,
                "initStd": 0.1,
                "numNegatives": 5,
                "earlyStoppingRounds": 0,
            },
            early_stopping=True,
            rules=_ranking_sgd_rules,
        ),
        ModelSpec(
            "puresvd",
            PureSVD,
            PureSVDModel,
            "ranking",
            "PureSVD's projection r_u V V_i: higher ranks first; not a rating",
        ),
        ModelSpec(
            "blend",
            Blend,
            BlendModel,
            "ranking",
            "the weighted sum of the components' per-user standardized scores: higher ranks first; not a rating",
            defaults={"weights": (0.3, 0.6, 0.1)},
            settings=(
                Setting("components", tuple[str, ...], ("als_implicit", "sgd_rank", "puresvd"), "the models blended, in weight order"),
            ),
            builder=_build_blend,
            components=lambda values: list(values["components"]),
            rules=_blend_rules,
        ),
        ModelSpec(
            "ease",
            EASE,
            EASEModel,
            "ranking",
            "EASE's x_u . B[:, i]: how strongly the user's other train items point to the item; higher ranks first; not a rating",
        ),
        *(
            ModelSpec(name, estimator, model, cast(Objective, objective), score, early_stopping=True, requires=require_torch)
            for name, estimator, model, objective, score in (
                (
                    "neural_mf",
                    nn.NeuralMF,
                    nn.NeuralMFModel,
                    "rating",
                    "the predicted rating mu + b_u + b_i + p_u . q_i (Keras MF tutorial)",
                ),
                ("dnn", nn.DNN, nn.DNNModel, "rating", "the predicted rating mu + MLP([p_u, q_i]) of the deep network"),
                (
                    "residual_mf",
                    nn.ResidualMF,
                    nn.ResidualMFModel,
                    "rating",
                    "the predicted rating mu + b_u + b_i + p_u . q_i + MLP([p_u, q_i]) (MF plus a residual network)",
                ),
                (
                    "autorec",
                    nn.AutoRec,
                    nn.AutoRecModel,
                    "rating",
                    "U-AutoRec's reconstructed rating from the user's train ratings, centred on the user's mean",
                ),
                (
                    "rbm",
                    nn.RBM,
                    nn.RBMModel,
                    "rating",
                    "the RBM's expected rating sum_k k p(v_i = k | the user's train ratings) (mean field)",
                ),
                ("gmf", nn.GMF, nn.GMFModel, "ranking", "GMF's logit h . (p_u * q_i) + b: higher ranks first; not a rating"),
                (
                    "neumf",
                    nn.NeuMF,
                    nn.NeuMFModel,
                    "ranking",
                    "NeuMF's fused logit of its GMF and MLP towers: higher ranks first; not a rating",
                ),
                (
                    "mult_vae",
                    nn.MultVAE,
                    nn.MultVAEModel,
                    "ranking",
                    "Mult-VAE's item logit at z = mu given the user's train items; not a rating",
                ),
                ("mult_dae", nn.MultDAE, nn.MultDAEModel, "ranking", "Mult-DAE's item logit given the user's train items; not a rating"),
            )
        ),
        ModelSpec(
            "bias",
            BiasBaseline,
            BiasBaselineModel,
            "rating",
            "the predicted rating mu + b_u + b_i (the user's list is ordered by b_i)",
        ),
        ModelSpec(
            "global_mean",
            GlobalMean,
            GlobalMeanModel,
            "rating",
            "the movie's number of ratings in train (popularity); the predicted rating is the global mean",
        ),
    )
}


def spec(name: str) -> ModelSpec:
    """The table entry of `name`; unknown names list the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
