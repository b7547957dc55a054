"""DataFrames from driver data: the broadcast path gives the same rows, in order, as createDataFrame."""

from __future__ import annotations

import numpy as np

from recospark import frames
from recospark.frames import driver_frame, factor_table
from recospark.schema import FACTORS, MOVIES


def _plan(df) -> str:
    return df._jdf.queryExecution().executedPlan().toString()


def test_driver_frame_broadcast_path_keeps_rows_types_and_order(spark, monkeypatch):
    monkeypatch.setattr(frames, "PART_BYTES", 64)  # many blobs: order must hold across partitions
    movies = [(9, "Zoë (1999)", 1999, ["Drama"]), (2, "No year", None, []), (5, 'Ünïcode, "quoted"', 1931, ["Comedy", "War"])] * 7
    small = driver_frame(spark, movies, MOVIES)  # under the inline size: rows in the plan
    large = driver_frame(spark, movies, MOVIES, inline_bytes=0)
    assert "LocalTableScan" in _plan(small) and "LocalTableScan" not in _plan(large)
    assert large.rdd.getNumPartitions() > 1
    assert large.schema == small.schema
    assert [tuple(r) for r in large.collect()] == [tuple(r) for r in small.collect()] == movies


def test_factor_table_frame_round_trips(spark):
    rng = np.random.default_rng(3)
    ids = rng.permutation(300).astype(np.int64)  # any int dtype, any order
    mat = rng.standard_normal((300, 4))
    rows = driver_frame(spark, factor_table(ids, mat), FACTORS, inline_bytes=0).collect()
    assert [r.id for r in rows] == ids.tolist()
    np.testing.assert_array_equal(np.array([r.features for r in rows], np.float32), mat.astype(np.float32))
    empty = driver_frame(spark, factor_table(np.zeros(0, np.int32), np.zeros((0, 4))), FACTORS, inline_bytes=0)
    assert empty.count() == 0
