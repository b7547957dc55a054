"""Synthetic MovieLens-shaped ratings of any size, in a MovieLens layout (the `generate` stage's library).

Shape: user activity is log-normal (a long tail of heavy raters, at least a few ratings each),
item popularity is Zipf-like, ratings come from a low-rank truth (global mean + biases + p_u.q_i)
plus Gaussian noise, rounded to the layout's scale and clipped. Every user draws from a random
generator seeded by (seed, user), and item parameters from (seed, "items"), so the output is a
pure function of the config whatever the partitioning. It is a Spark job: each task generates
its own users' rows, and nothing larger than the item table exists on any single process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from recospark.config import GenerateConf
from recospark.datasets.movielens import LAYOUTS, ML100K_GENRES

RATINGS_PER_PARTITION = 250_000
_START = 946_684_800  # 2000-01-01
_SPAN = 20 * 365 * 86_400
_MU = 3.55
_GENRES = ML100K_GENRES[1:]


@functools.lru_cache(maxsize=4)
def item_table(seed: int, items: int, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(factors, biases, cumulative popularity) of every item, identical in every task."""
    rng = np.random.default_rng([seed, 1])
    factors = rng.normal(0.0, 1.0 / np.sqrt(rank), size=(items, rank))
    order = rng.permutation(items)
    weights = np.empty(items)
    weights[order] = 1.0 / (np.arange(items) + 10.0) ** 1.1
    biases = rng.normal(0.0, 0.35, size=items) + 0.8 * (np.log(weights) - np.log(weights).mean()) / 5
    cumulative = np.cumsum(weights)
    return factors, biases, cumulative / cumulative[-1]


def _activity(rng: np.random.Generator, mean: float, items: int) -> int:
    floor = max(1, min(20, int(mean // 2)))
    n = int(round(mean * rng.lognormal(-0.5, 1.0)))  # noqa: RUF046 (numpy floats round to floats)
    return int(min(max(n, floor), max(1, items // 2)))


def user_ratings(user: int, conf: GenerateConf, mean: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's (items, ratings, timestamps): item ids start at 1 as in MovieLens."""
    layout = LAYOUTS[conf.layout]
    factors, biases, cumulative = item_table(conf.seed, conf.items, conf.rank)
    rng = np.random.default_rng([conf.seed, 2, user])
    n = _activity(rng, mean, conf.items)
    draws = np.minimum(np.searchsorted(cumulative, rng.random(2 * n + 8)), conf.items - 1)
    first = np.unique(draws, return_index=True)[1]
    chosen = draws[np.sort(first)][:n]
    p = rng.normal(0.0, 1.0 / np.sqrt(conf.rank), size=conf.rank)
    bias = rng.normal(0.0, 0.4)
    raw = _MU + bias + biases[chosen] + factors[chosen] @ p + rng.normal(0.0, conf.noise, size=chosen.size)
    step = layout.rating_step
    ratings = np.clip(np.round(raw / step) * step, layout.rating_min, layout.rating_max)
    start = _START + int(rng.integers(0, _SPAN // 2))
    times = start + np.cumsum(rng.exponential(86_400.0, size=chosen.size)).astype(np.int64)
    return chosen.astype(np.int64) + 1, ratings, times


def format_ratings(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, times: np.ndarray, layout: str) -> pd.Series:
    sep = LAYOUTS[layout].separator
    r = pd.Series(ratings)
    text = r.map("{:.0f}".format) if LAYOUTS[layout].rating_step == 1 else r.map("{:g}".format)
    return pd.Series(users).astype(str) + sep + pd.Series(items).astype(str) + sep + text + sep + pd.Series(times).astype(str)


def generate_partition(batches: Iterator[pd.DataFrame], conf: GenerateConf) -> Iterator[pd.DataFrame]:
    """mapInPandas worker: user ids in, formatted rating lines out."""
    mean = conf.ratings / conf.users
    for batch in batches:
        parts = [user_ratings(int(u), conf, mean) for u in batch["id"]]
        if not parts:
            continue
        counts = [len(p[0]) for p in parts]
        users = np.repeat(batch["id"].to_numpy(), counts)
        items, ratings, times = (np.concatenate([p[i] for p in parts]) for i in range(3))
        lines = format_ratings(users, items, ratings, times, conf.layout)
        yield pd.DataFrame({"value": lines})


def movie_lines(conf: GenerateConf) -> list[str]:
    rng = np.random.default_rng([conf.seed, 3])
    years = rng.integers(1930, 2024, size=conf.items)
    lines = ["movieId,title,genres"] if conf.layout == "csv" else []
    for i in range(conf.items):
        genres = sorted(set(rng.choice(len(_GENRES), size=int(rng.integers(1, 4)))))
        title = f"Synthetic Movie {i + 1} ({years[i]})"
        if conf.layout == "ml-100k":
            flags = "|".join("1" if g - 1 in genres else "0" for g in range(len(ML100K_GENRES)))
            lines.append(f"{i + 1}|{title}|01-Jan-{years[i]}||http://example.invalid/{i + 1}|{flags}")
        elif conf.layout == "csv":
            lines.append(f'{i + 1},"{title}",{"|".join(_GENRES[g] for g in genres)}')
        else:
            lines.append(f"{i + 1}::{title}::{'|'.join(_GENRES[g] for g in genres)}")
    return lines


def rating_lines(spark: SparkSession, conf: GenerateConf) -> DataFrame:
    """`value string`: one rating line per row in `conf.layout`, generated by the executors."""
    partitions = conf.partitions or max(2, -(-conf.ratings // RATINGS_PER_PARTITION))
    users = spark.range(1, conf.users + 1, numPartitions=partitions)
    return users.mapInPandas(lambda it: generate_partition(it, conf), "value string")
