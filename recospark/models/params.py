"""Params every recospark model shares with MLlib's ALS, so one evaluate/recommend path serves all."""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasPredictionCol


class HasRatingColumns(HasPredictionCol):
    """userCol, itemCol, ratingCol and coldStartStrategy, named and typed as in ALS."""

    userCol: "Param[str]" = Param(Params._dummy(), "userCol", "column name for user ids (int)", TypeConverters.toString)
    itemCol: "Param[str]" = Param(Params._dummy(), "itemCol", "column name for item ids (int)", TypeConverters.toString)
    ratingCol: "Param[str]" = Param(Params._dummy(), "ratingCol", "column name for ratings", TypeConverters.toString)
    coldStartStrategy: "Param[str]" = Param(
        Params._dummy(),
        "coldStartStrategy",
        "unknown users/items at prediction time: 'nan' (NaN prediction) or 'drop' (drop the row)",
        TypeConverters.toString,
    )

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getRatingCol(self) -> str:
        return self.getOrDefault(self.ratingCol)

    def getColdStartStrategy(self) -> str:
        return self.getOrDefault(self.coldStartStrategy)
