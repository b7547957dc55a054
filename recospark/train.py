"""The `train` stage: fit every configured model on the split's train side and publish it."""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recospark import faults, io
from recospark.config import Config
from recospark.models import registry
from recospark.schema import RATINGS
from recospark.split import with_validation_flag

log = logging.getLogger(__name__)


def tuned_params(cfg: Config) -> dict[str, dict[str, Any]]:
    """Best params per model from metrics/tuning.json (config names), when asked for and present."""
    if not cfg.train.use_tuned:
        return {}
    path = io.output_path(cfg, "metrics", "tuning.json")
    tuning = io.read_json(path)
    if tuning is None:
        log.warning("train.use_tuned is set but %s does not exist: run the tune stage first; using conf values", path)
        return {}
    return {name: dict(entry.get("best_params", {})) for name, entry in tuning.get("models", {}).items()}


def _uses_validation(name: str, cfg: Config) -> bool:
    return name == "sgd" and cfg.split.validation_fraction > 0 and cfg.sgd.early_stopping_rounds > 0


def fit_model(name: str, cfg: Config, train: DataFrame, overrides: dict[str, Any] | None = None):
    validation = _uses_validation(name, cfg)
    data = with_validation_flag(train, cfg.split.validation_fraction, cfg.split.seed) if validation else train
    estimator = registry.build_estimator(name, cfg, overrides, validation=validation)
    started = time.monotonic()
    with faults.armed(cfg.faults):
        model = estimator.fit(data)
    return model, time.monotonic() - started


def run(spark: SparkSession, cfg: Config) -> dict:
    started = time.monotonic()
    split = cfg.split.effective_name
    train_path = io.output_path(cfg, "splits", split, "train")
    train = io.read_output(spark, cfg, f"splits/{split}/train", RATINGS, needed_by="train").cache()
    tuned = tuned_params(cfg)
    out = {}
    try:
        for name in cfg.train.models:
            overrides = tuned.get(name, {})
            log.info("train %s%s", name, f" with tuned params {overrides}" if overrides else "")
            model, seconds = fit_model(name, cfg, train, overrides)
            history = list(getattr(model, "history", []) or [])
            params = {p.name: v for p, v in model.extractParamMap().items()} if hasattr(model, "extractParamMap") else {}
            extra = {"model": name, "train_seconds": round(seconds, 3), "tuned_overrides": overrides, "history": history, "params": params}
            published = io.publish(
                spark,
                cfg,
                f"models/{name}",
                lambda path, m=model: m.write().save(path),
                inputs=[train_path],
                count_rows=False,
                extra=extra,
            )
            out[name] = {"path": published.path, "train_seconds": round(seconds, 2), "epochs": len(history) or None}
            log.info("train %s: %.1f s -> %s", name, seconds, published.path)
    finally:
        train.unpersist()
    return {"stage": "train", "models": out, "seconds": round(time.monotonic() - started, 2)}
