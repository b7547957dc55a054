"""The engine's configuration: the estimator's Params by their own names, and what a task needs.

`DSGDParams` is the estimator's fitting Params as one frozen record whose field names ARE the
Param names (`regParam` from the Param to the kernel call, one spelling). It has no defaults of
its own: `engine_params` copies every Param value of an estimator by name (the defaults are the
Params' `_setDefault`, written once in params.py); a Param the engine does not know is kept in
`extra`, so nothing is dropped, and a field no Param fills raises. The engine's own options,
which are not Params, are the snake_case fields.

`TaskConfig` is what a Spark task receives in its closure: the settings plus what the run
resolved (run id, B, K, threads, tasks, the global mean, the index and block counts).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from recospark.models.sgd.layout import Index
from recospark.models.sgd.store import Store

RANKING_LOSSES = ("bpr", "warp")  # kernel_ranking.py; "squared" runs kernel_squared.py


@dataclass(frozen=True)
class DSGDParams:
    """The estimator's Params (see params.py for their docs) and the engine's own options."""

    rank: int
    maxIter: int
    regParam: float
    biasRegParam: float
    stepSize: float
    stepDecay: float
    schedule: str
    numBlocks: int
    innerBlocks: int
    threads: int
    tasks: int
    initStd: float
    seed: int
    earlyStoppingRounds: int
    checkpointInterval: int
    loss: str
    numNegatives: int
    positiveThreshold: float
    blockWeighting: bool
    margin: float
    maxTrials: int
    maxNorm: float
    # Params of the estimator the engine does not use (columns, a subclass's own), by name
    extra: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    # the engine's own options, not Params
    resident: bool = True  # keep ratings (and, single task, factors) in executor-local files
    epochs_per_job: int = 0  # single task: epochs per Spark job (0: all; a retry redoes at most one job)

    @property
    def ranking(self) -> bool:
        """Whether the loss is a ranking loss (bpr, warp): no global mean or user bias, no validation RMSE."""
        return self.loss in RANKING_LOSSES


class _HasParams(Protocol):
    def extractParamMap(self, extra: Any = None) -> Any: ...


_PARAM_FIELDS = tuple(f.name for f in fields(DSGDParams) if f.default is MISSING and f.default_factory is MISSING)
_OPTIONS = tuple(f.name for f in fields(DSGDParams) if f.name not in _PARAM_FIELDS and f.name != "extra")
_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str, "bool": bool}


def engine_params(params: _HasParams, **options: Any) -> DSGDParams:
    """The engine's settings from an estimator's Params (set or default), copied by name.

    Strict both ways: every Param lands in its field or, unknown to the engine, in `extra`; a
    field without a Param value raises, as does a value of the wrong type or an unknown option.

    >>> from recospark.models.sgd.estimator import SGDMatrixFactorization
    >>> p = engine_params(SGDMatrixFactorization(regParam=0.1), epochs_per_job=2)
    >>> p.regParam, p.epochs_per_job, p.extra["userCol"]
    (0.1, 2, 'user_id')
    """
    values = {param.name: value for param, value in params.extractParamMap().items()}
    missing = [name for name in _PARAM_FIELDS if name not in values]
    if missing:
        raise ValueError(f"DSGD settings: no value for {', '.join(missing)} in the estimator's Params")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"DSGD settings: unknown engine options {', '.join(unknown)} (known: {', '.join(_OPTIONS)})")
    clash = sorted(set(options) & set(values))
    if clash:
        raise TypeError(f"DSGD settings: {', '.join(clash)} given both as a Param and as an engine option")
    annotations = {f.name: str(f.type) for f in fields(DSGDParams)}
    known = {name: value for name, value in values.items() if name in annotations}
    for name, value in {**known, **options}.items():
        want = _TYPES.get(annotations[name])
        if want is not None and (not isinstance(value, want) or (annotations[name] != "bool" and isinstance(value, bool))):
            raise TypeError(f"DSGD settings: {name} must be {annotations[name]}, got {value!r}")
    extra = types.MappingProxyType({name: value for name, value in values.items() if name not in annotations})
    return DSGDParams(**known, **options, extra=extra)


@dataclass(frozen=True)
class TaskConfig:
    """What a task needs (small, pickled into its closure): the settings and the run's resolved values."""

    params: DSGDParams
    run_id: str
    B: int  # outer blocks (numBlocks)
    K: int  # inner blocks per outer block (innerBlocks)
    mu: float  # the global mean (0 for ranking losses)
    threads: int  # kernel threads per task
    tasks: int  # Spark tasks per stratum
    users: Index | None  # every user's (group, inner block, row); None: the single task builds it
    items: Index | None
    # (kind, G, J, a, b) -> n for every non-empty train ("R") / validation ("V") sub-block
    sub_counts: dict[tuple[str, int, int, int, int], int] = field(default_factory=dict)
    # (kind, G, J, a, b) -> number of partial blobs the setup pass wrote for it
    part_counts: dict[tuple[str, int, int, int, int], int] = field(default_factory=dict)
    root: str | None = None  # the store's root directory; None: store.store_root() (tests pass a tmp dir)
    n_items: int = 0  # ranking: the catalogue (items with training ratings)
    # ranking: user group -> |N_u| (n_items minus the user's rated items) per row of P_G; set before training
    neg_total: dict[int, np.ndarray] | None = None

    @property
    def ranking(self) -> bool:
        """Whether the run trains a ranking loss (see `DSGDParams.ranking`)."""
        return self.params.ranking

    @property
    def positive_floor(self) -> float:
        """Ranking losses: a rating >= this is a positive (positiveThreshold 0: every rated item)."""
        return self.params.positiveThreshold if self.params.positiveThreshold > 0 else float("-inf")

    def store(self) -> Store:
        """This run's executor-local block store (under `root`, else the default store root)."""
        return Store(self.run_id, self.root)

    def subs(self, kind: str, G: int, J: int) -> list[tuple[int, int]]:
        """The non-empty sub-blocks (a, b) of outer block (G, J)."""
        return [(a, b) for a in range(self.K) for b in range(self.K) if self.sub_counts.get((kind, G, J, a, b), 0) > 0]


__all__ = ["RANKING_LOSSES", "DSGDParams", "TaskConfig", "engine_params"]
