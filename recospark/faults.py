"""Conf-driven fault injection (off by default): a chosen task fails on its first attempt only.

It proves that Spark's task retries give the fault-free result: the failure happens before the
task produces anything, and nothing the retry depends on (accumulators, side files) is touched.

Stages arm the faults of `cfg.faults` around their work (`with faults.armed(cfg.faults): ...`);
library code asks `faults.partition_for("sgd")` on the driver and hands the number to its tasks,
which call `fail_first_attempt`. No estimator carries a test-only Param.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from pyspark import TaskContext
from pyspark.sql import DataFrame

if TYPE_CHECKING:
    import pandas as pd  # types only: Python workers import this module and need not load pandas


class FaultsConf(Protocol):
    """The `faults` section of the configuration (read-only)."""

    @property
    def sgd_partition(self) -> int | None: ...

    @property
    def dataframe_partition(self) -> int | None: ...


# where -> partition whose first attempt fails; set on the driver by `armed`
_ARMED: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault injector; a retry of the same task succeeds."""


@contextmanager
def armed(conf: FaultsConf) -> Iterator[None]:
    """Arm the configured faults for the duration of a stage (driver side)."""
    previous = dict(_ARMED)
    _ARMED.clear()
    if conf.sgd_partition is not None:
        _ARMED["sgd"] = conf.sgd_partition
    if conf.dataframe_partition is not None:
        _ARMED["dataframe"] = conf.dataframe_partition
    try:
        yield
    finally:
        _ARMED.clear()
        _ARMED.update(previous)


def partition_for(where: str) -> int | None:
    """The partition armed to fail in `where` ("sgd", "dataframe"), or None."""
    return _ARMED.get(where)


def should_fail(partition: int | None) -> bool:
    ctx = TaskContext.get()
    return partition is not None and ctx is not None and ctx.partitionId() == partition and ctx.attemptNumber() == 0


def fail_first_attempt(partition: int | None, where: str) -> None:
    """Inside a task: raise on the first attempt of `partition` (a no-op for None)."""
    if should_fail(partition):
        raise InjectedFault(f"injected fault in {where}, partition {partition}, attempt 0 (faults.* in conf)")


def with_fault_on_first_attempt(partition: int | None, where: str) -> Callable[[DataFrame], DataFrame]:
    """Identity transform whose task for `partition` fails once; a no-op when `partition` is None."""

    def transform(df: DataFrame) -> DataFrame:
        if partition is None:
            return df

        def passthrough(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            fail_first_attempt(partition, where)
            yield from batches

        return df.mapInPandas(passthrough, df.schema)

    return transform
