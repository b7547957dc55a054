"""Small DataFrame helpers shared by stages and models."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, Row

__all__ = ["first_row", "with_write_order"]


def first_row(df: DataFrame) -> Row:
    """The first row of a one-row aggregate (an aggregate without grouping always has one)."""
    row = df.first()
    if row is None:
        raise ValueError("expected one row, got none")
    return row


def with_write_order(*cols: str, partitions: int | None = None) -> Callable[[DataFrame], DataFrame]:
    """Hash-partition by `cols` and sort inside each partition: deterministic files in one shuffle,
    without the sampling job a global `orderBy` runs first (each Spark job costs a few tenths of
    a second, which dominates small stages)."""

    def transform(df: DataFrame) -> DataFrame:
        n = partitions or int(df.sparkSession.conf.get("spark.sql.shuffle.partitions") or 8)
        return df.repartition(n, *cols).sortWithinPartitions(*cols)

    return transform
