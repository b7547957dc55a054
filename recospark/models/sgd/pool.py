"""Per Python worker: the compiled kernels, loaded once, and the threads a task runs them on.

A fresh Python worker loads the kernels' machine code from numba's on-disk cache (or compiles
it) once; `ensure_warm` does that and reports the seconds it cost so the epoch history can show
it. The thread pool is kept for the worker's life: tasks of one run reuse its threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from recospark.models.sgd import kernel_ranking, kernel_squared

_WARM: dict[str, float] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def ensure_warm(ranking: bool = False) -> float:
    """Load/compile the kernels (with `ranking`, the ranking kernels too) once per Python worker;
    returns the seconds this call took."""
    s = 0.0
    if "s" not in _WARM:
        _WARM["s"] = kernel_squared.warm_up()
        s += _WARM["s"]
    if ranking and "r" not in _WARM:
        _WARM["r"] = kernel_ranking.warm_up()
        s += _WARM["r"]
    return s


def _pool(threads: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsgd")
        return pool


def run_jobs(jobs: Sequence[Callable[..., Any]], threads: int) -> list[Any]:
    """Run independent jobs on `threads` threads, in the order given; results in job order."""
    if threads <= 1 or len(jobs) <= 1:
        return [j() for j in jobs]
    futures = [_pool(threads).submit(j) for j in jobs]
    return [f.result() for f in futures]


@dataclass
class Timer:
    """Kernel time of one task: `wall` (inner steps, dispatch to last thread done) and `cpu`
    (sum of kernel calls' durations over threads)."""

    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0

    def add(self, other: Timer) -> None:
        """Accumulate another timer (a later job's or another thread's) into this one."""
        self.wall += other.wall
        self.cpu += other.cpu
        self.calls += other.calls


__all__ = ["Timer", "ensure_warm", "run_jobs"]
