"""The benchmark suite: every size in its own process, then one table, a JSON file and a plot.

    make bench                         # sizes 100k,1m,10m
    .venv/bin/python bench/run.py --sizes 100k,1m,10m,25m

Writes bench/results/results.json and bench/results/scaling.png (time vs ratings, log-log) and
prints the table plus the issue's targets as ratios from this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("ingest_s", "split_s", "als_fit_s", "sgd_fit_s", "evaluate_s", "topn_ours_s", "topn_mllib_s")
COLUMNS = (
    ("size", "{}"),
    ("ratings", "{:,}"),
    ("ingest_s", "{:.1f}"),
    ("split_s", "{:.1f}"),
    ("als_fit_s", "{:.1f}"),
    ("sgd_fit_s", "{:.1f}"),
    ("sgd_reach_als_s", "{:.1f}"),
    ("evaluate_s", "{:.1f}"),
    ("topn_ours_s", "{:.1f}"),
    ("topn_mllib_s", "{:.1f}"),
    ("als_rmse", "{:.4f}"),
    ("sgd_rmse", "{:.4f}"),
    ("sgd_epochs", "{}"),
    ("sgd_updates_per_s", "{:,}"),
    ("sgd_kernel_s", "{:.1f}"),
    ("sgd_outside_s", "{:.1f}"),
    ("sgd_ratings_mb", "{:.1f}"),
    ("driver_python_mb", "{}"),
    ("jvm_mb", "{}"),
    ("python_workers_mb", "{}"),
    ("load", "{}"),
)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // (1 << 20) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), 0)
    import os

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Python {platform.python_version()}, Spark local[2]"


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c, fmt in COLUMNS:
            v = r.get(c)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    by = {r["size"]: r for r in rows}
    out = []
    big = by.get("10m")
    if big:
        if big.get("sgd_reach_als_s") is not None:
            out.append(f"SGD reaches ALS's RMSE in {big['sgd_reach_als_s'] / big['als_fit_s']:.2f}x ALS's fit time at 10M (target <= 0.5)")
        else:
            out.append(
                f"SGD did not reach ALS's RMSE ({big['als_rmse']:.4f}) at 10M; its best epoch RMSE is in results.json (target: <= 0.5x ALS fit time)"
            )
        if big.get("topn_mllib_s"):
            out.append(
                f"top-N ours vs recommendForAllUsers+exclusion at 10M: {big['topn_mllib_s'] / big['topn_ours_s']:.2f}x faster (target >= 2)"
            )
    if big and by.get("1m"):
        small = by["1m"]
        for s in STAGES:
            if small.get(s) and big.get(s):
                out.append(
                    f"time(10M)/time(1M) {s[:-2]}: {big[s] / small[s]:.1f} (target <= 12; ratings x{big['ratings'] / small['ratings']:.1f})"
                )
        out.append(f"driver Python peak 10M/1M: {big['driver_python_mb'] / max(small['driver_python_mb'], 1):.2f} (target <= 1.5)")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("ratings")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in STAGES:
        pts = [(r["ratings"], r[s]) for r in rows if r.get(s)]
        if pts:
            ax.plot(*zip(*pts, strict=False), marker="o", label=s[:-2])
    xs = [r["ratings"] for r in rows]
    if len(xs) > 1:
        ax.plot(xs, [rows[0]["sgd_fit_s"] * x / xs[0] for x in xs], "k:", label="linear")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ratings")
    ax.set_ylabel("seconds")
    ax.set_title("recospark stage time vs data size (local[2])")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100k,1m,10m")
    ap.add_argument("--work", default="/tmp/recospark-bench")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--skip-mllib-topn", action="store_true", help="leave out MLlib's recommendForAllUsers comparison (about 10 min at 10M)"
    )
    ap.add_argument("--driver-memory", default="12g", help="each size's Spark driver memory")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        print(f"== {size}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, str(HERE / "suite_size.py"), "--size", size, "--work", args.work, "--driver-memory", args.driver_memory]
        proc = subprocess.run(cmd + (["--skip-mllib-topn"] if args.skip_mllib_topn else []), stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"size {size} failed (exit {proc.returncode})", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.monotonic() - t0, 1)
        row["load"] = Path("/proc/loadavg").read_text().split()[0]  # the machine may be shared
        rows.append(row)
        (out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"\nmachine: {machine()}\n")
    print(table(rows))
    print()
    for line in targets(rows):
        print("- " + line)
    plot(rows, out / "scaling.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
