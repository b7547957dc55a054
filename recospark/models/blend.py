"""A weighted blend of ranking models: per-user standardized scores, summed with fixed weights.

The blend ranks each user's items by ``sum_m w_m * z_m(u, i)``, where ``z_m`` is model m's score
standardized per user over its catalogue (mean 0, standard deviation 1 over all its items). The
models' raw scores live on unrelated scales (ALS preferences ~ [0, 1], BPR margins, PureSVD
projections, EASE's x_u B), so a per-user z-score is what makes fixed weights mean the same thing
for every user. Items are those every component ranks.

When every component is a factor model the blend is itself one (the fast path). With
``s_m(u, i) = p_um . q_im``, the per-user mean is ``p_um . mean(q_m)`` and the variance is
``p_um^T C_m p_um`` with ``C_m`` the k_m x k_m covariance of model m's item factors. The mean is a
per-user constant (ranking ignores it), so

    sum_m w_m z_m(u, i) = [w_1 p_u1 / sigma_u1, ..., w_M p_uM / sigma_uM] . [q_i1, ..., q_iM] + const(u)

Users get the concatenation of their scaled factors, items the concatenation of their factors.
Only the small item tables and the k x k covariances meet on the driver (top-N collects the
item table anyway); user rows are scaled on the executors with the covariances broadcast.

A component that is not a dot product (it has a `recospark.scoring.BlockScorer`: EASE, neural
nets) makes the blend a scorer too (`BlendScorer`): each block of users is scored by every
component, each row standardized over that component's catalogue (`standardize_rows`), and the
weighted rows summed; the factor components still enter as one block of scaled factors (joined
to the users on the executors, never gathered on the driver).

A fitted `BlendModel` saves its components, each with its own writer in a subfolder, and their
class names; loading goes through those classes. No pickle.

`conf/ml100k-benchmark.yaml` blends implicit ALS, DSGD-BPR and PureSVD with weights chosen by
`recospark tune` on its validation carve; README's Results table has that run's test metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, TypeConverters
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.models.params import _RecommenderModelParams, _RecommenderModelSetters, _RecommenderParams, given, knob
from recospark.paths import join_path
from recospark.schema import FACTOR_ID, FACTORS, FEATURES, MOVIE_ID, PREDICTION, RATING, USER_ID
from recospark.scoring import BlockScorer, block_scorer, scoring_factors

__all__ = ["Blend", "BlendModel", "BlendScorer", "standardize_rows", "standardized_blend"]

# Saved blends: metadata (params, weights, component names, folders) + one folder per component.
BLEND_FORMAT = 2
_COMPONENTS = "components"
# Component classes a saved blend may name: recospark's models and Spark ML's (loaded by class name).
_LOADABLE = ("recospark.", "org.apache.spark.ml.", "pyspark.ml.")


def _item_matrix(items: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    pdf = items.select(F.col(FACTOR_ID).cast("int"), FEATURES).toPandas()
    if len(pdf) == 0:
        raise ValueError("a blended model has no item factors")
    return pdf[FACTOR_ID].to_numpy(np.int64), np.stack(list(pdf[FEATURES])).astype(np.float64)


def _scale_partition(rows: Iterator[Any], cov_bc: Any, weight: float) -> Iterator[tuple[int, list[float]]]:
    return scale_users(rows, cov_bc.value, weight)


def scale_users(rows: Iterator[Any], cov: np.ndarray, weight: float) -> Iterator[tuple[int, list[float]]]:
    """mapPartitions worker: each user's factors times weight / (their score's std over the catalogue)."""
    for r in rows:
        p = np.asarray(r[1], dtype=np.float64)
        var = float(p @ cov @ p)
        factor = weight / np.sqrt(var) if var > 0 else 0.0
        yield int(r[0]), [float(x) for x in (p * factor).astype(np.float32)]


def standardized_blend(parts: Sequence[tuple[DataFrame, DataFrame, float]]) -> tuple[DataFrame, DataFrame]:
    """(userFactors, itemFactors) whose dot product ranks like the weighted per-user z-score blend.

    Parameters
    ----------
    parts : sequence of (userFactors, itemFactors, weight)
        Each model's ``id int, features array<float>`` tables whose dot product is its score
        (e.g. ``recommend.scoring_factors(model)``); weights >= 0, parts with weight 0 are dropped.
        Users and items are those present in every part (inner join on id); the catalogue a
        user's scores are standardized over is the items of that model's table.

    Returns
    -------
    (users, items) : ``id int, features array<float>`` DataFrames. A user whose scores are
    constant under a model (sigma = 0) gets zeros for that model's block.

    Examples
    --------
    >>> schema = "id int, features array<float>"
    >>> u1 = spark.createDataFrame([(1, [1.0]), (2, [2.0])], schema)
    >>> i1 = spark.createDataFrame([(10, [1.0]), (20, [3.0])], schema)
    >>> u2 = spark.createDataFrame([(1, [1.0, 0.0]), (2, [0.0, 1.0])], schema)
    >>> i2 = spark.createDataFrame([(10, [4.0, 0.0]), (20, [0.0, 4.0])], schema)
    >>> users, items = standardized_blend([(u1, i1, 0.5), (u2, i2, 0.5)])
    >>> [(r.id, [round(x, 3) for x in r.features]) for r in users.orderBy("id").collect()]
    [(1, [0.5, 0.25, 0.0]), (2, [0.5, 0.0, 0.25])]
    """
    users, items, _ = _standardized_parts(parts)
    return users, items


def _standardized_parts(parts: Sequence[tuple[DataFrame, DataFrame, float]]) -> tuple[DataFrame, DataFrame, np.ndarray]:
    """`standardized_blend` plus the concatenated item-factor means (each over its own model's items)."""
    parts = [(u, i, float(w)) for u, i, w in parts if float(w) != 0.0]
    if not parts:
        raise ValueError("standardized_blend needs at least one part with a non-zero weight")
    if any(w < 0 for _, _, w in parts):
        raise ValueError("blend weights must be >= 0")
    user_tables, item_tables, means = [], [], []
    for m, (users, items, weight) in enumerate(parts):
        ids, Q = _item_matrix(items)
        means.append(Q.mean(axis=0))
        centred = Q - Q.mean(axis=0)
        cov = centred.T @ centred / len(ids)  # population covariance: sigma_u^2 = p^T cov p
        cov_bc = users.sparkSession.sparkContext.broadcast(cov)

        scaled = users.sparkSession.createDataFrame(
            users.select(F.col(FACTOR_ID).cast("int"), FEATURES).rdd.mapPartitions(partial(_scale_partition, cov_bc=cov_bc, weight=weight)),
            FACTORS,
        )
        user_tables.append(scaled.withColumnRenamed(FEATURES, f"_f{m}"))
        item_tables.append(items.select(F.col(FACTOR_ID).cast("int"), F.col(FEATURES).cast("array<float>").alias(f"_f{m}")))

    def concat(tables: list[DataFrame]) -> DataFrame:
        joined = tables[0]
        for t in tables[1:]:
            joined = joined.join(t, FACTOR_ID)
        return joined.select(FACTOR_ID, F.concat(*[F.col(f"_f{m}") for m in range(len(tables))]).alias(FEATURES))

    return concat(user_tables), concat(item_tables), np.concatenate(means)


# --------------------------------------------------------------------------- any scorer (workers)


def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Each row as z-scores over its finite cells (mean 0, population std 1); -inf stays -inf.

    A row whose finite scores are all equal (std 0) becomes zeros: that model then has no
    say for that user, as a zero scaled factor block does on the factor path.
    """
    finite = scores != -np.inf
    count = np.maximum(finite.sum(axis=1), 1)
    filled = np.where(finite, scores, np.float32(0.0))
    mean = filled.sum(axis=1, dtype=np.float64) / count
    centred = np.where(finite, scores - mean[:, None].astype(np.float32), np.float32(0.0))
    std = np.sqrt(np.einsum("ij,ij->i", centred, centred, dtype=np.float64) / count)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0).astype(np.float32)
    z = centred * scale[:, None]
    z[~finite] = -np.inf
    return z


class BlendScorer:
    """`BlockScorer` of a blend with at least one scorer component; see the module docstring.

    `factor_items` is a Broadcast of the factor components' concatenated, mean-centred item
    factors (the blend's items x sum of ranks) or None; `user_factors()` (driver only, never
    pickled) gives the matching scaled user factors. `parts` are (scorer, weight, columns):
    `columns` picks the blend's items out of that scorer's items.
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        factor_items: Any,
        parts: Sequence[tuple[BlockScorer, float, np.ndarray]],
        user_factors: DataFrame | None,
    ) -> None:
        self._item_ids = np.asarray(item_ids, np.int32)
        self._factor_items = factor_items
        self._parts = list(parts)
        self._user_factors = user_factors

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_user_factors": None}  # a DataFrame does not travel to executors

    def item_ids(self) -> np.ndarray:
        """The items every component can score (their intersection), int32 ascending: one score column each."""
        return self._item_ids

    def user_factors(self) -> DataFrame | None:
        """The factor components' scaled user factors (`id, features`), read on the driver and joined to the users before scoring (never pickled); None without factor components."""
        return self._user_factors

    def score(
        self,
        user_ids: np.ndarray,
        hist_items: Sequence[np.ndarray],
        hist_ratings: Sequence[np.ndarray],
        user_features: np.ndarray | None = None,
    ) -> np.ndarray:
        """The weighted sum of each component's per-user z-scores over `item_ids()` (see `BlockScorer.score`).

        Factor components enter as one product of `user_features` with the centred item factors;
        the others are scored from the history and standardized row by row. -inf (never
        recommended) in any component stays -inf.
        """
        out = np.zeros((len(user_ids), len(self._item_ids)), np.float32)
        if self._factor_items is not None:
            assert user_features is not None, "a blend with factor components needs its user_factors() joined"
            np.matmul(np.nan_to_num(user_features, nan=0.0), self._factor_items.value.T, out=out)
        for scorer, weight, columns in self._parts:
            z = standardize_rows(np.asarray(scorer.score(user_ids, hist_items, hist_ratings), np.float32))
            out += np.float32(weight) * z[:, columns]
        return out


# --------------------------------------------------------------------------- as a pyspark.ml model


class _BlendModelParams(_RecommenderModelParams):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(userCol=USER_ID, itemCol=MOVIE_ID, predictionCol=PREDICTION, coldStartStrategy="nan")


class _BlendParams(_BlendModelParams, _RecommenderParams):
    weights: Param[list[float]] = knob("weights", "one weight per component, in the components' order", TypeConverters.toListFloat, ge=0)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(ratingCol=RATING)

    def getWeights(self) -> list[float]:
        return self.getOrDefault(self.weights)


class Blend(Estimator, _BlendParams):
    """A top-N ensemble: per-user standardized scores of several models, weighted.

    `components` are estimators (fitted on the same data by `fit`) or already fitted models
    (used as they are): factor models or models with a `blockScorer()`. `fitMultiple` fits the
    components once for every weight vector, so a grid over `weights` costs one fit of each
    component. The estimator itself is not persisted (its components are objects, not Params);
    the fitted `BlendModel` is.

    Examples
    --------
    >>> from recospark.models.baselines import BiasBaseline, GlobalMean
    >>> from recospark.models.blend import Blend
    >>> df = spark.createDataFrame([(1, 10, 4.0), (2, 10, 2.0), (2, 11, 3.0), (3, 12, 5.0)], ["user_id", "movie_id", "rating"])
    >>> model = Blend([GlobalMean(), BiasBaseline()], weights=[0.5, 0.5]).fit(df)
    >>> model.userFactors.count(), model.weights, model.blockScorer() is None
    (3, [0.5, 0.5], True)
    """

    def __init__(
        self,
        components: Sequence[Estimator | Model] = (),
        *,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
    ) -> None:
        super().__init__()
        self.components = list(components)
        self.names = list(names or [type(c).__name__ for c in self.components])
        columns = {"userCol": userCol, "itemCol": itemCol, "ratingCol": ratingCol, "predictionCol": predictionCol}
        self._set(**given({**columns, "coldStartStrategy": coldStartStrategy}))
        self._set(weights=list(weights) if weights is not None else [1.0] * len(self.components))

    def _component_models(self, dataset: DataFrame) -> list[Model]:
        return [c if isinstance(c, Model) else c.fit(dataset) for c in self.components]

    def _blend(self, models: Sequence[Model], weights: Sequence[float]) -> BlendModel:
        if len(weights) != len(models):
            raise ValueError(f"Blend: {len(weights)} weights for {len(models)} components")
        if any(float(w) < 0 for w in weights):
            raise ValueError("blend weights must be >= 0")
        if all(float(w) == 0.0 for w in weights):
            raise ValueError("a blend needs at least one component with a non-zero weight")
        model = BlendModel(list(models), [float(w) for w in weights], self.names)
        return self._copyValues(model)

    def _fit(self, dataset: DataFrame) -> BlendModel:
        self._check_cold_start()
        return self._blend(self._component_models(dataset), self.getWeights())

    def fitMultiple(self, dataset: DataFrame, paramMaps: Sequence[dict[Param, Any]]) -> Iterator[tuple[int, BlendModel]]:
        """One fit of every component, then one blend per param map (only `weights` may vary)."""
        models = self._component_models(dataset)
        for index, params in enumerate(paramMaps):
            weights = params.get(self.weights, self.getWeights())
            yield index, self.copy(dict(params.items()))._blend(models, weights)


class BlendModel(Model, _BlendModelParams, _RecommenderModelSetters, MLWritable, MLReadable):
    """A fitted blend of fitted models (`models`, named `components`, weighted by `weights`).

    All factor components: `scoringFactors()` (also `userFactors`/`itemFactors`) ranks like the
    weighted per-user z-scores and `blockScorer()` is None, so top-N takes the factor path.
    Otherwise `blockScorer()` is a `BlendScorer` and `transform` is not available (a history-based
    component scores a user from their history, which a (user, item) row does not carry).
    """

    def __init__(self, models: Sequence[Model] = (), weights: Sequence[float] = (), components: Sequence[str] = ()) -> None:
        super().__init__()
        self.models = list(models)
        self.weights = list(weights)
        self.components = list(components)
        self._factors: tuple[DataFrame, DataFrame] | None = None
        self._scorer: BlendScorer | None = None

    def _active(self) -> list[tuple[Model, float]]:
        return [(m, float(w)) for m, w in zip(self.models, self.weights, strict=True) if float(w) != 0.0]

    @property
    def isFactorBlend(self) -> bool:
        """Whether every weighted component ranks by factors (the blend then is a factor model)."""
        return all(block_scorer(m) is None for m, _ in self._active())

    def scoringFactors(self) -> tuple[DataFrame, DataFrame]:
        """(users, items) `id, features` whose dot product ranks like the blend; factor blends only."""
        if not self.isFactorBlend:
            raise ValueError("this blend has a component that is not a factor model: rank it through its blockScorer()")
        if self._factors is None:
            users, items = standardized_blend([(*scoring_factors(m), w) for m, w in self._active()])
            self._factors = (users.cache(), items.cache())
        return self._factors

    @property
    def userFactors(self) -> DataFrame:
        """The blend's user factors (`id, features`); factor blends only (see `scoringFactors`)."""
        return self.scoringFactors()[0]

    @property
    def itemFactors(self) -> DataFrame:
        """The blend's item factors (`id, features`); factor blends only (see `scoringFactors`)."""
        return self.scoringFactors()[1]

    def blockScorer(self) -> BlendScorer | None:
        """None for a factor blend (top-N takes the factor path); else the blend's `BlendScorer`."""
        if self.isFactorBlend:
            return None
        if self._scorer is None:
            self._scorer = self._build_scorer()
        return self._scorer

    def _build_scorer(self) -> BlendScorer:
        factor_parts = [(m, w) for m, w in self._active() if block_scorer(m) is None]
        scorer_parts = [(block_scorer(m), w) for m, w in self._active() if block_scorer(m) is not None]
        common: np.ndarray | None = None
        for scorer, _ in scorer_parts:
            ids = np.asarray(scorer.item_ids(), np.int64)  # type: ignore[union-attr]
            common = ids if common is None else np.intersect1d(common, ids)
        users = factor_items = None
        if factor_parts:
            users, items, means = _standardized_parts([(*scoring_factors(m), w) for m, w in factor_parts])
            users = users.cache()
            ids, Q = _item_matrix(items)
            order = np.argsort(ids)
            ids, Q = ids[order], Q[order]
            common = ids if common is None else np.intersect1d(common, ids)
            Q = (Q[np.searchsorted(ids, common)] - means).astype(np.float32)  # centred: true z-scores
            factor_items = users.sparkSession.sparkContext.broadcast(Q)
        assert common is not None
        if len(common) == 0:
            raise ValueError("the blend's components have no item in common")
        parts = [(s, w, np.searchsorted(np.asarray(s.item_ids()), common)) for s, w in scorer_parts]  # type: ignore[union-attr]
        return BlendScorer(common.astype(np.int32), factor_items, parts, users)  # type: ignore[arg-type]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """Adds the blended score (not a rating) as `predictionCol`; NaN or dropped for unseen ids."""
        self._check_cold_start()
        users = self.userFactors.select(F.col(FACTOR_ID).alias("_bu"), F.col(FEATURES).alias("_bp"))
        items = self.itemFactors.select(F.col(FACTOR_ID).alias("_bi"), F.col(FEATURES).alias("_bq"))
        joined = dataset.join(users, F.col(self.getUserCol()) == F.col("_bu"), "left").join(
            items, F.col(self.getItemCol()) == F.col("_bi"), "left"
        )
        dot = F.aggregate(F.zip_with("_bp", "_bq", lambda a, b: a.cast("double") * b.cast("double")), F.lit(0.0), lambda acc, x: acc + x)
        out = joined.withColumn(self.getPredictionCol(), F.coalesce(dot, F.lit(float("nan"))).cast("float"))
        if self.getColdStartStrategy() == "drop":
            out = out.filter(F.col("_bp").isNotNull() & F.col("_bq").isNotNull())
        return out.drop("_bu", "_bp", "_bi", "_bq")

    def write(self) -> MLWriter:
        """A writer that saves each component with its own writer under a folder of its own, and the weights as metadata (no pickle)."""
        return _BlendWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """A reader that loads each component through the class named in its saved metadata (recospark or Spark ML models only)."""
        return _BlendReader()


def _folders(names: Sequence[str]) -> list[str]:
    return [f"{i}_{name}" for i, name in enumerate(names)]


class _BlendWriter(MLWriter):
    """Metadata (params, weights, component names and folders) plus each component by its own writer."""

    def __init__(self, instance: BlendModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        model = self.instance
        folders = _folders(model.components)
        extra = {"blendFormat": BLEND_FORMAT, "weights": model.weights, "components": model.components, "componentFolders": folders}
        DefaultParamsWriter.saveMetadata(model, path, self.sparkSession, extraMetadata=extra)
        for folder, component in zip(folders, model.models, strict=True):
            component.write().save(join_path(path, _COMPONENTS, folder))  # type: ignore[attr-defined]


class _BlendReader(MLReader):
    def load(self, path: str) -> BlendModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        expected = f"{BlendModel.__module__}.{BlendModel.__name__}"
        if metadata["class"] != expected:
            raise ValueError(f"{path} holds a {metadata['class']}, not a {expected}")
        if metadata.get("blendFormat") != BLEND_FORMAT:
            raise ValueError(f"{path}: a blend saved in an older format (factor tables, no components); train the blend again")
        models: list[Model] = []
        for folder in metadata["componentFolders"]:
            sub = join_path(path, _COMPONENTS, folder)
            saved_class = DefaultParamsReader.loadMetadata(sub, self.sparkSession)["class"]
            if not saved_class.startswith(_LOADABLE):
                raise ValueError(f"{sub}: component class {saved_class} is not a recospark or Spark ML model")
            models.append(DefaultParamsReader.loadParamsInstance(sub, self.sparkSession))
        model = BlendModel(models, metadata["weights"], metadata["components"])
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
