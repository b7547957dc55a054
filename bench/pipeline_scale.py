"""The whole pipeline at MovieLens shapes: `recospark pipeline` end to end, each size in a fresh process.

    .venv/bin/python bench/pipeline_scale.py --sizes 10m,25m

For each size: `recospark generate` (not timed; skipped when the data is already there), then
`recospark pipeline --conf conf/local.yaml` on it (ingest, split, train als + sgd + the two
baselines, recommend, evaluate, report: the demo's pipeline, on local[2]). Prints each stage's
seconds, each stage's t(size)/t(previous size) next to the ratings ratio, the models' fit
seconds and test RMSE, and the peak RSS of the whole process tree (driver, JVM, Python workers).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from suite_size import SIZES, _children, _status_kb  # noqa: E402

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


def run_size(size: str, work: Path, driver_memory: str) -> dict:
    users, items, n, layout = SIZES[size]
    folder = work / size
    # 8 shuffle partitions, as in the run README reports (conf/local.yaml now has 4, tuned for the demo's ML-100K)
    common = ["--conf", str(ROOT / "conf" / "local.yaml"), "--set", f"spark.spark.driver.memory={driver_memory}"]
    common += ["--set", "spark.spark.sql.shuffle.partitions=8"]
    data = folder / "generated"
    if not data.is_dir():
        gen = [f"generate.users={users}", f"generate.items={items}", f"generate.ratings={n}", f"generate.layout={layout}"]
        code, secs, _ = recospark("generate", *common, *[x for kv in gen for x in ("--set", kv)], "--set", f"output.root={folder}")
        if code:
            return {"size": size, "failed": f"generate exit {code}"}
        print(f"  generated {size} in {secs:.0f} s", file=sys.stderr, flush=True)
    out = folder / "pipeline"
    result_file = folder / "pipeline.json"
    code, wall, peak = recospark("pipeline", *common, "--set", f"data.source={data}", "--set", f"output.root={out}", json_out=result_file)
    if code:
        return {"size": size, "failed": f"pipeline exit {code}", "wall_s": wall}
    res = json.loads(result_file.read_text())
    row: dict = {"size": size, "ratings": res["stages"]["ingest"]["ratings"]["rows"], "wall_s": wall, "peak_rss_mb": peak}
    row["pipeline_s"] = res["seconds"]
    for stage in STAGES:
        row[f"{stage}_s"] = res["stages"].get(stage, {}).get("seconds")
    for model, info in res["stages"]["train"]["models"].items():
        row[f"{model}_fit_s"] = info.get("train_seconds")
    for model, info in res["stages"]["evaluate"]["models"].items():
        row[f"{model}_rmse"] = info.get("rmse")
    row["load"] = Path("/proc/loadavg").read_text().split()[0]
    return row


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
    lines = ["| size | model | fit s | test RMSE |", "|---|---|---|---|"]
    for r in rows:
        for key in [k for k in r if k.endswith("_fit_s")]:
            model = key[: -len("_fit_s")]
            rmse = r.get(f"{model}_rmse")
            lines.append(f"| {r['size']} | {model} | {r[key]:.1f} | {'-' if rmse is None else f'{rmse:.4f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10m,25m")
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--driver-memory", default="16g")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        if SIZES.get(size) is None:
            ap.error(f"--sizes: {size} is not a generated size ({', '.join(k for k, v in SIZES.items() if v)})")
        print(f"== {size}", file=sys.stderr, flush=True)
        rows.append(run_size(size, Path(args.work), args.driver_memory))
        (out / "pipeline_scale.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(table(rows))
    print()
    print(models_table(rows))
    print(f"\nwrote {out / 'pipeline_scale.json'}")
    return 0 if all(not r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
