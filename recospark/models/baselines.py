"""Baselines every factor model must beat, as real pyspark.ml Estimator/Model pairs.

`GlobalMean` predicts the train mean for every pair; on the ranking side it is the popularity
recommender (items ordered by their number of train ratings), the usual non-personalized
top-N baseline. `BiasBaseline` is Koren's regularized user+item bias model (Koren 2008, eq. 2):

    mu  = mean train rating
    b_i = sum_{u in R(i)} (r_ui - mu) / (regItem + n_i)
    b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (regUser + n_u)
    r^_ui = mu + b_u + b_i

Both are fitted with Spark aggregations (only the scalar mean reaches the driver) and both
predict for *every* row: an unseen user or item contributes a zero bias, so a cold row gets
mu plus whatever bias is known. That is why `evaluate.cold_start=fallback` can use the bias
model to fill the rows ALS/SGD cannot score. `coldStartStrategy` exists for API parity with
ALSModel (the registry and tuning set it on every model) and removes nothing here.

Models save as Spark ML metadata (JSON) plus Parquet bias tables, never pickle, so
`write().save(path)` and `Model.load(path)` behave like MLlib's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, TypeConverters
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import FloatType, IntegerType, StructField, StructType

from recospark.frames import first_row
from recospark.models.params import _RecommenderModelParams, _RecommenderModelSetters, _RecommenderParams, check_params, given, knob
from recospark.models.persistence import EstimatorPersistence, TablesPersistence
from recospark.schema import BIAS, FACTOR_ID, FEATURES, MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = ["BiasBaseline", "BiasBaselineModel", "GlobalMean", "GlobalMeanModel"]

_USER_BIAS = "_b_user"
_ITEM_BIAS = "_b_item"
_COUNT = "_n"
_USER_BIASES = "userBiases"
_ITEM_BIASES = "itemBiases"
_ITEM_COUNTS = "itemCounts"
_USER_IDS = "userIds"

_COLUMN_DEFAULTS: dict[str, Any] = {
    "userCol": USER_ID,
    "itemCol": MOVIE_ID,
    "ratingCol": RATING,
    "predictionCol": PREDICTION,
    "coldStartStrategy": "nan",
}

_BIAS_TABLE = StructType([StructField(FACTOR_ID, IntegerType(), False), StructField(BIAS, FloatType(), False)])
_COUNT_TABLE = StructType([StructField(FACTOR_ID, IntegerType(), False), StructField(_COUNT, IntegerType(), False)])
_ID_TABLE = StructType([StructField(FACTOR_ID, IntegerType(), False)])


class _BaselineModelParams(_RecommenderModelParams):
    """Baselines predict every row (an unseen user or item adds no bias), so coldStartStrategy
    is kept for parity with ALS and drops nothing."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**{k: v for k, v in _COLUMN_DEFAULTS.items() if k != "ratingCol"})


class _BaselineParams(_BaselineModelParams, _RecommenderParams):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(ratingCol=RATING)


class _BiasParams(_BaselineParams):
    regUser: Param[float] = knob("regUser", "shrinkage of user biases: b_u divides by (regUser + n_u)", TypeConverters.toFloat, ge=0)
    regItem: Param[float] = knob("regItem", "shrinkage of item biases: b_i divides by (regItem + n_i)", TypeConverters.toFloat, ge=0)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(regUser=10.0, regItem=10.0)

    def getRegUser(self) -> float:
        return self.getOrDefault(self.regUser)

    def getRegItem(self) -> float:
        return self.getOrDefault(self.regItem)


def _rated(dataset: DataFrame, params: _BaselineParams) -> DataFrame:
    """Rows usable for fitting: ids and rating present (a null can come from hand-made data)."""
    user, item, rating = params.getUserCol(), params.getItemCol(), params.getRatingCol()
    return dataset.select(
        F.col(user).cast("int").alias(USER_ID), F.col(item).cast("int").alias(MOVIE_ID), F.col(rating).cast("double").alias(RATING)
    ).dropna()


def _global_mean(rated: DataFrame) -> float:
    mean = first_row(rated.agg(F.avg(RATING)))[0]
    if mean is None:
        raise ValueError("cannot fit a baseline on an empty dataset")
    return float(mean)


def _materialized(df: DataFrame) -> DataFrame:
    """Cache and count once so a model does not recompute its training aggregation on every use."""
    df = df.cache()
    df.count()
    return df


def _unit_users(ids: DataFrame) -> DataFrame:
    return ids.select(F.col(FACTOR_ID), F.array(F.lit(1.0).cast("float")).alias(FEATURES))


class _BaselineModel(Model, _BaselineModelParams, _RecommenderModelSetters, TablesPersistence):
    pass


# --------------------------------------------------------------------------- global mean


class GlobalMean(Estimator, _BaselineParams, EstimatorPersistence):
    """Predicts the train mean; ranks by train popularity (see module docstring).

    Examples
    --------
    >>> df = spark.createDataFrame([(1, 10, 4.0), (2, 10, 2.0), (2, 11, 3.0)], ["user_id", "movie_id", "rating"])
    >>> model = GlobalMean().fit(df)
    >>> model.mean
    3.0
    """

    _input_kwargs: dict[str, Any]  # set by @keyword_only

    @keyword_only
    def __init__(
        self,
        *,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
    ) -> None:
        super().__init__()
        self._set(**given(self._input_kwargs))

    @keyword_only
    def setParams(
        self,
        *,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
    ) -> GlobalMean:
        return self._set(**given(self._input_kwargs))

    def _fit(self, dataset: DataFrame) -> GlobalMeanModel:
        self._check_cold_start()
        rated = _rated(dataset, self)
        mean = _global_mean(rated)
        counts = _materialized(rated.groupBy(F.col(MOVIE_ID).alias(FACTOR_ID)).agg(F.count(F.lit(1)).cast("int").alias(_COUNT)))
        users = _materialized(rated.select(F.col(USER_ID).alias(FACTOR_ID)).distinct())
        return self._copyValues(GlobalMeanModel(mean, counts, users))


class GlobalMeanModel(_BaselineModel):
    """`mean` for every row; `itemCounts` (id, n train ratings) drive the popularity ranking of `userIds`."""

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {_ITEM_COUNTS: _COUNT_TABLE, _USER_IDS: _ID_TABLE}

    def __init__(self, mean: float = 0.0, itemCounts: DataFrame | None = None, userIds: DataFrame | None = None) -> None:
        super().__init__()
        self.mean = float(mean)
        self.itemCounts = itemCounts
        self.userIds = userIds

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        return dataset.withColumn(self.getPredictionCol(), F.lit(self.mean).cast("float"))

    def scoringFactors(self) -> tuple[DataFrame, DataFrame]:
        """Popularity top-N: user [1.0] . item [train rating count] = the item's count, same for every user.

        Every user seen in train gets a list, like the factor models' userFactors.
        """
        assert self.itemCounts is not None and self.userIds is not None
        items = self.itemCounts.select(F.col(FACTOR_ID), F.array(F.col(_COUNT).cast("float")).alias(FEATURES))
        return _unit_users(self.userIds), items

    def _extra_metadata(self) -> dict[str, Any]:
        return {"globalMean": self.mean}

    def _tables(self) -> Mapping[str, DataFrame]:
        assert self.itemCounts is not None and self.userIds is not None
        return {_ITEM_COUNTS: self.itemCounts, _USER_IDS: self.userIds}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> GlobalMeanModel:
        return cls(metadata["globalMean"], tables[_ITEM_COUNTS], tables[_USER_IDS])


# --------------------------------------------------------------------------- user + item biases


class BiasBaseline(Estimator, _BiasParams, EstimatorPersistence):
    """Regularized user + item biases; the floor a latent-factor model has to beat.

    Examples
    --------
    >>> df = spark.createDataFrame([(1, 10, 4.0), (2, 10, 2.0), (2, 11, 3.0)], ["user_id", "movie_id", "rating"])
    >>> model = BiasBaseline(regUser=0.0, regItem=0.0).fit(df)  # mu = 3, b_i = 0, b_u = +1, -0.5
    >>> sorted((r.user_id, r.movie_id, round(r.prediction, 3)) for r in model.transform(df).collect())
    [(1, 10, 4.0), (2, 10, 2.5), (2, 11, 2.5)]
    """

    _input_kwargs: dict[str, Any]  # set by @keyword_only

    @keyword_only
    def __init__(
        self,
        *,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
        regUser: float | None = None,
        regItem: float | None = None,
    ) -> None:
        super().__init__()
        self._set(**given(self._input_kwargs))

    @keyword_only
    def setParams(
        self,
        *,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
        coldStartStrategy: str | None = None,
        regUser: float | None = None,
        regItem: float | None = None,
    ) -> BiasBaseline:
        return self._set(**given(self._input_kwargs))

    def setRegUser(self, value: float) -> BiasBaseline:
        return self._set(regUser=value)

    def setRegItem(self, value: float) -> BiasBaseline:
        return self._set(regItem=value)

    def _fit(self, dataset: DataFrame) -> BiasBaselineModel:
        self._check_cold_start()
        problems = check_params(self)
        if problems:
            raise ValueError("BiasBaseline: " + "; ".join(problems))
        reg_user, reg_item = self.getRegUser(), self.getRegItem()
        rated = _rated(dataset, self).cache()
        try:
            mu = _global_mean(rated)
            item_biases = _materialized(
                rated.groupBy(F.col(MOVIE_ID).alias(FACTOR_ID)).agg(
                    (F.sum(F.col(RATING) - F.lit(mu)) / (F.lit(reg_item) + F.count(F.lit(1)))).cast("float").alias(BIAS)
                )
            )
            residual = rated.join(
                item_biases.select(F.col(FACTOR_ID).alias(MOVIE_ID), F.col(BIAS).alias(_ITEM_BIAS)), MOVIE_ID, "left"
            ).select(USER_ID, (F.col(RATING) - F.lit(mu) - F.col(_ITEM_BIAS)).alias(RATING))
            user_biases = _materialized(
                residual.groupBy(F.col(USER_ID).alias(FACTOR_ID)).agg(
                    (F.sum(RATING) / (F.lit(reg_user) + F.count(F.lit(1)))).cast("float").alias(BIAS)
                )
            )
        finally:
            rated.unpersist()
        return self._copyValues(BiasBaselineModel(mu, user_biases, item_biases))


class BiasBaselineModel(_BaselineModel):
    """mu + b_u + b_i, with a zero bias for any user or item not seen in training."""

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {_USER_BIASES: _BIAS_TABLE, _ITEM_BIASES: _BIAS_TABLE}

    def __init__(self, mean: float = 0.0, userBiases: DataFrame | None = None, itemBiases: DataFrame | None = None) -> None:
        super().__init__()
        self.mean = float(mean)
        self.userBiases = userBiases
        self.itemBiases = itemBiases

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        assert self.userBiases is not None and self.itemBiases is not None
        users = self.userBiases.select(F.col(FACTOR_ID).alias(_USER_BIAS + "_id"), F.col(BIAS).alias(_USER_BIAS))
        items = self.itemBiases.select(F.col(FACTOR_ID).alias(_ITEM_BIAS + "_id"), F.col(BIAS).alias(_ITEM_BIAS))
        prediction = F.lit(self.mean) + F.coalesce(F.col(_USER_BIAS), F.lit(0.0)) + F.coalesce(F.col(_ITEM_BIAS), F.lit(0.0))
        return (
            dataset.join(users, F.col(self.getUserCol()) == F.col(_USER_BIAS + "_id"), "left")
            .join(items, F.col(self.getItemCol()) == F.col(_ITEM_BIAS + "_id"), "left")
            .withColumn(self.getPredictionCol(), prediction.cast("float"))
            .drop(_USER_BIAS + "_id", _USER_BIAS, _ITEM_BIAS + "_id", _ITEM_BIAS)
        )

    def scoringFactors(self) -> tuple[DataFrame, DataFrame]:
        """user [mu + b_u, 1] . item [1, b_i] = mu + b_u + b_i: the recommendation score is the prediction.

        Within one user the order is by b_i alone, i.e. the bias model's own top-N.
        """
        assert self.userBiases is not None and self.itemBiases is not None
        users = self.userBiases.select(
            F.col(FACTOR_ID), F.array((F.lit(self.mean) + F.col(BIAS)).cast("float"), F.lit(1.0).cast("float")).alias(FEATURES)
        )
        items = self.itemBiases.select(F.col(FACTOR_ID), F.array(F.lit(1.0).cast("float"), F.col(BIAS)).alias(FEATURES))
        return users, items

    def _extra_metadata(self) -> dict[str, Any]:
        return {"globalMean": self.mean}

    def _tables(self) -> Mapping[str, DataFrame]:
        assert self.userBiases is not None and self.itemBiases is not None
        return {_USER_BIASES: self.userBiases, _ITEM_BIASES: self.itemBiases}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> BiasBaselineModel:
        return cls(metadata["globalMean"], tables[_USER_BIASES], tables[_ITEM_BIASES])
