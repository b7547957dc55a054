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
from recospark.models.table import MODELS
from recospark.stages import evaluate, generate, ingest, recommend, report, split, train, tune

__all__ = ["STAGES", "Stage", "preflight", "run", "run_stage"]

log = logging.getLogger(__name__)


def _split_dir(cfg: Config) -> str:
    return f"splits/{cfg.split.effective_name}"


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: its `run`, a one-line help, and what it reads and publishes (relative output paths).

    `reads` and `publishes` are what `preflight` checks before Spark starts; `check` adds a stage's
    own checks that need no Spark (e.g. ingest's source folder).
    """

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
    if set(stages) & {"tune", "train", "recommend", "evaluate"}:
        for model in cfg.train.models:
            requires = MODELS[model].requires
            if requires is not None:
                requires(model)
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
    """Run one stage by name (the console command's single-stage path; `run` goes through it too)."""
    return STAGES[name].run(spark, cfg)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Run `pipeline.stages` in order in this Spark application; returns every stage's result.

    Each stage reads what the earlier ones published (pinned versions, never objects handed over
    in memory), so the outputs are those of the same stages run one by one. Nothing is checked
    before the first stage starts: the console command runs `preflight` first, and so should a
    caller that wants a missing input reported before Spark does any work.

    Parameters
    ----------
    spark : SparkSession
        The application's session (`recospark.session.build_session` in the console command).
    cfg : Config
        The run's configuration; `pipeline.stages` names the stages, in order.

    Returns
    -------
    dict
        ``{"stage": "pipeline", "stages": {name: that stage's result}, "seconds": wall time}``.

    Examples
    --------
    >>> from recospark.config import load_config
    >>> from recospark.stages import pipeline
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}",
    ...                          "pipeline.stages=ingest,split,train", "train.models=global_mean"])
    >>> pipeline.preflight(cfg, list(cfg.pipeline.stages))
    >>> result = pipeline.run(spark, cfg)
    >>> list(result["stages"]), list(result["stages"]["train"]["models"])
    (['ingest', 'split', 'train'], ['global_mean'])
    """
    started = time.monotonic()
    results = {}
    for i, name in enumerate(cfg.pipeline.stages, 1):
        log.info("pipeline [%d/%d] %s", i, len(cfg.pipeline.stages), name)
        results[name] = run_stage(name, spark, cfg)
    return {"stage": "pipeline", "stages": results, "seconds": round(time.monotonic() - started, 2)}
