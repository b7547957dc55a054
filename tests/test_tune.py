import json
from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.sql import functions as F

from recospark import io
from recospark.errors import ConfigError, PrerequisiteError
from recospark.models.baselines import BiasBaseline
from recospark.models.neural import torch_available
from recospark.models.table import MODELS
from recospark.schema import MOVIE_ID, RATINGS, USER_ID
from recospark.stages import train, tune


def _ratings(spark):
    at = datetime(1998, 1, 1)
    rows = [(u, i, float(1 + (u * i + u) % 5), at) for u in range(1, 13) for i in range(1, 11) if (u + i) % 3 != 0]
    return spark.createDataFrame(rows, RATINGS)


@pytest.fixture
def published_train(spark, cfg_factory):
    """A published random-split train side only: tuning must never need the test side."""

    def make(*overrides):
        cfg = cfg_factory(*overrides)
        io.publish_dataframe(_ratings(spark), cfg, f"splits/{cfg.split.effective_name}/train")
        return cfg

    return make


def test_param_grid_maps_config_names_in_order(spark, cfg_factory):
    cfg = cfg_factory()
    est = MODELS["als"].build(cfg, cold_start_strategy="drop")
    maps, points = tune.param_grid(est, MODELS["als"], {"reg_param": [0.1, 0.2], "rank": [2, 3]})
    assert points == [
        {"rank": 2, "reg_param": 0.1},
        {"rank": 2, "reg_param": 0.2},
        {"rank": 3, "reg_param": 0.1},
        {"rank": 3, "reg_param": 0.2},
    ]
    assert [{p.name: v for p, v in m.items()} for m in maps] == [{"rank": p["rank"], "regParam": p["reg_param"]} for p in points]


def test_unknown_grid_key_names_the_key(cfg_factory):
    with pytest.raises(ConfigError, match=r"tune.grids.bias: unknown key.*reg_users"):
        cfg_factory("tune.grids={bias: {reg_users: [1.0]}}")


def test_folds_do_not_depend_on_partitioning(spark):
    df = _ratings(spark).select(USER_ID, MOVIE_ID)
    a = df.transform(tune.with_fold(3, 7))
    b = df.repartition(5).transform(tune.with_fold(3, 7))
    assert_df_equality(a, b, ignore_row_order=True)
    assert {r[0] for r in a.select("_fold").distinct().collect()} == {0, 1, 2}


def test_tune_stage_train_validation_split_als_and_bias(spark, published_train):
    cfg = published_train(
        "train.models=[als,bias]",
        "tune.grids={als: {rank: [2, 3], max_iter: [3]}, bias: {reg_user: [0.0, 25.0]}, sgd: {rank: [2]}}",
        "als.num_user_blocks=1",
        "als.num_item_blocks=1",
    )
    out = tune.run(spark, cfg)
    doc = json.loads(open(io.output_path(cfg, "tuning", "tuning.json")).read())
    assert doc["method"] == "train_validation_split" and doc["seed"] == 42
    assert set(doc["models"]) == {"als", "bias"}  # sgd has a grid but is not in train.models
    for name, n_points in (("als", 2), ("bias", 2)):
        entry = doc["models"][name]
        assert len(entry["grid"]) == n_points
        assert entry["metric"] == "rmse"
        rmses = [g["rmse"] for g in entry["grid"]]
        assert all(r == r and r > 0 for r in rmses)  # no NaN: cold validation rows were dropped
        best = entry["grid"][rmses.index(min(rmses))]["params"]
        assert entry["best_params"] == best
        assert out["models"][name]["best_params"] == best
    assert set(doc["models"]["als"]["best_params"]) == {"rank", "max_iter"}
    # train picks the tuned params up in config names
    tuned = train.tuned_params(cfg.with_overrides({"train.use_tuned": True}))
    assert tuned == {n: doc["models"][n]["best_params"] for n in ("als", "bias")}


@pytest.mark.slow
def test_cross_validator_rmse_is_the_mean_over_hash_folds(spark, published_train):
    cfg = published_train(
        "train.models=[bias]", "tune.method=cross_validator", "tune.num_folds=2", "tune.grids={bias: {reg_item: [0.0, 5.0]}}"
    )
    tune.run(spark, cfg)
    doc = json.loads(open(io.output_path(cfg, "tuning", "tuning.json")).read())
    assert doc["method"] == "cross_validator" and doc["num_folds"] == 2
    folded = _ratings(spark).transform(tune.with_fold(2, cfg.split.seed)).cache()
    rmse = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction")
    for point in doc["models"]["bias"]["grid"]:
        per_fold = []
        for fold in (0, 1):
            est = BiasBaseline(regUser=cfg.bias.reg_user, regItem=point["params"]["reg_item"])
            model = est.fit(folded.filter(F.col("_fold") != fold))
            per_fold.append(rmse.evaluate(model.transform(folded.filter(F.col("_fold") == fold))))
        assert point["rmse"] == pytest.approx(sum(per_fold) / 2, rel=1e-6)
    folded.unpersist()


def test_tune_without_published_train_names_the_stage(cfg_factory, spark):
    cfg = cfg_factory("train.models=[bias]", "tune.grids={bias: {reg_user: [1.0]}}")
    with pytest.raises(PrerequisiteError, match=r"tune needs splits/random/train.*run `recospark split` first"):
        tune.run(spark, cfg)


@pytest.mark.slow
@pytest.mark.skipif(not torch_available(), reason="the neural extra (torch, safetensors) is not installed")
def test_neural_models_tune_like_any_other(spark, published_train):
    """A neural rating model is judged on RMSE and a neural ranking model on NDCG@k, through the same table entries."""
    cfg = published_train(
        "train.models=[neural_mf,gmf]",
        "tune.grids={neural_mf: {embedding_dim: [2, 4], max_iter: [1]}, gmf: {embedding_dim: [2, 4], max_iter: [1]}}",
        "split.validation_fraction=0.3",
    )
    tune.run(spark, cfg)
    doc = json.loads(open(io.output_path(cfg, "tuning", "tuning.json")).read())
    for name, metric in (("neural_mf", "rmse"), ("gmf", f"ndcg@{cfg.evaluate.k}")):
        entry = doc["models"][name]
        assert entry["metric"] == metric
        scores = [g[metric] for g in entry["grid"]]
        assert len(scores) == 2 and all(s == s for s in scores)  # two points, no NaN
        pick = min if metric == "rmse" else max
        assert entry["best_params"] == entry["grid"][scores.index(pick(scores))]["params"]
