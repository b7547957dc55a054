"""Micro-benchmark of the compiled SGD kernel alone (one core, no Spark) on MovieLens 100K.

    .venv/bin/python bench/bench_sgd_kernel.py [--data ../shared/data/ml-100k] [--epochs 5]

For rank 10, 32 and 50: rating updates per second of `sgd_block` over all 100K ratings in a
seeded random order (the order the DSGD worker uses), best of --epochs passes. Compile cost is
measured in fresh subprocesses: once with numba's on-disk cache removed (cold compile) and once
with the cache in place (cache hit), which is what each Spark Python worker pays on first use.
Target: >= 3 M updates/s per core at rank 32.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
TARGET = 3.0  # M updates/s per core at rank 32

_WARM = "import time; t = time.perf_counter(); from recospark.models.sgd.kernel import warm_up; " \
        "c = warm_up(); print(time.perf_counter() - t, c)"


def compile_seconds() -> tuple[float, float]:
    """(cold compile, cache hit) seconds of `warm_up()` in fresh interpreters (import excluded)."""
    from recospark.models.sgd import kernel

    cache_dir = Path(kernel.__file__).parent / "__pycache__"
    for f in cache_dir.glob("kernel.*.nb*"):
        f.unlink()
    out = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _WARM], capture_output=True, text=True, check=True, cwd=ROOT)
        out.append(float(res.stdout.split()[1]))
    return out[0], out[1]


def load(path: Path):
    raw = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))
    _, users = np.unique(raw[:, 0], return_inverse=True)
    _, items = np.unique(raw[:, 1], return_inverse=True)
    return users.astype(np.int32), items.astype(np.int32), raw[:, 2].astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ranks", default="10,32,50")
    args = ap.parse_args(argv)
    path = Path(args.data) / "u.data"
    if not path.is_file():
        print(f"skipped: {path} not found (MovieLens 100K)")
        return 0
    cold, hit = compile_seconds()
    from recospark.models.sgd.kernel import sgd_block, warm_up

    warm_up()
    u, i, r = load(path)
    n_users, n_items, n = int(u.max()) + 1, int(i.max()) + 1, len(r)
    mu = float(r.mean())
    print(f"ML-100K: {n} ratings, {n_users} users, {n_items} items; best of {args.epochs} epochs, one core")
    print(f"compile: cold {cold:.2f} s, cache hit {hit:.2f} s (fresh process, warm_up())")
    print(f"{'rank':>5} {'M updates/s':>12} {'ns/update':>10} {'epoch ms':>9}")
    ok = True
    for rank in [int(x) for x in args.ranks.split(",")]:
        rng = np.random.default_rng(rank)
        P = (rng.standard_normal((n_users, rank)) * 0.05).astype(np.float32)
        Q = (rng.standard_normal((n_items, rank)) * 0.05).astype(np.float32)
        bu, bi = np.zeros(n_users, np.float32), np.zeros(n_items, np.float32)
        best = np.inf
        for _ in range(args.epochs):
            order = rng.permutation(n).astype(np.int64)
            t0 = time.perf_counter()
            sgd_block(u, i, r, order, P, Q, bu, bi, mu, 0.01, 0.05, 0.01)
            best = min(best, time.perf_counter() - t0)
        rate = n / best / 1e6
        print(f"{rank:>5} {rate:>12.2f} {best / n * 1e9:>10.1f} {best * 1e3:>9.2f}")
        if rank == 32:
            ok = rate >= TARGET
    print(f"target >= {TARGET} M updates/s per core at rank 32: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
