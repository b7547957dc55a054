"""Every numba kernel of recospark compiled once into numba's on-disk cache: `recospark compile`.

A kernel with `cache=True` is compiled by the first process that calls it and loaded from
`__pycache__` by every later one. Without this step that first process is a Spark task of the
first run, which waits for the compiler; `make setup` runs it once per install, as pip compiles
bytecode, so runs start with machine code. Each module's
`warm_up` calls its kernels with the argument types its tasks use, so the cached signatures are
the ones loaded later.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

from recospark import topn_kernels
from recospark.models import ease_kernels
from recospark.models.sgd import kernel_ranking, kernel_squared

__all__ = ["cache_counts", "compile_kernels"]

_WARMERS: dict[str, Callable[[], float]] = {
    "top-n selection": topn_kernels.warm_up,
    "DSGD squared loss": kernel_squared.warm_up,
    "DSGD ranking losses": kernel_ranking.warm_up,
    "EASE": ease_kernels.warm_up,
}
_MODULES: tuple[ModuleType, ...] = tuple(sys.modules[warm.__module__] for warm in _WARMERS.values())


def compile_kernels() -> dict[str, float]:
    """Compile (or load, when cached) every kernel; returns the seconds each group took.

    Examples
    --------
    >>> seconds = compile_kernels()
    >>> sorted(seconds)
    ['DSGD ranking losses', 'DSGD squared loss', 'EASE', 'top-n selection']
    """
    return {name: warm() for name, warm in _WARMERS.items()}


def cache_counts() -> tuple[int, int]:
    """(signatures loaded from numba's on-disk cache, signatures compiled) by this process so far,
    over every kernel of the modules `_WARMERS` warms: after `compile_kernels`, what it found and what it had to build.

    Examples
    --------
    >>> _ = compile_kernels()
    >>> loaded, compiled = cache_counts()
    >>> loaded + compiled > 0
    True
    """
    loaded = compiled = 0
    for module in _MODULES:
        for value in vars(module).values():
            stats = getattr(value, "stats", None)
            if hasattr(value, "signatures") and stats is not None and hasattr(stats, "cache_hits"):
                loaded += sum(stats.cache_hits.values())
                compiled += sum(stats.cache_misses.values())
    return loaded, compiled
