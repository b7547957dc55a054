"""Fault injection, task side: a chosen task fails on its first attempt only (off unless asked).

It proves that Spark's task retries give the fault-free result: the failure happens before the
task produces anything, and nothing the retry depends on (accumulators, side files) is touched.

Nothing here is global: whoever launches the work passes the partition in explicitly (the
ingest stage from `cfg.faults.dataframe_partition`, the SGD estimator from its
`setFaultPartition`, which the train stage sets from `cfg.faults.sgd_partition`), and the tasks
call `fail_first_attempt` with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pyspark import TaskContext
from pyspark.sql import DataFrame

if TYPE_CHECKING:
    import pandas as pd  # types only: Python workers import this module and need not load pandas


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault injector; a retry of the same task succeeds."""


def fail_first_attempt(partition: int | None, where: str) -> None:
    """Inside a task: raise on the first attempt of `partition` (a no-op for None or outside a task)."""
    ctx = TaskContext.get()
    if partition is not None and ctx is not None and ctx.partitionId() == partition and ctx.attemptNumber() == 0:
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


__all__ = ["InjectedFault", "fail_first_attempt", "with_fault_on_first_attempt"]
