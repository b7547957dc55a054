"""Params every recospark recommender shares with MLlib's ALS, and the knob declaration.

The column Params are split the way pyspark splits `_ALSModelParams` (what a fitted model needs
to predict) from `_ALSParams` (what fitting needs), so one evaluate/recommend path serves every
model and a fitted model carries no training knob.

A model's knobs are its estimator's Params, declared once with `knob(...)`: name, doc, type and
the values it accepts. Its default is set once, by `_setDefault` in the Params class. The
configuration section of a model (snake_case keys, `conf_key`), the model table and the
estimator's own check before fitting (`check_params`) are all read from that declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasPredictionCol

T = TypeVar("T")

COLD_START_STRATEGIES = ("nan", "drop")


# --------------------------------------------------------------------------- knobs: Params as the one schema


@dataclass(frozen=True)
class Bounds:
    """What values a knob accepts, checked before Spark starts (config) and again at fit time."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None when it is accepted."""
        if self.choices is not None:
            return None if value in self.choices else f"one of {list(self.choices)}"
        if value is None or isinstance(value, (str, bool)):
            return None
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in values:
            for bound, ok, need in (
                (self.ge, lambda b, v=v: v >= b, ">="),
                (self.gt, lambda b, v=v: v > b, ">"),
                (self.le, lambda b, v=v: v <= b, "<="),
                (self.lt, lambda b, v=v: v < b, "<"),
            ):
                if bound is not None and not ok(bound):
                    return f"{need} {bound:g}"
        return None


class Knob(Param[T]):
    """A `Param` that also says what values it accepts (`bounds`), so the configuration, the model
    table and the estimator's own check all read one declaration."""

    def __init__(self, name: str, doc: str, converter: Callable[[Any], T], bounds: Bounds | None = None) -> None:
        super().__init__(Params._dummy(), name, doc, converter)
        self.bounds = bounds or Bounds()


def knob(
    name: str,
    doc: str,
    converter: Callable[[Any], T],
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Knob[T]:
    """Declare a Param with its accepted values, e.g. ``knob("rank", "latent factors", TypeConverters.toInt, ge=1)``."""
    return Knob(name, doc, converter, Bounds(ge, gt, le, lt, tuple(choices) if choices is not None else None))


def check_params(instance: Params, extra: Mapping[str, Bounds] | None = None) -> list[str]:
    """Every refused value of `instance`'s Knobs (and of `extra`: bounds for Params declared
    elsewhere), one message each, e.g. ``"rank must be >= 1, got 0"``."""
    problems = []
    for param in instance.params:
        bounds = (extra or {}).get(param.name) or getattr(param, "bounds", None)
        if bounds is None or not instance.isDefined(param):
            continue
        value = instance.getOrDefault(param)
        need = bounds.problem(value)
        if need is not None:
            problems.append(f"{param.name} must be {need}, got {value!r}")
    return problems


def conf_key(param_name: str) -> str:
    """The configuration key of a Param: its name in snake_case (``regParam`` -> ``reg_param``)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", param_name).lower()


def param_name(key: str) -> str:
    """The Param name of a configuration key (``reg_param`` -> ``regParam``)."""
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def given(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments a caller actually passed: keyword `__init__`/`setParams` take `None`
    defaults, so a default lives only in the Params class's `_setDefault`."""
    return {k: v for k, v in kwargs.items() if v is not None}


class _RecommenderModelParams(HasPredictionCol):
    """userCol, itemCol and coldStartStrategy, named and typed as in ALS."""

    userCol: Param[str] = Param(Params._dummy(), "userCol", "column name for user ids (int)", TypeConverters.toString)
    itemCol: Param[str] = Param(Params._dummy(), "itemCol", "column name for item ids (int)", TypeConverters.toString)
    coldStartStrategy: Param[str] = knob(
        "coldStartStrategy",
        "unknown users/items at prediction time: 'nan' (NaN prediction) or 'drop' (drop the row)",
        TypeConverters.toString,
        choices=COLD_START_STRATEGIES,
    )

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getColdStartStrategy(self) -> str:
        return self.getOrDefault(self.coldStartStrategy)

    def _check_cold_start(self) -> None:
        if self.getColdStartStrategy() not in COLD_START_STRATEGIES:
            raise ValueError(f"coldStartStrategy must be 'nan' or 'drop', got {self.getColdStartStrategy()!r}")


class _RecommenderParams(_RecommenderModelParams):
    """Adds ratingCol, which only fitting reads (ALS keeps it out of ALSModel too)."""

    ratingCol: Param[str] = Param(Params._dummy(), "ratingCol", "column name for ratings", TypeConverters.toString)

    def getRatingCol(self) -> str:
        return self.getOrDefault(self.ratingCol)


class _RecommenderModelSetters(_RecommenderModelParams):
    """The setters a fitted model offers, as ALSModel does."""

    def setUserCol(self, value: str) -> Any:
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> Any:
        return self._set(itemCol=value)

    def setPredictionCol(self, value: str) -> Any:
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> Any:
        return self._set(coldStartStrategy=value)
