"""`recommend` against the machine's limit: scored (user, item) pairs per second at MovieLens shapes.

    .venv/bin/python bench/recommend_limit.py --sizes 1m,10m,25m [--models als,sgd,...]

The limit (issue 18): cores x this machine's float32 matrix-multiply rate at each model's rank,
as (user, item) pairs per second. One process per core multiplies, single-threaded like a Spark
Python worker (Spark sets OMP_NUM_THREADS=spark.task.cpus for them), a user block x rank by
rank x items, for a few seconds; the pairs per second of all processes are summed. Two shapes
are measured and the larger rate is the limit: the L2-sized tile the scorer multiplies
(`scoring.TILE_ROWS` users x `TILE_CELLS / TILE_ROWS` items) and a whole-catalogue block
(2048 users, or fewer so that it stays 64 MB).

Then, per size, in a fresh process (so JIT and peaks are its own): data made by `recospark
generate` at that shape (bench/suite_size.SIZES; skipped when already there), ingest, split and
train of `--models` by `recospark pipeline` (skipped when published; `--root-name pipeline`
uses the models bench/pipeline_scale.py published at that size), then the `recommend`
stage itself (`recospark.session.build_session` and `recommend.run`, one model at a time) timed
`--repeat` times. Pairs are the model's users x its candidate items (catalogued items it ranks);
pairs/s divides them by the stage's seconds (grouping the history, scoring, titles, ordering and
publishing included). The ranking job alone (`recommend_for` on an already grouped, cached
history, lists not written) is timed too: its share of the limit is what the scorer reaches.

Prints a table (size, model, rank, users, items, pairs, seconds, pairs/s, limit pairs/s, % of
limit, ranking job seconds and its % of limit) and writes bench/results/recommend_limit.{json,txt};
with --publish (a quiet machine only) also bench/recommend-limit-local2.{txt,json}. The machine
and its load averages are printed with the table. Numba compiles the selection kernels in the
first process after an install and later processes load them from its on-disk cache: run with
--repeat 2 to keep the compile out of the reported run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from recospark import io
from recospark.config import load_config
from recospark.models.table import MODELS
from recospark.schema import FACTOR_ID, FEATURES, MOVIE_ID, MOVIES, RATINGS, USER_ID
from recospark.scoring import TILE_CELLS, TILE_ROWS, UserHistory, candidate_items, recommend_for, scoring_factors
from recospark.session import build_session
from recospark.stages import recommend

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from pipeline_scale import recospark  # noqa: E402
from suite_size import SIZES  # noqa: E402

BLOCK_USERS, BLOCK_CELLS = 2048, 16_000_000


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _matmul_rate(rank: int, rows: int, cols: int, seconds: float, out: mp.Queue) -> None:
    """Spawned child (single-threaded BLAS): pairs per second of rows x rank @ rank x cols, float32."""
    rng = np.random.default_rng(0)
    users = rng.standard_normal((rows, rank), dtype=np.float32)
    items = rng.standard_normal((cols, rank), dtype=np.float32)
    scores = np.empty((rows, cols), np.float32)
    np.matmul(users, items.T, out=scores)
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        np.matmul(users, items.T, out=scores)
        done += rows * cols
    out.put(done / elapsed)


def limit(rank: int, items: int, seconds: float = 3.0) -> dict[str, float]:
    """cores x float32 matmul pairs/s at `rank`: the scorer's tile shape and a whole-catalogue block."""
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    ctx = mp.get_context("spawn")
    cores = _cores()
    shapes = {"tile": (TILE_ROWS, TILE_CELLS // TILE_ROWS), "block": (max(1, min(BLOCK_USERS, BLOCK_CELLS // items)), items)}
    rates = {}
    for name, (rows, cols) in shapes.items():
        queue: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_matmul_rate, args=(rank, rows, cols, seconds, queue)) for _ in range(cores)]
        for p in procs:
            p.start()
        rates[name] = sum(queue.get() for _ in procs)
        for p in procs:
            p.join()
    return {"cores": cores, "tile_pairs_s": rates["tile"], "block_pairs_s": rates["block"], "limit_pairs_s": max(rates.values())}


# --------------------------------------------------------------------------- the stage (child process)


def measure(root: Path, data: Path, models: list[str], repeat: int, sets: list[str]) -> list[dict]:
    """In this process: the recommend stage, one model at a time, on the published models under root."""
    base = [*sets, f"data.source={data}", f"output.root={root}"]
    cfg = load_config(ROOT / "conf" / "local.yaml", base)
    spark = build_session(cfg, "recospark-recommend-limit")
    movies = io.read_output(spark, cfg, "movies", MOVIES).select(F.col(MOVIE_ID).alias(FACTOR_ID)).cache()
    train = io.read_output(spark, cfg, f"splits/{cfg.split.effective_name}/train", RATINGS)
    rows = []
    for name in models:
        model_cfg = load_config(ROOT / "conf" / "local.yaml", [*base, f"train.models=[{name}]"])
        model = MODELS[name].load(io.source(model_cfg, f"models/{name}", needed_by="bench").uri)
        items = candidate_items(model).join(movies, FACTOR_ID, "left_semi").count()
        if hasattr(model, "blockScorer"):
            rank = getattr(model.blockScorer(), "rank", None)
        else:
            rank = len(scoring_factors(model)[1].select(FEATURES).first()[0])
        seconds = []
        for _ in range(repeat):
            result = recommend.run(spark, model_cfg)
            seconds.append(result["seconds"])
        users = result["models"][name]["users"]
        published = spark.read.parquet(result["models"][name]["path"])
        assert published.select(USER_ID).distinct().count() == users
        # the ranking job alone (history grouped and cached beforehand, lists not written)
        history = UserHistory(train).persist()
        history.lists.count()
        started = time.monotonic()
        recs = recommend_for(
            model, history, cfg.recommend.n, cfg.recommend.user_block_size, items=movies.withColumnRenamed(FACTOR_ID, MOVIE_ID)
        )
        recs.write.format("noop").mode("overwrite").save()
        scoring = time.monotonic() - started
        history.unpersist()
        rows.append({"model": name, "rank": rank, "users": users, "items": items, "seconds": seconds, "scoring_s": scoring})
        print(
            f"  {name}: rank {rank}, {users} users x {items} items, {seconds} s, scoring job {scoring:.1f} s", file=sys.stderr, flush=True
        )
    spark.stop()
    return rows


# --------------------------------------------------------------------------- driver


def prepare(size: str, work: Path, models: list[str], common: list[str], root_name: str) -> tuple[Path, Path] | str:
    """(data folder, output root with the models published); generates and trains what is missing."""
    users, items, n, layout = SIZES[size]
    folder = work / size
    data = folder / "generated"
    if not data.is_dir():
        gen = [f"generate.users={users}", f"generate.items={items}", f"generate.ratings={n}", f"generate.layout={layout}"]
        code, secs, _ = recospark("generate", *common, *[x for kv in gen for x in ("--set", kv)], "--set", f"output.root={folder}")
        if code:
            return f"generate exit {code}"
        print(f"  generated {size} in {secs:.0f} s", file=sys.stderr, flush=True)
    root = folder / root_name
    cfg = load_config(ROOT / "conf" / "local.yaml", [f"output.root={root}"])
    missing = [m for m in models if not io.published(cfg, f"models/{m}")]
    if missing:
        sets = [f"data.source={data}", f"output.root={root}", "pipeline.stages=[ingest,split,train]", f"train.models=[{','.join(models)}]"]
        code, secs, _ = recospark("pipeline", *common, *[x for kv in sets for x in ("--set", kv)])
        if code:
            return f"pipeline (ingest, split, train) exit {code}"
        print(f"  trained {','.join(models)} at {size} in {secs:.0f} s", file=sys.stderr, flush=True)
    return data, root


def table(rows: list[dict]) -> str:
    lines = [
        "| size | model | rank | users | items | pairs | seconds | pairs/s | limit pairs/s | % of limit | ranking job s | job % of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['size']} | failed: {r['failed']} |")
            continue
        lim = r.get("limit_pairs_s")
        pct = f"{100 * r['pairs_s'] / lim:.0f}%" if lim else "-"
        job_pct = f"{100 * r['pairs'] / r['scoring_s'] / lim:.0f}%" if lim and r.get("scoring_s") else "-"
        lines.append(
            f"| {r['size']} | {r['model']} | {r['rank'] or '-'} | {r['users']:,} | {r['items']:,} | {r['pairs']:.3g} | "
            f"{r['seconds']:.1f} | {r['pairs_s']:.3g} | {f'{lim:.3g}' if lim else '-'} | {pct} | {r['scoring_s']:.1f} | {job_pct} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1m,10m,25m")
    ap.add_argument("--models", default=None, help="comma separated; default: conf/local.yaml's train.models")
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--driver-memory", default="16g")
    ap.add_argument(
        "--root-name",
        default="recommend_limit",
        help="output root under each size's work folder; 'pipeline' reuses the models bench/pipeline_scale.py published",
    )
    ap.add_argument("--repeat", type=int, default=1, help="stage runs per model; the table reports the last")
    ap.add_argument("--limit-seconds", type=float, default=3.0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--publish", action="store_true", help="also write bench/recommend-limit-local2.{txt,json} (quiet machine only)")
    ap.add_argument("--measure", nargs=2, metavar=("DATA", "ROOT"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sets = [f"spark.spark.driver.memory={args.driver_memory}"]
    if args.models is None:
        args.models = ",".join(load_config(ROOT / "conf" / "local.yaml").train.models)
    models = args.models.split(",")
    if args.measure:
        rows = measure(Path(args.measure[1]), Path(args.measure[0]), models, args.repeat, sets)
        print(json.dumps(rows))
        return 0
    common = ["--conf", str(ROOT / "conf" / "local.yaml"), "--set", sets[0]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    limits: dict[tuple[int, int], dict] = {}
    for size in args.sizes.split(","):
        if SIZES.get(size) is None:
            ap.error(f"--sizes: {size} is not a generated size ({', '.join(k for k, v in SIZES.items() if v)})")
        print(f"== {size}", file=sys.stderr, flush=True)
        prepared = prepare(size, Path(args.work), models, common, args.root_name)
        if isinstance(prepared, str):
            rows.append({"size": size, "failed": prepared})
            continue
        data, root = prepared
        cmd = [sys.executable, __file__, "--measure", str(data), str(root), "--models", args.models, "--repeat", str(args.repeat)]
        cmd += ["--driver-memory", args.driver_memory]
        load_before = os.getloadavg()[0]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode:
            rows.append({"size": size, "failed": f"recommend exit {proc.returncode}"})
            continue
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            key = (r["rank"], r["items"])
            if r["rank"] and key not in limits:
                limits[key] = limit(r["rank"], r["items"], args.limit_seconds)
            pairs = r["users"] * r["items"]
            seconds = r["seconds"][-1]
            row = {"size": size, **r, "seconds": seconds, "runs_s": r["seconds"], "pairs": pairs, "pairs_s": pairs / seconds}
            row.update(limits.get(key, {}))
            row["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            rows.append(row)
        (out / "recommend_limit.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    header = f"{time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}, {_cores()} cores, load {os.getloadavg()}"
    text = header + "\n\n" + table(rows)
    targets = [out / "recommend_limit"] + ([HERE / "recommend-limit-local2"] if args.publish else [])
    for target in targets:
        target.with_suffix(".txt").write_text(text + "\n")
        target.with_suffix(".json").write_text(json.dumps({"machine": header, "rows": rows}, indent=2) + "\n")
    print(text)
    return 0 if all(not r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
