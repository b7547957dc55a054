"""The whole pipeline on the real MovieLens 100K (skipped when it is not beside the project)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from recospark.schema import MOVIE_ID, MOVIES, RANK, RATINGS, RECOMMENDATIONS, SCORE, USER_ID
from recospark.stages import pipeline

pytestmark = pytest.mark.e2e

MODELS = ("als", "sgd", "global_mean", "bias")


@pytest.fixture(scope="module")
def e2e(spark, ml100k, tmp_path_factory):
    from recospark.config import load_config

    root = tmp_path_factory.mktemp("e2e") / "out"
    cfg = load_config(
        None,
        [
            f"data.source={ml100k}",
            f"output.root={root}",
            "pipeline.stages=ingest,split,train,recommend,evaluate",
            f"train.models={','.join(MODELS)}",
        ],
    )
    result = pipeline.run(spark, cfg)
    return cfg, Path(root), result


def read(spark, root: Path, rel: str, schema):
    return spark.read.parquet(str(root / rel)).select(*[f.name for f in schema.fields])


def test_every_output_is_published(spark, e2e):
    _, root, result = e2e
    assert read(spark, root, "ratings", RATINGS).count() == 100_000
    assert read(spark, root, "movies", MOVIES).count() == 1682
    train = read(spark, root, "splits/random/train", RATINGS)
    test = read(spark, root, "splits/random/test", RATINGS)
    assert train.count() + test.count() == 100_000
    assert train.join(test, [USER_ID, MOVIE_ID]).count() == 0
    for name in MODELS:
        assert (root / "models" / name / "_manifest.json").is_file()
        metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
        for key in ("rmse", "mae", "r2", "n_test", "n_scored"):
            assert key in metrics, (name, key)
        assert metrics["n_test"] == test.count()
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(summary["models"]) == set(MODELS)
    assert result["stages"]["ingest"]["files"]["u.data"]["read"] == 100_000


def test_quality_bars_on_random_80_20(e2e):
    _, root, _ = e2e
    m = {name: json.loads((root / "metrics" / f"{name}.json").read_text()) for name in MODELS}
    assert m["als"]["rmse"] <= 0.93
    assert m["sgd"]["rmse"] < m["bias"]["rmse"] < m["global_mean"]["rmse"]
    assert m["als"]["rmse"] < m["bias"]["rmse"]


@pytest.mark.parametrize("model", ["als", "sgd"])
def test_top_n_contract(spark, e2e, model):
    cfg, root, _ = e2e
    n = cfg.recommend.n
    recs = read(spark, root, f"recommendations/{model}", RECOMMENDATIONS).cache()
    train = read(spark, root, "splits/random/train", RATINGS)
    per_user = recs.groupBy(USER_ID).agg(F.count(F.lit(1)).alias("c"), F.min(RANK).alias("lo"), F.max(RANK).alias("hi"))
    assert per_user.filter((F.col("c") != n) | (F.col("lo") != 1) | (F.col("hi") != n)).count() == 0
    assert per_user.count() == train.select(USER_ID).distinct().count()
    assert recs.join(train, [USER_ID, MOVIE_ID]).count() == 0
    by_rank = Window.partitionBy(USER_ID).orderBy(RANK)
    out_of_order = recs.withColumn("prev", F.lag(SCORE).over(by_rank)).filter(F.col("prev") < F.col(SCORE))
    assert out_of_order.count() == 0
    assert recs.filter(F.col("title").isNull()).count() == 0
    recs.unpersist()
