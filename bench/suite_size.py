"""One benchmark size in a fresh process (so peaks and JIT costs are its own): prints JSON.

    .venv/bin/python bench/suite_size.py --size 1m --work /tmp/recospark-bench

Stages are the pipeline's own code on a local[2] session: generate (not counted), ingest, split,
ALS fit, SGD fit, evaluate (rating + ranking metrics of the SGD model), and top-N for all users
with rated items excluded: ours (blocked, broadcast items) vs MLlib's `recommendForAllUsers`
(asked for N + the most any user rated, then rated items removed and re-ranked), both on the
same ALS model. SGD's time to reach ALS's test RMSE comes from its per-epoch history: the test
rows ride along as validation rows (early stopping off, never trained on), scored every epoch.
SGD's time is also split into kernel seconds and the rest, with the ratings bytes that crossed
JVM<->Python (bench/bench_dsgd.py has the per-epoch view and ALS at SGD's rank).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECOSPARK_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))

# MovieLens shapes: (users, items, ratings, layout)
SIZES = {
    "100k": None,  # the real ML-100K
    "1m": (6040, 3706, 1_000_209, "ml-1m"),
    "10m": (69878, 10677, 10_000_054, "ml-10m"),
    "25m": (162541, 59047, 25_000_095, "csv"),
}


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


class MemorySampler(threading.Thread):
    """Peak RSS of the Python driver, the JVM (driver + executors in local mode) and Python workers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks = {"driver_python_mb": 0.0, "jvm_mb": 0.0, "python_workers_mb": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.5):
            jvms = _children(me)
            workers = [w for j in jvms for w in _children(j)]
            workers += [w2 for w in workers for w2 in _children(w)]
            self._peak("jvm_mb", sum(_status_kb(j, "VmRSS") for j in jvms))
            self._peak("python_workers_mb", sum(_status_kb(w, "VmRSS") for w in workers))
        self.peaks["driver_python_mb"] = _status_kb(me, "VmHWM") / 1024

    def _peak(self, key: str, kb: int) -> None:
        self.peaks[key] = max(self.peaks[key], kb / 1024)


def timed(results: dict, key: str, fn):
    t0 = time.monotonic()
    value = fn()
    results[key] = round(time.monotonic() - t0, 2)
    print(f"  {key:<22} {results[key]:>8.1f} s", file=sys.stderr, flush=True)
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, required=True)
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--driver-memory", default="12g")
    ap.add_argument("--skip-mllib-topn", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    sampler = MemorySampler()
    sampler.start()
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from recospark.config import load_config
    from recospark.models import table
    from recospark.schema import IS_VALIDATION, MOVIE_ID, PREDICTION, RANK, RATING, RATINGS, SCORE, USER_ID
    from recospark.scoring import scoring_factors, top_n
    from recospark.stages import evaluate, generate, ingest, split

    work = Path(args.work) / args.size
    overrides = [f"output.root={work}", f"runtime.checkpoint_dir={work}/_checkpoints"]
    if SIZES[args.size] is None:
        if not (ML100K / "u.data").is_file():
            print(json.dumps({"size": args.size, "skipped": f"no ML-100K at {ML100K}"}))
            return 0
        overrides.append(f"data.source={ML100K}")
    else:
        users, items, n, layout = SIZES[args.size]
        overrides += [f"generate.users={users}", f"generate.items={items}", f"generate.ratings={n}", f"generate.layout={layout}",
                      f"data.source={work}/generated"]
    cfg = load_config(ROOT / "conf" / "local.yaml", overrides)
    spark = (
        SparkSession.builder.master("local[2]").appName(f"recospark-bench-{args.size}")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "8").config("spark.sql.session.timeZone", "UTC")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)
    r: dict = {"size": args.size}
    if SIZES[args.size] is not None:
        timed(r, "generate_s", lambda: generate.run(spark, cfg))
    r["ratings"] = timed(r, "ingest_s", lambda: ingest.run(spark, cfg))["ratings"]["rows"]
    timed(r, "split_s", lambda: split.run(spark, cfg))
    from recospark import io

    train = io.read_output(spark, cfg, "splits/random/train", RATINGS).cache()
    test = io.read_output(spark, cfg, "splits/random/test", RATINGS).cache()
    r["train_rows"], r["test_rows"] = train.count(), test.count()
    rmse = RegressionEvaluator(labelCol=RATING, predictionCol=PREDICTION, metricName="rmse")

    als = timed(r, "als_fit_s", lambda: table.spec("als").build(cfg, cold_start_strategy="drop").fit(train))
    r["als_rmse"] = rmse.evaluate(als.transform(test))
    # One SGD fit that also scores the test rows after every epoch (passed as validation rows,
    # early stopping off, never trained on): its fit time includes that scoring, so SGD's times
    # here are upper bounds.
    tracked_data = train.withColumn(IS_VALIDATION, F.lit(False)).unionByName(test.withColumn(IS_VALIDATION, F.lit(True)))
    sgd = timed(r, "sgd_fit_s", lambda: table.spec("sgd").build(
        cfg, {"early_stopping_rounds": 0}, cold_start_strategy="drop", validation=True).fit(tracked_data))
    r["sgd_rmse"] = rmse.evaluate(sgd.transform(test))
    r["sgd_epochs"] = len(sgd.history)
    r["sgd_updates_per_s"] = round(r["train_rows"] * len(sgd.history) / max(r["sgd_fit_s"], 1e-9))
    # where SGD's time goes: kernel (threads busy in the compiled loop) vs everything else (setup,
    # Spark jobs, export), and the ratings crossing JVM<->Python over the whole fit
    r["sgd_kernel_s"] = round(sum(h.get("kernel_seconds", 0.0) for h in sgd.history), 2)
    r["sgd_outside_s"] = round(r["sgd_fit_s"] - r["sgd_kernel_s"], 2)
    r["sgd_ratings_mb"] = round(sum(h.get("streamed_bytes", 0) + h.get("streamed_val_bytes", 0) for h in sgd.history) / 1e6, 1)
    # Setup (blocking the ratings, initial factors) and the final export count against SGD too.
    elapsed, reached = r["sgd_fit_s"] - sum(h["seconds"] for h in sgd.history), None
    for h in sgd.history:
        elapsed += h["seconds"]
        if h["val_rmse"] is not None and h["val_rmse"] <= r["als_rmse"]:
            reached = (h["epoch"], round(elapsed, 2))
            break
    r["sgd_reach_als_epoch"], r["sgd_reach_als_s"] = reached if reached else (None, None)

    timed(r, "evaluate_s", lambda: evaluate.rating_side(sgd, test, None))

    n = cfg.recommend.n
    rated = train.select(USER_ID, MOVIE_ID)
    users, items = scoring_factors(als)
    timed(r, "topn_ours_s", lambda: top_n(users, items, rated, n, cfg.recommend.user_block_size).write.format("noop").mode("overwrite").save())

    def mllib_top_n():
        most = rated.groupBy(USER_ID).count().agg(F.max("count")).first()[0]
        recs = als.recommendForAllUsers(n + most).select(USER_ID, F.posexplode("recommendations").alias("pos", "rec"))
        recs = recs.select(USER_ID, F.col("rec").getField(MOVIE_ID).alias(MOVIE_ID), F.col("rec").getField("rating").alias(SCORE))
        from pyspark.sql import Window

        kept = recs.join(rated, [USER_ID, MOVIE_ID], "left_anti")
        ranked = kept.withColumn(RANK, F.row_number().over(Window.partitionBy(USER_ID).orderBy(F.desc(SCORE), MOVIE_ID)))
        ranked.filter(F.col(RANK) <= n).write.format("noop").mode("overwrite").save()

    if not args.skip_mllib_topn:
        timed(r, "topn_mllib_s", mllib_top_n)
    spark.stop()
    sampler.stop.set()
    sampler.join()
    r.update({k: round(v) for k, v in sampler.peaks.items()})
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
