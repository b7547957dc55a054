"""Micro-benchmark of one training step of the neural ranking models (no Spark).

    .venv/bin/python bench/bench_neural_step.py [--sizes 1m,10m,25m] [--models gmf,neumf,mult_vae,mult_dae] [--steps 300] [--wait spin]

A step is what `recospark.models.neural.distributed` runs per mini-batch: zero the gradients,
the recipe's loss on a batch, backward, the optimizer step. The network is the recipe's own
(`recipe.build` with its defaults) with as many users and items as the MovieLens shape; gmf and
neumf get random (user, item, label) rows, mult_vae and mult_dae `batchSize` users with the
shape's mean history length of random items each (through the recipe's own `batches`). Per size
and model, milliseconds per step (median of --repeats timed runs of --steps steps, after a
warm-up run) for
* `ddp + adam`: the loop before 2026-12-06: the DDP wrapper (one rank) and PyTorch's default Adam;
* `ddp + fused`: the DDP wrapper and fused Adam (what more than one process runs);
* `fused`: fused Adam, no wrapper;
* `fused + heap`: the same inside `heap_for_large_tensors` (what one process, the default, runs
  now; "-" with a recospark that has no such function, e.g. on PYTHONPATH to compare commits),
and the seconds of an epoch's steps at the first and last rate: ratings x (1 + numNegatives) /
batchSize steps (gmf, neumf) or users / batchSize (mult_*). A real epoch also draws its batches
and scores the validation carve, so this column bounds the training steps' share only. Threads:
--threads (the driver's two cores by default); --wait: how they wait between operations, as a
rank does (`openmp_wait`: spin for the one local rank, passive otherwise).
Prints the machine's load (`uptime`) next to the numbers.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402
from harness import SIZES  # noqa: E402

# variant: (DDP wrapper, fused Adam, heap_for_large_tensors)
VARIANTS = {
    "ddp + adam": (True, False, False),
    "ddp + fused": (True, True, False),
    "fused": (False, True, False),
    "fused + heap": (False, True, True),
}
PAIR_MODELS, USER_MODELS = ("gmf", "neumf"), ("mult_vae", "mult_dae")


def batches_for(recipe: Any, shape: tuple[int, int, int, str], rng: np.random.Generator) -> list[dict[str, Any]]:
    """16 batches of the recipe's kind at the shape."""
    import torch

    from recospark.models.neural.recipe import TrainShard

    users, items, ratings, _ = shape
    hp = recipe.defaults
    size = int(hp["batchSize"])
    if recipe.name in PAIR_MODELS:
        positive = 1 / (1 + int(hp["numNegatives"]))
        return [
            {
                "users": torch.from_numpy(rng.integers(0, users, size)),
                "items": torch.from_numpy(rng.integers(0, items, size)),
                "labels": torch.from_numpy((rng.random(size) < positive).astype(np.float32)),
            }
            for _ in range(16)
        ]
    per, n = ratings // users, 16 * size  # each user rates the mean number of distinct random items
    rated = np.concatenate([rng.choice(items, per, replace=False) for _ in range(n)]).astype(np.int64)
    shard = TrainShard(np.repeat(np.arange(n, dtype=np.int64), per), rated, np.ones(n * per, np.float32), n, items)
    return list(recipe.batches(shard, hp, 0, rng))


def time_steps(recipe: Any, shape: tuple[int, int, int, str], variant: tuple[bool, bool, bool], steps: int, repeats: int) -> float | None:
    """Median milliseconds per step over `repeats` runs of `steps` steps, after one warm-up run (None: no heap here)."""
    import contextlib

    import torch
    from torch.nn.parallel import DistributedDataParallel

    from recospark.models.neural import distributed

    ddp, fused, heap = variant
    heap_context = getattr(distributed, "heap_for_large_tensors", None)
    if heap and heap_context is None:
        return None
    users, items, _, _ = shape
    hp = dict(recipe.defaults)
    torch.manual_seed(0)
    net = recipe.build(hp, users, items)
    model = DistributedDataParallel(net) if ddp else net
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["stepSize"]), fused=fused)
    batches = batches_for(recipe, shape, np.random.default_rng(0))
    runs = []
    with heap_context() if heap and heap_context is not None else contextlib.nullcontext():
        for run in range(repeats + 1):
            started = time.perf_counter()
            for step in range(steps):
                optimizer.zero_grad()
                recipe.loss(model, batches[step % len(batches)], hp, 0).backward()
                optimizer.step()
            if run:  # the first run warms up
                runs.append((time.perf_counter() - started) / steps * 1e3)
    return statistics.median(runs)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1m,10m,25m")
    ap.add_argument("--models", default=",".join(PAIR_MODELS + USER_MODELS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--wait",
        choices=("spin", "passive"),
        default="spin",
        help="how OpenMP threads wait (recospark.models.neural.openmp_wait): spin, as the one local rank; passive, as a busy one",
    )
    args = ap.parse_args()
    small = [f"--{k} {v}" for k, v in (("steps", args.steps), ("repeats", args.repeats), ("threads", args.threads)) if v < 1]
    if small:
        ap.error(f"{', '.join(small)}: must be >= 1")
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if SIZES.get(s) is None]
    if unknown:
        ap.error(f"--sizes {','.join(unknown)}: choose among {', '.join(s for s, v in SIZES.items() if v)}")
    from recospark.models.neural import openmp_wait

    openmp_wait(spin=args.wait == "spin")  # before torch loads: OpenMP reads it once
    try:
        import torch
        import torch.distributed as dist

        from recospark.models.neural.recipes import RECIPES
    except ImportError as err:
        ap.error(f"needs recospark[neural] ({err})")
    models = args.models.split(",")
    missing = [m for m in models if m not in PAIR_MODELS + USER_MODELS or m not in RECIPES]
    if missing:
        ap.error(f"--models {','.join(missing)}: choose among {', '.join(PAIR_MODELS + USER_MODELS)}")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as probe:  # a free loopback port for the one-rank gloo group
        probe.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(probe.getsockname()[1]))
    dist.init_process_group("gloo", rank=0, world_size=1)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    wait = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ) or "OpenMP's default"
    print(f"torch {torch.__version__}, {args.threads} threads, OpenMP wait: {wait}, {args.steps} steps x {args.repeats} runs; {load}")
    header = (
        f"{'size':>4} {'model':>8} | " + " | ".join(f"{v:>12}" for v in VARIANTS) + " | speed-up | steps of an epoch, s (first -> last)"
    )
    print(header)
    print("-" * len(header))
    try:
        for size in sizes:
            shape = SIZES[size]
            assert shape is not None
            for name in models:
                recipe = RECIPES[name]
                ms = {v: time_steps(recipe, shape, variant, args.steps, args.repeats) for v, variant in VARIANTS.items()}
                hp = recipe.defaults
                rows = shape[2] * (1 + int(hp["numNegatives"])) if name in PAIR_MODELS else shape[0]
                steps = rows / int(hp["batchSize"])
                timed = [t for t in ms.values() if t is not None]
                before, now = timed[0], timed[-1]
                cells = " | ".join(f"{t:>9.2f} ms" if t is not None else f"{'-':>12}" for t in ms.values())
                print(
                    f"{size:>4} {name:>8} | {cells} | {before / now:>7.2f}x | {_seconds(steps * before / 1e3)} -> {_seconds(steps * now / 1e3)}"
                )
    finally:
        dist.destroy_process_group()
    print(f"finished; {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
