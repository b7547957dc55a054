"""How a fitted neural model is stored: Spark ML metadata, `weights.safetensors`, Parquet tables. No pickle.

The writer saves the model's metadata (params, hyper-parameters, history, format version), its
weights as safetensors and its tables (ids, and factors or training rows); the reader checks
the class and the format version, refuses weights that are not safetensors, and rebuilds the
model. Bytes go through the local file system or the Hadoop FileSystem (`recospark.jvm`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from typing import Any

import numpy as np
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import FloatType, IntegerType, StructField, StructType

from recospark import fs, jvm
from recospark.models.neural import weights
from recospark.models.neural.launch import local_master
from recospark.paths import is_local, join_path, local_path
from recospark.schema import FACTOR_ID, FACTORS, IDS, MOVIE_ID, RATING, USER_ID

__all__ = [
    "FORMAT_VERSION",
    "TRAIN_ROWS",
    "NeuralReader",
    "NeuralWriter",
    "read_bytes",
    "scratch_folder",
    "sorted_ids",
    "write_bytes",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRAIN_ROWS = StructType(
    [StructField(USER_ID, IntegerType(), False), StructField(MOVIE_ID, IntegerType(), False), StructField(RATING, FloatType(), False)]
)


def sorted_ids(rows: DataFrame, column: str) -> np.ndarray:
    """Sorted unique ids of one column, computed by Spark: O(users) or O(items) on the driver."""
    pdf = rows.select(column).distinct().toPandas()
    return np.sort(pdf[column].to_numpy(np.int32))


class NeuralWriter(MLWriter):
    """Saves a fitted neural model (a `NeuralRecommenderModel`; typed Any, as the estimator module imports this one): metadata, safetensors weights, its Parquet tables."""

    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        """Write the model under `path` (MLWriter.save has checked the path and the overwrite flag)."""
        model = self.instance
        DefaultParamsWriter.saveMetadata(model, path, self.sparkSession, extraMetadata=model._metadata())
        write_bytes(self.sparkSession, join_path(path, weights.FILE_NAME), model.weightsBytes)
        for name, table in model._saved_tables(self.sparkSession).items():
            table.write.mode("overwrite").parquet(join_path(path, name))


class NeuralReader(MLReader):
    """Loads what `NeuralWriter` saved, for one model class; anything else is refused."""

    def __init__(self, cls: type[Any]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        """The model saved at `path`: a ValueError when the class or format differs or the weights are not safetensors."""
        spark = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata["class"] != expected:
            raise ValueError(f"{path} holds a {metadata['class']}, not a {expected}")
        if metadata.get("formatVersion") != FORMAT_VERSION:
            raise ValueError(f"{path}: model format {metadata.get('formatVersion')!r}, this code reads {FORMAT_VERSION}")
        where = join_path(path, weights.FILE_NAME)
        data = read_bytes(spark, where)
        weights.check_safetensors(data, where)
        ids = {name: sorted_ids(spark.read.schema(IDS).parquet(join_path(path, name)), FACTOR_ID) for name in ("userIds", "itemIds")}
        schemas = {"userFactors": FACTORS, "itemFactors": FACTORS, "trainRows": TRAIN_ROWS}
        tables = {name: spark.read.schema(schemas[name]).parquet(join_path(path, name)) for name in self.cls._TABLES}
        model = self.cls(
            metadata["hyperParameters"],
            ids["userIds"],
            ids["itemIds"],
            data,
            metadata.get("history"),
            metadata.get("bestEpoch", 0),
            tables,
            metadata.get("trainingRanks"),
        )
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write `data` to a local path or through the Hadoop FileSystem."""
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return
    jvm.hadoop_write(spark, uri, data)


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """Read a whole file from a local path or through the Hadoop FileSystem."""
    if is_local(uri):
        return local_path(uri).read_bytes()
    data = jvm.hadoop_read(spark, uri)
    if data is None:
        raise FileNotFoundError(uri)
    return data


def scratch_folder(spark: SparkSession) -> tuple[str, Any]:
    """(a fresh folder URI every rank can read, its cleanup): under the checkpoint dir; under a
    local master without one, a local temporary folder."""
    sc = spark.sparkContext
    root = sc.getCheckpointDir()
    if root:
        folder = join_path(root, f"neural-fit-rows-{uuid.uuid4().hex[:12]}")
        return folder, lambda: remove_quietly(spark, folder)
    if not local_master(spark):
        raise ValueError(
            "neural models need a checkpoint directory on storage every executor can read (SparkContext.setCheckpointDir; "
            "the pipeline sets runtime.checkpoint_dir): the ranks read the fit rows from there"
        )
    tmp = tempfile.mkdtemp(prefix="recospark-neural-")
    return join_path(tmp, "rows"), lambda: shutil.rmtree(tmp, ignore_errors=True)


def remove_quietly(spark: SparkSession, uri: str) -> None:
    """Remove a folder, logging (not raising) a failure: a cleanup never masks the fit's own outcome."""
    try:
        fs.remove_tree(spark, uri)
    except Exception as err:  # never mask the fit's own outcome
        log.warning("could not remove %s: %s", uri, err)
