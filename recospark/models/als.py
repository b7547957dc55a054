"""MLlib ALS built from config, with the column names of the ratings dataset."""

from __future__ import annotations

from typing import Any, Mapping

from pyspark.ml.recommendation import ALS

from recospark.config import ALSConf
from recospark.schema import MOVIE_ID, PREDICTION, RATING, USER_ID

# config name -> ALS Param name; the tune stage maps grids through this too.
PARAM_NAMES = {
    "rank": "rank",
    "max_iter": "maxIter",
    "reg_param": "regParam",
    "implicit_prefs": "implicitPrefs",
    "alpha": "alpha",
    "nonnegative": "nonnegative",
    "cold_start_strategy": "coldStartStrategy",
    "seed": "seed",
    "num_blocks": "numUserBlocks",
    "checkpoint_interval": "checkpointInterval",
}


def build_als(conf: ALSConf, overrides: Mapping[str, Any] | None = None) -> ALS:
    values = {**conf.model_dump(), **dict(overrides or {})}
    params = {PARAM_NAMES[k]: v for k, v in values.items() if k in PARAM_NAMES}
    params["numItemBlocks"] = params["numUserBlocks"]
    # ALS's constructor has no predictionCol keyword; the setter does the same.
    return ALS(userCol=USER_ID, itemCol=MOVIE_ID, ratingCol=RATING, **params).setPredictionCol(PREDICTION)
