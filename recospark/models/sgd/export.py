"""The end of a run: factor blobs -> BIASED_FACTORS rows (id, features, bias), checkpointed.

Task half, `blobs_to_factor_rows` (mapInArrow): decodes factor blocks and emits Arrow batches
straight from their arrays. Driver half, `factor_frames`: one Arrow pass and one checkpoint, so
the blocks, the store and the training lineage can go while the model keeps its factors.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from recospark.models.sgd.codec import decode_factors
from recospark.models.sgd.run import Run, udf_of
from recospark.schema import BIASED_FACTORS

BLOB_SCHEMA = "kind string, grp int, blob binary"  # factor blocks as rows: ("U"/"I", group, blob)


def blobs_to_factor_rows(batches: Iterator, *, chunk: int = 8192, with_kind: bool = False) -> Iterator:
    """mapInArrow: (kind, grp, blob) batches -> (id int, features array<float>, bias float)
    batches, preceded by a `kind` column ("U"/"I") when `with_kind`."""

    for batch in batches:
        for blob in batch.column("blob").to_pylist():
            fb = decode_factors(blob, writable=False)
            n, k = fb.factors.shape
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                values = pa.array(np.ascontiguousarray(fb.factors[lo:hi]).reshape(-1), type=pa.float32())
                offsets = pa.array(np.arange(0, (hi - lo) * k + 1, k, dtype=np.int32))
                columns = [
                    pa.array(fb.ids[lo:hi], type=pa.int32()),
                    pa.ListArray.from_arrays(offsets, values),
                    pa.array(fb.biases[lo:hi], type=pa.float32()),
                ]
                names = ["id", "features", "bias"]
                if with_kind:
                    columns, names = [pa.array([fb.kind] * (hi - lo), type=pa.string()), *columns], ["kind", *names]
                yield pa.RecordBatch.from_arrays(columns, names=names)


def split_kinds(both: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(users, items) BIASED_FACTORS frames from rows with a `kind` column ("U"/"I")."""
    return both.filter(F.col("kind") == "U").drop("kind"), both.filter(F.col("kind") == "I").drop("kind")


def factor_frames(run: Run, blobs: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(users, items) BIASED_FACTORS frames from (kind, grp, blob) rows: one Arrow pass and one
    checkpoint (so the blocks, the store and the training lineage can go)."""
    schema = StructType([StructField("kind", StringType(), False), *BIASED_FACTORS.fields])
    rows = blobs.select("blob").mapInArrow(udf_of(blobs_to_factor_rows, with_kind=True), schema)
    return split_kinds(run.checkpointed(rows))


__all__ = ["BLOB_SCHEMA", "blobs_to_factor_rows", "factor_frames", "split_kinds"]
