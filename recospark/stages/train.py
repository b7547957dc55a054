"""The `train` stage: fit every model of `train.models` on the split's train side and publish it.

Models are built from the model table. A model that early-stops on a validation carve (the
DSGD models) is then refit on all of train for the epoch count the carve chose, so no train
user or item is left without factors; the carve run's learning curve is kept. Models whose
fitted object keeps no history (ALS) get their curve from the table's `curve` hook. Every
model's coverage of the train users and items is checked and recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from pyspark.ml import Model
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config
from recospark.errors import PrerequisiteError
from recospark.frames import first_row
from recospark.models.table import MODELS, ModelSpec
from recospark.runtime import stage_run
from recospark.schema import FACTOR_ID, IS_VALIDATION, MOVIE_ID, RATINGS, USER_ID
from recospark.scoring import scoring_factors
from recospark.splitting import with_validation_flag

__all__ = ["fit_model", "run", "tuned_params"]

log = logging.getLogger(__name__)


def tuned_params(cfg: Config) -> dict[str, dict[str, Any]]:
    """Best params per model (config names) from the published tuning/, when `train.use_tuned`."""
    if not cfg.train.use_tuned:
        return {}
    src = io.source(cfg, "tuning", needed_by="train (train.use_tuned=true)")
    tuning = io.read_json(src.file("tuning.json")) or {}
    return {name: dict(entry.get("best_params", {})) for name, entry in tuning.get("models", {}).items()}


def fit_model(
    spec: ModelSpec,
    cfg: Config,
    train: DataFrame,
    overrides: dict[str, Any] | None = None,
    *,
    tuned: dict[str, dict[str, Any]] | None = None,
    fitted: dict[str, Model] | None = None,
) -> tuple[Model, dict[str, Any]]:
    """(fitted model, what to record): history, the refit epoch count, seconds.

    `tuned` and `fitted` (models of this run) reach models built from other models (the blend).
    """
    overrides = dict(overrides or {})
    context: dict[str, Any] = {"tuned": tuned or {}, "fitted": fitted or {}}
    started = time.monotonic()
    info: dict[str, Any] = {}
    if spec.uses_validation(cfg):
        carved = with_validation_flag(train, cfg.split.validation_fraction, cfg.split.seed)
        selector = spec.build(cfg, overrides, validation=True, **context).fit(carved)
        best = max(1, int(getattr(selector, "bestEpoch", 0) or len(selector.history)))
        log.info("train %s: early stopping chose %d epochs on the validation carve; refitting on all of train", spec.name, best)
        model = spec.build(cfg, {**overrides, "max_iter": best, "early_stopping_rounds": 0}, **context).fit(train)
        info.update(history=list(selector.history), refit_epochs=best, final_history=list(model.history))
    else:
        model = spec.build(cfg, overrides, **context).fit(train)
        history = list(getattr(model, "history", []) or [])
        if spec.curve is not None and cfg.split.validation_fraction > 0:
            carved = with_validation_flag(train, cfg.split.validation_fraction, cfg.split.seed).cache()
            try:
                fit_rows = carved.filter(~F.col(IS_VALIDATION)).drop(IS_VALIDATION)
                val_rows = carved.filter(F.col(IS_VALIDATION)).drop(IS_VALIDATION)
                history = spec.curve(spec.build(cfg, overrides), fit_rows, val_rows, cfg.model_conf(spec.name))
            finally:
                carved.unpersist()
        info.update(history=history)
    info["train_seconds"] = round(time.monotonic() - started, 3)
    return model, info


def _save(model: Model, path: str) -> None:
    model.write().save(path)  # type: ignore[attr-defined]


def coverage(model: Model, train_users: int, train_items: int) -> dict[str, int]:
    """Users and items the model can rank, next to the train split's."""
    users, items = scoring_factors(model)
    return {
        "users": users.select(FACTOR_ID).distinct().count(),
        "items": items.select(FACTOR_ID).distinct().count(),
        "train_users": train_users,
        "train_items": train_items,
    }


def published_components(
    cfg: Config, names: Sequence[str], src: io.Source, tuned: Mapping[str, Mapping[str, Any]], fitted: Mapping[str, Model]
) -> dict[str, Model]:
    """Components of a composite model that an earlier `train` run (e.g. its own Airflow task)
    published from this very split version with the same tuned params: loaded, not refitted.
    The others are fitted by the composite's own `fit`."""
    out: dict[str, Model] = {}
    for name in names:
        if name in fitted:
            continue
        try:
            published = io.source(cfg, f"models/{name}")
        except PrerequisiteError:
            continue
        manifest = published.manifest
        if manifest.get("split_version") == src.version and manifest.get("tuned_overrides", {}) == dict(tuned.get(name, {})):
            log.info("train: component %s loaded from %s", name, published.uri)
            out[name] = MODELS[name].load(published.uri)
    return out


@stage_run("train")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Fit every model of `train.models` on splits/<name>/train and publish models/<model>/.

    Examples
    --------
    >>> from recospark.stages import ingest, split, train
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "train.models=bias,global_mean"])
    >>> _ = ingest.run(spark, cfg); _ = split.run(spark, cfg)
    >>> sorted(train.run(spark, cfg)["models"])
    ['bias', 'global_mean']
    """
    split = cfg.split.effective_name
    src = io.source(cfg, f"splits/{split}/train", needed_by="train")
    tuned = tuned_params(cfg)
    train = src.read(spark, RATINGS).cache()
    out: dict[str, Any] = {}
    fitted: dict[str, Model] = {}
    try:
        sizes = first_row(train.agg(F.countDistinct(USER_ID).alias("u"), F.countDistinct(MOVIE_ID).alias("i")))
        n_users, n_items = int(sizes["u"]), int(sizes["i"])
        for name in cfg.train.models:
            spec = MODELS[name]
            overrides = tuned.get(name, {})
            if spec.components is not None:
                fitted.update(published_components(cfg, spec.components(cfg), src, tuned, fitted))
            log.info("train %s%s", name, f" with tuned params {overrides}" if overrides else "")
            model, info = fit_model(spec, cfg, train, overrides, tuned=tuned, fitted=fitted)
            fitted[name] = model
            covered = coverage(model, n_users, n_items)
            if covered["users"] < n_users or covered["items"] < n_items:
                log.warning(
                    "train %s: factors for %d of %d train users and %d of %d train items",
                    name,
                    covered["users"],
                    n_users,
                    covered["items"],
                    n_items,
                )
            params = {p.name: v for p, v in model.extractParamMap().items()}
            extra = {
                "model": name,
                "split_version": src.version,
                "objective": spec.objective,
                "score": spec.score,
                "tuned_overrides": overrides,
                "params": params,
                "coverage": covered,
                **info,
            }
            published = io.publish(spark, cfg, f"models/{name}", partial(_save, model), inputs=[src], extra=extra)
            epochs = info.get("refit_epochs") or (len(getattr(model, "history", [])) or None)
            out[name] = {"path": published.path, "train_seconds": round(info["train_seconds"], 2), "epochs": epochs}
            log.info("train %s: %.1f s -> %s", name, info["train_seconds"], published.path)
    finally:
        train.unpersist()
    return {"models": out}
