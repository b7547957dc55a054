"""DSGD vs MLlib ALS at one size, in one fresh process, with where DSGD's time goes. Prints tables.

    .venv/bin/python bench/bench_dsgd.py --size 10m                 # ML-10M shape (generate stage)
    .venv/bin/python bench/bench_dsgd.py --size 25m --skip-als-same-rank
    .venv/bin/python bench/bench_dsgd.py --size 100k --sgd rank=64 --sgd step_size=0.02

Data: the real ML-100K, or the `generate` stage's MovieLens-shaped ratings at the ML-1M/10M/25M
shapes of bench/suite_size.py, ingested and split (random 80/20) once into --work and reused.

Measured (wall seconds, `uptime` load printed before and after; the machine may be shared):
* ALS at its own setting (conf: rank 10, 20 iterations) and, unless skipped, at SGD's rank;
* the compiled kernel alone on one core over the same sub-blocks (one epoch, this process);
* SGD with the test rows riding along as validation rows (early stopping off, never trained
  on): per epoch train/test RMSE, seconds, kernel seconds (threads busy) vs seconds outside the
  kernel, and bytes of ratings and factors crossing JVM<->Python; when it first reaches ALS's
  test RMSE (setup included), end-to-end throughput and its share of cores x kernel rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from suite_size import ML100K, SIZES  # noqa: E402


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        out[k] = v if k == "schedule" else (int(v) if v.lstrip("-").isdigit() else float(v))
    return out


def prepare_data(spark, size: str, work: Path):
    """Ingest + random split once per size (the pipeline's own stages); returns (train, test, cfg)."""
    from recospark import io
    from recospark.config import load_config
    from recospark.schema import RATINGS
    from recospark.stages import generate, ingest, split

    base = work / size
    overrides = [f"output.root={base}", f"runtime.checkpoint_dir={base}/_checkpoints"]
    if SIZES[size] is None:
        overrides.append(f"data.source={ML100K}")
    else:
        users, items, n, layout = SIZES[size]
        overrides += [f"generate.users={users}", f"generate.items={items}", f"generate.ratings={n}",
                      f"generate.layout={layout}", f"data.source={base}/generated"]
    cfg = load_config(ROOT / "conf" / "local.yaml", overrides)
    if not (base / "splits" / "random" / "train").exists():
        if SIZES[size] is not None and not (base / "generated").exists():
            generate.run(spark, cfg)
        ingest.run(spark, cfg)
        split.run(spark, cfg)
    train = io.read_output(spark, cfg, "splits/random/train", RATINGS).cache()
    test = io.read_output(spark, cfg, "splits/random/test", RATINGS).cache()
    train.count(), test.count()
    return train, test, cfg


def kernel_alone(train, params, cores: int) -> dict:
    """The compiled kernel over the same sub-blocks DSGD builds, in this process, without Spark:
    one epoch on 1 thread (the 'single-core kernel rate at the same rank') and on `cores` threads,
    best of 3 epochs each."""
    import numpy as np
    from inprocess import blocked

    from recospark.models.sgd import blocks as bk
    from recospark.models.sgd import worker as W
    from recospark.schema import MOVIE_ID, RATING, USER_ID

    table = train.select(USER_ID, MOVIE_ID, RATING).toArrow()
    u, i, r = (table.column(c).to_numpy() for c in (USER_ID, MOVIE_ID, RATING))
    cfg, source, users, items = blocked(u, i, r, B=params["num_blocks"], K=params["inner_blocks"], rank=params["rank"],
                                        reg=params["reg"], bias_reg=params["bias_reg"], init_std=params["init_std"],
                                        seed=params["seed"], threads=cores)
    W.ensure_warm()
    out = {}
    for threads in sorted({1, cores}):
        cfg = W.TaskConfig(**{**cfg.__dict__, "threads": threads})
        best = None
        for epoch in range(3):  # the first touches every page
            sums: dict = {}
            t0 = time.perf_counter()
            timer = W.Timer()
            for shift in bk.strata_order(cfg.seed, epoch, cfg.B):
                timer.add(W.train_stratum(cfg, shift, list(range(cfg.B)), users, items, source,
                                          lr=params["step_size"] * 0.1, epoch=epoch, sums=sums))
            wall = time.perf_counter() - t0
            n = W.total(sums)[1]
            if best is None or wall < best["wall"]:
                best = {"updates": n, "wall": wall, "kernel_cpu": timer.cpu, "rate": n / wall}
        out[threads] = best
    del table, u, i, r, np
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), required=True)
    ap.add_argument("--work", default="/tmp/recospark-dsgd-bench")
    ap.add_argument("--sgd", action="append", default=[], help="DSGDParams override, e.g. rank=32 (repeatable)")
    ap.add_argument("--driver-memory", default="12g")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--skip-als-same-rank", action="store_true")
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_before = load()
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from recospark.models.sgd import dsgd
    from recospark.schema import MOVIE_ID, PREDICTION, RATING, USER_ID

    spark = (
        SparkSession.builder.master(args.master).appName(f"bench-dsgd-{args.size}")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "8").config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    work = Path(args.work)
    sc.setCheckpointDir(str(work / "_checkpoints"))
    train, test, cfg = prepare_data(spark, args.size, work)
    n_train, n_test = train.count(), test.count()
    rmse = RegressionEvaluator(labelCol=RATING, predictionCol=PREDICTION, metricName="rmse")
    sgd_conf = {**cfg.sgd.model_dump()}
    params = {f.name: getattr(dsgd.DSGDParams(), f.name) for f in dsgd.DSGDParams.__dataclass_fields__.values()}
    rename = {"reg_param": "reg", "bias_reg_param": "bias_reg"}
    for k, v in sgd_conf.items():
        if rename.get(k, k) in params:
            params[rename.get(k, k)] = v
    params.update(parse_sets(args.sgd))
    params["early_stopping_rounds"] = 0
    cores = dsgd.local_cores(args.master) or os.cpu_count() or 1
    result: dict = {"size": args.size, "n_train": n_train, "n_test": n_test, "master": args.master, "load_before": load_before,
                    "sgd_params": params}
    print(f"{args.size}: {n_train:,} train / {n_test:,} test ratings, {args.master}; load before: {load_before}", flush=True)

    def fit_als(rank: int, iters: int, reg: float) -> tuple[float, float]:
        als = ALS(rank=rank, maxIter=iters, regParam=reg, seed=42, coldStartStrategy="drop", userCol=USER_ID,
                  itemCol=MOVIE_ID, ratingCol=RATING, numUserBlocks=cfg.als.num_blocks, numItemBlocks=cfg.als.num_blocks,
                  checkpointInterval=cfg.als.checkpoint_interval)
        t0 = time.monotonic()
        model = als.fit(train)
        model.userFactors.count()
        secs = time.monotonic() - t0
        return secs, rmse.evaluate(model.transform(test))

    als_s, als_rmse = fit_als(cfg.als.rank, cfg.als.max_iter, cfg.als.reg_param)
    result["als"] = {"rank": cfg.als.rank, "iters": cfg.als.max_iter, "reg": cfg.als.reg_param, "fit_s": round(als_s, 2), "rmse": als_rmse}
    print(f"ALS rank {cfg.als.rank}, {cfg.als.max_iter} iterations, reg {cfg.als.reg_param}: fit {als_s:.1f} s, test RMSE {als_rmse:.4f}", flush=True)
    if not args.skip_als_same_rank and params["rank"] != cfg.als.rank:
        s2, r2 = fit_als(params["rank"], cfg.als.max_iter, cfg.als.reg_param)
        result["als_same_rank"] = {"rank": params["rank"], "fit_s": round(s2, 2), "rmse": r2}
        print(f"ALS rank {params['rank']} (SGD's rank), {cfg.als.max_iter} iterations: fit {s2:.1f} s, test RMSE {r2:.4f}", flush=True)

    if not args.skip_kernel:
        k = kernel_alone(train, params, cores)
        result["kernel_alone"] = k
        print("kernel alone, same sub-blocks, one epoch: " + ", ".join(
            f"{t} thread(s) {v['rate'] / 1e6:.2f} M updates/s" for t, v in k.items()), flush=True)

    cols = lambda df: df.select(F.col(USER_ID).alias(dsgd.USER), F.col(MOVIE_ID).alias(dsgd.ITEM), F.col(RATING).cast("float").alias(dsgd.RATING))  # noqa: E731
    t0 = time.monotonic()
    res = dsgd.fit_dsgd(spark, cols(train), cols(test), dsgd.DSGDParams(**params))
    res.user_factors.count()
    fit_s = time.monotonic() - t0
    info = res.info
    epochs = len(res.history)
    epoch_s = sum(h["seconds"] for h in res.history)
    kernel_s = sum(h["kernel_seconds"] for h in res.history)
    updates = n_train * epochs
    print(f"\nSGD { {k: params[k] for k in ('rank', 'step_size', 'step_decay', 'reg', 'num_blocks', 'inner_blocks', 'init_std')} }")
    print(f"plan: {info['plan']['reason']}")
    print(f"{'epoch':>5} {'train':>7} {'test':>7} {'step':>7} {'sec':>6} {'kernel':>6} {'outside':>7} {'cum s':>6} "
          f"{'ratings B':>10} {'factor B':>9}")
    cum = fit_s - epoch_s  # setup and export count against SGD from the start
    reached = None
    for h in res.history:
        cum += h["seconds"]
        streamed = h.get("streamed_bytes", 0) + h.get("streamed_val_bytes", 0)
        print(f"{h['epoch']:>5} {h['train_rmse']:>7.4f} {h['val_rmse']:>7.4f} {h['step_size']:>7.4f} {h['seconds']:>6.2f} "
              f"{h['kernel_seconds']:>6.2f} {h['seconds'] - h['kernel_seconds']:>7.2f} {cum:>6.1f} {streamed:>10,} "
              f"{h.get('factor_bytes', 0):>9,}")
        if reached is None and h["val_rmse"] is not None and h["val_rmse"] <= als_rmse:
            reached = (h["epoch"], cum)
    jobs = info.get("single_jobs", [])
    for j in jobs:
        print("job: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in j.items()
                                  if k not in ("pid", "missing_example")))
    streamed_total = sum(j.get("streamed_bytes", 0) for j in jobs) or sum(h.get("streamed_bytes", 0) for h in res.history)
    final = rmse.evaluate(dsgd_transform(res, test))
    cores_rate = cores * result.get("kernel_alone", {}).get(1, {}).get("rate", float("nan"))
    result["sgd"] = {
        "fit_s": round(fit_s, 2), "setup_s": info.get("setup_seconds"), "export_s": info.get("export_seconds"),
        "epochs": epochs, "epoch_s": round(epoch_s, 2), "kernel_s": round(kernel_s, 2), "final_rmse": final,
        "reach_als": reached, "updates_per_s_end_to_end": updates / fit_s, "updates_per_s_epochs": updates / epoch_s,
        "ratings_bytes_streamed": streamed_total, "plan": info["plan"], "jobs": info.get("jobs"),
        "compile_s": max([j.get("compile_seconds", 0) for j in jobs] + [h.get("compile_seconds", 0) for h in res.history]),
    }
    print(f"\nSGD fit {fit_s:.1f} s = setup {info.get('setup_seconds')} s (index {info.get('setup_index_seconds', 0)}, pack {info.get('setup_pack_seconds')}) + {epochs} epochs {epoch_s:.1f} s "
          f"(kernel {kernel_s:.1f} s, outside {epoch_s - kernel_s:.1f} s) + export {info.get('export_seconds')} s; "
          f"Spark jobs in fit: {info.get('jobs')}; ratings streamed JVM->Python {streamed_total:,} B over the run "
          f"(|R| = {n_train * dsgd.RATING_BYTES:,} B)")
    print(f"final test RMSE {final:.4f} (ALS {als_rmse:.4f}); "
          + (f"reaches ALS's RMSE at epoch {reached[0]}, {reached[1]:.1f} s = {reached[1] / als_s:.2f}x ALS fit time"
             if reached else "does not reach ALS's RMSE"))
    print(f"throughput: {updates / fit_s / 1e6:.2f} M updates/s end to end ({updates / epoch_s / 1e6:.2f} M/s over epochs); "
          f"{cores} cores x single-core kernel rate = {cores_rate / 1e6:.2f} M/s -> "
          f"{updates / fit_s / cores_rate:.0%} end to end, {updates / epoch_s / cores_rate:.0%} over epochs")
    result["load_after"] = load()
    print(f"load after: {result['load_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    spark.stop()
    return 0


def dsgd_transform(res, test):
    """Test predictions from DSGD's factor frames (as the estimator's model does)."""
    from pyspark.sql import functions as F

    from recospark.schema import MOVIE_ID, PREDICTION, USER_ID

    u = res.user_factors.select(F.col("id").alias(USER_ID), F.col("features").alias("p"), F.col("bias").alias("bu"))
    i = res.item_factors.select(F.col("id").alias(MOVIE_ID), F.col("features").alias("q"), F.col("bias").alias("bi"))
    dot = F.aggregate(F.zip_with("p", "q", lambda a, b: a.cast("double") * b.cast("double")), F.lit(0.0).cast("double"), lambda acc, x: acc + x)
    return test.join(u, USER_ID).join(i, MOVIE_ID).withColumn(PREDICTION, F.lit(res.global_mean) + F.col("bu") + F.col("bi") + dot)


if __name__ == "__main__":
    sys.exit(main())
