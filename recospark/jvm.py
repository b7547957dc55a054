"""The one home of JVM internals: everything that reaches through Py4J (`sc._jsc`, `sc._jvm`).

Library code asks these functions instead of touching Py4J itself, so a pyspark upgrade that
moves an internal breaks one module, and Spark Connect (which has no JVM handle) fails in one place.
"""

from __future__ import annotations

from pyspark.sql import SparkSession


def executor_count(spark: SparkSession) -> int:
    """Executors registered with the application, the driver not counted (at least 1).

    >>> executor_count(spark)  # local mode: the driver is the only executor
    1
    """
    jsc = spark.sparkContext._jsc
    assert jsc is not None  # a live SparkContext
    return max(1, jsc.sc().getExecutorMemoryStatus().size() - 1)


__all__ = ["executor_count"]
