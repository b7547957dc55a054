"""Choose SGD defaults on a validation carve from the training ratings (never on test), in-process.

    .venv/bin/python bench/tune_sgd.py --data u1                       # ML-100K u1.base
    .venv/bin/python bench/tune_sgd.py --data /tmp/recospark-dsgd-bench/10m --grid small --als

The carve: 10% of the training ratings by a hash of (user, item). Each setting runs DSGD's own
worker loop (bench/inprocess.py: same layout, kernel and schedule as Spark runs, 2 threads) and
prints the validation RMSE after epochs 5/10/20/40, the best epoch, and the kernel seconds to
reach the target (ALS's validation RMSE on the same carve with --als, else --target).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from inprocess import blocked, epochs  # noqa: E402

GRIDS = {
    "wide": {"rank": [32, 64, 128], "step_size": [0.01, 0.02, 0.03, 0.05], "reg": [0.04, 0.08], "step_decay": [0.9, 0.95]},
    "small": {"rank": [32, 64, 128], "step_size": [0.03, 0.05], "reg": [0.04, 0.08], "step_decay": [0.9, 0.93]},
    "fine": {"rank": [32, 64], "step_size": [0.04, 0.05, 0.06], "reg": [0.04, 0.05, 0.06], "step_decay": [0.88, 0.9]},
}


def load(data: str):
    if data == "u1":
        ml100k = Path(os.environ.get("RECOSPARK_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
        raw = np.loadtxt(ml100k / "u1.base", dtype=np.int64)[:, :3]
        return raw[:, 0], raw[:, 1], raw[:, 2].astype(np.float32)
    import pyarrow.parquet as pq

    table = pq.read_table(str((Path(data) / "splits" / "random" / "train").resolve()), columns=["user_id", "movie_id", "rating"])
    return (table.column("user_id").to_numpy().astype(np.int64), table.column("movie_id").to_numpy().astype(np.int64),
            table.column("rating").to_numpy().astype(np.float32))


def als_validation_rmse(u, i, r, v) -> tuple[float, float]:
    """MLlib ALS at the pipeline's setting (rank 10, 20 iterations, reg 0.1) on the carve."""
    import pandas as pd

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", "8g").config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir("/tmp/recospark-tune-checkpoints")
    frame = lambda m: spark.createDataFrame(pd.DataFrame({"u": u[m].astype(np.int32), "i": i[m].astype(np.int32), "r": r[m].astype(np.float64)}))  # noqa: E731
    train, val = frame(~v).cache(), frame(v).cache()
    train.count()
    t0 = time.monotonic()
    model = ALS(rank=10, maxIter=20, regParam=0.1, seed=42, coldStartStrategy="drop", userCol="u", itemCol="i", ratingCol="r").fit(train)
    model.userFactors.count()
    secs = time.monotonic() - t0
    rmse = RegressionEvaluator(labelCol="r", predictionCol="prediction").evaluate(model.transform(val))
    spark.stop()
    return rmse, secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="u1")
    ap.add_argument("--grid", default="wide", choices=list(GRIDS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--als", action="store_true", help="target = ALS's validation RMSE on the carve")
    ap.add_argument("--blocks", default="2x2", help="B x K layout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.02)
    args = ap.parse_args(argv)
    u, i, r = load(args.data)
    v = ((u * 1000003 + i * 7919) % 10) == 0
    print(f"{args.data}: {int((~v).sum()):,} train / {int(v.sum()):,} validation (carved from train)", flush=True)
    target = args.target
    if args.als:
        target, secs = als_validation_rmse(u, i, r, v)
        print(f"ALS rank 10 / 20 iterations / reg 0.1 on the carve: validation RMSE {target:.4f}, fit {secs:.1f} s", flush=True)
    B, K = (int(x) for x in args.blocks.split("x"))
    grid = GRIDS[args.grid]
    print(f"{'rank':>4} {'step':>5} {'reg':>5} {'decay':>5} | {'e5':>6} {'e10':>6} {'e20':>6} {'e40':>6} | {'best':>6} @ep | "
          f"{'reach ep':>8} {'kernel s':>8}")
    for rank, lr, reg, decay in itertools.product(grid["rank"], grid["step_size"], grid["reg"], grid["step_decay"]):
        cfg, source, users, items = blocked(u, i, r, v, B=B, K=K, rank=rank, reg=reg, init_std=args.init_std, threads=args.threads)
        hist = epochs(cfg, source, users, items, lr=lr, decay=decay, epochs=args.epochs)
        val = [h["val_rmse"] for h in hist]
        cum = np.cumsum([h["task_seconds"] for h in hist])
        best = int(np.argmin(val))
        reach = next((k for k, x in enumerate(val) if target is not None and x <= target), None)
        at = lambda e, val=val: f"{val[e - 1]:>6.4f}" if len(val) >= e else "     -"  # noqa: E731
        print(f"{rank:>4} {lr:>5} {reg:>5} {decay:>5} | {at(5)} {at(10)} {at(20)} {at(40)} | {val[best]:>6.4f} {best + 1:>3} | "
              f"{'-' if reach is None else reach + 1:>8} {'-' if reach is None else f'{cum[reach]:.1f}':>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
