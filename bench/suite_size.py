"""One benchmark size in a fresh process (so peaks and JIT costs are its own): prints JSON.

    .venv/bin/python bench/suite_size.py --size 1m --work /tmp/recospark-bench

The pipeline's own code on a local[2] session built by `recospark.session` from conf/local.yaml:
the stages generate (not counted), ingest and split, then the model table's ALS and SGD
estimators fitted on the split's train side, the evaluate stage's rating metrics of the SGD
model, and top-N for all users with rated items excluded: ours (`recospark.scoring.top_n`, what
`recommend` runs) vs MLlib's `recommendForAllUsers` (asked for N + the most any user rated, then
rated items removed and re-ranked), both on the same ALS model. SGD's time to reach ALS's test
RMSE comes from its per-epoch history: the test rows ride along as validation rows (early
stopping off, never trained on), scored every epoch. SGD's time is also split into kernel
seconds and the rest, with the ratings bytes that crossed JVM<->Python (bench/bench_dsgd.py has
the per-epoch view and ALS at SGD's rank).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from harness import ML100K, SIZES, config, generate_missing, session, spark_overrides

__all__ = ["ML100K", "SIZES", "MemorySampler"]


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


def measure(spark, cfg, r: dict, skip_mllib_topn: bool) -> None:
    """Fit ALS and SGD from the model table on the published split and time top-N; results into `r`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from recospark import io
    from recospark.models.table import MODELS
    from recospark.schema import IS_VALIDATION, MOVIE_ID, RANK, RATINGS, SCORE, USER_ID
    from recospark.scoring import scoring_factors, top_n
    from recospark.stages import evaluate

    name = cfg.split.effective_name
    train = io.read_output(spark, cfg, f"splits/{name}/train", RATINGS).cache()
    test = io.read_output(spark, cfg, f"splits/{name}/test", RATINGS).cache()
    r["train_rows"], r["test_rows"] = train.count(), test.count()

    als = timed(r, "als_fit_s", lambda: MODELS["als"].build(cfg, cold_start_strategy="drop").fit(train))
    r["als_rmse"] = evaluate.rating_metrics(als.transform(test))["rmse"]
    # One SGD fit that also scores the test rows after every epoch (passed as validation rows,
    # early stopping off, never trained on): its fit time includes that scoring, so SGD's times
    # here are upper bounds.
    tracked_data = train.withColumn(IS_VALIDATION, F.lit(False)).unionByName(test.withColumn(IS_VALIDATION, F.lit(True)))
    sgd_estimator = MODELS["sgd"].build(cfg, {"early_stopping_rounds": 0}, cold_start_strategy="drop", validation=True)
    sgd = timed(r, "sgd_fit_s", lambda: sgd_estimator.fit(tracked_data))
    r["sgd_rmse"] = evaluate.rating_metrics(sgd.transform(test))["rmse"]
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
    timed(
        r, "topn_ours_s", lambda: top_n(users, items, rated, n, cfg.recommend.user_block_size).write.format("noop").mode("overwrite").save()
    )

    def mllib_top_n():
        """MLlib's own top-N (the comparison, not ours): it cannot exclude rated items, so it is asked
        for n + the most any user rated, then rated items are removed and the rest re-ranked."""
        most = rated.groupBy(USER_ID).count().agg(F.max("count")).first()[0]
        recs = als.recommendForAllUsers(n + most).select(USER_ID, F.posexplode("recommendations").alias("pos", "rec"))
        recs = recs.select(USER_ID, F.col("rec").getField(MOVIE_ID).alias(MOVIE_ID), F.col("rec").getField("rating").alias(SCORE))
        kept = recs.join(rated, [USER_ID, MOVIE_ID], "left_anti")
        ranked = kept.withColumn(RANK, F.row_number().over(Window.partitionBy(USER_ID).orderBy(F.desc(SCORE), MOVIE_ID)))
        ranked.filter(F.col(RANK) <= n).write.format("noop").mode("overwrite").save()

    if not skip_mllib_topn:
        timed(r, "topn_mllib_s", mllib_top_n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, required=True)
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--driver-memory", default="12g")
    ap.add_argument("--skip-mllib-topn", action="store_true")
    args = ap.parse_args(argv)
    if SIZES[args.size] is None and not (ML100K / "u.data").is_file():
        print(json.dumps({"size": args.size, "skipped": f"no ML-100K at {ML100K}"}))
        return 0

    sampler = MemorySampler()
    sampler.start()
    from recospark.runtime import checkpoint_scope
    from recospark.stages import ingest, split

    cfg = config(args.size, Path(args.work) / args.size, overrides=spark_overrides(driver_memory=args.driver_memory))
    spark = session(cfg, f"recospark-bench-{args.size}")
    r: dict = {"size": args.size}
    if SIZES[args.size] is not None:
        timed(r, "generate_s", lambda: generate_missing(spark, cfg, args.size))
    r["ratings"] = timed(r, "ingest_s", lambda: ingest.run(spark, cfg))["ratings"]["rows"]
    timed(r, "split_s", lambda: split.run(spark, cfg))
    with checkpoint_scope(spark, cfg, "bench"):  # as the train stage fits (ALS with maxIter >= 20 needs one)
        measure(spark, cfg, r, args.skip_mllib_topn)
    spark.stop()
    sampler.stop.set()
    sampler.join()
    r.update({k: round(v) for k, v in sampler.peaks.items()})
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
