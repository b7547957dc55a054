"""The `train` stage: fit every model of `train.models` on the split's train side and publish it.

Models are built from the model table. With `train.validation` (the default), each model is first
fitted on train minus the validation carve (`split.validation_fraction`, a hash of seed, user
and movie) and its top-k lists are scored on the carve; those validation metrics go into the
model's manifest, and `recommend` ships the lists of the model that scores best there, so the
choice never sees the test split. A model that early-stops (the DSGD and neural models) uses that same carve
fit to choose its epoch count. Then every model is fitted on all of train and published, so no
train user or item is left without factors. Models whose fitted object keeps no history (ALS)
get their learning curve from the table's `curve` hook. Every model's coverage of the train
users and items is checked and recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from pyspark.ml import Estimator, Model
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config
from recospark.errors import PrerequisiteError
from recospark.frames import first_row
from recospark.models.table import MODELS, ModelSpec
from recospark.ranking import validation_metrics
from recospark.runtime import for_each_model, stage_run
from recospark.schema import FACTOR_ID, IS_VALIDATION, MOVIE_ID, RATINGS, USER_ID
from recospark.scoring import candidate_items, scoring_factors
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


def _estimator(spec: ModelSpec, cfg: Config, overrides: Mapping[str, Any], **kwargs: Any) -> Estimator:
    """The configured estimator, with the configured fault (faults.sgd_partition) handed to the
    estimators that can inject one: passed in, never a process-wide switch."""
    estimator = spec.build(cfg, overrides, **kwargs)
    if cfg.faults.sgd_partition is not None and hasattr(estimator, "setFaultPartition"):
        estimator.setFaultPartition(cfg.faults.sgd_partition)
    return estimator


def fit_model(
    spec: ModelSpec,
    cfg: Config,
    train: DataFrame,
    overrides: dict[str, Any] | None = None,
    *,
    tuned: dict[str, dict[str, Any]] | None = None,
    fitted: dict[str, Model] | None = None,
    carve_fitted: dict[str, Model] | None = None,
) -> tuple[Model, Model | None, dict[str, Any]]:
    """(model fitted on all of train, the model fitted on the carve or None, what to record).

    What is recorded: the learning curve, the refit epoch count, the validation metrics (when
    `train.validation`), seconds. `tuned`, `fitted` (models of this run) and `carve_fitted` (their
    carve fits) reach models built from other models (the blend): its carve fit is built from
    carve fits only, so no component has seen the validation rows it is judged on.
    """
    overrides = dict(overrides or {})
    values = {**cfg.model_values(spec.name), **overrides}
    fraction, seed = cfg.split.validation_fraction, cfg.split.seed
    early_stops = spec.uses_validation(values, fraction)
    validate = cfg.train.validation and fraction > 0
    started = time.monotonic()
    info: dict[str, Any] = {}
    carve_model: Model | None = None
    if early_stops or validate or (spec.curve is not None and fraction > 0):
        carved = with_validation_flag(train, fraction, seed).cache()
        try:
            fit_rows = carved.filter(~F.col(IS_VALIDATION)).drop(IS_VALIDATION)
            val_rows = carved.filter(F.col(IS_VALIDATION)).drop(IS_VALIDATION)
            context: dict[str, Any] = {"tuned": tuned or {}, "fitted": carve_fitted or {}}
            if early_stops:
                carve_model = _estimator(spec, cfg, overrides, validation=True, **context).fit(carved)
                history = list(getattr(carve_model, "history", []))
                best = max(1, int(getattr(carve_model, "bestEpoch", 0) or len(history)))
                log.info(
                    "train %s: early stopping chose %d epoch%s on the validation carve; refitting on all of train",
                    spec.name,
                    best,
                    "" if best == 1 else "s",
                )
                overrides = {**overrides, "max_iter": best, "early_stopping_rounds": 0}
                info.update(history=history, refit_epochs=best)
            elif validate:
                carve_model = _estimator(spec, cfg, overrides, **context).fit(fit_rows)
            if spec.curve is not None:
                info.update(history=spec.curve(spec.build(cfg, overrides), fit_rows, val_rows, values))
            if validate and carve_model is not None:
                k, threshold = cfg.evaluate.k, cfg.evaluate.relevance_threshold
                metrics = validation_metrics(carve_model, fit_rows, val_rows, k, threshold, cfg.recommend.user_block_size)
                info["validation"] = {key: v for key, v in metrics.items() if v is not None}
                log.info("train %s: validation ndcg@%d=%s (fit on train minus the carve)", spec.name, k, metrics.get(f"ndcg@{k}"))
        finally:
            carved.unpersist()
    model = _estimator(spec, cfg, overrides, tuned=tuned or {}, fitted=fitted or {}).fit(train)
    if early_stops:
        info["final_history"] = list(getattr(model, "history", []))
    elif "history" not in info:
        info["history"] = list(getattr(model, "history", []) or [])
    info["train_seconds"] = round(time.monotonic() - started, 3)
    return model, carve_model, info


def _save(model: Model, path: str) -> None:
    model.write().save(path)  # type: ignore[attr-defined]


def coverage(model: Model, train_users: int, train_items: int) -> dict[str, int]:
    """Users and items the model can rank, next to the train split's.

    A model ranked by its factors covers the users and items with factor rows; a model ranked by a
    scorer over each user's history (EASE, the neural scorers) covers every train user, less the
    users its `summary` says it cannot score (EASE's users whose every item fell beyond its cap)."""
    if hasattr(model, "blockScorer") and model.blockScorer() is not None:
        summary = getattr(model, "summary", None)
        blind = int(summary.get("usersWithoutKeptItems", 0)) if isinstance(summary, dict) else 0
        return {
            "users": train_users - blind,
            "items": candidate_items(model).count(),
            "train_users": train_users,
            "train_items": train_items,
        }
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
    carve_fitted: dict[str, Model] = {}
    try:
        sizes = first_row(train.agg(F.countDistinct(USER_ID).alias("u"), F.countDistinct(MOVIE_ID).alias("i")))
        n_users, n_items = int(sizes["u"]), int(sizes["i"])

        def train_one(name: str) -> None:
            spec = MODELS[name]
            overrides = tuned.get(name, {})
            if spec.components is not None:
                fitted.update(published_components(cfg, spec.components(cfg.model_values(name)), src, tuned, fitted))
            log.info("train %s%s", name, f" with tuned params {overrides}" if overrides else "")
            model, carve_model, info = fit_model(spec, cfg, train, overrides, tuned=tuned, fitted=fitted, carve_fitted=carve_fitted)
            fitted[name] = model
            if carve_model is not None:
                carve_fitted[name] = carve_model
            out[name] = publish_model(spark, cfg, src, name, model, info, overrides, n_users, n_items)

        # Models built from other models (the blend) wait for the rest, which fit a few at a time.
        alone = [m for m in cfg.train.models if MODELS[m].components is None]
        composite = [m for m in cfg.train.models if MODELS[m].components is not None]
        for_each_model(spark, train_one, alone, threads=cfg.train.concurrent_fits)
        for name in composite:
            train_one(name)
    finally:
        train.unpersist()
    return {"models": {name: out[name] for name in cfg.train.models}}


def publish_model(
    spark: SparkSession,
    cfg: Config,
    src: io.Source,
    name: str,
    model: Model,
    info: dict[str, Any],
    overrides: Mapping[str, Any],
    n_users: int,
    n_items: int,
) -> dict[str, Any]:
    """Check the model's coverage of the train users and items, publish models/<name>/ with its manifest, and say what was written."""
    spec = MODELS[name]
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
    summary = getattr(model, "summary", None)  # e.g. EASE's counts of what its item cap left out
    if isinstance(summary, dict):
        info["summary"] = summary
    extra = {
        "model": name,
        "split_version": src.version,
        "objective": spec.objective,
        "score": spec.score,
        "tuned_overrides": dict(overrides),
        "params": params,
        "coverage": covered,
        **info,
    }
    published = io.publish(spark, cfg, f"models/{name}", partial(_save, model), inputs=[src], extra=extra)
    epochs = info.get("refit_epochs") or (len(getattr(model, "history", [])) or None)
    entry: dict[str, Any] = {"path": published.path, "train_seconds": round(info["train_seconds"], 2), "epochs": epochs}
    if "validation" in info:
        entry[f"validation_ndcg@{cfg.evaluate.k}"] = info["validation"].get(f"ndcg@{cfg.evaluate.k}")
    log.info("train %s: %.1f s -> %s", name, info["train_seconds"], published.path)
    return entry
