"""The `recommend` stage: top-N per user for every trained model, already-rated items excluded.

It also publishes the lists users should get at one stable path, `recommendations/recommended/`:
a copy of the lists of the model with the best validation NDCG@k that `train` recorded (see
`choose_recommended`); its manifest names the model, so a downstream job reads "the lists"
without knowing which model won.

Lists come from `recospark.scoring.recommend_for`, the one ranking code path for every model
(ties by the smaller movie_id). Only catalogued movies are recommended: when `movies/` lists movies, items with
factors but no catalogue entry (ratings of a movie missing from the movies file) are left out
and counted in the manifest (`uncatalogued_items_excluded`), so every row has a title.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config
from recospark.models.table import MODELS
from recospark.runtime import for_each_model, stage_run
from recospark.schema import FACTOR_ID, MOVIE_ID, MOVIES, RANK, RATINGS, RECOMMENDATIONS, TITLE, USER_ID
from recospark.scoring import UserHistory, candidate_items, recommend_for

__all__ = ["filter_catalogued", "run", "with_titles"]

log = logging.getLogger(__name__)


def with_titles(movies: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Attach each recommended movie's title (recommendations schema, in its column order)."""

    def transform(recs: DataFrame) -> DataFrame:
        titled = recs.join(F.broadcast(movies.select(MOVIE_ID, TITLE)), MOVIE_ID, "left")
        return titled.select(*[f.name for f in RECOMMENDATIONS.fields])

    return transform


def filter_catalogued(movies: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Keep the item factor rows whose id is a catalogued movie."""

    def transform(items: DataFrame) -> DataFrame:
        return items.join(F.broadcast(movies.select(F.col(MOVIE_ID).alias(FACTOR_ID))), FACTOR_ID, "left_semi")

    return transform


@stage_run("recommend")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Publish recommendations/<model>/ for every model of `train.models`: N per user, rated items excluded.

    Examples
    --------
    >>> from recospark.stages import ingest, recommend, split, train
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "train.models=global_mean", "recommend.n=2"])
    >>> _ = ingest.run(spark, cfg); _ = split.run(spark, cfg); _ = train.run(spark, cfg)
    >>> result = recommend.run(spark, cfg)
    >>> result["models"]["global_mean"]["users"]
    4
    """
    split = cfg.split.effective_name
    train_src = io.source(cfg, f"splits/{split}/train", needed_by="recommend")
    movies_src = io.source(cfg, "movies", needed_by="recommend")
    model_srcs = {name: io.source(cfg, f"models/{name}", needed_by="recommend") for name in cfg.train.models}
    history = UserHistory(train_src.read(spark, RATINGS)).persist()  # grouped once for every model
    movies = movies_src.read(spark, MOVIES).cache()
    catalogued = bool(movies_src.manifest.get("rows"))

    def recommend_one(name: str) -> dict[str, Any]:
        src, spec = model_srcs[name], MODELS[name]
        model = spec.load(src.uri)
        excluded = 0
        if catalogued:
            items = candidate_items(model)
            excluded = items.join(F.broadcast(movies.select(F.col(MOVIE_ID).alias(FACTOR_ID))), FACTOR_ID, "left_anti").count()
            if excluded:
                log.warning("recommend %s: %d items the model ranks are not in movies/ and are never recommended", name, excluded)
        candidates = movies.select(MOVIE_ID) if catalogued else None
        lists = recommend_for(model, history, cfg.recommend.n, cfg.recommend.user_block_size, items=candidates)
        # A task writes each of its users' whole list at once, so sorting inside the partitions
        # gives files ordered by (user_id, rank), with no shuffle and no sampling job of a global sort.
        recs = lists.transform(with_titles(movies)).sortWithinPartitions(USER_ID, RANK)
        published = io.publish_dataframe(
            recs,
            cfg,
            f"recommendations/{name}",
            inputs=[src, train_src, movies_src],
            extra={"n": cfg.recommend.n, "score": spec.score, "objective": spec.objective, "uncatalogued_items_excluded": excluded},
            measure=_users,
        )
        n_users = published.manifest["users"]
        log.info("recommend %s: %d rows for %d users -> %s", name, published.rows, n_users, published.path)
        return {"path": published.path, "rows": published.rows, "users": n_users}

    try:
        names = list(model_srcs)
        out = dict(zip(names, for_each_model(spark, recommend_one, names), strict=True))
    finally:
        history.unpersist()
        movies.unpersist()
    result: dict[str, Any] = {"models": out}
    pick = choose_recommended({name: src.manifest for name, src in model_srcs.items()}, cfg.evaluate.k)
    if pick is None:
        log.warning("recommend: no model has validation metrics (train.validation=false?): recommendations/recommended/ not published")
        return result
    winner = io.source(cfg, f"recommendations/{pick['model']}")
    published = io.publish_dataframe(
        winner.read(spark, RECOMMENDATIONS).sortWithinPartitions(USER_ID, RANK),
        cfg,
        "recommendations/recommended",
        inputs=[winner, model_srcs[pick["model"]]],
        extra={**pick, "n": cfg.recommend.n, "score": MODELS[pick["model"]].score, "users": out[pick["model"]]["users"]},
        rows=out[pick["model"]]["rows"],
    )
    log.info("recommend: the recommended lists are %s's (%s) -> %s", pick["model"], pick["how"], published.path)
    result["recommended"] = {"model": pick["model"], "path": published.path, f"validation_ndcg@{cfg.evaluate.k}": pick["validation"]}
    return result


def _users(written: DataFrame, rows: int) -> dict[str, int]:
    """The manifest's `users`: how many users got a list, read back from the written files."""
    return {"users": written.select(USER_ID).distinct().count() if rows else 0}


def choose_recommended(manifests: Mapping[str, Mapping[str, Any]], k: int) -> dict[str, Any] | None:
    """The model whose lists users get: the highest validation NDCG@k recorded by `train` (lists of a
    fit on train minus the validation carve, scored on the carve: never the test split); the first
    model of `train.models` wins a tie. None when no model has a validation score."""
    metric = f"ndcg@{k}"
    scores = {name: m["validation"][metric] for name, m in manifests.items() if (m.get("validation") or {}).get(metric) is not None}
    if not scores:
        return None
    best = max(scores, key=lambda name: (scores[name], -list(manifests).index(name)))
    return {
        "model": best,
        "validation": scores[best],
        "metric": f"validation {metric}",
        "how": f"highest validation {metric} of train.models (fit on train minus the validation carve, scored on the carve)",
        "candidates": scores,
    }
