"""One pyspark.ml Estimator/Model pair per neural recipe, generated from the recipe, shaped like ALS.

The model table needs one class per model (a class carries its Params), and each knob must be
declared once: `neural_pair(recipe, "NeuralMF")` builds the estimator's Params from the recipe's
`defaults` and `docs` plus the engine's shared ones (`SHARED_DOCS`, defaults in
`ENGINE_DEFAULTS`, the ALS column Params), feeds `_setDefault` from the recipe, and adds the
getters and setters. The fitted model carries only the column Params (as ALSModel): the
hyper-parameters it was trained with are metadata (`hyperParameters`), needed to rebuild the
network for scoring.

Fitting writes the fit rows once as Parquet under the Spark checkpoint directory (each rank reads
its shard from there; the folder is deleted afterwards), computes the sorted user and item ids
and the mean rating with Spark, and trains through TorchDistributor (`launch.py`). Validation
rows come from `validationIndicatorCol` (as the SGD estimator): left out of training, scored
every epoch, and with `earlyStoppingRounds` > 0 the best epoch's weights are kept.

Saved model = Spark ML metadata (params, hyper-parameters, history, recipe name, counts) +
`weights.safetensors` + the id tables (Parquet), plus the factor tables of dot-product models
or the training rows of the others (whose networks read a user's history to score). No pickle.

Scoring: dot-product models expose `userFactors`/`itemFactors` (`id, features`, biases folded
in, so their dot product is the model's score) and `transform` computes the same dot product
in Spark SQL; the others expose `blockScorer()` (`scorer.NeuralBlockScorer`) and `transform`
runs the network on the executors.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasMaxIter, HasSeed, HasStepSize, HasValidationIndicatorCol
from pyspark.ml.util import MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark.frames import driver_frame, factor_table, id_frame
from recospark.models.neural import data, require_torch, weights
from recospark.models.neural.job import TrainJob
from recospark.models.neural.launch import launch, rank_threads
from recospark.models.neural.recipe import Recipe
from recospark.models.neural.recipes import RECIPES
from recospark.models.neural.scorer import NeuralBlockScorer, predict_pairs
from recospark.models.neural.storage import FORMAT_VERSION, NeuralReader, NeuralWriter, scratch_folder, sorted_ids
from recospark.models.params import Knob, _RecommenderModelParams, _RecommenderModelSetters, _RecommenderParams, check_params, knob
from recospark.models.persistence import EstimatorPersistence
from recospark.schema import FACTOR_ID, FACTORS, FEATURES, MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = [
    "ENGINE_DEFAULTS",
    "GMF",
    "SHARED_DOCS",
    "GMFModel",
    "NeuralMF",
    "NeuralMFModel",
    "NeuralRecommender",
    "NeuralRecommenderModel",
    "neural_pair",
]

log = logging.getLogger(__name__)

# Params every neural estimator has beyond the recipe's own: the recipe sets maxIter, stepSize and
# batchSize (they differ by network); the engine's defaults below cover the rest.
SHARED_DOCS: dict[str, str] = {
    "maxIter": "epochs (>= 1); with earlyStoppingRounds, the most epochs",
    "stepSize": "Adam's learning rate (> 0)",
    "batchSize": "training rows per rank per step (>= 1); an epoch has about rows / (batchSize x numProcesses) steps",
    "seed": "random seed: the same seed and numProcesses give the same weights, bit for bit on CPU",
    "numProcesses": "training processes (DDP ranks): torchrun on the driver under a local master, barrier tasks on the executors otherwise",
    "earlyStoppingRounds": "with validationIndicatorCol: stop after this many epochs without a better validation metric "
    "and keep the best epoch's weights; 0 disables",
}
# numProcesses 1: on ML-100K and 2 cores, two ranks trained no faster than one (their gradient all-reduce
# costs more than half an epoch of these small networks saves)
ENGINE_DEFAULTS: dict[str, Any] = {"seed": 42, "numProcesses": 1, "earlyStoppingRounds": 3}
_REQUIRED = ("maxIter", "stepSize", "batchSize")
_COLUMNS = {"userCol": USER_ID, "itemCol": MOVIE_ID, "predictionCol": PREDICTION, "coldStartStrategy": "nan"}


# --- Params


class _NeuralModelParams(_RecommenderModelParams):
    """What a fitted neural model needs to predict: the ALS-like columns only."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**_COLUMNS)


class _NeuralParams(_NeuralModelParams, _RecommenderParams, HasMaxIter, HasStepSize, HasSeed, HasValidationIndicatorCol):
    """The engine's shared fitting Params; a generated class adds its recipe's and `_setDefault`s them."""

    _recipe: ClassVar[Recipe]

    # maxIter, stepSize and seed: pyspark's shared Params (getters included) with this engine's docs and bounds
    maxIter: Param[int] = knob("maxIter", SHARED_DOCS["maxIter"], TypeConverters.toInt, ge=1)
    stepSize: Param[float] = knob("stepSize", SHARED_DOCS["stepSize"], TypeConverters.toFloat, gt=0)
    seed: Param[int] = knob("seed", SHARED_DOCS["seed"], TypeConverters.toInt)
    batchSize: Param[int] = knob("batchSize", SHARED_DOCS["batchSize"], TypeConverters.toInt, ge=1)
    numProcesses: Param[int] = knob("numProcesses", SHARED_DOCS["numProcesses"], TypeConverters.toInt, ge=1)
    earlyStoppingRounds: Param[int] = knob("earlyStoppingRounds", SHARED_DOCS["earlyStoppingRounds"], TypeConverters.toInt, ge=0)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(ratingCol=RATING, **{**ENGINE_DEFAULTS, **self._recipe.defaults})

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getNumProcesses(self) -> int:
        return self.getOrDefault(self.numProcesses)

    def getEarlyStoppingRounds(self) -> int:
        return self.getOrDefault(self.earlyStoppingRounds)

    def hyperParameters(self) -> dict[str, Any]:
        """Every fitting Param but the columns, by name: what the ranks and the saved model get."""
        names = [*self._recipe.defaults, *ENGINE_DEFAULTS, *_REQUIRED]
        return {name: self.getOrDefault(name) for name in dict.fromkeys(names)}

    def _check(self) -> None:
        """Every refused value in one message (the knobs' bounds, then the recipe's own rules), before any Spark job."""
        problems = check_params(self)
        check = getattr(self._recipe, "check", None)
        if check is not None:
            problems += list(check(self.hyperParameters()))
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))


def _converter(name: str, default: Any) -> Any:
    """The TypeConverter of a recipe knob, from its default's type."""
    if isinstance(default, bool):
        return TypeConverters.toBoolean
    if isinstance(default, int):
        return TypeConverters.toInt
    if isinstance(default, float):
        return TypeConverters.toFloat
    if isinstance(default, str):
        return TypeConverters.toString
    if isinstance(default, (list, tuple)):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in default):
            return TypeConverters.toListInt
        if all(isinstance(x, (int, float)) for x in default):
            return TypeConverters.toListFloat
        return TypeConverters.toListString
    raise TypeError(f"recipe default {name}={default!r}: use an int, float, bool, str or a list of them")


# --- the estimator


class NeuralRecommender(Estimator, _NeuralParams, EstimatorPersistence):
    """Base of the generated estimators (`neural_pair`); not used directly."""

    _model_class: ClassVar[type[NeuralRecommenderModel]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.setParams(**kwargs)

    def setParams(self, **kwargs: Any) -> NeuralRecommender:
        """Set the Params given (None leaves a Param at its default), by keyword."""
        unknown = sorted(k for k in kwargs if not self.hasParam(k))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown Params {unknown}")
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setMaxIter(self, value: int) -> NeuralRecommender:
        """Sets the value of :py:attr:`maxIter`."""
        return self._set(maxIter=value)

    def setStepSize(self, value: float) -> NeuralRecommender:
        """Sets the value of :py:attr:`stepSize`."""
        return self._set(stepSize=value)

    def setSeed(self, value: int) -> NeuralRecommender:
        """Sets the value of :py:attr:`seed`."""
        return self._set(seed=value)

    def setBatchSize(self, value: int) -> NeuralRecommender:
        """Sets the value of :py:attr:`batchSize`."""
        return self._set(batchSize=value)

    def setNumProcesses(self, value: int) -> NeuralRecommender:
        """Sets the value of :py:attr:`numProcesses`."""
        return self._set(numProcesses=value)

    def setEarlyStoppingRounds(self, value: int) -> NeuralRecommender:
        """Sets the value of :py:attr:`earlyStoppingRounds`."""
        return self._set(earlyStoppingRounds=value)

    def setValidationIndicatorCol(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`validationIndicatorCol`."""
        return self._set(validationIndicatorCol=value)

    def setUserCol(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`userCol`."""
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`itemCol`."""
        return self._set(itemCol=value)

    def setRatingCol(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`ratingCol`."""
        return self._set(ratingCol=value)

    def setPredictionCol(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`predictionCol`."""
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> NeuralRecommender:
        """Sets the value of :py:attr:`coldStartStrategy`."""
        return self._set(coldStartStrategy=value)

    def _fit(self, dataset: DataFrame) -> NeuralRecommenderModel:
        recipe = self._recipe
        self._check()
        require_torch(recipe.name, key=None)
        spark = dataset.sparkSession
        hp = self.hyperParameters()
        validation_col = self.getOrDefault(self.validationIndicatorCol) if self.isDefined(self.validationIndicatorCol) else None
        flag = F.coalesce(F.col(validation_col).cast("boolean"), F.lit(False)) if validation_col else F.lit(False)
        rows = dataset.select(
            F.col(self.getUserCol()).cast("int").alias(data.USER),
            F.col(self.getItemCol()).cast("int").alias(data.ITEM),
            F.col(self.getRatingCol()).cast("float").alias(data.RATING),
            flag.alias(data.VALIDATION),
        ).where(F.col(data.USER).isNotNull() & F.col(data.ITEM).isNotNull() & F.col(data.RATING).isNotNull() & ~F.isnan(data.RATING))
        folder, cleanup = scratch_folder(spark)
        try:
            rows.write.mode("overwrite").parquet(folder)
            written = spark.read.parquet(folder)
            fit_rows = written.where(~F.col(data.VALIDATION))
            stats = written.agg(
                F.sum(F.when(~F.col(data.VALIDATION), 1).otherwise(0)).alias("n"),
                F.sum(F.when(F.col(data.VALIDATION), 1).otherwise(0)).alias("n_val"),
                F.avg(F.when(~F.col(data.VALIDATION), F.col(data.RATING))).alias("mean"),
            ).first()
            if stats is None or not stats["n"]:
                raise ValueError(f"{type(self).__name__}: no training rows (every row is null or a validation row)")
            user_ids = sorted_ids(fit_rows, data.USER)
            item_ids = sorted_ids(fit_rows, data.ITEM)
            hp["ratingMean"] = float(stats["mean"])
            n = self.getNumProcesses()
            job = TrainJob(recipe, hp, folder, user_ids, item_ids, rank_threads(spark, n), validate=bool(stats["n_val"]))
            result = launch(spark, job, n)
        finally:
            cleanup()
        train_rows = dataset.select(
            F.col(self.getUserCol()).cast("int").alias(USER_ID),
            F.col(self.getItemCol()).cast("int").alias(MOVIE_ID),
            F.col(self.getRatingCol()).cast("float").alias(RATING),
            flag.alias(data.VALIDATION),
        ).where(~F.col(data.VALIDATION) & F.col(USER_ID).isNotNull() & F.col(MOVIE_ID).isNotNull() & F.col(RATING).isNotNull())
        model = self._model_class._fitted(
            spark, hp, user_ids, item_ids, result, train_rows.drop(data.VALIDATION) if not recipe_is_dot(recipe) else None
        )
        return self._copyValues(model)


def recipe_is_dot(recipe: Recipe) -> bool:
    """Whether the recipe's score is a dot product of exported factors (`dot_product = True`).

    Such a model is ranked by `recospark.scoring`'s factor path and keeps no training rows; the
    others are scored by the batched network scorer from each user's history.
    """
    return bool(getattr(recipe, "dot_product", False))


# --- the model


class NeuralRecommenderModel(Model, _NeuralModelParams, _RecommenderModelSetters, MLWritable, MLReadable):
    """Base of the generated models: weights, ids, history; scoring by the subclass (factors or scorer)."""

    _recipe: ClassVar[Recipe]
    _TABLES: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        hyperParameters: Mapping[str, Any] | None = None,
        userIds: np.ndarray | None = None,
        itemIds: np.ndarray | None = None,
        weightsBytes: bytes = b"",
        history: list[dict[str, Any]] | None = None,
        bestEpoch: int = 0,
        tables: Mapping[str, DataFrame] | None = None,
        trainingRanks: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.hyperParameters = dict(hyperParameters or {})
        self.userIds = np.asarray(userIds if userIds is not None else [], np.int32)
        self.itemIds = np.asarray(itemIds if itemIds is not None else [], np.int32)
        self.weightsBytes = weightsBytes
        self.history = list(history or [])
        self.bestEpoch = int(bestEpoch)
        self._tables = dict(tables or {})
        self.trainingRanks = list(trainingRanks or [])  # where each rank ran (host, pid, working dir, rows)
        self._broadcasts: dict[str, Any] = {}

    @classmethod
    def _fitted(
        cls,
        spark: SparkSession,
        hp: Mapping[str, Any],
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        result: Mapping[str, Any],
        train_rows: DataFrame | None,
    ) -> NeuralRecommenderModel:
        raise NotImplementedError

    @property
    def recipeName(self) -> str:
        """The recipe's name (`neural_mf`, `gmf`, ...): which network the saved weights belong to."""
        return self._recipe.name

    @property
    def numEpochs(self) -> int:
        """Epochs that ran (early stopping can end before maxIter); `bestEpoch` says whose weights were kept."""
        return len(self.history)

    def weights(self) -> dict[str, np.ndarray]:
        """The network's weights by name (numpy), read back through the safetensors check."""
        return weights.from_bytes(self.weightsBytes, f"{self.recipeName} weights")

    # persistence ----------------------------------------------------------------------------

    def write(self) -> MLWriter:
        """A writer for Spark ML JSON metadata, the weights as safetensors and the id (and factor) tables as Parquet: no pickle."""
        return NeuralWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """A reader that refuses another class's folder or another format version."""
        return NeuralReader(cls)

    def _metadata(self) -> dict[str, Any]:
        return {
            "formatVersion": FORMAT_VERSION,
            "recipe": self.recipeName,
            "hyperParameters": self.hyperParameters,
            "history": self.history,
            "bestEpoch": self.bestEpoch,
            "nUsers": len(self.userIds),
            "nItems": len(self.itemIds),
            "trainingRanks": self.trainingRanks,
        }

    def _saved_tables(self, spark: SparkSession) -> dict[str, DataFrame]:
        ids = {
            "userIds": id_frame(spark, self.userIds),
            "itemIds": id_frame(spark, self.itemIds),
        }
        return {**ids, **self._tables}

    def _broadcast(self, spark: SparkSession, name: str, value: Any) -> Any:
        """One broadcast per model and value, reused by every scoring call."""
        if name not in self._broadcasts:
            self._broadcasts[name] = spark.sparkContext.broadcast(value)
        return self._broadcasts[name]

    def _scorer(self, spark: SparkSession) -> NeuralBlockScorer:
        return NeuralBlockScorer(
            self._recipe,
            self.hyperParameters,
            self._broadcast(spark, "weights", self.weightsBytes),
            self._broadcast(spark, "userIds", self.userIds),
            self.itemIds,
        )


class NeuralFactorModel(NeuralRecommenderModel):
    """A dot-product recipe's model: factor tables whose dot product is the score (the shared factor scorer ranks them)."""

    _TABLES: ClassVar[tuple[str, ...]] = ("userFactors", "itemFactors")

    @classmethod
    def _fitted(cls, spark, hp, user_ids, item_ids, result, train_rows):
        users_mat, items_mat = result["factors"]
        tables = {
            "userFactors": driver_frame(spark, factor_table(user_ids, users_mat), FACTORS),
            "itemFactors": driver_frame(spark, factor_table(item_ids, items_mat), FACTORS),
        }
        return cls(hp, user_ids, item_ids, result["weights"], result["history"], result["best_epoch"], tables, result["ranks"])

    @property
    def userFactors(self) -> DataFrame:
        """`id int, features array<float>` (ALSModel's schema); biases folded in (see the recipe)."""
        return self._tables["userFactors"]

    @property
    def itemFactors(self) -> DataFrame:
        """`id int, features array<float>` (ALSModel's schema); the item side of the score's dot product."""
        return self._tables["itemFactors"]

    def scoringFactors(self) -> tuple[DataFrame, DataFrame]:
        """(users, items): their dot product is the model's own score, so it ranks exactly as the network."""
        return self.userFactors, self.itemFactors

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        users = self.userFactors.select(F.col(FACTOR_ID).alias("__nn_uid"), F.col(FEATURES).alias("__nn_p"))
        items = self.itemFactors.select(F.col(FACTOR_ID).alias("__nn_iid"), F.col(FEATURES).alias("__nn_q"))
        joined = dataset.join(users, F.col(self.getUserCol()).cast("int") == F.col("__nn_uid"), "left").join(
            items, F.col(self.getItemCol()).cast("int") == F.col("__nn_iid"), "left"
        )
        dot = F.aggregate(
            F.zip_with("__nn_p", "__nn_q", lambda a, b: a.cast("double") * b.cast("double")),
            F.lit(0.0).cast("double"),
            lambda acc, x: acc + x,
        )
        prediction = F.coalesce(dot.cast("float"), F.lit(float("nan")).cast("float"))
        out = joined.select(*[dataset[c] for c in dataset.columns], prediction.alias(self.getPredictionCol()))
        if self.getColdStartStrategy() == "drop":
            out = out.na.drop("all", subset=[self.getPredictionCol()])
        return out


class NeuralScorerModel(NeuralRecommenderModel):
    """Any other recipe's model: ranked by `blockScorer()` on the executors; keeps its training rows
    (the networks read a user's history to score)."""

    _TABLES: ClassVar[tuple[str, ...]] = ("trainRows",)

    @classmethod
    def _fitted(cls, spark, hp, user_ids, item_ids, result, train_rows):
        return cls(
            hp, user_ids, item_ids, result["weights"], result["history"], result["best_epoch"], {"trainRows": train_rows}, result["ranks"]
        )

    @property
    def trainRows(self) -> DataFrame:
        """`user_id, movie_id, rating`: the rows the model was fitted on (each user's history)."""
        return self._tables["trainRows"]

    def blockScorer(self) -> NeuralBlockScorer:
        """The `recospark.scoring.BlockScorer` that ranks for this model (`recommend_for` uses it)."""
        return self._scorer(self.trainRows.sparkSession)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        user, item, pred = self.getUserCol(), self.getItemCol(), self.getPredictionCol()
        pairs = dataset.select(F.col(user).cast("int").alias(USER_ID), F.col(item).cast("int").alias(MOVIE_ID))
        predicted = predict_pairs(pairs, self.trainRows, self._scorer(dataset.sparkSession)).select(
            F.col(USER_ID).alias("__nn_u"), F.col(MOVIE_ID).alias("__nn_i"), F.col(PREDICTION).alias("__nn_pred")
        )
        joined = dataset.join(
            predicted, (F.col(user).cast("int") == F.col("__nn_u")) & (F.col(item).cast("int") == F.col("__nn_i")), "left"
        )
        out = joined.select(
            *[dataset[c] for c in dataset.columns], F.coalesce(F.col("__nn_pred"), F.lit(float("nan")).cast("float")).alias(pred)
        )
        if self.getColdStartStrategy() == "drop":
            out = out.where(~F.isnan(pred))
        return out


# --------------------------------------------------------------------------- class generation

_EXAMPLE = """
    Examples
    --------
    >>> from recospark.models.neural.estimator import {name}
    >>> df = spark.createDataFrame(
    ...     [(1, 10, 5.0), (1, 11, 1.0), (2, 10, 4.0), (2, 12, 2.0), (3, 11, 1.0), (3, 12, 3.0)],
    ...     ["user_id", "movie_id", "rating"])
    >>> model = {name}(maxIter=2, batchSize=4, seed=1).fit(df)
    >>> [h["epoch"] for h in model.history], len(model.userIds), len(model.itemIds)
    ([1, 2], 3, 3)
    >>> model.transform(df).where("NOT isnan(prediction)").count()
    6
"""


def _accessors(name: str) -> dict[str, Any]:
    cap = name[0].upper() + name[1:]

    def getter(self: Params) -> Any:
        return self.getOrDefault(name)

    def setter(self: Params, value: Any) -> Any:
        return self._set(**{name: value})

    getter.__name__, setter.__name__ = f"get{cap}", f"set{cap}"
    getter.__doc__, setter.__doc__ = f"The value of {name}.", f"Set {name}."
    return {f"get{cap}": getter, f"set{cap}": setter}


def _signature(names: list[str]) -> inspect.Signature:
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names]
    return inspect.Signature(params)


def neural_pair(recipe: Recipe, class_name: str) -> tuple[type[NeuralRecommender], type[NeuralRecommenderModel]]:
    """(estimator class, model class) of `recipe`, named `class_name` and `class_name + "Model"` in this module.

    The estimator's Params are the recipe's `defaults` (docs from `docs`; the shared ones from
    `SHARED_DOCS`) on top of the engine's; each default is `_setDefault` once, from the recipe.
    """
    missing = [k for k in _REQUIRED if k not in recipe.defaults]
    undocumented = [k for k in recipe.defaults if k not in recipe.docs and k not in SHARED_DOCS and k not in ENGINE_DEFAULTS]
    if missing or undocumented:
        raise TypeError(f"recipe {recipe.name}: defaults lack {missing}; no doc for {undocumented}")
    own = {k: v for k, v in recipe.defaults.items() if k not in SHARED_DOCS and k not in ENGINE_DEFAULTS}
    bounds = dict(getattr(recipe, "bounds", {}) or {})
    params = {k: Knob(k, recipe.docs[k], _converter(k, v), bounds.get(k)) for k, v in own.items()}
    accessors = {m: f for k in own for m, f in _accessors(k).items()}
    base_model = NeuralFactorModel if recipe_is_dot(recipe) else NeuralScorerModel
    kind = "a dot product: factor tables, ranked by the shared factor scorer" if recipe_is_dot(recipe) else "ranked on the executors"
    model_cls = type(
        f"{class_name}Model",
        (base_model,),
        {
            "__module__": __name__,
            "__qualname__": f"{class_name}Model",
            "_recipe": recipe,
            "__doc__": f"Fitted `{recipe.name}` ({recipe.objective} model; {kind}).",
        },
    )
    knobs = "\n".join(
        f"    {k} : default {v!r}\n        {recipe.docs.get(k) or SHARED_DOCS.get(k, '')}" for k, v in recipe.defaults.items()
    )
    # Only the recipe's summary: its Examples name the recipe object, not this class.
    summary = (type(recipe).__doc__ or "").strip().split("\n\n")[0]
    doc = (
        f"`{recipe.name}`: {summary}\n\n"
        f"    A {recipe.objective} model trained with TorchDistributor (DDP over gloo, CPU), ranks sharded by "
        f"{recipe.shard_by}. Shared Params: {', '.join(SHARED_DOCS)} and the ALS column Params.\n\n"
        f"    Parameters\n    ----------\n{knobs}\n" + _EXAMPLE.format(name=class_name)
    )
    shared = {k for k in dir(NeuralRecommender) if isinstance(getattr(NeuralRecommender, k), Param)}
    names = sorted(shared | set(params))

    def __init__(self: NeuralRecommender, **kwargs: Any) -> None:
        NeuralRecommender.__init__(self, **kwargs)

    __init__.__signature__ = _signature(names)  # type: ignore[attr-defined]
    estimator_cls = type(
        class_name,
        (NeuralRecommender,),
        {
            **params,
            **accessors,
            "__module__": __name__,
            "__qualname__": class_name,
            "__doc__": doc,
            "__init__": __init__,
            "_recipe": recipe,
            "_model_class": model_cls,
        },
    )
    return cast(type[NeuralRecommender], estimator_cls), cast(type[NeuralRecommenderModel], model_cls)


# One estimator/model pair per recipe: the model table's entries point at these.
NeuralMF, NeuralMFModel = neural_pair(RECIPES["neural_mf"], "NeuralMF")
DNN, DNNModel = neural_pair(RECIPES["dnn"], "DNN")
ResidualMF, ResidualMFModel = neural_pair(RECIPES["residual_mf"], "ResidualMF")
AutoRec, AutoRecModel = neural_pair(RECIPES["autorec"], "AutoRec")
RBM, RBMModel = neural_pair(RECIPES["rbm"], "RBM")
GMF, GMFModel = neural_pair(RECIPES["gmf"], "GMF")
NeuMF, NeuMFModel = neural_pair(RECIPES["neumf"], "NeuMF")
MultVAE, MultVAEModel = neural_pair(RECIPES["mult_vae"], "MultVAE")
MultDAE, MultDAEModel = neural_pair(RECIPES["mult_dae"], "MultDAE")
