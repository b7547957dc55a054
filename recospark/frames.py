"""Small DataFrame helpers shared by stages and models."""

from __future__ import annotations

from pyspark.sql import DataFrame, Row

__all__ = ["first_row"]


def first_row(df: DataFrame) -> Row:
    """The first row of a one-row aggregate (an aggregate without grouping always has one)."""
    row = df.first()
    if row is None:
        raise ValueError("expected one row, got none")
    return row
