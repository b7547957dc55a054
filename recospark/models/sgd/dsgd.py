"""The engine's entry point: `fit_dsgd` runs the setup pass, then the plan the cluster calls for.

Hierarchical stratified distributed SGD (DSGD, Gemulla et al., KDD 2011; inner strata on
threads as in FPSGD/LIBMF, Chin et al. 2015) for biased matrix factorization and ranking
losses, on Spark. The package docstring (`recospark.models.sgd`) draws the whole picture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recospark.models.sgd import plan_multi, plan_single, setup_pass
from recospark.models.sgd.epochs import EpochRecord
from recospark.models.sgd.records import RunInfo
from recospark.models.sgd.run import Run
from recospark.models.sgd.settings import DSGDParams
from recospark.models.sgd.setup_pass import ITEM, RATING, RATING_BYTES, USER


@dataclass(frozen=True)
class DSGDResult:
    """A finished run: the best factors (BIASED_FACTORS frames), the global mean, the epochs and
    the run's report. `history` and `info` are the plain dicts the model and the manifest keep."""

    user_factors: DataFrame
    item_factors: DataFrame
    global_mean: float
    epochs: tuple[EpochRecord, ...] = ()
    best_epoch: int = 0
    n_train: int = 0
    n_validation: int = 0
    run: RunInfo | None = field(default=None, compare=False)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per epoch (`EpochRecord.to_dict`): what the model saves and the manifest shows."""
        return [e.to_dict() for e in self.epochs]

    @property
    def info(self) -> dict[str, Any]:
        """The run's report as a JSON-ready dict (`RunInfo.to_dict`); empty when there is none."""
        return {} if self.run is None else self.run.to_dict()


class DSGD(Run):
    """One training run. `prepare` cuts the data into blocks once; `fit` trains and returns
    factors as DataFrames. The driver only sees scalars."""

    def prepare(self, train: DataFrame, validation: DataFrame | None) -> None:
        """`train`/`validation`: columns USER, ITEM (int) and RATING (float); the setup pass."""
        setup_pass.prepare(self, train, validation)

    def fit(self) -> DSGDResult:
        """Train by the run's plan; the store and the caches go afterwards, also on failure."""
        started = time.monotonic()
        try:
            out = plan_single.fit_single(self) if self.plan.single else plan_multi.fit_multi(self)
        finally:
            self.cleanup()
        self.record.fit_seconds = round(time.monotonic() - started, 3)
        return DSGDResult(
            user_factors=out.users,
            item_factors=out.items,
            global_mean=self.mu,
            epochs=tuple(out.history),
            best_epoch=out.best_epoch,
            n_train=self.n_train,
            n_validation=self.n_validation,
            run=self.record,
        )


def fit_dsgd(
    spark: SparkSession, train: DataFrame, validation: DataFrame | None, params: DSGDParams, *, fault_partition: int | None = None
) -> DSGDResult:
    """Fit on `train`/`validation` (columns USER, ITEM int and RATING float; validation may be None).

    `fault_partition` (fault injection, off by default): the first attempt of that training
    task fails, to prove that Spark's retry gives the fault-free result.
    """
    driver = DSGD(spark, params, fault_partition)
    try:
        driver.prepare(train, validation)
    except BaseException:
        driver.cleanup()
        raise
    return driver.fit()


__all__ = ["DSGD", "ITEM", "RATING", "RATING_BYTES", "USER", "DSGDParams", "DSGDResult", "fit_dsgd"]
