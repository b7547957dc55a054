"""Micro-benchmark of one training step of the sampled-negative neural models (no Spark).

    .venv/bin/python bench/bench_neural_step.py [--sizes 1m,10m,25m] [--models gmf,neumf] [--steps 300]

A step is what `recospark.models.neural.distributed` runs per mini-batch: zero the gradients,
the recipe's loss on a batch of random (user, item, label) rows, backward, the optimizer step.
The network is the recipe's own (`recipe.build` with its defaults) with as many users and items
as the MovieLens shape. Per size and model, milliseconds per step (median of --repeats timed
runs of --steps steps, after a warm-up run) for
* `ddp + adam`: the loop before 2026-12-06: the DDP wrapper (one rank) and PyTorch's default Adam;
* `ddp + fused`: the DDP wrapper and fused Adam (what more than one process runs);
* `fused`: fused Adam, no wrapper (what one process, the default, runs now),
and the seconds of an epoch's steps at that rate, before and now: ratings x (1 + numNegatives) /
batchSize steps. A real epoch also draws its negatives and batches and scores the validation
carve, so this column bounds the training steps' share only. Threads: --threads (the driver's
two cores by default).
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

VARIANTS = {"ddp + adam": (True, False), "ddp + fused": (True, True), "fused": (False, True)}


def time_steps(recipe: Any, shape: tuple[int, int, int, str], ddp: bool, fused: bool, steps: int, repeats: int) -> float:
    """Median milliseconds per step over `repeats` runs of `steps` steps, after one warm-up run."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    users, items, _, _ = shape
    hp = dict(recipe.defaults)
    torch.manual_seed(0)
    net = recipe.build(hp, users, items)
    model = DistributedDataParallel(net) if ddp else net
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["stepSize"]), fused=fused)
    rng = np.random.default_rng(0)
    size = int(hp["batchSize"])
    batches = [
        {
            "users": torch.from_numpy(rng.integers(0, users, size)),
            "items": torch.from_numpy(rng.integers(0, items, size)),
            "labels": torch.from_numpy((rng.random(size) < 1 / (1 + int(hp["numNegatives"]))).astype(np.float32)),
        }
        for _ in range(16)
    ]
    runs = []
    for run in range(repeats + 1):
        started = time.perf_counter()
        for step in range(steps):
            optimizer.zero_grad()
            recipe.loss(model, batches[step % len(batches)], hp, 0).backward()
            optimizer.step()
        if run:  # the first run warms up
            runs.append((time.perf_counter() - started) / steps * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1m,10m,25m")
    ap.add_argument("--models", default="gmf,neumf")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    small = [f"--{k} {v}" for k, v in (("steps", args.steps), ("repeats", args.repeats), ("threads", args.threads)) if v < 1]
    if small:
        ap.error(f"{', '.join(small)}: must be >= 1")
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if SIZES.get(s) is None]
    if unknown:
        ap.error(f"--sizes {','.join(unknown)}: choose among {', '.join(s for s, v in SIZES.items() if v)}")
    try:
        import torch
        import torch.distributed as dist

        from recospark.models.neural.recipes import RECIPES
    except ImportError as err:
        ap.error(f"needs recospark[neural] ({err})")
    models = args.models.split(",")
    missing = [m for m in models if m not in RECIPES or "numNegatives" not in RECIPES[m].defaults]
    if missing:
        ap.error(f"--models {','.join(missing)}: only the sampled-negative recipes (gmf, neumf)")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as probe:  # a free loopback port for the one-rank gloo group
        probe.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(probe.getsockname()[1]))
    dist.init_process_group("gloo", rank=0, world_size=1)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps x {args.repeats} runs; {load}")
    header = (
        f"{'size':>4} {'model':>6} | " + " | ".join(f"{v:>14}" for v in VARIANTS) + " | speed-up | steps of an epoch, s (before -> now)"
    )
    print(header)
    print("-" * len(header))
    try:
        for size in sizes:
            shape = SIZES[size]
            assert shape is not None
            for name in models:
                recipe = RECIPES[name]
                ms = {v: time_steps(recipe, shape, ddp, fused, args.steps, args.repeats) for v, (ddp, fused) in VARIANTS.items()}
                hp = recipe.defaults
                steps = shape[2] * (1 + int(hp["numNegatives"])) / int(hp["batchSize"])
                before, now = ms["ddp + adam"], ms["fused"]
                cells = " | ".join(f"{ms[v]:>11.2f} ms" for v in VARIANTS)
                print(f"{size:>4} {name:>6} | {cells} | {before / now:>7.2f}x | {steps * before / 1e3:.0f} -> {steps * now / 1e3:.0f}")
    finally:
        dist.destroy_process_group()
    print(f"finished; {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
