"""Each report section from the published outputs: Spark reduces, the driver only sees small aggregates.

A section whose inputs are not published says so in the page instead of failing the stage
(`Missing`); other errors propagate, so a real bug is not hidden behind a note.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recospark import io
from recospark.config import Config
from recospark.errors import OutputError
from recospark.frames import first_row
from recospark.models.table import MODELS
from recospark.report import html as H
from recospark.report import plots
from recospark.schema import (
    FACTOR_ID,
    FEATURES,
    MOVIE_ID,
    MOVIES,
    RANK,
    RATED_AT,
    RATING,
    RATINGS,
    RECOMMENDATIONS,
    TITLE,
    USER_ID,
)

log = logging.getLogger(__name__)

FACTOR_MODELS = ("als", "als_implicit", "sgd", "sgd_rank", "puresvd")
_SIDE = "_side"
_PERIOD = "_period"
_N = "_n"
_POS = "_pos"
# Columns of the comparison table: (key in summary.json, header, best is "min" | "max" | None)
_RATING_COLS = (("rmse", "RMSE", "min"), ("mae", "MAE", "min"), ("r2", "R²", "max"))


class Missing(Exception):
    """An input of one section is not published (yet); the section says so instead."""


class Inputs:
    """Published outputs, each read once and only when a section asks for it."""

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        self.spark, self.cfg = spark, cfg
        self.split = cfg.split.effective_name
        self._cached: list[DataFrame] = []
        self.sources: dict[str, io.Source] = {}  # every output read, by relpath: the report's lineage

    def source(self, relpath: str) -> io.Source:
        if relpath not in self.sources:
            try:
                self.sources[relpath] = io.source(self.cfg, relpath, needed_by="report")
            except OutputError as err:
                raise Missing(f"{relpath} is not published ({str(err).splitlines()[0]})") from None
        return self.sources[relpath]

    def read(self, relpath: str, schema: StructType | None, cache: bool = False) -> DataFrame:
        try:
            df = self.source(relpath).read(self.spark, schema)
        except (OutputError, AnalysisException) as err:
            raise Missing(f"{relpath} is not readable ({str(err).splitlines()[0]})") from None
        if cache:
            df = df.cache()
            self._cached.append(df)
        return df

    def json(self, relpath: str, name: str) -> dict[str, Any]:
        data = io.read_json(self.source(relpath).file(name))
        if data is None:
            raise Missing(f"{relpath}/{name} is not published")
        return data

    def manifest(self, relpath: str) -> dict[str, Any]:
        return dict(self.source(relpath).manifest)

    @cached_property
    def ratings(self) -> DataFrame:
        return self.read("ratings", RATINGS, cache=True)

    @cached_property
    def movies(self) -> DataFrame:
        return self.read("movies", MOVIES)

    @cached_property
    def train(self) -> DataFrame:
        return self.read(f"splits/{self.split}/train", RATINGS, cache=True)

    @cached_property
    def test(self) -> DataFrame:
        return self.read(f"splits/{self.split}/test", RATINGS, cache=True)

    def titles(self) -> DataFrame:
        """movie_id, title; an empty table when movies/ is missing (ids are shown instead)."""
        try:
            return self.movies.select(MOVIE_ID, TITLE)
        except Missing:
            return self.spark.createDataFrame([], MOVIES).select(MOVIE_ID, TITLE)

    def close(self) -> None:
        for df in self._cached:
            df.unpersist()


def section(id: str, title: str, build: Callable[[Inputs], str], inputs: Inputs) -> tuple[H.Section, str]:
    """(section, status): status is "ok" or the reason it shows a note instead."""
    try:
        return H.Section(id, title, build(inputs)), "ok"
    except Missing as err:
        log.warning("report: section %r: %s", id, err)
        return H.Section(id, title, H.note(f"Not available: {err}")), f"missing: {err}"


# --------------------------------------------------------------------------- data


def data_section(inp: Inputs) -> str:
    ratings = inp.ratings
    dist = {float(r[RATING]): int(r[_N]) for r in ratings.groupBy(RATING).agg(F.count(F.lit(1)).alias(_N)).collect()}
    per_user = ratings.groupBy(USER_ID).agg(F.count(F.lit(1)).alias(_N)).select(_N).toPandas()[_N].to_numpy()
    per_item = ratings.groupBy(MOVIE_ID).agg(F.count(F.lit(1)).alias(_N)).select(_N).toPandas()[_N].to_numpy()
    n, n_users, n_items = int(sum(dist.values())), len(per_user), len(per_item)
    density = n / (n_users * n_items) if n_users and n_items else 0.0
    mean = sum(k * v for k, v in dist.items()) / n if n else 0.0
    top_share = _head_share(per_item, 0.1)
    facts = H.table(
        ["ratings", "users", "items", "density", "mean rating", "share of ratings on the top 10% items"],
        [[n, n_users, n_items, density, mean, top_share]],
        left=0,
    )
    return (
        facts
        + H.img(plots.rating_distribution(dist), "rating distribution")
        + H.para("The long tail: a few users and items carry most ratings; the rest have only a handful each.")
        + H.img(plots.long_tail(per_user, per_item), "ratings per user and per item")
    )


def _head_share(counts: np.ndarray, head: float) -> float:
    if len(counts) == 0:
        return 0.0
    ordered = np.sort(counts)[::-1]
    k = max(1, round(len(ordered) * head))
    return float(ordered[:k].sum() / ordered.sum())


def with_month(df: DataFrame) -> DataFrame:
    return df.withColumn(_PERIOD, F.date_format(F.date_trunc("month", F.col(RATED_AT)), "yyyy-MM"))


def split_section(inp: Inputs) -> str:
    """Train and test sizes per month of the published split (whatever its strategy)."""
    conf = inp.cfg.split
    train, test = inp.train, inp.test
    sides = with_month(train.withColumn(_SIDE, F.lit("train"))).unionByName(with_month(test.withColumn(_SIDE, F.lit("test"))))
    rows = sides.groupBy(_PERIOD, _SIDE).agg(F.count(F.lit(1)).alias(_N)).collect()
    first_test = first_row(test.agg(F.min(RATED_AT)))[0]
    periods = sorted({r[_PERIOD] for r in rows})
    counts = {(r[_PERIOD], r[_SIDE]): int(r[_N]) for r in rows}
    n_train = [counts.get((p, "train"), 0) for p in periods]
    n_test = [counts.get((p, "test"), 0) for p in periods]
    cutoff = first_test.strftime("%Y-%m-%d %H:%M") if first_test else "–"
    summary = H.table(
        ["side", "ratings", "months"],
        [["train", sum(n_train), sum(1 for v in n_train if v)], ["test", sum(n_test), sum(1 for v in n_test if v)]],
    )
    return (
        H.para(f"Train and test sizes per month of the published split splits/{inp.split}/ (strategy {conf.strategy}).")
        + summary
        + H.img(plots.split_over_time(periods, n_train, n_test, cutoff), "train and test ratings per month")
    )


# --------------------------------------------------------------------------- comparison


def comparison_columns(k: int) -> list[tuple[str, str, str | None]]:
    return [
        *_RATING_COLS,
        (f"precision@{k}", f"P@{k}", "max"),
        (f"recall@{k}", f"R@{k}", "max"),
        (f"ndcg@{k}", f"NDCG@{k}", "max"),
        (f"map@{k}", f"MAP@{k} (Spark)", "max"),
        (f"map_recommenders@{k}", f"MAP@{k} (Recommenders)", "max"),
        ("catalog_coverage", "catalog coverage", "max"),
        ("mean_popularity", "mean popularity", None),
        ("coverage", "test rows scored", None),
        ("train_seconds", "train s", None),
    ]


def model_label(name: str) -> str:
    return "global_mean (ranking: popularity)" if name == "global_mean" else name


def _summary(inp: Inputs) -> tuple[dict[str, Any], list[str]]:
    summary = inp.json("metrics", "summary.json")
    models: dict[str, dict[str, Any]] = summary.get("models", {})
    if not models:
        raise Missing("metrics/summary.json lists no models")
    names = [n for n in inp.cfg.train.models if n in models] + sorted(n for n in models if n not in inp.cfg.train.models)
    return summary, names


def comparison_section(inp: Inputs) -> str:
    summary, names = _summary(inp)
    models = summary["models"]
    k = int(summary.get("k", inp.cfg.evaluate.k))
    cols = comparison_columns(k)
    rows = [[model_label(n)] + [models[n].get(key) for key, _, _ in cols] for n in names]
    best = [[False] * (len(cols) + 1) for _ in names]
    for c, (key, _, better) in enumerate(cols, start=1):
        values = [(i, models[n].get(key)) for i, n in enumerate(names) if isinstance(models[n].get(key), (int, float))]
        if better and len(values) > 1:
            target = (min if better == "min" else max)(v for _, v in values)
            for i, v in values:
                best[i][c] = v == target
    threshold = summary.get("relevance_threshold")
    relevant = "every test item is relevant" if threshold is None else f"relevant = test rating ≥ {threshold}"
    text = (
        f"Split {summary.get('split')!r}; ranking metrics score the published top-{k} lists (recommendations/), which "
        f"exclude each user's training items; {relevant}; averaged over test users with a relevant item. "
        f"Rating metrics only for rating models (a ranking model's score is not a rating). Cold-start policy: "
        f"{summary.get('cold_start')}. The global-mean model predicts one number for every pair, so its ranking "
        "columns are those of the popularity recommender (most-rated train items first). Best value per column in bold."
    )
    out = H.para(text) + H.table(["model"] + [h for _, h, _ in cols], rows, id="comparison", best=best)
    pick = summary.get("recommended")
    if pick:
        out += H.para(
            f"Recommended lists: {model_label(pick['model'])} (published at {pick.get('path', 'recommendations/recommended')}), "
            f"the highest validation NDCG@{k} ({pick.get(f'validation_ndcg@{k}') or 0.0:.4f}) of the trained models: each was "
            "fitted once more on train minus a validation carve and its lists scored on the carve, never on the test split."
        )
    ranked = [n for n in names if isinstance(models[n].get(f"ndcg@{k}"), (int, float))]
    if ranked:
        out += H.para(
            "Accuracy against novelty: each model's NDCG against how popular its recommended films are in train "
            "(lower is more novel) and how much of the catalogue its lists cover."
        ) + H.img(
            plots.accuracy_vs_novelty(
                [model_label(n) for n in ranked],
                [models[n][f"ndcg@{k}"] for n in ranked],
                [models[n].get("mean_popularity") or 0.0 for n in ranked],
                [models[n].get("catalog_coverage") or 0.0 for n in ranked],
                k,
            ),
            "accuracy against novelty and coverage",
        )
    try:
        tuning = inp.json("tuning", "tuning.json")
    except Missing:
        return out + H.para("No tuning results (tuning/): models use the configured params.")
    trows = [
        [
            name,
            json.dumps(entry.get("best_params", {}), sort_keys=True),
            entry.get("metric"),
            entry.get("best_score"),
            len(entry.get("grid", [])),
            entry.get("seconds"),
        ]
        for name, entry in tuning.get("models", {}).items()
    ]
    return (
        out
        + H.para(f"Tuning ({tuning.get('method')}) on validation data carved from the train split, never from test:")
        + H.table(["model", "best params", "metric", "validation score", "grid points", "seconds"], trows, id="tuning")
    )


# --------------------------------------------------------------------------- learning curves


def history_series(history: list[Any]) -> tuple[list[int], dict[str, list[float | None]]]:
    """Epoch numbers and every *rmse* series of a history (list of per-epoch dicts)."""
    epochs: list[int] = []
    series: dict[str, list[float | None]] = {}
    keys = sorted({k for h in history if isinstance(h, dict) for k in h if "rmse" in k or "loss" in k})
    for i, h in enumerate(history):
        h = h if isinstance(h, dict) else {"train_rmse": h}
        epochs.append(int(h.get("epoch", i + 1)))
        for key in keys or ["train_rmse"]:
            series.setdefault(key, []).append(h.get(key))
    return epochs, series


def curves_section(inp: Inputs) -> str:
    """Every trained model's learning curve as `train` recorded it (nothing is refitted here)."""
    parts, drawn = [], 0
    for name in inp.cfg.train.models:
        try:
            manifest = inp.manifest(f"models/{name}")
        except Missing as err:
            parts.append(H.note(f"{name}: {err}"))
            continue
        history = manifest.get("history") or []
        if not history:
            if MODELS[name].curve is not None:  # ALS records one only when asked: each point is an extra fit
                parts.append(
                    H.note(f"{name}: no learning curve recorded (set {name}.curve_iters, e.g. [1, 5, 10]: one extra fit per point)")
                )
            continue
        epochs, series = history_series(history)
        xlabel = "maxIter" if MODELS[name].curve is not None else "epoch"
        how = (
            f"refitted at maxIter in {epochs} on train minus the validation carve"
            if MODELS[name].curve is not None
            else "per epoch on its train rows and the validation rows carved from train (early stopping watches the latter)"
        )
        refit = f"; then refit on all of train for {manifest['refit_epochs']} epochs" if manifest.get("refit_epochs") else ""
        objective = next((h.get("objective") for h in history if isinstance(h, dict) and h.get("objective")), None)
        if objective:  # a ranking loss: its training loss per epoch, no validation metric
            series = {k: v for k, v in series.items() if any(x is not None for x in v)}
            parts.append(
                H.para(f"{name}: mean {objective} loss per update on its train rows, per epoch (ranking losses have no validation metric).")
            )
        else:
            parts.append(H.para(f"{name}: RMSE {how}{refit}."))
        parts.append(H.img(plots.learning_curve(epochs, series, f"{name} learning curve", xlabel=xlabel), f"{name} learning curve"))
        drawn += 1
    if not drawn:
        raise Missing("no model recorded a learning curve (train the sgd or als models)")
    return "".join(parts)


# --------------------------------------------------------------------------- factors


def sample_rows(df: DataFrame, n: int, seed: int) -> DataFrame:
    """A deterministic sample of n factor rows (hash order), shown sorted by id."""
    return df.orderBy(F.xxhash64(F.lit(seed), F.col(FACTOR_ID)), F.col(FACTOR_ID)).limit(n).orderBy(FACTOR_ID)


def _factor_matrix(df: DataFrame, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    pdf = sample_rows(df.select(F.col(FACTOR_ID).cast("int").alias(FACTOR_ID), FEATURES), n, seed).toPandas()
    if pdf.empty:
        return np.zeros((0, 1)), []
    return np.stack(list(pdf[FEATURES])).astype(float), [int(i) for i in pdf[FACTOR_ID]]


def factors_section(inp: Inputs) -> str:
    parts, missing, n, seed = [], [], inp.cfg.report.factor_sample, inp.cfg.split.seed
    for name in FACTOR_MODELS:
        if name not in inp.cfg.train.models:
            continue
        try:
            model = MODELS[name].load(inp.source(f"models/{name}").uri)
        except Missing as err:
            missing.append(str(err))
            parts.append(H.note(f"no heat map for {name}: {err}"))
            continue
        user_factors, item_factors = model.userFactors, model.itemFactors  # type: ignore[attr-defined]
        users, user_ids = _factor_matrix(user_factors, n, seed)
        items, item_ids = _factor_matrix(item_factors, n, seed)
        parts.append(H.img(plots.factor_heatmap(name, users, user_ids, items, item_ids), f"{name} factor heat map"))
    if len(missing) == len(parts):
        raise Missing("; ".join(missing) or "no factor model (als, sgd) in train.models")
    return H.para(f"Up to {n} users and {n} items sampled by hash; one row per user or item, one column per latent dimension.") + "".join(
        parts
    )


# --------------------------------------------------------------------------- sample users


def sample_users(train: DataFrame, n: int, seed: int) -> list[int]:
    users = train.select(USER_ID).distinct()
    rows = users.orderBy(F.xxhash64(F.lit(seed), F.col(USER_ID)), F.col(USER_ID)).limit(n).collect()
    return sorted(int(r[USER_ID]) for r in rows)


def favourites(train: DataFrame, titles: DataFrame, users: list[int], n: int) -> dict[int, list[str]]:
    """Each user's n highest-rated train movies (latest first among equal ratings)."""
    order = Window.partitionBy(USER_ID).orderBy(F.col(RATING).desc(), F.col(RATED_AT).desc(), F.col(MOVIE_ID))
    rows = (
        train.filter(F.col(USER_ID).isin(users))
        .withColumn(_POS, F.row_number().over(order))
        .filter(F.col(_POS) <= n)
        .join(F.broadcast(titles), MOVIE_ID, "left")
        .collect()
    )
    out: dict[int, list[tuple[int, str]]] = {u: [] for u in users}
    for r in rows:
        out[r[USER_ID]].append((r[_POS], f"{_title(r[TITLE], r[MOVIE_ID])} ★{r[RATING]:g}"))
    return {u: [t for _, t in sorted(v)] for u, v in out.items()}


def _title(title: str | None, movie_id: int) -> str:
    return title if title else f"movie {movie_id}"


def samples_section(inp: Inputs) -> str:
    cfg = inp.cfg
    n_list = cfg.recommend.n
    users = sample_users(inp.train, cfg.report.sample_users, cfg.split.seed)
    if not users:
        raise Missing("the train split has no users")
    columns = {"highest rated in train": favourites(inp.train, inp.titles(), users, n_list)}
    popularity = inp.train.groupBy(MOVIE_ID).agg(F.count(F.lit(1)).alias(_N))
    notes = []
    for name in cfg.train.models:
        try:
            recs = inp.read(f"recommendations/{name}", RECOMMENDATIONS)
        except Missing:
            notes.append(name)
            continue
        lists: dict[int, list[tuple[int, str]]] = {u: [] for u in users}
        picked = recs.filter(F.col(USER_ID).isin(users) & (F.col(RANK) <= n_list)).join(popularity, MOVIE_ID, "left")
        for r in picked.collect():
            lists[r[USER_ID]].append((r[RANK], f"{_title(r[TITLE], r[MOVIE_ID])} ({r[_N] or 0})"))
        columns[f"{model_label(name)} top-{n_list}"] = {u: [t for _, t in sorted(v)] for u, v in lists.items()}
    if len(columns) == 1:
        raise Missing("no recommendations/<model>/ published: run the recommend stage")
    parts = [
        H.para(
            f"{len(users)} users picked by hash; recommendations exclude what they rated in train. "
            "In brackets: how many train ratings each recommended film has (its popularity)."
        )
    ]
    if notes:
        parts.append(H.note(f"no recommendations published for: {', '.join(notes)}"))
    headers = ["#", *columns]
    for u in users:
        rows = [[i + 1] + [col[u][i] if i < len(col[u]) else "" for col in columns.values()] for i in range(n_list)]
        parts.append(f'<div class="user"><h3>user {u}</h3>{H.table(headers, rows, left=len(headers))}</div>')
    return "".join(parts)


SECTIONS: tuple[tuple[str, str, Callable[[Inputs], str]], ...] = (
    ("data", "Ratings: distribution and long tail", data_section),
    ("split", "Train/test sizes over time", split_section),
    ("comparison", "Model comparison", comparison_section),
    ("curves", "Learning curves", curves_section),
    ("factors", "Learned factors", factors_section),
    ("samples", "Sample recommendations", samples_section),
)
