"""Conf-driven fault injection (off by default): a chosen task fails on its first attempt only.

It proves that Spark's task retries give the fault-free result: the failure happens before the
task produces anything, and nothing the retry depends on (accumulators, side files) is touched.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd
from pyspark import TaskContext
from pyspark.sql import DataFrame


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault injector; a retry of the same task succeeds."""


def should_fail(partition: int | None) -> bool:
    ctx = TaskContext.get()
    return partition is not None and ctx is not None and ctx.partitionId() == partition and ctx.attemptNumber() == 0


def fail_first_attempt(partition: int | None, where: str) -> None:
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
