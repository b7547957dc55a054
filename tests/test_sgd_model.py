"""SGDMatrixFactorization end to end on tiny data in the shared local Spark session."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.recommendation import ALS
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions as F

from recospark.models.sgd import codec as bk
from recospark.models.sgd import estimator as estimator_module
from recospark.models.sgd.dsgd import DSGD, RATING_BYTES
from recospark.models.sgd.estimator import SGDMatrixFactorization, SGDMatrixFactorizationModel
from recospark.models.sgd.plan_multi import MultiTask
from recospark.models.sgd.settings import DSGDParams, engine_params
from recospark.schema import FACTORS, MOVIE_ID, PREDICTION, RATING, USER_ID

COLS = {"userCol": USER_ID, "itemCol": MOVIE_ID, "ratingCol": RATING}


def failed_tasks(spark, group: str) -> int:
    tracker = spark.sparkContext.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in (tracker.getJobInfo(j).stageIds if tracker.getJobInfo(j) else [])]
    return sum(info.numFailedTasks for info in map(tracker.getStageInfo, stages) if info)


def _synthetic(n_users, n_items, rank, n, noise, seed):
    rng = np.random.default_rng(seed)
    U = rng.normal(0, 0.7, (n_users, rank))
    V = rng.normal(0, 0.7, (n_items, rank))
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    ratings = 3.0 + 0.3 * rng.normal(size=n_users)[users] + 0.3 * rng.normal(size=n_items)[items]
    ratings = ratings + np.sum(U[users] * V[items], axis=1) + rng.normal(0, noise, n)
    pdf = pd.DataFrame({USER_ID: users.astype("int32") + 1, MOVIE_ID: items.astype("int32") + 1, RATING: ratings})
    return pdf.drop_duplicates([USER_ID, MOVIE_ID]).reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny(spark):
    """~1.5k ratings of 60 users x 40 items, rank 2."""
    return spark.createDataFrame(_synthetic(60, 40, 2, 1800, 0.1, seed=1)).cache()


def _estimator(**params):
    base = dict(rank=4, maxIter=2, stepSize=0.02, regParam=0.02, numBlocks=2, seed=7, **COLS)
    return SGDMatrixFactorization(**{**base, **params})


def _fit(df, **params):
    return _estimator(**params).fit(df)


def _factors(model):
    return (
        model.userBiasedFactors.orderBy("id").toPandas(),
        model.itemBiasedFactors.orderBy("id").toPandas(),
    )


def _same(a, b):
    for x, y in zip(a, b):
        assert list(x["id"]) == list(y["id"])
        np.testing.assert_array_equal(np.stack(x["features"]), np.stack(y["features"]))
        np.testing.assert_array_equal(x["bias"].to_numpy(), y["bias"].to_numpy())


def test_same_seed_same_factors_and_every_rating_once_per_epoch(spark, tiny):
    a = _fit(tiny)
    b = _fit(tiny.repartition(3))  # a different input partitioning must not matter
    _same(_factors(a), _factors(b))
    n = tiny.count()
    assert [h["updates"] for h in a.history] == [n] * 2
    assert [h["epoch"] for h in a.history] == [1, 2]
    assert a.history[-1]["train_rmse"] < a.history[0]["train_rmse"]
    c = _fit(tiny, seed=8)
    assert not np.array_equal(np.stack(_factors(a)[0]["features"]), np.stack(_factors(c)[0]["features"]))


def test_factors_schema_and_coverage(spark, tiny):
    m = _fit(tiny, maxIter=1, numBlocks=1)
    assert m.userFactors.schema == FACTORS
    assert m.itemFactors.schema == FACTORS
    assert m.userFactors.count() == tiny.select(USER_ID).distinct().count()
    assert m.itemFactors.count() == tiny.select(MOVIE_ID).distinct().count()
    assert m.globalMean == pytest.approx(tiny.agg(F.avg(RATING)).first()[0], rel=1e-6)


@pytest.mark.slow
def test_ratings_cross_jvm_python_at_most_once_per_epoch(spark, tiny):
    """Single task (local mode): the setup pass writes the blocks to the executor-local store and
    no epoch streams a rating again. Multi task: each stratum stage unions only its own shift's
    cached sub-blocks (never the whole ratings), so an epoch streams at most |R|, and once the
    stores are written, nothing."""
    rows = tiny.select(F.col(USER_ID).alias("user"), F.col(MOVIE_ID).alias("item"), F.col(RATING).cast("float").alias("r"))
    n = rows.count()
    single = DSGD(spark, engine_params(SGDMatrixFactorization(rank=2, numBlocks=3, innerBlocks=2, maxIter=2, seed=7)))
    single.prepare(rows, None)
    assert single.plan.single and single.info["store_written_at_setup"]
    budget = single.info["packed_bytes"]["R"]  # |R|: 12 bytes per rating + one 64-byte header per partial blob
    assert budget == n * RATING_BYTES + 64 * single.info["partials"]["R"]
    result = single.fit()
    assert [job["streamed_bytes"] for job in result.info["single_jobs"]] == [0]
    assert [h["updates"] for h in result.history] == [n, n]

    multi = DSGD(spark, engine_params(SGDMatrixFactorization(rank=2, numBlocks=3, innerBlocks=2, maxIter=3, seed=7, tasks=3, threads=1)))
    multi.prepare(rows, None)
    assert not multi.plan.single
    stages = MultiTask(multi)
    epoch, _ = stages.run_epoch(stages.initial_state(), 0, 0.01, 0, streamed=True, fail=None)
    plan = epoch.toDebugString().decode()
    assert all(f"dsgd-ratings-shift-{s}" in plan for s in range(3)) and "PartitionerAwareUnionRDD" in plan
    for shift in range(3):  # each task receives exactly its own sub-blocks of that stratum
        got = (
            stages.ratings_shift(shift)
            .mapPartitionsWithIndex(lambda t, it: [(t, bk.header(blob).G, bk.header(blob).J) for _, (_, blob) in it])
            .collect()
        )
        assert got and all(t == G % 3 and (G + shift) % 3 == J for t, G, J in got)
    result = multi.fit()
    streamed = [h["streamed_bytes"] for h in result.history]
    assert streamed[0] == multi.info["packed_bytes"]["R"] and streamed[1:] == [0, 0], streamed


def test_recovers_noisy_low_rank_data(spark):
    sigma = 0.1
    pdf = _synthetic(300, 200, 3, 30000, sigma, seed=3)
    df = spark.createDataFrame(pdf)
    train, test = df.randomSplit([0.9, 0.1], seed=5)
    model = SGDMatrixFactorization(
        rank=3,
        maxIter=10,
        stepSize=0.08,
        stepDecay=0.85,
        regParam=0.005,
        biasRegParam=0.0,
        initStd=0.3,
        numBlocks=2,
        seed=1,
        coldStartStrategy="drop",
        **COLS,
    ).fit(train)
    rmse = RegressionEvaluator(metricName="rmse", labelCol=RATING, predictionCol=PREDICTION).evaluate(model.transform(test))
    assert rmse <= 1.1 * sigma, model.history[-3:]


def test_validation_rows_early_stopping_and_best_epoch(spark, tiny):
    flagged = tiny.withColumn("is_validation", F.xxhash64(USER_ID, MOVIE_ID) % 10 == 0)
    n_train = flagged.filter(~F.col("is_validation")).count()
    m = _fit(
        flagged,
        numBlocks=1,
        maxIter=30,
        stepSize=0.2,
        stepDecay=1.0,
        regParam=0.0,
        rank=8,
        validationIndicatorCol="is_validation",
        earlyStoppingRounds=2,
    )
    h = m.history
    assert all(x["updates"] == n_train for x in h)
    assert all(x["val_rmse"] is not None for x in h)
    assert len(h) < 30  # overfits quickly with this step size and no regularization
    best = min(h, key=lambda x: x["val_rmse"])
    assert m.bestEpoch == best["epoch"] and len(h) == best["epoch"] + 2
    # the kept factors are the best epoch's: their validation RMSE is the best one
    val = flagged.filter("is_validation")
    rmse = RegressionEvaluator(metricName="rmse", labelCol=RATING).evaluate(m.setColdStartStrategy("drop").transform(val))
    assert rmse == pytest.approx(best["val_rmse"], rel=1e-4)


def test_bold_driver_schedule(spark, tiny):
    m = _fit(tiny, schedule="bold_driver", maxIter=3, stepSize=0.01, numBlocks=1)
    steps = [h["step_size"] for h in m.history]
    rmses = [h["train_rmse"] for h in m.history]
    assert steps[0] == 0.01
    # bold driver: x1.05 after an epoch whose training RMSE fell (the first always counts as
    # falling), x0.5 after one where it rose
    for epoch in range(1, len(steps)):
        fell = epoch == 1 or rmses[epoch - 1] < rmses[epoch - 2]
        assert steps[epoch] == pytest.approx(steps[epoch - 1] * (1.05 if fell else 0.5)), epoch


@pytest.mark.slow
def test_transform_matches_als_schema_and_cold_start(spark, tiny):
    m = _fit(tiny, maxIter=1, numBlocks=1)
    als = ALS(rank=2, maxIter=2, seed=1, **COLS).fit(tiny)
    probe = (
        spark.createDataFrame([(1, 1, 4.0), (1, 999, 3.0), (999, 1, 2.0)], [USER_ID, MOVIE_ID, RATING])
        .withColumn(USER_ID, F.col(USER_ID).cast("int"))
        .withColumn(MOVIE_ID, F.col(MOVIE_ID).cast("int"))
    )
    ours, theirs = m.transform(probe), als.transform(probe)
    assert ours.schema == theirs.schema
    rows = {(r[USER_ID], r[MOVIE_ID]): r[PREDICTION] for r in ours.collect()}
    assert math.isnan(rows[(1, 999)]) and math.isnan(rows[(999, 1)]) and not math.isnan(rows[(1, 1)])
    # the prediction is mu + b_u + b_i + p_u . q_i
    u = m.userBiasedFactors.filter("id = 1").first()
    i = m.itemBiasedFactors.filter("id = 1").first()
    expected = m.globalMean + u["bias"] + i["bias"] + float(np.dot(u["features"], i["features"]))
    assert rows[(1, 1)] == pytest.approx(expected, rel=1e-5)
    dropped = m.copy({m.coldStartStrategy: "drop"}).transform(probe)
    als_dropped = als.copy({als.coldStartStrategy: "drop"}).transform(probe)
    assert dropped.schema == als_dropped.schema and dropped.count() == als_dropped.count() == 1
    evaluator = RegressionEvaluator(metricName="rmse", labelCol=RATING, predictionCol=PREDICTION)
    for model in (m, als):
        assert math.isfinite(evaluator.evaluate(model.copy({model.coldStartStrategy: "drop"}).transform(tiny)))


def test_scoring_factors_rank_like_predictions(spark, tiny):
    m = _fit(tiny, maxIter=1, numBlocks=1)
    users, items = m.scoringFactors()
    assert users.schema == FACTORS and items.schema == FACTORS
    u = {r["id"]: np.array(r["features"]) for r in users.collect()}
    it = {r["id"]: np.array(r["features"]) for r in items.collect()}
    pairs = tiny.select(USER_ID, MOVIE_ID).limit(50)
    preds = m.transform(pairs).collect()
    bu = {r["id"]: r["bias"] for r in m.userBiasedFactors.collect()}
    for r in preds:
        score = float(u[r[USER_ID]] @ it[r[MOVIE_ID]])
        assert r[PREDICTION] == pytest.approx(score + m.globalMean + bu[r[USER_ID]], abs=1e-4)
    recs = m.recommendForAllUsers(3)
    als_recs = ALS(rank=2, maxIter=1, seed=1, **COLS).fit(tiny).recommendForAllUsers(3)
    assert recs.schema.simpleString() == als_recs.schema.simpleString()
    first = recs.orderBy(USER_ID).first()
    ratings = [x["rating"] for x in first["recommendations"]]
    assert len(ratings) == 3 and ratings == sorted(ratings, reverse=True)
    rated = tiny.filter(F.col(USER_ID) == first[USER_ID])
    excl = m.recommendForAllUsers(3, rated=tiny).filter(F.col(USER_ID) == first[USER_ID]).first()
    seen = {r[MOVIE_ID] for r in rated.collect()}
    assert not seen & {x[MOVIE_ID] for x in excl["recommendations"]}


def test_save_load_round_trip(spark, tiny, tmp_path):
    m = _fit(tiny, maxIter=1, numBlocks=1)
    path = str(tmp_path / "sgd")
    m.save(path)
    m.write().overwrite().save(path)
    loaded = SGDMatrixFactorizationModel.load(path)
    # Parquet reads back nullable columns (as with ALSModel.load); the values are identical
    assert_df_equality(m.userBiasedFactors, loaded.userBiasedFactors, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(m.itemBiasedFactors, loaded.itemBiasedFactors, ignore_row_order=True, ignore_nullable=True)
    assert loaded.globalMean == m.globalMean and loaded.history == m.history and loaded.uid == m.uid
    assert loaded.rank == 4 and loaded.getUserCol() == USER_ID and loaded.loss == "squared"
    assert {p.name for p in loaded.params} == {"userCol", "itemCol", "predictionCol", "coldStartStrategy"}
    assert_df_equality(m.transform(tiny), loaded.transform(tiny), ignore_row_order=True, ignore_nullable=True)
    est = SGDMatrixFactorization(rank=3, **COLS)
    est.write().overwrite().save(str(tmp_path / "est"))
    assert SGDMatrixFactorization.load(str(tmp_path / "est")).getRank() == 3


def test_train_validation_split_over_a_grid(spark, tiny):
    est = SGDMatrixFactorization(maxIter=1, numBlocks=1, seed=3, coldStartStrategy="drop", **COLS)
    grid = ParamGridBuilder().addGrid(est.rank, [2, 4]).addGrid(est.regParam, [0.01]).build()
    tvs = TrainValidationSplit(
        estimator=est,
        estimatorParamMaps=grid,
        evaluator=RegressionEvaluator(metricName="rmse", labelCol=RATING),
        trainRatio=0.8,
        seed=1,
    )
    model = tvs.fit(tiny)
    assert len(model.validationMetrics) == 2 and all(math.isfinite(x) for x in model.validationMetrics)
    assert isinstance(model.bestModel, SGDMatrixFactorizationModel)
    best = min(range(len(grid)), key=lambda i: model.validationMetrics[i])
    assert model.bestModel.rank == grid[best][est.rank]


def test_copy_keeps_params_and_state(tiny):
    est = SGDMatrixFactorization(rank=5, **COLS)
    other = est.copy({est.rank: 7})
    assert est.getRank() == 5 and other.getRank() == 7 and other.uid == est.uid
    assert other.getUserCol() == USER_ID


def test_invalid_params_fail_fast(spark, tiny):
    with pytest.raises(ValueError, match="schedule"):
        SGDMatrixFactorization(schedule="adam", **COLS).fit(tiny)


def test_fault_injection_retry_gives_identical_factors(spark, tiny):
    max_failures = spark.sparkContext.master
    if max_failures in ("local", "local[*]") or not max_failures.rstrip("]").split(",")[1:]:
        pytest.skip(f"master {max_failures!r} does not retry tasks; use local[N,maxFailures]")
    clean = _fit(tiny, maxIter=1)
    sc = spark.sparkContext
    sc.setJobGroup("sgd-fault", "injected DSGD fault")
    try:
        faulty = _estimator(maxIter=1).setFaultPartition(1).fit(tiny)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert failed_tasks(spark, "sgd-fault") >= 1, "the injected fault never fired: no task attempt failed"
    _same(_factors(clean), _factors(faulty))
    assert [h["train_rmse"] for h in clean.history] == [h["train_rmse"] for h in faulty.history]


class _WithFooBar(SGDMatrixFactorization):
    """A test-only subclass declaring a Param the engine knows nothing about."""

    fooBar = Param(Params._dummy(), "fooBar", "a knob only this subclass has", TypeConverters.toInt)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._setDefault(fooBar=3)


class _ParamMap:
    """Anything with extractParamMap(): here a chosen map, to build settings the estimator would not."""

    def __init__(self, values):
        self.values = values

    def extractParamMap(self, extra=None):
        return self.values


def test_engine_settings_are_the_params_by_name_and_drop_nothing(spark, tiny, monkeypatch):
    """Every Param lands in the engine's settings under its own name (a subclass's new Param in
    `extra`, set or default); a field no Param fills, a wrong type, an unknown option raise."""
    seen = []

    def capture(spark, train, validation, params, fault_partition=None):
        seen.append((params, fault_partition))
        raise RuntimeError("captured")

    monkeypatch.setattr(estimator_module, "fit_dsgd", capture)
    for est, foo in ((_WithFooBar(**COLS), 3), (_WithFooBar(regParam=0.25, **COLS).setFaultPartition(1), 7)):
        if foo == 7:
            est.set(est.fooBar, 7)
        with pytest.raises(RuntimeError, match="captured"):
            est.fit(tiny)
        params, fault = seen[-1]
        assert params.extra["fooBar"] == foo and fault == (1 if foo == 7 else None)
        for f in dataclasses.fields(DSGDParams):
            if f.name not in ("extra", "resident", "epochs_per_job"):
                assert getattr(params, f.name) == est.getOrDefault(f.name), f.name
        assert {k: v for k, v in params.extra.items() if k != "fooBar"} == {
            p.name: v
            for p, v in est.extractParamMap().items()
            if p.name not in {f.name for f in dataclasses.fields(DSGDParams)} | {"fooBar"}
        }
    assert seen[-1][0].regParam == 0.25 and seen[0][0].regParam == SGDMatrixFactorization().getRegParam()
    full = SGDMatrixFactorization().extractParamMap()
    with pytest.raises(ValueError, match="no value for margin"):
        engine_params(_ParamMap({p: v for p, v in full.items() if p.name != "margin"}))
    with pytest.raises(TypeError, match="rank must be int"):
        engine_params(_ParamMap({p: ("high" if p.name == "rank" else v) for p, v in full.items()}))
    with pytest.raises(TypeError, match="unknown engine options resdent"):
        engine_params(SGDMatrixFactorization(), resdent=False)
    assert engine_params(SGDMatrixFactorization(), epochs_per_job=2).epochs_per_job == 2
