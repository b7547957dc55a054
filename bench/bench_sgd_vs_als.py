"""DSGD vs MLlib ALS on MovieLens 100K's canonical u1 split, in local[2].

    .venv/bin/python bench/bench_sgd_vs_als.py [--data ../shared/data/ml-100k] [--set rank=64 ...]

Prints ALS fit time and test RMSE (rank 10, maxIter 20, regParam over a grid of 3), the SGD run
(epochs, wall time, updates/s, per-epoch test RMSE) and the epoch/time at which SGD first reaches
the best ALS test RMSE. The per-epoch test RMSE is tracked by passing u1.test as the estimator's
validation rows with early stopping off (they are never trained on); the wall time is from a
second, clean fit without them. Also reports the "pipeline" setting: early stopping on a 10%
validation split carved from u1.base.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RECOSPARK_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


def read_u(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", names=["user_id", "movie_id", "rating", "ts"])
    return df[["user_id", "movie_id", "rating"]].astype({"user_id": "int32", "movie_id": "int32", "rating": "float64"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--set", action="append", default=[], help="SGD param override, e.g. rank=64")
    ap.add_argument("--als-regs", default="0.05,0.1,0.2")
    ap.add_argument("--skip-als", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true", help="skip the 90%%+early stopping run")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "u1.base").is_file():
        print(f"skipped: {data}/u1.base not found (MovieLens 100K)")
        return 0
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from recospark.models.sgd.estimator import SGDMatrixFactorization
    from recospark.models.sgd.kernel import warm_up

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("bench-sgd-vs-als")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir("/tmp/recospark-bench-checkpoints")
    train = spark.createDataFrame(read_u(data / "u1.base")).cache()
    test = spark.createDataFrame(read_u(data / "u1.test")).cache()
    n_train, n_test = train.count(), test.count()
    print(f"ML-100K u1: {n_train} train, {n_test} test ratings; local[2]")
    rmse = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction")
    cols = {"userCol": "user_id", "itemCol": "movie_id", "ratingCol": "rating"}

    best_als = None
    if not args.skip_als:
        print("\nALS (rank 10, maxIter 20)")
        print(f"{'regParam':>9} {'fit s':>7} {'test RMSE':>10}")
        for reg in [float(x) for x in args.als_regs.split(",")]:
            als = ALS(rank=10, maxIter=20, regParam=reg, seed=42, coldStartStrategy="drop", **cols)
            t0 = time.perf_counter()
            model = als.fit(train)
            model.userFactors.count()
            fit_s = time.perf_counter() - t0
            r = rmse.evaluate(model.transform(test))
            print(f"{reg:>9} {fit_s:>7.1f} {r:>10.4f}")
            if best_als is None or r < best_als[1]:
                best_als = (reg, r, fit_s)
        print(f"best ALS: regParam={best_als[0]} test RMSE {best_als[1]:.4f}, fit {best_als[2]:.1f} s")

    params = dict(seed=42, coldStartStrategy="drop", **cols)
    for kv in args.set:
        k, _, v = kv.partition("=")
        params[k] = v if k == "schedule" else (int(v) if v.lstrip("-").isdigit() else float(v))
    compile_s = warm_up()
    tracked = train.withColumn("is_test", F.lit(False)).unionByName(test.withColumn("is_test", F.lit(True)))
    est = SGDMatrixFactorization(**{**params, "validationIndicatorCol": "is_test", "earlyStoppingRounds": 0})
    shown = {p.name: v for p, v in est.extractParamMap().items() if p.name in (
        "rank", "maxIter", "regParam", "biasRegParam", "stepSize", "stepDecay", "schedule", "numBlocks", "initStd")}
    print(f"\nSGD {shown}")
    t0 = time.perf_counter()
    tracked_model = est.fit(tracked)
    tracked_s = time.perf_counter() - t0
    print(f"{'epoch':>5} {'train RMSE':>10} {'test RMSE':>10} {'step':>8} {'epoch s':>8} {'cum s':>7}")
    cum, reached = 0.0, None
    for h in tracked_model.history:
        cum += h["seconds"]
        print(f"{h['epoch']:>5} {h['train_rmse']:>10.4f} {h['val_rmse']:>10.4f} {h['step_size']:>8.5f} {h['seconds']:>8.2f} {cum:>7.1f}")
        if best_als and reached is None and h["val_rmse"] <= best_als[1]:
            reached = (h["epoch"], cum)
    final_tracked = rmse.evaluate(tracked_model.transform(test))
    print(f"tracked fit {tracked_s:.1f} s; final test RMSE {final_tracked:.4f}; best epoch by test "
          f"{min(tracked_model.history, key=lambda h: h['val_rmse'])['epoch']}")

    est = SGDMatrixFactorization(**{**params, "earlyStoppingRounds": 0})
    t0 = time.perf_counter()
    model = est.fit(train)
    fit_s = time.perf_counter() - t0
    epochs = len(model.history)
    sgd_rmse = rmse.evaluate(model.transform(test))
    epoch_s = sum(h["seconds"] for h in model.history)
    print(f"\nSGD clean fit: {epochs} epochs, wall {fit_s:.1f} s (epochs {epoch_s:.1f} s, setup+output {fit_s - epoch_s:.1f} s), "
          f"{epochs * n_train / epoch_s / 1e6:.3f} M updates/s end-to-end, kernel warm-up {compile_s:.2f} s; test RMSE {sgd_rmse:.4f}")
    if best_als:
        if reached:
            print(f"SGD reaches ALS's best test RMSE {best_als[1]:.4f} at epoch {reached[0]} (~{reached[1]:.1f} s of epochs incl. test tracking); "
                  f"ALS fit {best_als[2]:.1f} s")
        else:
            print(f"SGD does not reach ALS's best test RMSE {best_als[1]:.4f} within {epochs} epochs; ALS fit {best_als[2]:.1f} s")

    if not args.skip_pipeline:
        from recospark.schema import IS_VALIDATION
        from recospark.splitting import with_validation_flag

        flagged = with_validation_flag(train.withColumn("rated_at", F.current_timestamp()), 0.1, 42)
        est = SGDMatrixFactorization(**{**params, "validationIndicatorCol": IS_VALIDATION, "earlyStoppingRounds": 3})
        t0 = time.perf_counter()
        m = est.fit(flagged)
        s = time.perf_counter() - t0
        print(f"\npipeline setting (90% train, early stopping on 10% validation, 3 rounds): {len(m.history)} epochs, "
              f"best epoch {m.bestEpoch}, val RMSE {min(h['val_rmse'] for h in m.history):.4f}, wall {s:.1f} s, "
              f"test RMSE {rmse.evaluate(m.transform(test)):.4f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
