"""DSGD's execution plans on Spark (local mode): same factors whatever the plan, the fallback
when a task misses its blocks, and the executor-local store deleted on success and failure."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from pyspark.files import SparkFiles
from pyspark.sql import functions as F

from recospark.models.sgd import dsgd, plan_single
from recospark.models.sgd.dsgd import DSGD, RATING_BYTES
from recospark.models.sgd.estimator import SGDMatrixFactorization
from recospark.models.sgd.run import local_cores
from recospark.models.sgd.settings import engine_params
from recospark.models.sgd.store import Store


@pytest.fixture(scope="module")
def ratings(spark):
    rng = np.random.default_rng(4)
    n = 2500
    pdf = pd.DataFrame({"user": rng.integers(1, 90, n), "item": rng.integers(1, 60, n)}).drop_duplicates()
    pdf["r"] = rng.uniform(1, 5, len(pdf))
    df = spark.createDataFrame(pdf.astype({"user": "int32", "item": "int32", "r": "float32"}))
    flagged = df.withColumn("v", F.xxhash64("user", "item") % 7 == 0)
    train = flagged.filter(~F.col("v")).drop("v").cache()
    val = flagged.filter(F.col("v")).drop("v").cache()
    return train, val


PARAMS = {"rank": 3, "maxIter": 3, "numBlocks": 4, "innerBlocks": 2, "seed": 11, "stepSize": 0.02, "earlyStoppingRounds": 0}


def settings(**params):
    """The engine's settings from the estimator's Params (its defaults for the rest)."""
    return engine_params(SGDMatrixFactorization(**params))


def _store_dir(run_id: str) -> str:
    return os.path.join(SparkFiles.getRootDirectory(), "recospark-dsgd", run_id)


def _arrays(result):
    u = result.user_factors.orderBy("id").toPandas()
    i = result.item_factors.orderBy("id").toPandas()
    return [np.stack(u.features), u.bias.to_numpy(), np.stack(i.features), i.bias.to_numpy(), u.id.to_numpy(), i.id.to_numpy()]


def test_local_cores_parses_masters():
    assert local_cores("local") == 1 and local_cores("local[3]") == 3 and local_cores("local[2,4]") == 2
    assert local_cores("local[*]") == (os.cpu_count() or 1)
    assert local_cores("spark://127.0.0.1:7077") is None and local_cores("local-cluster[2,1,1024]") is None


@pytest.mark.slow
def test_single_and_multi_task_plans_give_identical_factors(spark, ratings):
    """One fat task with 2 threads, and 2 tasks x 1 thread with item groups moving between
    them: the schedule is the same, so are the factors (bit for bit) and the losses."""
    train, val = ratings
    single = dsgd.fit_dsgd(spark, train, val, settings(**PARAMS))
    multi = dsgd.fit_dsgd(spark, train, val, settings(**PARAMS, tasks=2, threads=1))
    assert single.info["plan"]["tasks"] == 1 and single.info["plan"]["threads"] == local_cores(spark.sparkContext.master)
    assert multi.info["plan"]["tasks"] == 2
    for a, b in zip(_arrays(single), _arrays(multi)):
        np.testing.assert_array_equal(a, b)
    for key in ("train_rmse", "val_rmse", "updates", "step_size"):
        assert [h[key] for h in single.history] == [h[key] for h in multi.history], key
    assert single.n_train == multi.n_train == train.count()
    # multi task: the first epoch streams each stratum's own sub-blocks, later epochs read the stores
    packed, partials = multi.info["packed_bytes"], multi.info["partials"]
    assert packed["R"] == single.n_train * RATING_BYTES + 64 * partials["R"]  # |R| plus one header per partial blob
    assert multi.history[0]["streamed_bytes"] == packed["R"]  # each sub-block once in the epoch
    assert multi.history[0]["streamed_val_bytes"] == packed["V"]
    assert [h["streamed_bytes"] + h["streamed_val_bytes"] for h in multi.history[1:]] == [0, 0]


@pytest.mark.parametrize("loss", ["bpr", "warp"])
@pytest.mark.slow
def test_ranking_losses_give_identical_factors_across_plans_and_runs(spark, ratings, loss):
    """The ranking kernels keep the promise: negatives are seeded by (seed, epoch, sub-block) and
    |N_u| is the same whether the single task counts it from its blocks or the driver from
    per-user counts, so one fat task, the same again with 1 thread, and 2 tasks agree bit for bit.
    The validation rows are ignored (no validation metric for ranking losses)."""
    train, val = ratings
    extra = {"regParam": 0.0, "maxNorm": 1.5} if loss == "warp" else {"numNegatives": 2}
    params = {**PARAMS, "loss": loss, **extra}
    single = dsgd.fit_dsgd(spark, train, val, settings(**params))
    again = dsgd.fit_dsgd(spark, train, None, settings(**params, threads=1))
    multi = dsgd.fit_dsgd(spark, train, val, settings(**params, tasks=2, threads=1))
    assert multi.info["plan"]["tasks"] == 2
    for a, b, c in zip(_arrays(single), _arrays(again), _arrays(multi), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for key in ("train_loss", "updates", "ratings", "step_size"):
        assert [h[key] for h in single.history] == [h[key] for h in multi.history], key
    assert all(h["val_loss"] is None and h["val_n"] == 0 for h in single.history + multi.history)
    assert single.global_mean == 0.0 and single.n_validation == 0
    assert not _arrays(single)[1].any()  # no user biases


def test_missing_blocks_fall_back_to_streaming_with_the_same_result(spark, ratings):
    train, val = ratings
    reference = dsgd.fit_dsgd(spark, train, val, settings(**PARAMS))
    driver = DSGD(spark, settings(**PARAMS))
    driver.prepare(train, val)
    assert os.path.isdir(_store_dir(driver.run_id))
    Store(driver.run_id, os.path.dirname(_store_dir(driver.run_id))).destroy()  # as if the task ran elsewhere
    result = driver.fit()
    jobs = result.info["single_jobs"]
    assert jobs[0]["missing"] > 0 and jobs[1]["streamed"] and jobs[1]["missing"] == 0
    assert jobs[1]["streamed_bytes"] == result.info["packed_bytes"]["R"]  # |R| once
    assert result.history[0]["streamed_bytes"] == jobs[1]["streamed_bytes"]
    assert all(h["streamed_bytes"] == 0 for h in result.history[1:])
    for a, b in zip(_arrays(reference), _arrays(result)):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(_store_dir(driver.run_id))


def test_store_deleted_after_success_and_after_failure(spark, ratings, monkeypatch):
    train, _ = ratings
    driver = DSGD(spark, settings(**PARAMS))
    driver.prepare(train, None)
    assert os.listdir(_store_dir(driver.run_id))
    driver.fit()
    assert not os.path.exists(_store_dir(driver.run_id))

    def boom(*args):
        raise RuntimeError("export failed")

    monkeypatch.setattr(plan_single, "_job_epochs", boom)  # fails on the driver after the first training job
    failing = DSGD(spark, settings(**PARAMS))
    failing.prepare(train, None)
    assert os.path.isdir(_store_dir(failing.run_id))
    with pytest.raises(RuntimeError, match="export failed"):
        failing.fit()
    assert not os.path.exists(_store_dir(failing.run_id))
