"""The synthetic generator: deterministic whatever the partitioning, MovieLens-shaped, ingestible, with recoverable planted tastes."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recospark import io
from recospark.config import GenerateConf
from recospark.datasets import synthetic
from recospark.models.baselines import GlobalMean
from recospark.models.puresvd import PureSVD
from recospark.ranking import ranking_metrics
from recospark.scoring import scoring_factors, top_n
from recospark.stages import generate, ingest


def lines_for(users: list[list[int]], conf: GenerateConf) -> list[str]:
    batches = [pd.DataFrame({"id": np.array(b, dtype=np.int64)}) for b in users]
    return [line for out in synthetic.generate_partition(iter(batches), conf) for line in out["value"]]


def test_rows_do_not_depend_on_batching():
    conf = GenerateConf(users=40, items=300, ratings=2000, layout="ml-10m")
    one = lines_for([list(range(1, 41))], conf)
    many = lines_for([list(range(1, 11)), list(range(11, 33)), list(range(33, 41))], conf)
    assert one == many and len(one) > 1000


def test_shape_long_tail_and_scale():
    conf = GenerateConf(users=400, items=1000, ratings=40_000, layout="ml-1m")
    rows = pd.Series(lines_for([list(range(1, 401))], conf)).str.split("::", expand=True).astype(float)
    per_user = rows[0].value_counts()
    per_item = rows[1].value_counts()
    assert not rows.duplicated([0, 1]).any()
    assert set(rows[2].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert per_user.max() > 4 * per_user.median()  # heavy raters
    assert per_item.iloc[:10].sum() > 10 * per_item.iloc[-10:].sum()  # popular head vs tail
    assert 0.6 * conf.ratings < len(rows) < 1.2 * conf.ratings
    assert rows[3].min() >= 946_684_800


@pytest.mark.slow
def test_generated_folder_ingests_identically_twice(spark, cfg_factory, tmp_path):
    overrides = ["generate.users=60", "generate.items=80", "generate.ratings=1500", "generate.layout=csv"]
    cfg = cfg_factory(*overrides)
    first = generate.run(spark, cfg)
    cfg = cfg_factory(*overrides, f"data.source={first['path']}")
    result = ingest.run(spark, cfg)
    assert result["ratings"]["rows"] == first["ratings"]["rows"]
    assert result["files"]["ratings.csv"]["rejected"] == 0 and result["movies"]["rows"] == 80
    ratings = io.read_output(spark, cfg, "ratings")
    generate.run(spark, cfg)
    ingest.run(spark, cfg)
    again = io.read_output(spark, cfg, "ratings")
    assert_df_equality(ratings, again, ignore_row_order=True)


# --------------------------------------------------------------------------- planted tastes

# sha256 of "\n".join(lines_for([list(range(1, 61))], BEFORE_TASTES)), computed once with the generator
# of commit 4473bff (before tastes existed: recospark/datasets/synthetic.py from `git archive 4473bff`,
# first in PYTHONPATH); the full generate stage at beta = 0 was also checked byte for byte against
# that commit's output for four layouts/seeds/partitionings.
BEFORE_TASTES = GenerateConf(users=60, items=150, ratings=2400, layout="ml-10m", seed=3, beta=0.0)
BEFORE_TASTES_SHA256 = "187eb1a8fa3f7aff"


def test_beta_zero_reproduces_the_generator_before_tastes():
    lines = lines_for([list(range(1, 61))], BEFORE_TASTES)
    assert len(lines) == 2075
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16] == BEFORE_TASTES_SHA256


@pytest.mark.parametrize(("items", "n_groups"), [(300, 4096), (900, 60)])
def test_draws_follow_popularity_times_taste(items, n_groups):
    """Each draw is item i with probability w_i * exp(beta * p.t_i) / Z: a chi-square over 200k draws,
    with every item its own group (t = q) and with grouped items (t = the group's taste factors)."""
    taste = synthetic.taste_table(5, items, 8, n_groups)
    q, _, cumulative = synthetic.item_table(5, items, 8)
    w = np.diff(cumulative, prepend=0.0)
    t = taste.factors[taste.group]
    if n_groups >= items:
        np.testing.assert_array_equal(t, q)
    else:
        assert len(taste.factors) < items / 5 and len(np.unique(taste.group)) == len(taste.factors)
    p = np.random.default_rng(0).normal(0.0, 1 / np.sqrt(8), size=8)
    target = w * np.exp(4.0 * t @ p)
    target /= target.sum()
    m = 200_000
    counts = np.bincount(taste.draw(p, 4.0, np.random.default_rng(1).random(2 * m)), minlength=items)
    chi2 = ((counts - m * target) ** 2 / (m * target)).sum()
    assert chi2 < items + 6 * np.sqrt(2 * items)  # mean items - 1, sd sqrt(2 (items - 1))
    assert np.corrcoef(counts / m, w)[0, 1] < 0.99  # tastes moved the draws away from popularity


@pytest.mark.parametrize("beta", [0.0, 4.0])
def test_published_user_truth_is_what_drove_the_ratings(beta):
    """Without noise, every rating is the planted truth rounded to the scale: truth_partition replays
    each user's factors and bias (bias correction included) exactly as the ratings used them."""
    conf = GenerateConf(users=50, items=120, ratings=2000, layout="ml-10m", noise=0.0, beta=beta)
    rows = pd.Series(lines_for([list(range(1, 51))], conf)).str.split("::", expand=True).astype(float)
    taste = synthetic.taste_table(conf.seed, conf.items, conf.rank)
    truth = next(synthetic.truth_partition(iter([pd.DataFrame({"id": np.arange(1, 51)})]), conf, taste.spread))
    q, item_bias, _ = synthetic.item_table(conf.seed, conf.items, conf.rank)
    p = np.stack(list(truth["features"]))[rows[0].to_numpy(int) - 1].astype(np.float64)
    items = rows[1].to_numpy(int) - 1
    raw = 3.55 + truth["bias"].to_numpy(np.float64)[rows[0].to_numpy(int) - 1] + item_bias[items] + (q[items] * p).sum(axis=1)
    expected = np.clip(np.round(raw / 0.5) * 0.5, 0.5, 5.0)
    assert np.mean(expected == rows[2]) > 0.995 and np.abs(expected - rows[2]).max() <= 0.5  # float32 truth at .25 edges


def _ratings_frame(spark, conf: GenerateConf):
    rows = pd.Series(lines_for([list(range(1, conf.users + 1))], conf)).str.split(",", expand=True)
    pdf = pd.DataFrame({"user_id": rows[0].astype(np.int32), "movie_id": rows[1].astype(np.int32), "rating": rows[2].astype(float)})
    test = np.random.default_rng(42).random(len(pdf)) < 0.2
    return spark.createDataFrame(pdf[~test]).cache(), spark.createDataFrame(pdf[test]).cache()


@pytest.fixture(scope="module")
def planted(spark, tmp_path_factory):
    """NDCG@10 on a random split of 300 users x 200 items, with tastes (beta 4) and without (beta 0):
    popularity (GlobalMean), PureSVD and the oracle, every list from scoring.top_n, every metric from
    ranking.ranking_metrics; plus the beta = 0 oracle lists."""
    out: dict[Any, Any] = {}
    for beta in (4.0, 0.0):
        conf = GenerateConf(users=300, items=200, ratings=12_000, beta=beta)
        train, test = _ratings_frame(spark, conf)
        folder = str(tmp_path_factory.mktemp(f"planted{beta:g}"))
        synthetic.write_truth(spark, conf, folder)
        users, items = synthetic.oracle_factors(spark, folder)
        seen_users = train.select(F.col("user_id").alias("id")).distinct()
        seen_items = train.select(F.col("movie_id").alias("id")).distinct()
        factors = {
            "popularity": scoring_factors(GlobalMean().fit(train)),
            "puresvd": scoring_factors(PureSVD(rank=10).fit(train)),
            "oracle": (users.join(seen_users, "id", "semi"), items.join(seen_items, "id", "semi")),
        }
        lists = {name: top_n(u, i, train, 10).cache() for name, (u, i) in factors.items()}
        out[beta] = {name: ranking_metrics(recs, test, 10, 4.0)["ndcg@10"] for name, recs in lists.items()}
        if beta == 0:
            out["oracle_lists"] = lists["oracle"].toPandas()
            out["train"] = train.toPandas()
    return out


@pytest.mark.slow
def test_planted_tastes_are_recoverable(planted):
    ndcg = planted[4.0]
    assert ndcg["puresvd"] > 1.5 * ndcg["popularity"]  # 2.0x when written
    assert ndcg["oracle"] > ndcg["puresvd"]


@pytest.mark.slow
def test_without_tastes_popularity_is_the_best_list(planted):
    ndcg = planted[0.0]
    assert 0.9 < ndcg["oracle"] / ndcg["popularity"] < 1.1
    assert ndcg["puresvd"] < ndcg["popularity"]
    # every user's oracle list: the unrated items by the planted popularity, ties by movie_id
    _, _, cumulative = synthetic.item_table(GenerateConf().seed, 200, 8)
    by_popularity = np.lexsort((np.arange(200), -np.log(np.diff(cumulative, prepend=0.0)).astype(np.float32))) + 1
    rated = planted["train"].groupby("user_id")["movie_id"].agg(set)
    for user, recs in planted["oracle_lists"].groupby("user_id"):
        expected = [i for i in by_popularity if i not in rated[user]][:10]
        assert recs.sort_values("rank")["movie_id"].tolist() == expected
