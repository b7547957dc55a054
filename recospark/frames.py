"""Small DataFrame helpers shared by stages and models.

`driver_frame` makes a DataFrame of data the driver holds (item factors, id maps, the parsed
movies file). `spark.createDataFrame(rows)` puts the rows in the plan itself, so every task
that reads them carries them in its serialized closure: past 1 MB Spark warns "contains a task
of very large size" and ships the rows again with every task. `driver_frame` keeps small tables
that way and sends larger ones as Arrow IPC blobs in broadcasts, one per partition, expanded by
the executors; either way the rows come out in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from recospark.schema import FACTOR_ID, FEATURES, IDS, ITEM_INDEX_COL, MOVIE_ID

__all__ = ["driver_frame", "factor_table", "first_row", "id_frame", "index_table", "with_write_order"]

# Arrow bytes under which the rows stay in the plan (Spark's rows take up to ~3x more, under its 1 MB warning)
INLINE_BYTES = 256 * 1024
# Arrow bytes per broadcast blob, i.e. per partition of a larger table
PART_BYTES = 8 * 1024 * 1024


def factor_table(ids: np.ndarray, matrix: np.ndarray) -> pa.Table:
    """`id int, features array<float>` (schema.FACTORS) as an Arrow table, built without Python floats.

    Examples
    --------
    >>> import numpy as np
    >>> factor_table(np.array([3, 7]), np.array([[1.0, 2.0], [3.0, 4.0]])).to_pylist()
    [{'id': 3, 'features': [1.0, 2.0]}, {'id': 7, 'features': [3.0, 4.0]}]
    """
    mat = np.ascontiguousarray(matrix, dtype=np.float32)  # [len(ids), dim]
    offsets = pa.array(np.arange(len(ids) + 1, dtype=np.int32) * mat.shape[1])
    features = pa.ListArray.from_arrays(offsets, pa.array(mat.ravel(), type=pa.float32()))
    return pa.Table.from_arrays([pa.array(np.asarray(ids, np.int32)), features], names=[FACTOR_ID, FEATURES])


def index_table(item_ids: np.ndarray) -> pa.Table:
    """`movie_id int, _item_index int` (schema.ITEM_INDEX): each id's position in `item_ids`, a matrix column.

    Examples
    --------
    >>> import numpy as np
    >>> index_table(np.array([4, 9])).to_pylist()
    [{'movie_id': 4, '_item_index': 0}, {'movie_id': 9, '_item_index': 1}]
    """
    ids = np.asarray(item_ids, np.int32)
    return pa.Table.from_arrays([pa.array(ids), pa.array(np.arange(len(ids), dtype=np.int32))], names=[MOVIE_ID, ITEM_INDEX_COL])


def id_frame(spark: SparkSession, ids: np.ndarray) -> DataFrame:
    """`id int` rows (schema.IDS), one per id in order: a scorer's candidate items, a model's id lists.

    Examples
    --------
    >>> import numpy as np
    >>> [r.id for r in id_frame(spark, np.array([7, 3])).collect()]
    [7, 3]
    """
    return driver_frame(spark, pa.table({FACTOR_ID: np.asarray(ids, np.int32)}), IDS)


def _arrow(data: pa.Table | Sequence[tuple], schema: StructType) -> pa.Table:
    target = to_arrow_schema(schema)
    if isinstance(data, pa.Table):
        return data.select(target.names).cast(target)  # columns by name, types as the schema says
    columns = list(zip(*data, strict=True)) if len(data) else [() for _ in target]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, target, strict=True)], schema=target)


def _expand(batches: Iterator[pa.RecordBatch], blobs: list[Any]) -> Iterator[pa.RecordBatch]:
    """Executor side: each input row names a blob; yield that blob's batches."""
    for batch in batches:
        for part in batch.column(0).to_pylist():
            yield from pa.ipc.open_stream(blobs[part].value).read_all().to_batches()


def driver_frame(spark: SparkSession, data: pa.Table | Sequence[tuple], schema: StructType, inline_bytes: int = INLINE_BYTES) -> DataFrame:
    """A DataFrame of `data` (an Arrow table, or rows as tuples in `schema`'s order), rows in order.

    Tables over `inline_bytes` of Arrow data reach the executors through broadcasts, not in
    every task, so a large table neither draws Spark's task-size warning nor travels again with
    each task.

    Examples
    --------
    >>> from pyspark.sql.types import IntegerType, StructField, StructType
    >>> schema = StructType([StructField("movie_id", IntegerType())])
    >>> [r.movie_id for r in driver_frame(spark, [(5,), (2,), (9,)], schema, inline_bytes=0).collect()]
    [5, 2, 9]
    """
    table = _arrow(data, schema)
    if table.num_rows == 0:
        return spark.createDataFrame([], schema)
    if table.nbytes <= inline_bytes:
        return spark.createDataFrame(table, schema)
    parts = max(1, -(-table.nbytes // PART_BYTES))
    step = -(-table.num_rows // parts)
    blobs = []
    for start in range(0, table.num_rows, step):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(start, step))
        blobs.append(spark.sparkContext.broadcast(sink.getvalue().to_pybytes()))

    def expand(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _expand(batches, blobs)

    return spark.range(len(blobs), numPartitions=len(blobs)).mapInArrow(expand, schema)


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
