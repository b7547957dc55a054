"""The one home of JVM internals: everything that reaches through Py4J (`sc._jsc`, `sc._jvm`, `sc._gateway`).

Library code asks these functions instead of touching Py4J itself, so a pyspark upgrade that
moves an internal breaks one module, and Spark Connect (which has no JVM handle) fails in one place.
The Hadoop FileSystem objects handed out here are Java objects behind Py4J; their public Hadoop
API (`exists`, `listStatus`, `create`, ...) is used where they are needed (`recospark.fs`,
`recospark.datasets.movielens`).
"""

from __future__ import annotations

import os
from typing import Any

from pyspark import SparkContext
from pyspark.sql import SparkSession

__all__ = [
    "executor_count",
    "hadoop_fs",
    "hadoop_path",
    "hadoop_read",
    "hadoop_replace",
    "jvm_running",
    "registered_executors",
    "restore_checkpoint_dir",
]


def _jvm(spark: SparkSession) -> Any:
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # a live SparkContext
    return jvm


def _jsc(spark: SparkSession) -> Any:
    jsc = spark.sparkContext._jsc
    assert jsc is not None  # a live SparkContext
    return jsc


# --------------------------------------------------------------------------- the driver JVM


def jvm_running() -> bool:
    """Whether this process's driver JVM exists already (a SparkContext ran, or spark-submit started us).

    >>> jvm_running()  # the test session's context is up
    True
    """
    return SparkContext._jvm is not None or "PYSPARK_GATEWAY_PORT" in os.environ


def executor_count(spark: SparkSession) -> int:
    """Executors registered with the application, the driver not counted (at least 1).

    >>> executor_count(spark)  # local mode: the driver is the only executor
    1
    """
    return max(1, _jsc(spark).sc().getExecutorMemoryStatus().size() - 1)


def registered_executors(spark: SparkSession) -> int:
    """Executors the status tracker lists now, the driver not counted (0 until the first registers).

    >>> registered_executors(spark)  # local mode: only the driver
    0
    """
    infos = _jsc(spark).sc().statusTracker().getExecutorInfos()
    return max(len(infos) - 1, 0)  # the driver is listed too


def restore_checkpoint_dir(spark: SparkSession, previous: str | None) -> None:
    """Set the context's checkpoint folder back to `previous` (None: unset) without creating anything.

    `SparkContext.setCheckpointDir` would add a fresh uuid folder below the given one, so the
    Scala field is set directly. Raises when this Spark version has no such field; does nothing
    when the context has stopped.
    """
    sc = spark.sparkContext
    jvm, jsc = sc._jvm, sc._jsc
    if jvm is None or jsc is None:
        return
    value = jvm.scala.Some(previous) if previous else jvm.scala.Option.empty()
    getattr(jsc.sc(), "checkpointDir_$eq")(value)


# --------------------------------------------------------------------------- Hadoop file systems


def hadoop_path(spark: SparkSession, uri: Any, child: str | None = None) -> Any:
    """A Hadoop `Path` for a URI (or a `Path`), or for `child` inside it."""
    cls = _jvm(spark).org.apache.hadoop.fs.Path
    return cls(uri) if child is None else cls(uri, child)


def hadoop_fs(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """(FileSystem, Path) for a URI on any Hadoop file system (hdfs://, s3a://, file:, ...).

    >>> fs, path = hadoop_fs(spark, "file:///")
    >>> bool(fs.exists(path))
    True
    """
    path = hadoop_path(spark, uri)
    return path.getFileSystem(_jsc(spark).hadoopConfiguration()), path


def hadoop_read(spark: SparkSession, uri: str) -> bytes | None:
    """The whole content of a (small) file on any Hadoop file system, or None when it does not exist."""
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        return None
    stream = fs.open(path)
    try:
        return bytes(_jvm(spark).org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def hadoop_write(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write (or overwrite) a small file on any Hadoop file system."""
    fs, path = hadoop_fs(spark, uri)
    out = fs.create(path, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def hadoop_replace(spark: SparkSession, src: Any, dst: Any) -> None:
    """Rename Hadoop Path `src` over `dst` through FileContext with OVERWRITE: one NameNode operation
    on HDFS. Raises on a file system without FileContext support (the caller falls back)."""
    jvm = _jvm(spark)
    gateway = spark.sparkContext._gateway
    assert gateway is not None
    rename = jvm.org.apache.hadoop.fs.Options.Rename
    options = gateway.new_array(rename, 1)
    options[0] = rename.OVERWRITE
    jvm.org.apache.hadoop.fs.FileContext.getFileContext(dst.toUri(), _jsc(spark).hadoopConfiguration()).rename(src, dst, options)
