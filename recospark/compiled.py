"""Every numba kernel of recospark compiled once into numba's on-disk cache: `recospark compile`.

A kernel with `cache=True` is compiled by the first process that calls it and loaded from
`__pycache__` by every later one. Without this step that first process is a Spark task of the
first run, which waits for the compiler; `make setup` runs it once per install, as pip compiles
bytecode, so runs start with machine code. Each module's
`warm_up` calls its kernels with the argument types its tasks use, so the cached signatures are
the ones loaded later.
"""

from __future__ import annotations

from collections.abc import Callable

from recospark import topn_kernels
from recospark.models import ease_kernels
from recospark.models.sgd import kernel_ranking, kernel_squared

__all__ = ["compile_kernels"]

_WARMERS: dict[str, Callable[[], float]] = {
    "top-n selection": topn_kernels.warm_up,
    "DSGD squared loss": kernel_squared.warm_up,
    "DSGD ranking losses": kernel_ranking.warm_up,
    "EASE": ease_kernels.warm_up,
}


def compile_kernels() -> dict[str, float]:
    """Compile (or load, when cached) every kernel; returns the seconds each group took.

    Examples
    --------
    >>> seconds = compile_kernels()
    >>> sorted(seconds)
    ['DSGD ranking losses', 'DSGD squared loss', 'EASE', 'top-n selection']
    """
    return {name: warm() for name, warm in _WARMERS.items()}
