"""Params of the DSGD estimator and model, and their defaults: the one source of every SGD default.

`SGD_DEFAULTS` feeds the estimator's `_setDefault` (its keyword signatures take None and set
only what is given) and the `sgd` section of the pipeline's config, so a default is written
once. The engine reads the values by Param name (`settings.engine_params`).
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasCheckpointInterval, HasMaxIter, HasRegParam, HasSeed, HasStepSize, HasValidationIndicatorCol

from recospark.models.params import _RecommenderModelParams, _RecommenderParams
from recospark.schema import MOVIE_ID, PREDICTION, RATING, USER_ID

LOSSES = ("squared", "bpr", "warp")
RANKING_LOSSES = ("bpr", "warp")
SCHEDULES = ("decay", "bold_driver")

# Param name -> default. Chosen in development runs on a validation carve of ML-100K's u1.base.
SGD_DEFAULTS: dict[str, Any] = {
    "rank": 128,
    "maxIter": 40,
    "regParam": 0.08,
    "biasRegParam": 0.01,
    "stepSize": 0.03,
    "stepDecay": 0.93,
    "schedule": "decay",
    "numBlocks": 2,
    "innerBlocks": 2,
    "threads": 0,
    "tasks": 0,
    "initStd": 0.02,
    "seed": 42,
    "earlyStoppingRounds": 3,
    "checkpointInterval": 5,
    "loss": "squared",
    "numNegatives": 1,
    "positiveThreshold": 0.0,
    "blockWeighting": True,
    "margin": 1.0,
    "maxTrials": 100,
    "maxNorm": 0.0,
    "userCol": USER_ID,
    "itemCol": MOVIE_ID,
    "ratingCol": RATING,
    "predictionCol": PREDICTION,
    "coldStartStrategy": "nan",
}


class _SGDModelParams(_RecommenderModelParams):
    """What a fitted DSGD model needs to predict: the ALS-like columns only."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**{k: SGD_DEFAULTS[k] for k in ("userCol", "itemCol", "predictionCol", "coldStartStrategy")})


class _SGDParams(
    _SGDModelParams,
    _RecommenderParams,
    HasMaxIter,
    HasRegParam,
    HasStepSize,
    HasSeed,
    HasCheckpointInterval,
    HasValidationIndicatorCol,
):
    """What fitting needs: rank, schedule, blocks, loss; only the estimator carries these."""

    rank: Param[int] = Param(Params._dummy(), "rank", "number of latent factors (>= 1)", TypeConverters.toInt)
    biasRegParam: Param[float] = Param(
        Params._dummy(), "biasRegParam", "L2 regularization of user and item biases (>= 0)", TypeConverters.toFloat
    )
    stepDecay: Param[float] = Param(
        Params._dummy(), "stepDecay", "schedule 'decay': step size multiplier per epoch, in (0, 1]", TypeConverters.toFloat
    )
    schedule: Param[str] = Param(
        Params._dummy(),
        "schedule",
        "step size schedule: 'decay' (step *= stepDecay per epoch) or 'bold_driver' (x1.05 when the training loss fell, x0.5 when it rose)",
        TypeConverters.toString,
    )
    numBlocks: Param[int] = Param(
        Params._dummy(), "numBlocks", "d: users and items are hashed into d blocks; d tasks per stratum", TypeConverters.toInt
    )
    innerBlocks: Param[int] = Param(
        Params._dummy(),
        "innerBlocks",
        "K: inner blocks per block; a task's threads run disjoint inner sub-blocks (hierarchical DSGD)",
        TypeConverters.toInt,
    )
    threads: Param[int] = Param(
        Params._dummy(),
        "threads",
        "kernel threads per task; 0: the executor's cores (local[N]: N; a cluster: spark.executor.cores)",
        TypeConverters.toInt,
    )
    tasks: Param[int] = Param(
        Params._dummy(),
        "tasks",
        "Spark tasks per stratum; 0: 1 in local mode (one fat task), else min(numBlocks, executors)",
        TypeConverters.toInt,
    )
    initStd: Param[float] = Param(Params._dummy(), "initStd", "standard deviation of the initial factors (> 0)", TypeConverters.toFloat)
    earlyStoppingRounds: Param[int] = Param(
        Params._dummy(),
        "earlyStoppingRounds",
        "with validationIndicatorCol: stop after this many epochs without validation improvement "
        "and keep the best epoch's factors; 0 disables",
        TypeConverters.toInt,
    )
    loss: Param[str] = Param(
        Params._dummy(),
        "loss",
        "objective: 'squared' (explicit ratings, predicts the rating) or a top-N ranking loss over "
        "positives vs sampled negatives: 'bpr' (item biases, L2) or 'warp' (no biases; use maxNorm, "
        "regParam 0); ranking losses have no user bias, no global mean and no validation metric",
        TypeConverters.toString,
    )
    numNegatives: Param[int] = Param(
        Params._dummy(),
        "numNegatives",
        "bpr: negatives sampled per positive (warp samples up to maxTrials per positive instead)",
        TypeConverters.toInt,
    )
    positiveThreshold: Param[float] = Param(
        Params._dummy(),
        "positiveThreshold",
        "ranking losses: a rating at or above this is a positive; 0 makes every rated item one",
        TypeConverters.toFloat,
    )

    blockWeighting: Param[bool] = Param(
        Params._dummy(),
        "blockWeighting",
        "ranking losses: weight each pair so that negatives drawn inside the stratum's item block "
        "estimate the catalogue-wide objective without bias (see kernel_ranking.py)",
        TypeConverters.toBoolean,
    )
    margin: Param[float] = Param(Params._dummy(), "margin", "warp: the margin a negative must beat", TypeConverters.toFloat)
    maxTrials: Param[int] = Param(Params._dummy(), "maxTrials", "warp: negatives tried per positive before giving up", TypeConverters.toInt)
    maxNorm: Param[float] = Param(
        Params._dummy(),
        "maxNorm",
        "warp: factor rows are projected back to this L2 norm after each update; 0 disables",
        TypeConverters.toFloat,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**SGD_DEFAULTS)

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

    def getInnerBlocks(self) -> int:
        return self.getOrDefault(self.innerBlocks)

    def getThreads(self) -> int:
        return self.getOrDefault(self.threads)

    def getTasks(self) -> int:
        return self.getOrDefault(self.tasks)

    def getInitStd(self) -> float:
        return self.getOrDefault(self.initStd)

    def getEarlyStoppingRounds(self) -> int:
        return self.getOrDefault(self.earlyStoppingRounds)

    def getLoss(self) -> str:
        return self.getOrDefault(self.loss)

    def getNumNegatives(self) -> int:
        return self.getOrDefault(self.numNegatives)

    def getPositiveThreshold(self) -> float:
        return self.getOrDefault(self.positiveThreshold)

    def getBlockWeighting(self) -> bool:
        return self.getOrDefault(self.blockWeighting)

    def getMargin(self) -> float:
        return self.getOrDefault(self.margin)

    def getMaxTrials(self) -> int:
        return self.getOrDefault(self.maxTrials)

    def getMaxNorm(self) -> float:
        return self.getOrDefault(self.maxNorm)

    def _check(self) -> None:
        """Every invalid value in one message, before any Spark job."""
        problems = []
        for name, ok, need in (
            ("rank", self.getRank() >= 1, ">= 1"),
            ("maxIter", self.getMaxIter() >= 1, ">= 1"),
            ("numBlocks", self.getNumBlocks() >= 1, ">= 1"),
            ("innerBlocks", self.getInnerBlocks() >= 1, ">= 1"),
            ("threads", self.getThreads() >= 0, ">= 0 (0: the executor's cores)"),
            ("tasks", self.getTasks() >= 0, ">= 0 (0: automatic)"),
            ("stepSize", self.getStepSize() > 0, "> 0"),
            ("stepDecay", 0 < self.getStepDecay() <= 1, "in (0, 1]"),
            ("regParam", self.getRegParam() >= 0, ">= 0"),
            ("biasRegParam", self.getBiasRegParam() >= 0, ">= 0"),
            ("initStd", self.getInitStd() > 0, "> 0"),
            ("numNegatives", self.getNumNegatives() >= 1, ">= 1"),
            ("maxTrials", self.getMaxTrials() >= 1, ">= 1"),
            ("maxNorm", self.getMaxNorm() >= 0, ">= 0 (0 disables)"),
            ("schedule", self.getSchedule() in SCHEDULES, f"one of {SCHEDULES}"),
            ("loss", self.getLoss() in LOSSES, f"one of {LOSSES}"),
            ("coldStartStrategy", self.getColdStartStrategy() in ("nan", "drop"), "'nan' or 'drop'"),
        ):
            if not ok:
                problems.append(f"{name} must be {need}, got {self.getOrDefault(name)!r}")
        validating = self.isDefined(self.validationIndicatorCol) and bool(self.getOrDefault(self.validationIndicatorCol))
        if self.getLoss() in RANKING_LOSSES and validating and self.getEarlyStoppingRounds() > 0:
            problems.append(
                f"earlyStoppingRounds must be 0 with loss={self.getLoss()!r} (no validation metric for ranking losses; "
                f"choose maxIter on a ranking metric instead), got {self.getEarlyStoppingRounds()}"
            )
        if problems:
            raise ValueError("SGDMatrixFactorization: " + "; ".join(problems))
