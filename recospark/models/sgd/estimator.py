"""`pyspark.ml` Estimator and Model for the DSGD matrix factorization, shaped like MLlib's ALS.

Params are real `Param`s, so `RegressionEvaluator`, `ParamGridBuilder`, `TrainValidationSplit`
and `CrossValidator` work as with ALS. Saved models are Spark ML metadata (params, global mean,
history) plus user/item factors (id, features, bias) as Parquet; no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recospark.models.params import _RecommenderModelSetters
from recospark.models.persistence import EstimatorPersistence, TablesPersistence
from recospark.models.sgd import dsgd
from recospark.models.sgd.dsgd import fit_dsgd
from recospark.models.sgd.params import _SGDModelParams, _SGDParams
from recospark.models.sgd.settings import engine_params
from recospark.schema import BIAS, BIASED_FACTORS, FACTOR_ID, FEATURES, MOVIE_ID, RANK, SCORE, USER_ID
from recospark.scoring import top_n

__all__ = ["SGDMatrixFactorization", "SGDMatrixFactorizationModel"]

_USERS_TABLE = "userFactors"
_ITEMS_TABLE = "itemFactors"


class SGDMatrixFactorization(Estimator, _SGDParams, EstimatorPersistence):
    """Biased matrix factorization trained by stratified distributed SGD (DSGD).

    Ratings are hashed into `numBlocks` x `numBlocks` blocks; each stratum updates disjoint
    user and item blocks in parallel, so factors stay distributed and never reach the driver.
    `loss='squared'` fits the ratings (Funk/Koren biased MF, predictions are ratings); the
    ranking losses ('bpr', 'warp') fit positives against negatives sampled inside the stratum's
    item block for top-N lists (scores rank items, they are not ratings). Ranking losses have no
    validation metric: with `validationIndicatorCol` set, `earlyStoppingRounds` must be 0 (the
    validation rows are then left out of training and unused).

    Examples
    --------
    >>> from recospark.models.sgd.estimator import SGDMatrixFactorization
    >>> df = spark.createDataFrame(
    ...     [(1, 10, 5.0), (1, 11, 1.0), (2, 10, 4.0), (2, 12, 2.0), (3, 11, 1.0), (3, 12, 3.0)],
    ...     ["user_id", "movie_id", "rating"])
    >>> sgd = SGDMatrixFactorization(rank=4, maxIter=5, numBlocks=2, seed=1)
    >>> model = sgd.fit(df)
    >>> model.rank, model.numEpochs
    (4, 5)
    >>> model.transform(df).select("prediction").count()
    6
    """

    _input_kwargs: dict[str, Any]  # set by @keyword_only

    @keyword_only
    def __init__(
        self,
        *,
        rank: int | None = None,
        maxIter: int | None = None,
        regParam: float | None = None,
        biasRegParam: float | None = None,
        stepSize: float | None = None,
        stepDecay: float | None = None,
        schedule: str | None = None,
        numBlocks: int | None = None,
        innerBlocks: int | None = None,
        threads: int | None = None,
        tasks: int | None = None,
        initStd: float | None = None,
        seed: int | None = None,
        earlyStoppingRounds: int | None = None,
        checkpointInterval: int | None = None,
        loss: str | None = None,
        numNegatives: int | None = None,
        positiveThreshold: float | None = None,
        blockWeighting: bool | None = None,
        margin: float | None = None,
        maxTrials: int | None = None,
        maxNorm: float | None = None,
        validationIndicatorCol: str | None = None,
        coldStartStrategy: str | None = None,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
    ) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        rank: int | None = None,
        maxIter: int | None = None,
        regParam: float | None = None,
        biasRegParam: float | None = None,
        stepSize: float | None = None,
        stepDecay: float | None = None,
        schedule: str | None = None,
        numBlocks: int | None = None,
        innerBlocks: int | None = None,
        threads: int | None = None,
        tasks: int | None = None,
        initStd: float | None = None,
        seed: int | None = None,
        earlyStoppingRounds: int | None = None,
        checkpointInterval: int | None = None,
        loss: str | None = None,
        numNegatives: int | None = None,
        positiveThreshold: float | None = None,
        blockWeighting: bool | None = None,
        margin: float | None = None,
        maxTrials: int | None = None,
        maxNorm: float | None = None,
        validationIndicatorCol: str | None = None,
        coldStartStrategy: str | None = None,
        userCol: str | None = None,
        itemCol: str | None = None,
        ratingCol: str | None = None,
        predictionCol: str | None = None,
    ) -> SGDMatrixFactorization:
        """Set the given Params (keyword only); an omitted keyword keeps its current value or default."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    # setters, ALS style
    def setRank(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`rank`."""
        return self._set(rank=value)

    def setMaxIter(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`maxIter`."""
        return self._set(maxIter=value)

    def setRegParam(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`regParam`."""
        return self._set(regParam=value)

    def setBiasRegParam(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`biasRegParam`."""
        return self._set(biasRegParam=value)

    def setStepSize(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`stepSize`."""
        return self._set(stepSize=value)

    def setStepDecay(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`stepDecay`."""
        return self._set(stepDecay=value)

    def setSchedule(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`schedule`."""
        return self._set(schedule=value)

    def setNumBlocks(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`numBlocks`."""
        return self._set(numBlocks=value)

    def setInnerBlocks(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`innerBlocks`."""
        return self._set(innerBlocks=value)

    def setThreads(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`threads`."""
        return self._set(threads=value)

    def setTasks(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`tasks`."""
        return self._set(tasks=value)

    def setInitStd(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`initStd`."""
        return self._set(initStd=value)

    def setSeed(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`seed`."""
        return self._set(seed=value)

    def setEarlyStoppingRounds(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`earlyStoppingRounds`."""
        return self._set(earlyStoppingRounds=value)

    def setCheckpointInterval(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`checkpointInterval`."""
        return self._set(checkpointInterval=value)

    def setLoss(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`loss`."""
        return self._set(loss=value)

    def setNumNegatives(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`numNegatives`."""
        return self._set(numNegatives=value)

    def setPositiveThreshold(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`positiveThreshold`."""
        return self._set(positiveThreshold=value)

    def setBlockWeighting(self, value: bool) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`blockWeighting`."""
        return self._set(blockWeighting=value)

    def setMargin(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`margin`."""
        return self._set(margin=value)

    def setMaxTrials(self, value: int) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`maxTrials`."""
        return self._set(maxTrials=value)

    def setMaxNorm(self, value: float) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`maxNorm`."""
        return self._set(maxNorm=value)

    def setValidationIndicatorCol(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`validationIndicatorCol`."""
        return self._set(validationIndicatorCol=value)

    def setColdStartStrategy(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`coldStartStrategy`."""
        return self._set(coldStartStrategy=value)

    def setUserCol(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`userCol`."""
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`itemCol`."""
        return self._set(itemCol=value)

    def setRatingCol(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`ratingCol`."""
        return self._set(ratingCol=value)

    def setPredictionCol(self, value: str) -> SGDMatrixFactorization:
        """Sets the value of :py:attr:`predictionCol`."""
        return self._set(predictionCol=value)

    # fault injection, not a Param: never saved, tuned or copied into the model
    faultPartition: int | None = None

    def setFaultPartition(self, partition: int | None) -> SGDMatrixFactorization:
        """Make the first attempt of training task `partition` fail (None: off), to prove that
        Spark's retry gives the fault-free factors; the train stage sets it from
        `faults.sgd_partition`. A plain attribute, not a Param: it is not saved with the estimator."""
        self.faultPartition = partition
        return self

    def _fit(self, dataset: DataFrame) -> SGDMatrixFactorizationModel:
        self._check()
        user, item, rating = self.getUserCol(), self.getItemCol(), self.getRatingCol()
        validation_col = self.getOrDefault(self.validationIndicatorCol) if self.isDefined(self.validationIndicatorCol) else None
        is_val = "__sgd_validation"
        flag = F.coalesce(F.col(validation_col).cast("boolean"), F.lit(False)) if validation_col else F.lit(False)
        rows = dataset.select(
            F.col(user).cast("int").alias(dsgd.USER),
            F.col(item).cast("int").alias(dsgd.ITEM),
            F.col(rating).cast("float").alias(dsgd.RATING),
            flag.alias(is_val),
        ).where(F.col(dsgd.USER).isNotNull() & F.col(dsgd.ITEM).isNotNull() & F.col(dsgd.RATING).isNotNull() & ~F.isnan(dsgd.RATING))
        train = rows.where(~F.col(is_val)).drop(is_val)
        validation = rows.where(F.col(is_val)).drop(is_val) if validation_col else None
        result = fit_dsgd(dataset.sparkSession, train, validation, engine_params(self), fault_partition=self.faultPartition)
        model = SGDMatrixFactorizationModel(
            result.user_factors, result.item_factors, result.global_mean, result.history, result.best_epoch, self.getLoss()
        )
        return self._copyValues(model)


class SGDMatrixFactorizationModel(Model, _SGDModelParams, _RecommenderModelSetters, TablesPersistence):
    """Fitted DSGD model: biased factors (id, features, bias), the global mean and the training history.

    `transform` adds `mu + b_u + b_i + p_u . q_i`: the predicted rating for `loss='squared'`,
    a ranking score (higher = recommended first) for the ranking losses, whose models have
    mu = 0 and b_u = 0 (score `b_i + p_u . q_i`; warp also trains no item bias).
    """

    _TABLES: ClassVar[Mapping[str, StructType | None]] = {_USERS_TABLE: BIASED_FACTORS, _ITEMS_TABLE: BIASED_FACTORS}

    def __init__(
        self,
        userBiasedFactors: DataFrame | None = None,
        itemBiasedFactors: DataFrame | None = None,
        globalMean: float = 0.0,
        history: list[dict[str, Any]] | None = None,
        bestEpoch: int = 0,
        loss: str = "squared",
    ) -> None:
        super().__init__()
        self._user = userBiasedFactors
        self._item = itemBiasedFactors
        self.globalMean = float(globalMean)
        self.history = list(history or [])
        self.bestEpoch = int(bestEpoch)
        self.loss = loss

    # ALS-compatible views -------------------------------------------------------------------

    @property
    def rank(self) -> int:
        """The number of latent factors, read from the factors (like ALSModel.rank)."""
        first = self.itemFactors.select(F.size(FEATURES)).first()
        return int(first[0]) if first else 0

    @property
    def userFactors(self) -> DataFrame:
        """`id int, features array<float>`, exactly ALSModel.userFactors' schema."""
        assert self._user is not None
        return self._user.select(FACTOR_ID, FEATURES)

    @property
    def itemFactors(self) -> DataFrame:
        """`id int, features array<float>`, exactly ALSModel.itemFactors' schema (biases left out; see `itemBiasedFactors`)."""
        assert self._item is not None
        return self._item.select(FACTOR_ID, FEATURES)

    @property
    def userBiasedFactors(self) -> DataFrame:
        """`id, features, bias` (recospark.schema.BIASED_FACTORS)."""
        assert self._user is not None
        return self._user

    @property
    def itemBiasedFactors(self) -> DataFrame:
        """`id, features, bias` (recospark.schema.BIASED_FACTORS)."""
        assert self._item is not None
        return self._item

    @property
    def numEpochs(self) -> int:
        """Epochs that ran (early stopping can end before maxIter); `bestEpoch` is the one whose factors were kept."""
        return len(self.history)

    # prediction -----------------------------------------------------------------------------

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_cold_start()
        users = self.userBiasedFactors.select(
            F.col(FACTOR_ID).alias("__sgd_uid"), F.col(FEATURES).alias("__sgd_p"), F.col(BIAS).alias("__sgd_bu")
        )
        items = self.itemBiasedFactors.select(
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
        users = self.userBiasedFactors.select(
            F.col(FACTOR_ID), F.concat(F.col(FEATURES), F.array(F.lit(1.0).cast("float"))).alias(FEATURES)
        )
        items = self.itemBiasedFactors.select(F.col(FACTOR_ID), F.concat(F.col(FEATURES), F.array(F.col(BIAS))).alias(FEATURES))
        return users, items

    def recommendForAllUsers(self, numItems: int, rated: DataFrame | None = None) -> DataFrame:
        """Top `numItems` per user with ALSModel's output schema (userCol, recommendations
        array<struct<itemCol, rating>>); `rating` is `transform`'s value for that pair.

        Like ALS, nothing is excluded unless `rated` (userCol, itemCol pairs, e.g. the training
        ratings) is given; the pipeline's `recommend` stage excludes the training ratings.
        """
        users, items = self.scoringFactors()
        rated_std = None
        if rated is not None:
            rated_std = rated.select(
                F.col(self.getUserCol()).cast("int").alias(USER_ID), F.col(self.getItemCol()).cast("int").alias(MOVIE_ID)
            )
        recs = top_n(users, items, rated_std, numItems)
        bias = self.userBiasedFactors.select(F.col(FACTOR_ID).alias(USER_ID), F.col(BIAS).alias("__sgd_bu"))
        rating = (F.col(SCORE) + F.lit(self.globalMean) + F.col("__sgd_bu")).cast("float")
        user, item = self.getUserCol(), self.getItemCol()
        ranked = recs.join(bias, USER_ID).select(
            USER_ID, F.struct(F.col(RANK), F.col(MOVIE_ID).alias(item), rating.alias("rating")).alias("r")
        )
        return (
            ranked.groupBy(USER_ID)
            .agg(
                F.transform(F.array_sort(F.collect_list("r")), lambda s: F.struct(s[item].alias(item), s["rating"].alias("rating"))).alias(
                    "recommendations"
                )
            )
            .withColumnRenamed(USER_ID, user)
        )

    # persistence ----------------------------------------------------------------------------

    def _tables(self) -> Mapping[str, DataFrame]:
        return {_USERS_TABLE: self.userBiasedFactors, _ITEMS_TABLE: self.itemBiasedFactors}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"globalMean": self.globalMean, "bestEpoch": self.bestEpoch, "history": self.history, "loss": self.loss}

    @classmethod
    def _from_saved(cls, metadata: dict[str, Any], tables: Mapping[str, DataFrame]) -> SGDMatrixFactorizationModel:
        return cls(
            tables[_USERS_TABLE],
            tables[_ITEMS_TABLE],
            metadata["globalMean"],
            metadata.get("history"),
            metadata.get("bestEpoch", 0),
            metadata.get("loss", "squared"),
        )
