"""What the driver hands every rank (shared by the torch-free launcher and the torch training loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recospark.models.neural.recipe import Recipe

__all__ = ["ERROR_MARK", "TrainJob"]

ERROR_MARK = "recospark-neural-rank-failed"


@dataclass(frozen=True)
class TrainJob:
    """Everything a rank needs, pickled once by TorchDistributor (small: no ratings, only ids)."""

    recipe: Recipe
    hp: dict[str, Any]  # every Param value of the estimator plus the engine's entries (ratingMean)
    rows_path: str  # the fit rows' Parquet folder (data.USER, ITEM, RATING, VALIDATION)
    user_ids: np.ndarray  # int32, sorted unique: row r of the user embedding is user_ids[r]
    item_ids: np.ndarray
    threads: int  # torch threads per rank: the cores of one rank's task
    validate: bool  # validation rows exist
