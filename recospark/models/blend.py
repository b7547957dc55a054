"""A weighted blend of factor models that is itself a factor model, so top-N serves it unchanged.

The blend ranks each user's items by ``sum_m w_m * z_m(u, i)``, where ``z_m`` is model m's score
standardized per user over the catalogue (mean 0, standard deviation 1 over all items). The
models' raw scores live on unrelated scales (ALS preferences ~ [0, 1], BPR margins, PureSVD
projections), so a per-user z-score is what makes fixed weights mean the same thing for every user.

Why this is still a factor model: with ``s_m(u, i) = p_um . q_im``, the per-user mean is
``p_um . mean(q_m)`` and the variance is ``p_um^T C_m p_um`` with ``C_m`` the k_m x k_m covariance of
model m's item factors. The mean is a per-user constant (ranking ignores it), so

    sum_m w_m z_m(u, i) = [w_1 p_u1 / sigma_u1, ..., w_M p_uM / sigma_uM] . [q_i1, ..., q_iM] + const(u)

Users get the concatenation of their scaled factors, items the concatenation of their factors.
Only the small item tables and the k x k covariances meet on the driver (top-N collects the
item table anyway); user rows are scaled on the executors with the covariances broadcast.

`conf/ml100k-benchmark.yaml` blends implicit ALS, DSGD-BPR and PureSVD with weights chosen by
`recospark tune` on its validation carve; README's Results table has that run's test metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recospark.models.params import _RecommenderModelParams, _RecommenderModelSetters, _RecommenderParams
from recospark.models.persistence import TablesPersistence
from recospark.schema import FACTOR_ID, FACTORS, FEATURES, MOVIE_ID, PREDICTION, RATING, USER_ID
from recospark.scoring import scoring_factors

__all__ = ["Blend", "BlendModel", "standardized_blend"]

_USERS_TABLE = "userFactors"
_ITEMS_TABLE = "itemFactors"


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
    parts = [(u, i, float(w)) for u, i, w in parts if float(w) != 0.0]
    if not parts:
        raise ValueError("standardized_blend needs at least one part with a non-zero weight")
    if any(w < 0 for _, _, w in parts):
        raise ValueError("blend weights must be >= 0")
    user_tables, item_tables = [], []
    for m, (users, items, weight) in enumerate(parts):
        ids, Q = _item_matrix(items)
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

    return concat(user_tables), concat(item_tables)


# --------------------------------------------------------------------------- as a pyspark.ml model


class _BlendModelParams(_RecommenderModelParams):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(userCol=USER_ID, itemCol=MOVIE_ID, predictionCol=PREDICTION, coldStartStrategy="nan")


class _BlendParams(_BlendModelParams, _RecommenderParams):
    weights: Param[list[float]] = Param(
        Params._dummy(), "weights", "one weight >= 0 per component, in the components' order", TypeConverters.toListFloat
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(ratingCol=RATING)

    def getWeights(self) -> list[float]:
        return self.getOrDefault(self.weights)


class Blend(Estimator, _BlendParams):
    """A top-N ensemble: per-user standardized scores of several factor models, weighted.

    `components` are estimators (fitted on the same data by `fit`) or already fitted models
    (used as they are). `fitMultiple` fits the components once for every weight vector, so a
    grid over `weights` costs one fit of each component. The estimator itself is not
    persisted (its components are objects, not Params); the fitted `BlendModel` is.

    Examples
    --------
    >>> from recospark.models.baselines import BiasBaseline, GlobalMean
    >>> from recospark.models.blend import Blend
    >>> df = spark.createDataFrame([(1, 10, 4.0), (2, 10, 2.0), (2, 11, 3.0), (3, 12, 5.0)], ["user_id", "movie_id", "rating"])
    >>> model = Blend([GlobalMean(), BiasBaseline()], weights=[0.5, 0.5]).fit(df)
    >>> model.userFactors.count(), model.weights
    (3, [0.5, 0.5])
    """

    def __init__(
        self,
        components: Sequence[Estimator | Model] = (),
        *,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        userCol: str = USER_ID,
        itemCol: str = MOVIE_ID,
        ratingCol: str = RATING,
        predictionCol: str = PREDICTION,
        coldStartStrategy: str = "nan",
    ) -> None:
        super().__init__()
        self.components = list(components)
        self.names = list(names or [type(c).__name__ for c in self.components])
        self._set(userCol=userCol, itemCol=itemCol, ratingCol=ratingCol, predictionCol=predictionCol, coldStartStrategy=coldStartStrategy)
        self._set(weights=list(weights) if weights is not None else [1.0] * len(self.components))

    def _component_models(self, dataset: DataFrame) -> list[Model]:
        return [c if isinstance(c, Model) else c.fit(dataset) for c in self.components]

    def _blend(self, models: Sequence[Model], weights: Sequence[float]) -> BlendModel:
        if len(weights) != len(models):
            raise ValueError(f"Blend: {len(weights)} weights for {len(models)} components")
        parts = [(*scoring_factors(m), w) for m, w in zip(models, weights, strict=True)]
        users, items = standardized_blend(parts)
        model = BlendModel(users.cache(), items.cache(), list(weights), self.names)
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


class BlendModel(Model, _BlendModelParams, _RecommenderModelSetters, TablesPersistence):
    """A fitted blend: `userFactors . itemFactors` ranks like the weighted per-user z-scores."""

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {_USERS_TABLE: FACTORS, _ITEMS_TABLE: FACTORS}

    def __init__(
        self,
        userFactors: DataFrame | None = None,
        itemFactors: DataFrame | None = None,
        weights: Sequence[float] = (),
        components: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.userFactors = userFactors
        self.itemFactors = itemFactors
        self.weights = list(weights)
        self.components = list(components)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """Adds the blended score (not a rating) as `predictionCol`; NaN or dropped for unseen ids."""
        self._check_cold_start()
        assert self.userFactors is not None and self.itemFactors is not None
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

    def _tables(self) -> Mapping[str, DataFrame]:
        assert self.userFactors is not None and self.itemFactors is not None
        return {_USERS_TABLE: self.userFactors, _ITEMS_TABLE: self.itemFactors}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"weights": self.weights, "components": self.components}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> BlendModel:
        return cls(tables[_USERS_TABLE], tables[_ITEMS_TABLE], metadata.get("weights", []), metadata.get("components", []))
