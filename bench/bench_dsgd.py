"""DSGD vs MLlib ALS at one size, in one fresh process, with where DSGD's time goes. Prints tables.

    .venv/bin/python bench/bench_dsgd.py --size 10m                 # ML-10M shape (generate stage)
    .venv/bin/python bench/bench_dsgd.py --size 25m --skip-als-same-rank
    .venv/bin/python bench/bench_dsgd.py --size 100k --sgd rank=64 --sgd step_size=0.02
    .venv/bin/python bench/bench_dsgd.py --size 100k --conf conf/ml100k-u1.yaml   # ML-100K's u1 split

Data: the real ML-100K, or the `generate` stage's MovieLens-shaped ratings at the ML-1M/10M/25M
shapes of bench/harness.py, ingested and split by the stages (--conf's split: conf/local.yaml's
random 80/20 unless told) once into --work and reused. The session is `recospark.session`'s, the
models are the model table's `als` and `sgd` with --conf's settings (--sgd overrides `sgd` keys).

Measured (wall seconds, `uptime` load printed before and after; the machine may be shared):
* ALS at its own setting and, unless skipped, at SGD's rank;
* the compiled kernel alone on one core over the same sub-blocks (one epoch, this process);
* SGD with the test rows riding along as validation rows (early stopping off, never trained
  on): per epoch train/test RMSE, seconds, kernel seconds (threads busy) vs seconds outside the
  kernel, and bytes of ratings and factors crossing JVM<->Python; when it first reaches ALS's
  test RMSE (setup included), end-to-end throughput and its share of cores x kernel rate. The
  estimator's engine (`fit_dsgd`) is called directly for its run report (setup, jobs, export),
  which the fitted model does not keep; the model table's model class wraps its factors.
RMSE is the evaluate stage's (`recospark.stages.evaluate.rating_metrics`, unscored rows left out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import LOCAL_CONF, SIZES, config, generate_missing, session, spark_overrides, uptime_load


def prepare_data(spark, cfg, size: str):
    """Ingest + split once per size and split (the pipeline's own stages); returns (train, test)."""
    from recospark import io
    from recospark.schema import RATINGS
    from recospark.stages import ingest, split

    name = cfg.split.effective_name
    if not (io.published(cfg, f"splits/{name}/train") and io.published(cfg, f"splits/{name}/test")):
        generate_missing(spark, cfg, size)
        ingest.run(spark, cfg)
        split.run(spark, cfg)
    train = io.read_output(spark, cfg, f"splits/{name}/train", RATINGS).cache()
    test = io.read_output(spark, cfg, f"splits/{name}/test", RATINGS).cache()
    train.count(), test.count()
    return train, test


def kernel_alone(train, params, cores: int) -> dict:
    """The compiled kernel over the same sub-blocks DSGD builds, in this process, without Spark:
    one epoch on 1 thread (the 'single-core kernel rate at the same rank') and on `cores` threads,
    best of 3 epochs each."""
    import dataclasses

    import numpy as np
    from inprocess import blocked

    from recospark.models.sgd.epochs import total
    from recospark.models.sgd.layout import strata_order
    from recospark.models.sgd.pool import Timer, ensure_warm
    from recospark.models.sgd.stratum import train_stratum
    from recospark.schema import MOVIE_ID, RATING, USER_ID

    table = train.select(USER_ID, MOVIE_ID, RATING).toArrow()
    u, i, r = (table.column(c).to_numpy() for c in (USER_ID, MOVIE_ID, RATING))
    cfg, source, users, items = blocked(u, i, r, params=params, threads=cores)
    ensure_warm()
    out = {}
    for threads in sorted({1, cores}):
        cfg = dataclasses.replace(cfg, threads=threads)
        best = None
        for epoch in range(3):  # the first touches every page
            sums: dict = {}
            t0 = time.perf_counter()
            timer = Timer()
            for shift in strata_order(cfg.params.seed, epoch, cfg.B):
                timer.add(
                    train_stratum(cfg, shift, list(range(cfg.B)), users, items, source, lr=params.stepSize * 0.1, epoch=epoch, sums=sums)
                )
            wall = time.perf_counter() - t0
            n = total(sums)[1]
            if best is None or wall < best["wall"]:
                best = {"updates": n, "wall": wall, "kernel_cpu": timer.cpu, "rate": n / wall}
        out[threads] = best
    del table, u, i, r, np
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), required=True)
    ap.add_argument("--conf", default=str(LOCAL_CONF), help="the pipeline conf whose split and models are measured")
    ap.add_argument("--work", default="/tmp/recospark-dsgd-bench")
    ap.add_argument("--sgd", action="append", default=[], help="`sgd` conf key override, e.g. rank=32 or step_size=0.02 (repeatable)")
    ap.add_argument("--driver-memory", default="12g")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--skip-als-same-rank", action="store_true")
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    load_before = uptime_load()
    from pyspark.sql import functions as F

    from recospark.config import parse_overrides
    from recospark.models.sgd import dsgd
    from recospark.models.sgd.run import local_cores
    from recospark.models.sgd.settings import engine_params
    from recospark.models.table import MODELS
    from recospark.runtime import checkpoint_scope
    from recospark.schema import MOVIE_ID, RATING, USER_ID
    from recospark.stages.evaluate import rating_metrics

    cfg = config(args.size, Path(args.work) / args.size, Path(args.conf), spark_overrides(args.master, args.driver_memory))
    spark = session(cfg, f"bench-dsgd-{args.size}")
    train, test = prepare_data(spark, cfg, args.size)
    n_train, n_test = train.count(), test.count()
    # the sgd model as the pipeline builds it (conf + overrides by conf key); its engine settings by Param name
    estimator = MODELS["sgd"].build(cfg, {**parse_overrides(args.sgd), "early_stopping_rounds": 0})
    params = engine_params(estimator)
    cores = local_cores(args.master) or os.cpu_count() or 1
    result: dict = {
        "size": args.size,
        "conf": args.conf,
        "split": cfg.split.effective_name,
        "n_train": n_train,
        "n_test": n_test,
        "master": args.master,
        "load_before": load_before,
        "sgd_params": {k: v for k, v in vars(params).items() if k != "extra"},
    }
    print(
        f"{args.size} ({cfg.split.effective_name} split): {n_train:,} train / {n_test:,} test ratings, {args.master}; "
        f"load before: {load_before}",
        flush=True,
    )

    als = cfg.model_values("als")
    ranks = [als["rank"]] + ([params.rank] if not args.skip_als_same_rank and params.rank != als["rank"] else [])
    for rank in ranks:  # ALS at its own rank, then at SGD's
        with checkpoint_scope(spark, cfg, "bench"):  # ALS with maxIter >= 20 needs a checkpoint dir
            t0 = time.monotonic()
            model = MODELS["als"].build(cfg, {"rank": rank}).fit(train)
            model.userFactors.count()
            secs = time.monotonic() - t0
            error = rating_metrics(model.transform(test))["rmse"]
        if rank == als["rank"]:
            als_s, als_rmse = secs, error
            result["als"] = {"rank": rank, "iters": als["max_iter"], "reg": als["reg_param"], "fit_s": round(secs, 2), "rmse": error}
            print(
                f"ALS rank {rank}, {als['max_iter']} iterations, reg {als['reg_param']}: fit {secs:.1f} s, test RMSE {error:.4f}",
                flush=True,
            )
        else:
            result["als_same_rank"] = {"rank": rank, "fit_s": round(secs, 2), "rmse": error}
            print(f"ALS rank {rank} (SGD's rank), {als['max_iter']} iterations: fit {secs:.1f} s, test RMSE {error:.4f}", flush=True)

    if not args.skip_kernel:
        k = kernel_alone(train, params, cores)
        result["kernel_alone"] = k
        print(
            "kernel alone, same sub-blocks, one epoch: "
            + ", ".join(f"{t} thread(s) {v['rate'] / 1e6:.2f} M updates/s" for t, v in k.items()),
            flush=True,
        )

    def engine_columns(df):
        """The engine's input columns, as the estimator's fit selects them."""
        return df.select(F.col(USER_ID).alias(dsgd.USER), F.col(MOVIE_ID).alias(dsgd.ITEM), F.col(RATING).cast("float").alias(dsgd.RATING))

    with checkpoint_scope(spark, cfg, "bench"):  # as the train stage runs it
        t0 = time.monotonic()
        res = dsgd.fit_dsgd(spark, engine_columns(train), engine_columns(test), params)
        res.user_factors.count()
        fit_s = time.monotonic() - t0
        model = MODELS["sgd"].model(res.user_factors, res.item_factors, res.global_mean, res.history, res.best_epoch, params.loss)
        final = rating_metrics(model.transform(test))["rmse"]
    info = res.info
    epochs = len(res.history)
    epoch_s = sum(h["seconds"] for h in res.history)
    kernel_s = sum(h["kernel_seconds"] for h in res.history)
    updates = n_train * epochs
    print(
        f"\nSGD { {k: getattr(params, k) for k in ('rank', 'stepSize', 'stepDecay', 'regParam', 'numBlocks', 'innerBlocks', 'initStd')} }"
    )
    print(f"plan: {info['plan']['reason']}")
    print(
        f"{'epoch':>5} {'train':>7} {'test':>7} {'step':>7} {'sec':>6} {'kernel':>6} {'outside':>7} {'cum s':>6} "
        f"{'ratings B':>10} {'factor B':>9}"
    )
    cum = fit_s - epoch_s  # setup and export count against SGD from the start
    reached = None
    for h in res.history:
        cum += h["seconds"]
        streamed = h.get("streamed_bytes", 0) + h.get("streamed_val_bytes", 0)
        print(
            f"{h['epoch']:>5} {h['train_rmse']:>7.4f} {h['val_rmse']:>7.4f} {h['step_size']:>7.4f} {h['seconds']:>6.2f} "
            f"{h['kernel_seconds']:>6.2f} {h['seconds'] - h['kernel_seconds']:>7.2f} {cum:>6.1f} {streamed:>10,} "
            f"{h.get('factor_bytes', 0):>9,}"
        )
        if reached is None and h["val_rmse"] is not None and h["val_rmse"] <= als_rmse:
            reached = (h["epoch"], cum)
    jobs = info.get("single_jobs", [])
    for j in jobs:
        print(
            "job: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in j.items() if k not in ("pid", "missing_example"))
        )
    streamed_total = sum(j.get("streamed_bytes", 0) for j in jobs) or sum(h.get("streamed_bytes", 0) for h in res.history)
    cores_rate = cores * result.get("kernel_alone", {}).get(1, {}).get("rate", float("nan"))
    result["sgd"] = {
        "fit_s": round(fit_s, 2),
        "setup_s": info.get("setup_seconds"),
        "export_s": info.get("export_seconds"),
        "epochs": epochs,
        "epoch_s": round(epoch_s, 2),
        "kernel_s": round(kernel_s, 2),
        "final_rmse": final,
        "reach_als": reached,
        "updates_per_s_end_to_end": updates / fit_s,
        "updates_per_s_epochs": updates / epoch_s,
        "ratings_bytes_streamed": streamed_total,
        "plan": info["plan"],
        "jobs": info.get("jobs"),
        "compile_s": max([j.get("compile_seconds", 0) for j in jobs] + [h.get("compile_seconds", 0) for h in res.history]),
    }
    print(
        f"\nSGD fit {fit_s:.1f} s = setup {info.get('setup_seconds')} s (index {info.get('setup_index_seconds', 0)}, pack {info.get('setup_pack_seconds')}) + {epochs} epochs {epoch_s:.1f} s "
        f"(kernel {kernel_s:.1f} s, outside {epoch_s - kernel_s:.1f} s) + export {info.get('export_seconds')} s; "
        f"Spark jobs in fit: {info.get('jobs')}; ratings streamed JVM->Python {streamed_total:,} B over the run "
        f"(|R| = {n_train * dsgd.RATING_BYTES:,} B)"
    )
    print(
        f"final test RMSE {final:.4f} (ALS {als_rmse:.4f}); "
        + (
            f"reaches ALS's RMSE at epoch {reached[0]}, {reached[1]:.1f} s = {reached[1] / als_s:.2f}x ALS fit time"
            if reached
            else "does not reach ALS's RMSE"
        )
    )
    print(
        f"throughput: {updates / fit_s / 1e6:.2f} M updates/s end to end ({updates / epoch_s / 1e6:.2f} M/s over epochs); "
        f"{cores} cores x single-core kernel rate = {cores_rate / 1e6:.2f} M/s -> "
        f"{updates / fit_s / cores_rate:.0%} end to end, {updates / epoch_s / cores_rate:.0%} over epochs"
    )
    result["load_after"] = uptime_load()
    print(f"load after: {result['load_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
