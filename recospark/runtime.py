"""What every stage's `run` shares, however it is called (console, spark-submit, pipeline, Python).

`@stage_run("train")` gives the stage its own checkpoint folder
and removes that folder when the stage ends, on success and on failure (so a run leaves no
`_checkpoints/<uuid>/` behind), logs start and end, and adds `seconds` to the result.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

from recospark import fs, jvm
from recospark.config import Config
from recospark.models import OVERLAP_PROPERTY
from recospark.paths import join_path

log = logging.getLogger("recospark")

Result = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Result])
T = TypeVar("T")
R = TypeVar("R")

# per-model work of one stage runs on this many driver threads at most (see `for_each_model`)
MODEL_THREADS = 4


@contextmanager
def checkpoint_scope(spark: SparkSession, cfg: Config, stage: str) -> Iterator[str]:
    """A fresh checkpoint folder for one stage, deleted afterwards; the previous setting is restored."""
    sc = spark.sparkContext
    previous = sc.getCheckpointDir()
    folder = join_path(cfg.checkpoint_dir, f"{stage}-{uuid.uuid4().hex[:12]}")
    sc.setCheckpointDir(folder)
    try:
        yield folder
    finally:
        try:
            fs.remove_tree(spark, folder)
        except Exception as err:  # never mask the stage's own error with a cleanup error
            log.warning("could not remove checkpoint folder %s: %s", folder, err)
        # Point the context back at the folder it had; failing that, the deleted folder stays
        # set and Spark recreates it on the next checkpoint.
        try:
            jvm.restore_checkpoint_dir(spark, previous)
        except Exception as err:
            log.debug("could not restore the checkpoint dir: %s", err)


def for_each_model(spark: SparkSession | None, work: Callable[[T], R], models: Iterable[T], threads: int = MODEL_THREADS) -> list[R]:
    """`work` over `models` on a few driver threads; results in the models' order.

    Why: a model's recommend or evaluate work is dozens of small Spark jobs, each mostly driver
    latency (planning, py4j, file commits). Spark schedules jobs from several threads at once, so
    one model's jobs run while another's are being planned. Models share only read-only cached
    inputs and write disjoint outputs. Every started model finishes before the first error is
    raised, so no thread is left writing behind a failed stage. While models run side by side,
    their threads see the Spark local property `OVERLAP_PROPERTY` set to "true".
    """
    items = list(models)
    if len(items) <= 1 or threads <= 1:
        return [work(x) for x in items]
    if spark is None:
        return _on_threads(work, items, threads)
    sc = spark.sparkContext
    before = sc.getLocalProperty(OVERLAP_PROPERTY)
    sc.setLocalProperty(OVERLAP_PROPERTY, "true")
    try:
        # the caller's Spark local properties and tags (with OVERLAP_PROPERTY), in each thread
        return _on_threads(inheritable_thread_target(spark)(work), items, threads)
    finally:
        sc.setLocalProperty(OVERLAP_PROPERTY, cast(str, before))  # None (unset before) removes it


def _on_threads(work: Callable[[T], R], items: list[T], threads: int) -> list[R]:
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="recospark-model") as pool:
        futures = [pool.submit(work, x) for x in items]
        return [f.result() for f in futures]


def stage_run(name: str) -> Callable[[F], F]:
    """Decorate a stage's `run(spark, cfg)`; see the module docstring."""

    def decorate(run: F) -> F:
        @functools.wraps(run)
        def wrapper(spark: SparkSession, cfg: Config) -> Result:
            started = time.monotonic()
            log.info("%s: start", name)
            with checkpoint_scope(spark, cfg, name):
                result = run(spark, cfg)
            result = {"stage": name, **result, "seconds": round(time.monotonic() - started, 2)}
            log.info("%s: done in %.1f s", name, result["seconds"])
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
