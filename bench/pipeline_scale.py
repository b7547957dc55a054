"""The whole pipeline at MovieLens shapes: `recospark pipeline` end to end, each size in a fresh process.

    .venv/bin/python bench/pipeline_scale.py --sizes 10m,25m
    .venv/bin/python bench/pipeline_scale.py --sizes 1m --models als_implicit,puresvd,global_mean --driver-memory 2g
    .venv/bin/python bench/pipeline_scale.py --sizes 25m --models global_mean,sgd_rank --set train.validation=false

For each size: `recospark generate` (its seconds are reported, not part of the pipeline's;
skipped when data generated with the same shape and `generate.beta` is already there), then
`recospark pipeline --conf conf/local.yaml` on it (ingest, split, train the conf's models or
`--models`, recommend, evaluate, report, on local[2]); `--set KEY=VALUE` adds an override to
every command (kept in the json row). Prints each stage's seconds, each stage's
t(size)/t(previous size) next to the ratings ratio, the models' fit seconds and test RMSE, and
the peak RSS of the whole process tree (driver, JVM, Python workers).

Quality: the generated data carry planted tastes (`generate.beta`), so after the pipeline a
fresh process (a session from `recospark.session`) scores the oracle lists, built from the
published truth by `synthetic.oracle_factors` and `scoring.top_n` for the same users and
candidates as the models (users and items of train, train items excluded), with
`ranking.ranking_metrics` on the same test split. Every model's NDCG@k (from `evaluate`) is
shown as a multiple of popularity's (global_mean's lists, so global_mean must be trained) and
as a fraction of the oracle's. That process also measures the data's shape: the Gini
coefficient and top-1 % share of item popularity, the mean rating and the relevant share.
Writes bench/results/pipeline_scale.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402
from harness import LOCAL_CONF, SIZES, session  # noqa: E402
from suite_size import _children, _status_kb  # noqa: E402

STAGES = ("ingest", "split", "train", "recommend", "evaluate", "report")


class TreeMemory(threading.Thread):
    """Peak summed RSS of a process and all its descendants, sampled every half second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb = pid, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += _children(p)
            self.peak_mb = max(self.peak_mb, sum(_status_kb(p, "VmRSS") for p in tree) / 1024)


def recospark(*args: str, json_out: Path | None = None) -> tuple[int, float, float]:
    """Run the console command; (exit code, seconds, peak tree RSS in MB)."""
    cmd = [str(Path(sys.executable).with_name("recospark")), *args]
    if json_out:
        cmd += ["--json-out", str(json_out)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    mem = TreeMemory(proc.pid)
    mem.start()
    code = proc.wait()
    mem.stop.set()
    mem.join()
    return code, round(time.monotonic() - t0, 1), round(mem.peak_mb)


def settings(
    size: str, work: Path, driver_memory: str, models: str | None, beta: float | None, extra: Sequence[str]
) -> tuple[list[str], Path]:
    """The --set overrides every command of one size shares, and the generated data's folder."""
    shape = SIZES[size]
    assert shape is not None
    users, items, n, layout = shape
    folder = work / size
    data = folder / "generated"
    sets = [f"spark.spark.driver.memory={driver_memory}"]
    # 8 shuffle partitions, as in the run README reports (conf/local.yaml now has 4, tuned for the demo's ML-100K)
    sets += ["spark.spark.sql.shuffle.partitions=8"]
    sets += [f"generate.users={users}", f"generate.items={items}", f"generate.ratings={n}", f"generate.layout={layout}"]
    if beta is not None:
        sets.append(f"generate.beta={beta:g}")
    # ml-1m's layout is told apart from ml-10m's by users.dat, which the generator does not write
    sets += [f"data.source={data}", f"data.layout={layout}", f"output.root={folder / 'pipeline'}"]
    if models:
        sets.append(f"train.models=[{models}]")
    return sets + list(extra), data


def _as_args(sets: list[str]) -> list[str]:
    return [x for kv in sets for x in ("--set", kv)]


def _generated_with(data: Path, want: dict[str, Any]) -> bool:
    """Whether `data` holds generated data of exactly this shape and beta, with its truth."""
    manifest = data / "_manifest.json"
    if not manifest.is_file() or not (data / "truth").is_dir():
        return False
    have = json.loads(manifest.read_text()).get("generate", {})
    return all(have.get(k) == v for k, v in want.items())


def run_size(size: str, work: Path, driver_memory: str, models: str | None, beta: float | None, extra: Sequence[str]) -> dict:
    from recospark.config import load_config

    shape = SIZES[size]
    assert shape is not None
    users, items, n, layout = shape
    folder = work / size
    sets, data = settings(size, work, driver_memory, models, beta, extra)
    conf_file = ["--conf", str(LOCAL_CONF)]
    gen = load_config(LOCAL_CONF, sets).generate
    row: dict = {"size": size, "beta": gen.beta}
    if extra:
        row["sets"] = list(extra)
    want = {"users": users, "items": items, "ratings": n, "layout": layout, "beta": gen.beta, "seed": gen.seed, "rank": gen.rank}
    if not _generated_with(data, want):
        gen_sets = [kv for kv in sets if not kv.startswith("output.root=")] + [f"output.root={folder}"]
        code, secs, _ = recospark("generate", *conf_file, *_as_args(gen_sets))
        if code:
            return {**row, "failed": f"generate exit {code}"}
        row["generate_s"] = secs
        print(f"  generated {size} (beta {gen.beta:g}) in {secs:.0f} s", file=sys.stderr, flush=True)
    result_file = folder / "pipeline.json"
    code, wall, peak = recospark("pipeline", *conf_file, *_as_args(sets), json_out=result_file)
    if code:
        return {**row, "failed": f"pipeline exit {code}", "wall_s": wall}
    res = json.loads(result_file.read_text())
    row.update({"ratings": res["stages"]["ingest"]["ratings"]["rows"], "wall_s": wall, "peak_rss_mb": peak})
    row["pipeline_s"] = res["seconds"]
    for stage in STAGES:
        row[f"{stage}_s"] = res["stages"].get(stage, {}).get("seconds")
    for model, info in res["stages"]["train"]["models"].items():
        row[f"{model}_fit_s"] = info.get("train_seconds")
    k = load_config(LOCAL_CONF, sets).evaluate.k
    for model, info in res["stages"]["evaluate"]["models"].items():
        row[f"{model}_rmse"] = info.get("rmse")
        row[f"{model}_ndcg"] = info.get(f"ndcg@{k}")
    recommended = res["stages"]["recommend"].get("recommended") or {}
    row["recommended"] = recommended.get("model") if isinstance(recommended, dict) else recommended
    row["load"] = Path("/proc/loadavg").read_text().split()[0]
    quality_file = folder / "quality.json"
    t0 = time.monotonic()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--quality-of", json.dumps(sets), "--quality-out", str(quality_file)]
    if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr).returncode:
        return {**row, "failed": "quality (oracle) step failed"}
    row["quality_s"] = round(time.monotonic() - t0, 1)
    row.update(json.loads(quality_file.read_text()))
    pop = row.get("global_mean_ndcg")
    for model in res["stages"]["evaluate"]["models"]:
        ndcg = row.get(f"{model}_ndcg")
        row[f"{model}_x_popularity"] = ndcg / pop if ndcg is not None and pop else None
        row[f"{model}_of_oracle"] = ndcg / row["oracle_ndcg"] if ndcg is not None and row.get("oracle_ndcg") else None
    return row


def quality(sets: list[str], out: Path) -> None:
    """The oracle's NDCG@k on the pipeline's split, and the data's shape; a JSON object to `out`."""
    from pyspark.sql import functions as F

    from recospark import io
    from recospark.config import load_config
    from recospark.datasets.synthetic import oracle_factors
    from recospark.frames import first_row
    from recospark.ranking import ranking_metrics
    from recospark.schema import FACTOR_ID, MOVIE_ID, RATING, RATINGS, USER_ID
    from recospark.scoring import top_n

    cfg = load_config(LOCAL_CONF, sets)
    spark = session(cfg, "recospark-bench-quality")
    k, threshold, split = cfg.evaluate.k, cfg.evaluate.relevance_threshold, cfg.split.effective_name
    train = io.read_output(spark, cfg, f"splits/{split}/train", RATINGS).cache()
    test = io.read_output(spark, cfg, f"splits/{split}/test", RATINGS).cache()
    users, items = oracle_factors(spark, cfg.data.source)
    users = users.join(train.select(F.col(USER_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "semi")
    items = items.join(train.select(F.col(MOVIE_ID).alias(FACTOR_ID)).distinct(), FACTOR_ID, "semi")
    oracle = ranking_metrics(top_n(users, items, train.select(USER_ID, MOVIE_ID), k), test, k, threshold)
    ratings = io.read_output(spark, cfg, "ratings", RATINGS)
    counts = np.sort(np.array([r[0] for r in ratings.groupBy(MOVIE_ID).count().select("count").collect()]))  # ascending
    means = first_row(ratings.agg(F.avg(RATING), F.avg((F.col(RATING) >= F.lit(threshold or 0.0)).cast("double"))))
    n = len(counts)
    result = {
        "oracle_ndcg": oracle[f"ndcg@{k}"],
        "item_gini": float(1 - 2 * np.sum(np.cumsum(counts) / counts.sum()) / n + 1 / n),
        "item_top1_share": float(counts[::-1][: max(1, n // 100)].sum() / counts.sum()),
        "mean_rating": float(means[0]),
        "relevant_share": float(means[1]),
    }
    out.write_text(json.dumps(result) + "\n")
    spark.stop()


def table(rows: list[dict]) -> str:
    lines = [
        "| size | ratings | " + " | ".join(f"{s} s" for s in STAGES) + " | pipeline s | peak RSS MB | load |",
        "|" + "---|" * (len(STAGES) + 6),
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['size']} | failed: {r['failed']} |")
            continue
        cells = [f"{r[f'{s}_s']:.1f}" if r.get(f"{s}_s") is not None else "-" for s in STAGES]
        lines.append(
            f"| {r['size']} | {r['ratings']:,} | " + " | ".join(cells) + f" | {r['pipeline_s']:.1f} | {r['peak_rss_mb']:,} | {r['load']} |"
        )
    ok = [r for r in rows if not r.get("failed")]
    for small, big in itertools.pairwise(ok):
        ratios = [f"{big[f'{s}_s'] / small[f'{s}_s']:.2f}" if small.get(f"{s}_s") and big.get(f"{s}_s") else "-" for s in STAGES]
        lines.append(
            f"| {big['size']}/{small['size']} | x{big['ratings'] / small['ratings']:.2f} | "
            + " | ".join(ratios)
            + f" | {big['pipeline_s'] / small['pipeline_s']:.2f} | | |"
        )
    return "\n".join(lines)


def models_table(rows: list[dict]) -> str:
    lines = [
        "| size | model | fit s | test RMSE | NDCG@10 | x popularity | of oracle |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        for key in [k for k in r if k.endswith("_fit_s")]:
            model = key[: -len("_fit_s")]
            cells = [
                fmt(r[key], ".1f"),
                fmt(r.get(f"{model}_rmse"), ".4f"),
                fmt(r.get(f"{model}_ndcg"), ".4f"),
                fmt(r.get(f"{model}_x_popularity"), ".2f"),
                fmt(r.get(f"{model}_of_oracle"), ".2f"),
            ]
            name = f"**{model}** (recommended)" if model == r.get("recommended") else model
            lines.append(f"| {r['size']} | {name} | " + " | ".join(cells) + " |")
        if r.get("oracle_ndcg") is not None:
            pop = r.get("global_mean_ndcg")
            x_pop = f"{r['oracle_ndcg'] / pop:.2f}" if pop else "-"
            lines.append(f"| {r['size']} | oracle (planted truth) | - | - | {r['oracle_ndcg']:.4f} | {x_pop} | 1.00 |")
    return "\n".join(lines)


def data_table(rows: list[dict]) -> str:
    """The generated data's shape: what beta does to popularity and ratings (MovieLens-shaped or not)."""
    lines = [
        "| size | beta | generate s | item Gini | top-1% items' share | mean rating | relevant share | oracle s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("item_gini") is None:
            continue
        gen = f"{r['generate_s']:.0f}" if r.get("generate_s") is not None else "(cached)"
        lines.append(
            f"| {r['size']} | {r['beta']:g} | {gen} | {r['item_gini']:.3f} | {r['item_top1_share']:.3f} | "
            f"{r['mean_rating']:.3f} | {r['relevant_share']:.3f} | {r['quality_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10m,25m")
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--driver-memory", default="16g")
    ap.add_argument("--models", default=None, help="comma list for train.models (default: the conf's)")
    ap.add_argument("--beta", type=float, default=None, help="generate.beta (default: the conf's)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another conf override for every command, as `recospark --set` (repeatable; kept in the json)",
    )
    ap.add_argument("--quality-of", default=None, help=argparse.SUPPRESS)  # internal: one size's oracle step
    ap.add_argument("--quality-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if args.quality_of:
        quality(json.loads(args.quality_of), Path(args.quality_out))
        return 0
    from recospark.config import load_config
    from recospark.errors import ConfigError

    for size in args.sizes.split(","):
        if SIZES.get(size) is None:
            ap.error(f"--sizes: {size} is not a generated size ({', '.join(k for k, v in SIZES.items() if v)})")
        try:  # every override checked before any size runs, so a typo costs seconds, not a run
            load_config(LOCAL_CONF, settings(size, Path(args.work), args.driver_memory, args.models, args.beta, args.extra)[0])
        except ConfigError as err:
            ap.error(" ".join(str(err).split()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        print(f"== {size}", file=sys.stderr, flush=True)
        rows.append(run_size(size, Path(args.work), args.driver_memory, args.models, args.beta, args.extra))
        (out / "pipeline_scale.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(table(rows))
    print()
    print(models_table(rows))
    print()
    print(data_table(rows))
    print(f"\nwrote {out / 'pipeline_scale.json'}")
    return 0 if all(not r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
