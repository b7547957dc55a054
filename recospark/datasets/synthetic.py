"""Synthetic MovieLens-shaped ratings of any size, in a MovieLens layout, with planted tastes (the `generate` stage's library).

Shape: user activity is log-normal (a long tail of heavy raters, at least a few ratings each),
item popularity is Zipf-like, ratings come from a low-rank truth (global mean + biases + p_u.q_i)
plus Gaussian noise, rounded to the layout's scale and clipped. Every user draws from a random
generator seeded by (seed, user), and item parameters from (seed, "items"), so the output is a
pure function of the config whatever the partitioning. It is a Spark job: each task generates
its own users' rows, and nothing larger than the item table exists on any single process.

Which items a user rates (`generate.beta`, "tastes"). Each of a user's draws picks item i with
probability proportional to ``w_i * exp(beta * p_u . t_i)``: w_i the item's popularity, p_u the
user's factors (the same p_u that drives the ratings) and t_i the item's taste factors. A user
draws ``4n + 8`` times with replacement and keeps the first n distinct items: exact successive
sampling without replacement from that distribution. A heavy rater whose draws repeat keeps
fewer, as before; tastes concentrate the draws, so the budget is twice the ``2n + 8`` of
popularity alone, which keeps the rating count near the beta = 0 count. With beta = 0 the draws
are the popularity draws of the generator before tastes existed, in the same order from the
same random generator, so its files are byte-identical to that generator's.

Why groups, and not rejection from popularity. Proposing from popularity and accepting with
``exp(beta * (p_u.q_i - bound_u))`` needs ``bound_u >= max_i p_u.q_i``; even the exact maximum
leaves an acceptance of about ``exp(beta**2 |p|**2 / (2 rank) - beta * max_i p_u.q_i)``, which in
rank 8 is far below 1 % at the beta that makes personalised lists beat popularity as on real
MovieLens, and bounds that cost no catalogue pass (Cauchy-Schwarz, per-cluster balls) are looser
still, because in 8 dimensions item clusters are nearly as wide as the whole cloud. So the
sampler is exact in two steps instead, with no rejection at all: items are partitioned once
into about `TASTE_GROUPS` groups; a draw picks group k with probability proportional to
``W_k * exp(beta * p_u . c_k)`` (W_k the group's popularity mass, c_k its taste factors), then an
item of the group proportionally to its popularity. Every item of a group shares t_i = c_k, so
this is exactly the distribution above. When the catalogue has at most `TASTE_GROUPS` items
(ML-100K and ML-1M shapes) every item is its own group and t_i = q_i: the selection uses the
very factors of the ratings. Larger catalogues are grouped by a two-level k-means of q (seeded,
computed once on the driver), and c_k is the group's mean of q, rescaled so that the taste term
keeps the variance it would have with t_i = q_i (the strength of beta does not depend on the
catalogue size); the published truth holds both q_i and beta * t_i, so the approximation can be
measured. Cost: per user, one ``groups x rank`` matrix-vector product and a cumulative sum
over the groups (about 4096 at most, independent of beta and of the catalogue), plus two binary
searches per draw (4n + 8 draws): proportional to the ratings written, no user x catalogue pass.

Ratings stay centred: choosing items that match a user's taste raises the expected p_u.q_i of
the rated items by about ``beta * s**2 * |p_u|**2`` (s**2 the popularity-weighted variance per
coordinate of the taste factors), so that amount is taken off the user's bias: before rounding
and clipping to the scale, a user's expected rating is what it would be without tastes, and
high ratings (what the ranking metrics count as relevant) stay about as rare.

The planted truth is published next to the ratings (`write_truth`, `<folder>/truth/`, which
ingest never reads: it reads only the layout's ratings and movies files), and `oracle_factors`
turns it into the factor tables whose dot product is exactly each draw's log-odds, so the
shared scorer `recospark.scoring.top_n` produces the oracle lists (rated items excluded) and
`recospark.ranking.ranking_metrics` scores them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark.config import GenerateConf
from recospark.datasets.movielens import LAYOUTS, ML100K_GENRES
from recospark.frames import driver_frame, factor_table
from recospark.paths import join_path
from recospark.schema import BIAS, BIASED_FACTORS, FACTOR_ID, FACTORS, FEATURES

__all__ = [
    "TASTE_GROUPS",
    "TRUTH",
    "TasteTable",
    "generate_partition",
    "item_table",
    "movie_lines",
    "oracle_factors",
    "rating_lines",
    "taste_table",
    "truth_partition",
    "user_ratings",
    "write_truth",
]

RATINGS_PER_PARTITION = 250_000
TASTE_GROUPS = 4096  # bounds each user's groups x rank product; catalogues up to this size use every item's own factors
TRUTH = "truth"  # <folder>/truth/{users,items,selection}: the planted truth
_START = 946_684_800  # 2000-01-01
_SPAN = 20 * 365 * 86_400
_MU = 3.55
_GENRES = ML100K_GENRES[1:]
_KMEANS_ITERATIONS = 8


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


def _popularity(cumulative: np.ndarray) -> np.ndarray:
    """Each item's share of the popularity mass (the w_i of the module docstring, summing to 1)."""
    return np.diff(cumulative, prepend=0.0)


@dataclass(frozen=True)
class TasteTable:
    """Everything a taste-driven draw needs beyond `item_table` (see the module docstring).

    `group[i]` is item i's group and `factors[k]` group k's taste factors c_k; `log_mass[k]` is
    the log of the group's popularity share. `order` lists item indices grouped by group, and
    `within[j]` is ``group + the cumulative popularity share within the group`` of `order[j]`
    (the last item of group k holds exactly k + 1), so one binary search over `within` for the
    key ``k + u`` picks an item of group k proportionally to its popularity. `ends[k]` is the
    position of group k's last item in `order`. `spread` is the popularity-weighted variance
    per coordinate of the items' taste factors (the bias correction's s**2).
    """

    group: np.ndarray
    factors: np.ndarray
    log_mass: np.ndarray
    order: np.ndarray
    within: np.ndarray
    ends: np.ndarray
    spread: float

    def item_factors(self) -> np.ndarray:
        """t_i for every item: its group's taste factors."""
        return self.factors[self.group]

    def draw(self, p: np.ndarray, beta: float, uniforms: np.ndarray) -> np.ndarray:
        """Item indices (from 0), one per pair of uniforms, each picked with probability
        proportional to ``w_i * exp(beta * p . t_i)``; `uniforms` holds the group draws, then the
        within-group draws."""
        m = len(uniforms) // 2
        z = self.log_mass + beta * (self.factors @ p)
        cumulative = np.cumsum(np.exp(z - z.max()))
        k = np.minimum(np.searchsorted(cumulative, uniforms[:m] * cumulative[-1], side="right"), len(cumulative) - 1)
        j = np.searchsorted(self.within, k + uniforms[m : 2 * m], side="right")
        # k + u rounds up to k + 1 when u is within 2**-42 of 1 (k near 4096): stay inside group k
        return self.order[np.minimum(j, self.ends[k])]


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels of the rows of x: k-means from k distinct rows, a fixed number of steps."""
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    sq = (x * x).sum(axis=1)
    for step in range(_KMEANS_ITERATIONS + 1):
        labels = np.argmin(sq[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(axis=1)[None, :], axis=1)
        if step == _KMEANS_ITERATIONS:
            break
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=x[:, d], minlength=k) for d in range(x.shape[1])], axis=1)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return np.unique(labels, return_inverse=True)[1]


def _groups(q: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Group labels 0..g-1 (g about `n_groups`, none empty) of similar item factors: sqrt(n) k-means groups, each split again by k-means
    into a share of the groups proportional to its size (two cheap levels instead of one n-way k-means)."""
    items = len(q)
    top = _lloyd(q, int(np.sqrt(n_groups)), rng)
    group = np.empty(items, dtype=np.int64)
    next_id = 0
    for c in range(int(top.max()) + 1):
        members = np.flatnonzero(top == c)
        share = max(1, n_groups * len(members) // items)
        sub = _lloyd(q[members], share, rng) if len(members) > share else np.arange(len(members))
        group[members] = next_id + sub
        next_id += int(sub.max()) + 1
    return group


@functools.lru_cache(maxsize=4)
def taste_table(seed: int, items: int, rank: int, n_groups: int = TASTE_GROUPS) -> TasteTable:
    """The item groups (about `n_groups`) and their taste factors, from the item table alone (computed once on the driver)."""
    q, _, cumulative = item_table(seed, items, rank)
    w = _popularity(cumulative)
    if items <= n_groups:
        group, factors = np.arange(items), q.copy()  # every item its own group: t_i = q_i exactly
    else:
        group = _groups(q, n_groups, np.random.default_rng([seed, 4]))
        size = np.bincount(group)
        factors = np.stack([np.bincount(group, weights=q[:, d]) for d in range(rank)], axis=1) / size[:, None]
        centred_q = q - q.mean(axis=0)
        centred_t = factors[group] - q.mean(axis=0)
        factors = factors * np.sqrt((centred_q * centred_q).sum() / (centred_t * centred_t).sum())
    n_groups = len(factors)
    size = np.bincount(group, minlength=n_groups)
    mass = np.bincount(group, weights=w, minlength=n_groups)
    order = np.argsort(group, kind="stable")
    grouped = group[order]
    ends = np.cumsum(size) - 1
    starts_cumulative = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    share = (np.cumsum(w[order]) - starts_cumulative[grouped]) / mass[grouped]
    share[ends] = 1.0
    t = factors[group]
    centred = t - (w[:, None] * t).sum(axis=0)
    spread = float((w[:, None] * centred * centred).sum() / rank)
    return TasteTable(group, factors, np.log(mass), order, grouped + np.clip(share, 0.0, 1.0), ends, spread)


def _activity(rng: np.random.Generator, mean: float, items: int) -> int:
    floor = max(1, min(20, int(mean // 2)))
    n = int(round(mean * rng.lognormal(-0.5, 1.0)))  # noqa: RUF046 (numpy floats round to floats)
    return int(min(max(n, floor), max(1, items // 2)))


def _user_start(
    user: int, conf: GenerateConf, mean: float, spread: float
) -> tuple[np.random.Generator, int, np.ndarray | None, np.ndarray, float]:
    """(generator, activity, popularity uniforms when beta = 0, factors p_u, bias) of one user.

    With beta = 0 the popularity draws come before p_u, in the order of the generator before
    tastes existed; with tastes p_u comes first because the draws depend on it.
    """
    rng = np.random.default_rng([conf.seed, 2, user])
    n = _activity(rng, mean, conf.items)
    uniforms = rng.random(2 * n + 8) if conf.beta == 0 else None
    p = rng.normal(0.0, 1.0 / np.sqrt(conf.rank), size=conf.rank)
    bias = rng.normal(0.0, 0.4)
    if conf.beta > 0:
        bias -= conf.beta * spread * float(p @ p)
    return rng, n, uniforms, p, bias


def user_ratings(user: int, conf: GenerateConf, mean: float, taste: TasteTable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's (items, ratings, timestamps): item ids start at 1 as in MovieLens.

    `taste` is `taste_table(...)` of the conf (computed here when not given; unused when beta = 0).
    """
    layout = LAYOUTS[conf.layout]
    factors, biases, cumulative = item_table(conf.seed, conf.items, conf.rank)
    if conf.beta > 0 and taste is None:
        taste = taste_table(conf.seed, conf.items, conf.rank)
    rng, n, uniforms, p, bias = _user_start(user, conf, mean, taste.spread if taste is not None else 0.0)
    if uniforms is not None:
        draws = np.minimum(np.searchsorted(cumulative, uniforms), conf.items - 1)
    else:
        assert taste is not None
        draws = taste.draw(p, conf.beta, rng.random(2 * (4 * n + 8)))
    first = np.unique(draws, return_index=True)[1]
    chosen = draws[np.sort(first)][:n]
    raw = _MU + bias + biases[chosen] + factors[chosen] @ p + rng.normal(0.0, conf.noise, size=chosen.size)
    step = layout.rating_step
    ratings = np.clip(np.round(raw / step) * step, layout.rating_min, layout.rating_max)
    start = _START + int(rng.integers(0, _SPAN // 2))
    times = start + np.cumsum(rng.exponential(86_400.0, size=chosen.size)).astype(np.int64)
    return chosen.astype(np.int64) + 1, ratings, times


def format_ratings(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, times: np.ndarray, layout: str) -> pd.Series:
    """One rating file line per rating in `layout`'s separator and scale: whole stars print without a decimal point (as MovieLens writes them)."""
    sep = LAYOUTS[layout].separator
    r = pd.Series(ratings)
    text = r.map("{:.0f}".format) if LAYOUTS[layout].rating_step == 1 else r.map("{:g}".format)
    return pd.Series(users).astype(str) + sep + pd.Series(items).astype(str) + sep + text + sep + pd.Series(times).astype(str)


def generate_partition(batches: Iterator[pd.DataFrame], conf: GenerateConf, taste: TasteTable | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas worker: user ids in, formatted rating lines out."""
    mean = conf.ratings / conf.users
    for batch in batches:
        parts = [user_ratings(int(u), conf, mean, taste) for u in batch["id"]]
        if not parts:
            continue
        counts = [len(p[0]) for p in parts]
        users = np.repeat(batch["id"].to_numpy(), counts)
        items, ratings, times = (np.concatenate([p[i] for p in parts]) for i in range(3))
        lines = format_ratings(users, items, ratings, times, conf.layout)
        yield pd.DataFrame({"value": lines})


def truth_partition(batches: Iterator[pd.DataFrame], conf: GenerateConf, spread: float) -> Iterator[pd.DataFrame]:
    """mapInPandas worker: user ids in, each user's planted (id, features = p_u, bias) out.

    Replays only the start of each user's generator (with beta = 0 that includes the popularity
    uniforms, which come first): a few draws per rating, nothing is formatted.
    """
    mean = conf.ratings / conf.users
    for batch in batches:
        ids = batch["id"].to_numpy()
        starts = [_user_start(int(u), conf, mean, spread) for u in ids]
        yield pd.DataFrame(
            {
                FACTOR_ID: ids.astype(np.int32),
                FEATURES: [s[3].astype(np.float32) for s in starts],
                BIAS: np.array([s[4] for s in starts], dtype=np.float32),
            }
        )


def movie_lines(conf: GenerateConf) -> list[str]:
    """The movies file of `conf.layout` (with the CSV header when the layout has one): titles end in a year and genres are drawn.

    Seeded from `conf.seed` alone, so the catalogue is the same for any user count or partitioning.
    """
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


def _partitions(conf: GenerateConf) -> int:
    return conf.partitions or max(2, -(-conf.ratings // RATINGS_PER_PARTITION))


def rating_lines(spark: SparkSession, conf: GenerateConf) -> DataFrame:
    """`value string`: one rating line per row in `conf.layout`, generated by the executors.

    The taste table is built once here, on the driver, and broadcast, so every task draws from
    the same groups (and no executor repeats the k-means), and no task carries it.
    """
    users = spark.range(1, conf.users + 1, numPartitions=_partitions(conf))
    taste = spark.sparkContext.broadcast(taste_table(conf.seed, conf.items, conf.rank)) if conf.beta > 0 else None
    return users.mapInPandas(lambda it: generate_partition(it, conf, taste.value if taste is not None else None), "value string")


def write_truth(spark: SparkSession, conf: GenerateConf, folder: str) -> None:
    """Write the planted truth of `conf`'s data as Parquet tables under `<folder>/truth/`.

    ``users``: id, features = p_u, bias = the user's bias (taste correction included).
    ``items``: id, features = q_i, bias = the item's bias (the ratings' truth; the global mean
    is 3.55). ``selection``: id, features = ``[log w_i, beta * t_i...]`` (w_i the popularity
    share), so ``[1, p_u] . features`` is the log-odds of item i in each of u's draws, up to a
    per-user constant. Ids are the ids of the rating files.
    """
    path = join_path(folder, TRUTH)
    q, biases, cumulative = item_table(conf.seed, conf.items, conf.rank)
    taste = taste_table(conf.seed, conf.items, conf.rank) if conf.beta > 0 else None
    t = taste.item_factors() if taste is not None else np.zeros_like(q)
    ids = np.arange(1, conf.items + 1, dtype=np.int32)
    selection = np.column_stack([np.log(_popularity(cumulative)), conf.beta * t]).astype(np.float32)
    items = factor_table(ids, q).append_column(BIAS, pa.array(biases.astype(np.float32)))
    driver_frame(spark, items, BIASED_FACTORS).coalesce(1).write.parquet(join_path(path, "items"))
    driver_frame(spark, factor_table(ids, selection), FACTORS).coalesce(1).write.parquet(join_path(path, "selection"))
    spread = taste.spread if taste is not None else 0.0
    users = spark.range(1, conf.users + 1, numPartitions=_partitions(conf))
    users.mapInPandas(lambda it: truth_partition(it, conf, spread), BIASED_FACTORS).write.parquet(join_path(path, "users"))


def oracle_factors(spark: SparkSession, folder: str) -> tuple[DataFrame, DataFrame]:
    """(users, items) as `id, features` whose dot product is each draw's true log-odds (up to a per-user constant).

    Read from `folder`'s published truth (`write_truth`, `<folder>/truth/`); with
    `recospark.scoring.top_n` and the training pairs as `rated`, they give the oracle lists.

    Examples
    --------
    >>> from recospark.config import GenerateConf
    >>> from recospark.scoring import top_n
    >>> conf = GenerateConf(users=3, items=5, ratings=9, beta=0.0)
    >>> write_truth(spark, conf, f"{tmp_out}/generated")
    >>> users, items = oracle_factors(spark, f"{tmp_out}/generated")
    >>> users.count(), items.count(), len(users.first()["features"])
    (3, 5, 9)
    >>> # beta = 0: every user's oracle list is the items by popularity
    >>> lists = top_n(users, items, None, 5).groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("rank", "movie_id"))).alias("l"))
    >>> len({tuple(r.movie_id for r in row["l"]) for row in lists.collect()})
    1
    """
    truth = join_path(folder, TRUTH)
    users = spark.read.parquet(join_path(truth, "users")).select(
        F.col(FACTOR_ID), F.concat(F.array(F.lit(1.0).cast("float")), F.col(FEATURES)).alias(FEATURES)
    )
    items = spark.read.parquet(join_path(truth, "selection")).select(FACTOR_ID, FEATURES)
    return users, items
