"""SparkSession from config. The master is never set here: spark-submit (or the `spark`
section of a conf file) decides, and a bare `recospark` run falls back to Spark's local default.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from recospark.config import Config

# Applied only where neither the conf file nor spark-submit set them.
_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "true",
}


def build_session(cfg: Config, app_name: str = "recospark") -> SparkSession:
    # Python workers must run the interpreter that has numpy/numba; on a cluster the conf's
    # spark.pyspark.python (pointing into the shipped archive) takes precedence over this.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in _DEFAULTS.items():
        if key not in cfg.spark:
            builder = builder.config(key, value)
    for key, value in cfg.spark.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    configure(spark, cfg)
    return spark


def configure(spark: SparkSession, cfg: Config) -> None:
    """Per-run settings that also apply to a session someone else built (tests, notebooks)."""
    spark.sparkContext.setLogLevel(cfg.runtime.log_level)
    # Without a checkpoint dir, ALS with maxIter >= 20 dies with StackOverflowError.
    spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
