"""What the driver hands every rank (shared by the torch-free launcher and the torch training loop).

Under a cluster master, TorchDistributor unpickles the job in a barrier task's Python worker,
which imports recospark from wherever Spark put it (the --py-files zip is on that worker's
sys.path only), and then starts torchrun, whose ranks are fresh interpreters that inherit the
environment, not sys.path. Unpickling a `TrainJob` therefore exports the unpickling process's
sys.path in PYTHONPATH, so the ranks import the same code.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from recospark.models.neural.recipe import Recipe

__all__ = ["ERROR_MARK", "PROGRESS_EVERY_S", "PROGRESS_MARK", "TrainJob", "epoch_line", "export_sys_path"]

ERROR_MARK = "recospark-neural-rank-failed"
# Rank 0 prints this marker before an epoch line; the launcher relays such lines to the driver's log.
PROGRESS_MARK = "recospark-neural-epoch"
PROGRESS_EVERY_S = 30.0  # at most one epoch line per this many seconds, besides the first and the last


def epoch_line(name: str, entry: dict[str, Any], epochs: int, elapsed: float) -> str:
    """One progress line for a finished epoch (`entry` as in the fit's history).

    >>> line = epoch_line("gmf", {"epoch": 3, "loss": 1 / 4, "metric": "ndcg", "val_ndcg": 1 / 8}, 20, elapsed=3.6)
    >>> line.startswith("gmf: epoch 3/20 loss=0.2500 val_ndcg=0.1250 ("), line.endswith(" s)")
    (True, True)
    """
    metric = entry.get("metric")
    value = entry.get(f"val_{metric}") if metric else None
    shown = f" val_{metric}={value:.4f}" if value is not None else ""
    return f"{name}: epoch {entry['epoch']}/{epochs} loss={entry['loss']:.4f}{shown} ({elapsed:.0f} s)"


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
    spin: bool = False  # OpenMP threads spin between operations (`openmp_wait`): the rank has its cores to itself

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        export_sys_path()


def export_sys_path() -> None:
    """Append this process's import path to PYTHONPATH, for the interpreters it starts next."""
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    mine = [p for p in sys.path if p and os.path.exists(p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*current, *mine]))
