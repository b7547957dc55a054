"""`pyspark.ml` Estimator and Model for the DSGD matrix factorization, shaped like MLlib's ALS.

    est = SGDMatrixFactorization(userCol="user_id", itemCol="movie_id", ratingCol="rating", rank=64)
    model = est.fit(train)                         # DSGD on the cluster, see dsgd.py
    model.transform(test)                          # + "prediction" (float), NaN or dropped for cold rows
    model.write().overwrite().save(path); SGDMatrixFactorizationModel.load(path)

Params are real `Param`s, so `RegressionEvaluator`, `ParamGridBuilder`, `TrainValidationSplit`
and `CrossValidator` work as with ALS. Saved models are JSON metadata (params, global mean,
history) plus user/item factors (id, features, bias) as Parquet; no pickle.
"""

from __future__ import annotations

import os
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasCheckpointInterval,
    HasMaxIter,
    HasRegParam,
    HasSeed,
    HasStepSize,
    HasValidationIndicatorCol,
)
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.models.params import HasRatingColumns
from recospark.models.sgd import dsgd
from recospark.models.sgd.dsgd import DSGDParams, fit_dsgd
from recospark.schema import BIAS, BIASED_FACTORS, FACTOR_ID, FEATURES

FORMAT_VERSION = 1
_USERS_DIR = "userFactors"
_ITEMS_DIR = "itemFactors"


class _SGDParams(
    HasMaxIter, HasRegParam, HasStepSize, HasSeed, HasCheckpointInterval, HasRatingColumns, HasValidationIndicatorCol
):
    rank: "Param[int]" = Param(Params._dummy(), "rank", "number of latent factors (>= 1)", TypeConverters.toInt)
    biasRegParam: "Param[float]" = Param(
        Params._dummy(), "biasRegParam", "L2 regularization of user and item biases (>= 0)", TypeConverters.toFloat
    )
    stepDecay: "Param[float]" = Param(
        Params._dummy(), "stepDecay", "schedule 'decay': step size multiplier per epoch, in (0, 1]", TypeConverters.toFloat
    )
    schedule: "Param[str]" = Param(
        Params._dummy(),
        "schedule",
        "step size schedule: 'decay' (step *= stepDecay per epoch) or 'bold_driver' "
        "(x1.05 when the training loss fell, x0.5 when it rose)",
        TypeConverters.toString,
    )
    numBlocks: "Param[int]" = Param(
        Params._dummy(), "numBlocks", "d: users and items are hashed into d blocks; d tasks per stratum", TypeConverters.toInt
    )
    initStd: "Param[float]" = Param(
        Params._dummy(), "initStd", "standard deviation of the initial factors (> 0)", TypeConverters.toFloat
    )
    earlyStoppingRounds: "Param[int]" = Param(
        Params._dummy(),
        "earlyStoppingRounds",
        "with validationIndicatorCol: stop after this many epochs without validation improvement "
        "and keep the best epoch's factors; 0 disables",
        TypeConverters.toInt,
    )

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._setDefault(
            rank=128,
            maxIter=40,
            regParam=0.08,
            biasRegParam=0.01,
            stepSize=0.03,
            stepDecay=0.93,
            schedule="decay",
            numBlocks=4,
            initStd=0.02,
            seed=42,
            earlyStoppingRounds=3,
            checkpointInterval=5,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            predictionCol="prediction",
            coldStartStrategy="nan",
        )

    def getRank(self) -> int:
        return self.getOrDefault(self.rank)

    def getBiasRegParam(self) -> float:
        return self.getOrDefault(self.biasRegParam)

    def getStepDecay(self) -> float:
        return self.getOrDefault(self.stepDecay)

    def getSchedule(self) -> str:
        return self.getOrDefault(self.schedule)

    def getNumBlocks(self) -> int:
        return self.getOrDefault(self.numBlocks)

    def getInitStd(self) -> float:
        return self.getOrDefault(self.initStd)

    def getEarlyStoppingRounds(self) -> int:
        return self.getOrDefault(self.earlyStoppingRounds)


def _check(params: _SGDParams) -> None:
    problems = []
    if params.getRank() < 1:
        problems.append(f"rank must be >= 1, got {params.getRank()}")
    if params.getMaxIter() < 1:
        problems.append(f"maxIter must be >= 1, got {params.getMaxIter()}")
    if params.getNumBlocks() < 1:
        problems.append(f"numBlocks must be >= 1, got {params.getNumBlocks()}")
    if params.getStepSize() <= 0:
        problems.append(f"stepSize must be > 0, got {params.getStepSize()}")
    if not 0 < params.getStepDecay() <= 1:
        problems.append(f"stepDecay must be in (0, 1], got {params.getStepDecay()}")
    if params.getRegParam() < 0 or params.getBiasRegParam() < 0:
        problems.append("regParam and biasRegParam must be >= 0")
    if params.getInitStd() <= 0:
        problems.append(f"initStd must be > 0, got {params.getInitStd()}")
    if params.getSchedule() not in ("decay", "bold_driver"):
        problems.append(f"schedule must be 'decay' or 'bold_driver', got {params.getSchedule()!r}")
    if params.getColdStartStrategy() not in ("nan", "drop"):
        problems.append(f"coldStartStrategy must be 'nan' or 'drop', got {params.getColdStartStrategy()!r}")
    if problems:
        raise ValueError("SGDMatrixFactorization: " + "; ".join(problems))


class SGDMatrixFactorization(Estimator, _SGDParams, MLWritable, MLReadable):
    """Biased matrix factorization trained by stratified distributed SGD (DSGD)."""

    @keyword_only
    def __init__(
        self,
        *,
        rank: int = 128,
        maxIter: int = 40,
        regParam: float = 0.08,
        biasRegParam: float = 0.01,
        stepSize: float = 0.03,
        stepDecay: float = 0.93,
        schedule: str = "decay",
        numBlocks: int = 4,
        initStd: float = 0.02,
        seed: int = 42,
        earlyStoppingRounds: int = 3,
        checkpointInterval: int = 5,
        validationIndicatorCol: str | None = None,
        coldStartStrategy: str = "nan",
        userCol: str = "user",
        itemCol: str = "item",
        ratingCol: str = "rating",
        predictionCol: str = "prediction",
    ):
        super().__init__()
        kwargs = self._input_kwargs
        self.setParams(**kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        rank: int = 128,
        maxIter: int = 40,
        regParam: float = 0.08,
        biasRegParam: float = 0.01,
        stepSize: float = 0.03,
        stepDecay: float = 0.93,
        schedule: str = "decay",
        numBlocks: int = 4,
        initStd: float = 0.02,
        seed: int = 42,
        earlyStoppingRounds: int = 3,
        checkpointInterval: int = 5,
        validationIndicatorCol: str | None = None,
        coldStartStrategy: str = "nan",
        userCol: str = "user",
        itemCol: str = "item",
        ratingCol: str = "rating",
        predictionCol: str = "prediction",
    ) -> "SGDMatrixFactorization":
        kwargs = {k: v for k, v in self._input_kwargs.items() if v is not None}
        return self._set(**kwargs)

    # setters, ALS style
    def setRank(self, value: int) -> "SGDMatrixFactorization":
        return self._set(rank=value)

    def setMaxIter(self, value: int) -> "SGDMatrixFactorization":
        return self._set(maxIter=value)

    def setRegParam(self, value: float) -> "SGDMatrixFactorization":
        return self._set(regParam=value)

    def setBiasRegParam(self, value: float) -> "SGDMatrixFactorization":
        return self._set(biasRegParam=value)

    def setStepSize(self, value: float) -> "SGDMatrixFactorization":
        return self._set(stepSize=value)

    def setStepDecay(self, value: float) -> "SGDMatrixFactorization":
        return self._set(stepDecay=value)

    def setSchedule(self, value: str) -> "SGDMatrixFactorization":
        return self._set(schedule=value)

    def setNumBlocks(self, value: int) -> "SGDMatrixFactorization":
        return self._set(numBlocks=value)

    def setInitStd(self, value: float) -> "SGDMatrixFactorization":
        return self._set(initStd=value)

    def setSeed(self, value: int) -> "SGDMatrixFactorization":
        return self._set(seed=value)

    def setEarlyStoppingRounds(self, value: int) -> "SGDMatrixFactorization":
        return self._set(earlyStoppingRounds=value)

    def setCheckpointInterval(self, value: int) -> "SGDMatrixFactorization":
        return self._set(checkpointInterval=value)

    def setValidationIndicatorCol(self, value: str) -> "SGDMatrixFactorization":
        return self._set(validationIndicatorCol=value)

    def setColdStartStrategy(self, value: str) -> "SGDMatrixFactorization":
        return self._set(coldStartStrategy=value)

    def setUserCol(self, value: str) -> "SGDMatrixFactorization":
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> "SGDMatrixFactorization":
        return self._set(itemCol=value)

    def setRatingCol(self, value: str) -> "SGDMatrixFactorization":
        return self._set(ratingCol=value)

    def setPredictionCol(self, value: str) -> "SGDMatrixFactorization":
        return self._set(predictionCol=value)

    def dsgd_params(self) -> DSGDParams:
        return DSGDParams(
            rank=self.getRank(),
            max_iter=self.getMaxIter(),
            reg=self.getRegParam(),
            bias_reg=self.getBiasRegParam(),
            step_size=self.getStepSize(),
            step_decay=self.getStepDecay(),
            schedule=self.getSchedule(),
            num_blocks=self.getNumBlocks(),
            init_std=self.getInitStd(),
            seed=self.getSeed(),
            early_stopping_rounds=self.getEarlyStoppingRounds(),
            checkpoint_interval=self.getCheckpointInterval(),
        )

    def _fit(self, dataset: DataFrame) -> "SGDMatrixFactorizationModel":
        _check(self)
        user, item, rating = self.getUserCol(), self.getItemCol(), self.getRatingCol()
        is_val = "__sgd_validation"
        rows = dataset.select(
            F.col(user).cast("int").alias(dsgd.USER),
            F.col(item).cast("int").alias(dsgd.ITEM),
            F.col(rating).cast("float").alias(dsgd.RATING),
            *(
                [F.coalesce(F.col(self.getValidationIndicatorCol()).cast("boolean"), F.lit(False)).alias(is_val)]
                if self._validation_col()
                else [F.lit(False).alias(is_val)]
            ),
        ).where(
            F.col(dsgd.USER).isNotNull() & F.col(dsgd.ITEM).isNotNull() & F.col(dsgd.RATING).isNotNull() & ~F.isnan(dsgd.RATING)
        )
        train = rows.where(~F.col(is_val)).drop(is_val)
        validation = rows.where(F.col(is_val)).drop(is_val) if self._validation_col() else None
        result = fit_dsgd(dataset.sparkSession, train, validation, self.dsgd_params())
        model = SGDMatrixFactorizationModel(
            result.user_factors, result.item_factors, result.global_mean, result.history, result.best_epoch
        )
        self._copyValues(model)
        return model

    def _validation_col(self) -> str | None:
        if self.isDefined(self.validationIndicatorCol) and self.getValidationIndicatorCol():
            return self.getValidationIndicatorCol()
        return None

    # Estimators persist their params only (ALS-like); the reader rebuilds them.
    def write(self) -> MLWriter:
        return _EstimatorWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


class _EstimatorWriter(MLWriter):
    def __init__(self, instance: SGDMatrixFactorization):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)


class SGDMatrixFactorizationModel(Model, _SGDParams, MLWritable, MLReadable):
    """Fitted DSGD model: biased factors (id, features, bias), the global mean and the training history."""

    def __init__(
        self,
        userBiasedFactors: DataFrame | None = None,
        itemBiasedFactors: DataFrame | None = None,
        globalMean: float = 0.0,
        history: list[dict[str, Any]] | None = None,
        bestEpoch: int = 0,
    ):
        super().__init__()
        self._user = userBiasedFactors
        self._item = itemBiasedFactors
        self.globalMean = float(globalMean)
        self.history = list(history or [])
        self.bestEpoch = int(bestEpoch)

    # ALS-compatible views -------------------------------------------------------------------

    @property
    def userFactors(self) -> DataFrame:
        """`id int, features array<float>`, exactly ALSModel.userFactors' schema."""
        return self._user.select(FACTOR_ID, FEATURES)

    @property
    def itemFactors(self) -> DataFrame:
        return self._item.select(FACTOR_ID, FEATURES)

    @property
    def userBiasedFactors(self) -> DataFrame:
        """`id, features, bias` (recospark.schema.BIASED_FACTORS)."""
        return self._user

    @property
    def itemBiasedFactors(self) -> DataFrame:
        return self._item

    @property
    def numEpochs(self) -> int:
        return len(self.history)

    def setUserCol(self, value: str) -> "SGDMatrixFactorizationModel":
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> "SGDMatrixFactorizationModel":
        return self._set(itemCol=value)

    def setPredictionCol(self, value: str) -> "SGDMatrixFactorizationModel":
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> "SGDMatrixFactorizationModel":
        return self._set(coldStartStrategy=value)

    # prediction -----------------------------------------------------------------------------

    def _transform(self, dataset: DataFrame) -> DataFrame:
        users = self._user.select(
            F.col(FACTOR_ID).alias("__sgd_uid"), F.col(FEATURES).alias("__sgd_p"), F.col(BIAS).alias("__sgd_bu")
        )
        items = self._item.select(
            F.col(FACTOR_ID).alias("__sgd_iid"), F.col(FEATURES).alias("__sgd_q"), F.col(BIAS).alias("__sgd_bi")
        )
        joined = dataset.join(users, F.col(self.getUserCol()).cast("int") == F.col("__sgd_uid"), "left").join(
            items, F.col(self.getItemCol()).cast("int") == F.col("__sgd_iid"), "left"
        )
        dot = F.aggregate(
            F.zip_with("__sgd_p", "__sgd_q", lambda a, b: a.cast("double") * b.cast("double")),
            F.lit(0.0).cast("double"),
            lambda acc, x: acc + x,
        )
        raw = F.lit(self.globalMean) + F.col("__sgd_bu").cast("double") + F.col("__sgd_bi").cast("double") + dot
        prediction = F.coalesce(raw.cast("float"), F.lit(float("nan")).cast("float"))
        out = joined.select(*[dataset[c] for c in dataset.columns], prediction.alias(self.getPredictionCol()))
        if self.getColdStartStrategy() == "drop":
            out = out.na.drop("all", subset=[self.getPredictionCol()])
        return out

    def scoringFactors(self) -> tuple[DataFrame, DataFrame]:
        """(users, items) as `id, features` with users [p_u, 1] and items [q_i, b_i].

        Their dot product is the prediction minus (mu + b_u), a per-user constant, so it ranks a
        user's items exactly as `transform` would.
        """
        users = self._user.select(
            F.col(FACTOR_ID), F.concat(F.col(FEATURES), F.array(F.lit(1.0).cast("float"))).alias(FEATURES)
        )
        items = self._item.select(F.col(FACTOR_ID), F.concat(F.col(FEATURES), F.array(F.col(BIAS))).alias(FEATURES))
        return users, items

    def recommendForAllUsers(self, numItems: int, rated: DataFrame | None = None) -> DataFrame:
        """Top `numItems` per user with ALSModel's output schema (userCol, recommendations
        array<struct<itemCol, rating>>); `rating` is the full predicted rating.

        Like ALS, nothing is excluded unless `rated` (userCol, itemCol pairs, e.g. the training
        ratings) is given; the pipeline's `recommend` stage excludes the training ratings.
        """
        from recospark.recommend import top_n
        from recospark.schema import MOVIE_ID, RANK, SCORE, USER_ID

        users, items = self.scoringFactors()
        rated_std = None
        if rated is not None:
            rated_std = rated.select(
                F.col(self.getUserCol()).cast("int").alias(USER_ID), F.col(self.getItemCol()).cast("int").alias(MOVIE_ID)
            )
        recs = top_n(users, items, rated_std, numItems)
        bias = self._user.select(F.col(FACTOR_ID).alias(USER_ID), F.col(BIAS).alias("__sgd_bu"))
        rating = (F.col(SCORE) + F.lit(self.globalMean) + F.col("__sgd_bu")).cast("float")
        user, item = self.getUserCol(), self.getItemCol()
        ranked = recs.join(bias, USER_ID).select(
            USER_ID, F.struct(F.col(RANK), F.col(MOVIE_ID).alias(item), rating.alias("rating")).alias("r")
        )
        return ranked.groupBy(USER_ID).agg(
            F.transform(
                F.array_sort(F.collect_list("r")), lambda s: F.struct(s[item].alias(item), s["rating"].alias("rating"))
            ).alias("recommendations")
        ).withColumnRenamed(USER_ID, user)

    # persistence ----------------------------------------------------------------------------

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


class _ModelWriter(MLWriter):
    def __init__(self, instance: SGDMatrixFactorizationModel):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        m = self.instance
        extra = {
            "formatVersion": FORMAT_VERSION,
            "globalMean": m.globalMean,
            "bestEpoch": m.bestEpoch,
            "history": m.history,
        }
        DefaultParamsWriter.saveMetadata(m, path, self.sparkSession, extraMetadata=extra)
        m._user.write.parquet(os.path.join(path, _USERS_DIR))
        m._item.write.parquet(os.path.join(path, _ITEMS_DIR))


class _ModelReader(MLReader):
    def __init__(self, cls: type):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> SGDMatrixFactorizationModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        version = metadata.get("formatVersion")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: SGD model format {version!r}, this code reads {FORMAT_VERSION}")
        spark = self.sparkSession
        users = spark.read.schema(BIASED_FACTORS).parquet(os.path.join(path, _USERS_DIR))
        items = spark.read.schema(BIASED_FACTORS).parquet(os.path.join(path, _ITEMS_DIR))
        model = self.cls(users, items, metadata["globalMean"], metadata.get("history"), metadata.get("bestEpoch", 0))
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


__all__ = ["SGDMatrixFactorization", "SGDMatrixFactorizationModel"]
