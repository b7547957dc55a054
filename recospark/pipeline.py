"""The `pipeline` stage: every configured stage in order, in one Spark application."""

from __future__ import annotations

import logging
import time
from importlib import import_module

from pyspark.sql import SparkSession

from recospark.config import Config

log = logging.getLogger(__name__)

STAGE_MODULES = {
    "ingest": "recospark.ingest",
    "split": "recospark.split",
    "tune": "recospark.tune",
    "train": "recospark.train",
    "evaluate": "recospark.evaluate",
    "recommend": "recospark.recommend",
    "report": "recospark.report",
    "generate": "recospark.datasets.generator",
}


def run_stage(stage: str, spark: SparkSession, cfg: Config) -> dict:
    return import_module(STAGE_MODULES[stage]).run(spark, cfg)


def run(spark: SparkSession, cfg: Config) -> dict:
    started = time.monotonic()
    results = {}
    for i, stage in enumerate(cfg.pipeline.stages, 1):
        log.info("pipeline [%d/%d] %s", i, len(cfg.pipeline.stages), stage)
        results[stage] = run_stage(stage, spark, cfg)
    return {"stage": "pipeline", "stages": results, "seconds": round(time.monotonic() - started, 2)}
