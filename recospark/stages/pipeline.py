"""The stage table and the `pipeline` stage: every configured stage in order, in one Spark application.

Each stage declares what it reads and what it publishes (relative output paths), so that
`preflight` can tell, before any SparkContext starts, that `recommend` was asked for before
`train` ever ran, and name the stage to run first. Data flows one way:

    raw -> ingest -> split -> (tune) -> train -> recommend -> evaluate -> report
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from recospark import io
from recospark.config import Config
from recospark.stages import evaluate, generate, ingest, recommend, report, split, train, tune

__all__ = ["STAGES", "Stage", "preflight", "run", "run_stage"]

log = logging.getLogger(__name__)


def _split_dir(cfg: Config) -> str:
    return f"splits/{cfg.split.effective_name}"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[SparkSession, Config], dict[str, Any]]
    help: str
    reads: Callable[[Config], list[str]]
    publishes: Callable[[Config], list[str]]
    check: Callable[[Config], None] | None = None  # extra checks that need no Spark


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "ingest",
            ingest.run,
            "MovieLens files -> ratings/, movies/, rejected/ (and canonical/ for ml-100k's split files)",
            lambda cfg: [],
            lambda cfg: ["ratings", "movies", "rejected", "canonical"],
            ingest.preflight,
        ),
        Stage(
            "split",
            split.run,
            "ratings/ -> splits/<name>/{train,test}",
            split.required,
            lambda cfg: [f"{_split_dir(cfg)}/train", f"{_split_dir(cfg)}/test"],
        ),
        Stage(
            "tune",
            tune.run,
            "grid search on a validation split carved from train -> tuning/",
            lambda cfg: [f"{_split_dir(cfg)}/train"],
            lambda cfg: ["tuning"],
        ),
        Stage(
            "train",
            train.run,
            "fit every model of train.models -> models/<model>/",
            lambda cfg: [f"{_split_dir(cfg)}/train"] + (["tuning"] if cfg.train.use_tuned else []),
            lambda cfg: [f"models/{m}" for m in cfg.train.models],
        ),
        Stage(
            "recommend",
            recommend.run,
            "top-N per user, rated items excluded -> recommendations/<model>/",
            lambda cfg: [f"{_split_dir(cfg)}/train", "movies", *[f"models/{m}" for m in cfg.train.models]],
            lambda cfg: [f"recommendations/{m}" for m in cfg.train.models] + ["recommendations/recommended"],
        ),
        Stage(
            "evaluate",
            evaluate.run,
            "score the published lists and the models on the test split -> metrics/",
            lambda cfg: [
                f"{_split_dir(cfg)}/train",
                f"{_split_dir(cfg)}/test",
                *[f"models/{m}" for m in cfg.train.models],
                *[f"recommendations/{m}" for m in cfg.train.models],
            ],
            lambda cfg: ["metrics"],
        ),
        Stage(
            "report",
            report.run,
            "static HTML report from the published outputs -> report/index.html",
            lambda cfg: [],  # renders what exists; a missing input becomes a note in the page
            lambda cfg: ["report"],
        ),
        Stage(
            "generate",
            generate.run,
            "synthetic MovieLens-shaped data in a MovieLens layout -> <generate.folder>/",
            lambda cfg: [],
            lambda cfg: [cfg.generate.folder],
        ),
    )
}


def preflight(cfg: Config, stages: list[str]) -> None:
    """Everything that can be checked before Spark starts, for `stages` run in order.

    An output a stage reads must be published already or be published by an earlier stage of
    the same run; otherwise the error names the stage that publishes it. Checks of non-local
    output roots wait for Spark (they need Hadoop's file systems).
    """
    io.check_writable(cfg)
    coming: set[str] = set()
    for name in stages:
        stage = STAGES[name]
        if stage.check is not None:
            stage.check(cfg)
        for relpath in stage.reads(cfg):
            if relpath not in coming and not io.published(cfg, relpath):
                raise io.prerequisite_error(cfg, relpath, needed_by=name)
        coming.update(stage.publishes(cfg))


def run_stage(name: str, spark: SparkSession, cfg: Config) -> dict[str, Any]:
    return STAGES[name].run(spark, cfg)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Run `pipeline.stages` in order in this Spark application; returns every stage's result."""
    started = time.monotonic()
    results = {}
    for i, name in enumerate(cfg.pipeline.stages, 1):
        log.info("pipeline [%d/%d] %s", i, len(cfg.pipeline.stages), name)
        results[name] = run_stage(name, spark, cfg)
    return {"stage": "pipeline", "stages": results, "seconds": round(time.monotonic() - started, 2)}
