"""Params of the DSGD estimator and model, and their defaults: the one source of every SGD default.

`SGD_DEFAULTS` feeds the estimator's `_setDefault` (its keyword signatures take None and set
only what is given) and the `sgd` section of the pipeline's config, so a default is written
once. The engine reads the values by Param name (`settings.engine_params`).
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, TypeConverters
from pyspark.ml.param.shared import HasCheckpointInterval, HasMaxIter, HasRegParam, HasSeed, HasStepSize, HasValidationIndicatorCol

from recospark.models.params import _RecommenderModelParams, _RecommenderParams, check_params, knob
from recospark.schema import MOVIE_ID, PREDICTION, RATING, USER_ID

LOSSES = ("squared", "bpr", "warp")
RANKING_LOSSES = ("bpr", "warp")


def ranking_stopping_problems(loss: str, rounds: int) -> list[str]:
    """The refusal of early stopping with a ranking loss, in Param names: the estimator's check
    (when fitted with a validation column) and the configuration's (before Spark) both say it."""
    if loss in RANKING_LOSSES and rounds > 0:
        return [
            f"earlyStoppingRounds must be 0 with loss={loss!r}, got {rounds} (ranking losses have no validation "
            "metric: choose the epochs on a ranking metric, as conf/ml100k-benchmark.yaml's tune stage does)"
        ]
    return []


SCHEDULES = ("decay", "bold_driver")

# Param name -> default. Chosen in development runs on a validation carve of ML-100K's u1.base;
# `recospark pipeline --conf conf/ml100k-u1-tune-sgd.yaml` runs that search with the tune stage.
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

    rank: Param[int] = knob("rank", "number of latent factors", TypeConverters.toInt, ge=1)
    maxIter: Param[int] = knob("maxIter", "epochs (maximum, with early stopping)", TypeConverters.toInt, ge=1)
    regParam: Param[float] = knob("regParam", "L2 regularization of the factors", TypeConverters.toFloat, ge=0)
    stepSize: Param[float] = knob("stepSize", "initial learning rate", TypeConverters.toFloat, gt=0)
    biasRegParam: Param[float] = knob("biasRegParam", "L2 regularization of user and item biases", TypeConverters.toFloat, ge=0)
    stepDecay: Param[float] = knob("stepDecay", "schedule 'decay': step size multiplier per epoch", TypeConverters.toFloat, gt=0, le=1)
    schedule: Param[str] = knob(
        "schedule",
        "step size schedule: 'decay' (step *= stepDecay per epoch) or 'bold_driver' (x1.05 when the training loss fell, x0.5 when it rose)",
        TypeConverters.toString,
        choices=SCHEDULES,
    )
    numBlocks: Param[int] = knob(
        "numBlocks", "B: users and items are hashed into B blocks each; B x B outer blocks, B strata per epoch", TypeConverters.toInt, ge=1
    )
    innerBlocks: Param[int] = knob(
        "innerBlocks",
        "K: inner blocks per block; a task's threads run disjoint inner sub-blocks (hierarchical DSGD)",
        TypeConverters.toInt,
        ge=1,
    )
    threads: Param[int] = knob(
        "threads",
        "kernel threads per task; 0: the executor's cores (local[N]: N; a cluster: spark.executor.cores)",
        TypeConverters.toInt,
        ge=0,
    )
    tasks: Param[int] = knob(
        "tasks", "Spark tasks per stratum; 0: 1 in local mode (one fat task), else min(numBlocks, executors)", TypeConverters.toInt, ge=0
    )
    initStd: Param[float] = knob("initStd", "standard deviation of the initial factors", TypeConverters.toFloat, gt=0)
    earlyStoppingRounds: Param[int] = knob(
        "earlyStoppingRounds",
        "with validationIndicatorCol: stop after this many epochs without validation improvement "
        "and keep the best epoch's factors; 0 disables",
        TypeConverters.toInt,
        ge=0,
    )
    loss: Param[str] = knob(
        "loss",
        "objective: 'squared' (explicit ratings, predicts the rating) or a top-N ranking loss over "
        "positives vs sampled negatives: 'bpr' (item biases, L2) or 'warp' (no biases; use maxNorm, "
        "regParam 0); ranking losses have no user bias, no global mean and no validation metric",
        TypeConverters.toString,
        choices=LOSSES,
    )
    numNegatives: Param[int] = knob(
        "numNegatives",
        "bpr: negatives sampled per positive (warp samples up to maxTrials per positive instead)",
        TypeConverters.toInt,
        ge=1,
    )
    positiveThreshold: Param[float] = knob(
        "positiveThreshold",
        "ranking losses: a rating at or above this is a positive; 0 makes every rated item one",
        TypeConverters.toFloat,
        ge=0,
    )

    blockWeighting: Param[bool] = knob(
        "blockWeighting",
        "ranking losses: weight each pair so that negatives drawn inside the stratum's item block "
        "estimate the catalogue-wide objective without bias (see kernel_ranking.py)",
        TypeConverters.toBoolean,
    )
    margin: Param[float] = knob("margin", "warp: the margin a negative must beat", TypeConverters.toFloat, ge=0)
    maxTrials: Param[int] = knob("maxTrials", "warp: negatives tried per positive before giving up", TypeConverters.toInt, ge=1)
    maxNorm: Param[float] = knob(
        "maxNorm", "warp: factor rows are projected back to this L2 norm after each update; 0 disables", TypeConverters.toFloat, ge=0
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
        problems = check_params(self)
        validating = self.isDefined(self.validationIndicatorCol) and bool(self.getOrDefault(self.validationIndicatorCol))
        if validating:
            problems += ranking_stopping_problems(self.getLoss(), self.getEarlyStoppingRounds())
        if problems:
            raise ValueError("SGDMatrixFactorization: " + "; ".join(problems))
