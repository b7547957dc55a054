"""Params every recospark recommender shares with MLlib's ALS, split the way pyspark splits
`_ALSModelParams` (what a fitted model needs to predict) from `_ALSParams` (what fitting needs),
so one evaluate/recommend path serves every model and a fitted model carries no training knob.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasPredictionCol

COLD_START_STRATEGIES = ("nan", "drop")


class _RecommenderModelParams(HasPredictionCol):
    """userCol, itemCol and coldStartStrategy, named and typed as in ALS."""

    userCol: Param[str] = Param(Params._dummy(), "userCol", "column name for user ids (int)", TypeConverters.toString)
    itemCol: Param[str] = Param(Params._dummy(), "itemCol", "column name for item ids (int)", TypeConverters.toString)
    coldStartStrategy: Param[str] = Param(
        Params._dummy(),
        "coldStartStrategy",
        "unknown users/items at prediction time: 'nan' (NaN prediction) or 'drop' (drop the row)",
        TypeConverters.toString,
    )

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getColdStartStrategy(self) -> str:
        return self.getOrDefault(self.coldStartStrategy)

    def _check_cold_start(self) -> None:
        if self.getColdStartStrategy() not in COLD_START_STRATEGIES:
            raise ValueError(f"coldStartStrategy must be 'nan' or 'drop', got {self.getColdStartStrategy()!r}")


class _RecommenderParams(_RecommenderModelParams):
    """Adds ratingCol, which only fitting reads (ALS keeps it out of ALSModel too)."""

    ratingCol: Param[str] = Param(Params._dummy(), "ratingCol", "column name for ratings", TypeConverters.toString)

    def getRatingCol(self) -> str:
        return self.getOrDefault(self.ratingCol)


class _RecommenderModelSetters(_RecommenderModelParams):
    """The setters a fitted model offers, as ALSModel does."""

    def setUserCol(self, value: str) -> Any:
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> Any:
        return self._set(itemCol=value)

    def setPredictionCol(self, value: str) -> Any:
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> Any:
        return self._set(coldStartStrategy=value)
