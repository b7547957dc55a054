"""The one epoch loop: step-size schedule, early stopping, best-epoch tracking and the history.

Both plans train through `run_epochs`; they differ only in how one epoch runs, which they pass
in as `step`: the single-task plan trains every stratum inside its task, the multi-task plan's
driver launches one Spark stage per stratum. What the loop sees of an epoch is an
`EpochOutcome`: sums per outer block (scalars), the last stratum's shift and the costs.

Each epoch leaves an `EpochRecord` (its `EpochMetrics` and `EpochCosts`): typed inside the
engine, a plain dict (`to_dict`) only in a fitted model's history and the train manifest.

`Progress` is the whole training state between epochs (step size, early-stopping counters, the
shift the item groups sit at): a pure value, so a single-task job can hand it to the next job
and a retried job starts from the same place.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, TextIO

import numpy as np

from recospark.models.sgd.settings import DSGDParams

# per outer block (G, J): training [loss, ratings, updates] or validation [sse, ratings],
# accumulated in a fixed order so that every plan adds the same floats in the same order
Sums = dict[tuple[int, int], list[float]]


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers. Squared loss: training and validation RMSE. Ranking losses: the
    objective's mean loss per update (bpr: -log sigmoid per pair; warp: H(rank)-weighted hinge
    per update) and no validation metric."""

    objective: str  # squared | bpr | warp
    train: float
    validation: float | None
    updates: int
    ratings: int

    def to_dict(self) -> dict[str, Any]:
        """The history entry's metric keys: `train_rmse`, `val_rmse` and `updates` (the ratings visited) for squared loss;
        `objective`, `train_loss`, `val_loss` (None), `updates` and `ratings` for the ranking losses.
        """
        if self.objective == "squared":
            return {"train_rmse": self.train, "val_rmse": self.validation, "updates": self.ratings}
        return {"objective": self.objective, "train_loss": self.train, "val_loss": None, "updates": self.updates, "ratings": self.ratings}

    def text(self) -> str:
        """For the progress log."""
        if self.objective != "squared":
            return f"{self.objective} train_loss={self.train:.4f} updates={self.updates}"
        return f"train_rmse={self.train:.4f} val_rmse=" + ("-" if self.validation is None else f"{self.validation:.4f}")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EpochMetrics:
        """The inverse of `to_dict` (a saved model's history read back)."""
        if "train_rmse" in d:
            return EpochMetrics("squared", d["train_rmse"], d["val_rmse"], d["updates"], d["updates"])
        return EpochMetrics(d["objective"], d["train_loss"], d["val_loss"], d["updates"], d["ratings"])


_METRIC_KEYS = frozenset({"train_rmse", "val_rmse", "objective", "train_loss", "val_loss", "updates", "ratings"})


@dataclass(frozen=True)
class EpochCosts:
    """What one epoch cost. `kernel_calls` is the single-task plan's (kernel calls in the task),
    `stages` the multi-task plan's (Spark stages per epoch); each is None in the other plan."""

    seconds: float = 0.0  # the epoch's wall time seen by the driver (single task: its share of the job)
    task_seconds: float = 0.0  # the slowest task
    kernel_seconds: float = 0.0  # inner steps, dispatch to last thread done (the slowest task)
    kernel_cpu_seconds: float = 0.0  # kernel calls' durations summed over threads and tasks
    compile_seconds: float = 0.0  # loading the kernels (first epoch of a job / the slowest task)
    streamed_bytes: int = 0  # training sub-blocks streamed into the tasks
    streamed_val_bytes: int = 0  # validation sub-blocks streamed into the tasks
    factor_bytes: int = 0  # factor blocks the tasks received (multi task)
    streamed: bool = False  # the blocks came streamed (not from the executor-local store)
    kernel_calls: int | None = None
    stages: int | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training: what the history of a fitted model lists, one entry per epoch."""

    epoch: int  # 1-based
    metrics: EpochMetrics
    step_size: float  # the step size this epoch ran with
    val_n: int  # validation ratings scored (0 without validation)
    costs: EpochCosts

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict: epoch, metrics, step size, validation count and costs (a plan's unused counter left out)."""
        costs = {k: v for k, v in asdict(self.costs).items() if not (k in ("kernel_calls", "stages") and v is None)}
        return {"epoch": self.epoch, **self.metrics.to_dict(), "step_size": self.step_size, "val_n": self.val_n, **costs}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EpochRecord:
        """The inverse of `to_dict`; an unknown key raises (nothing is dropped silently)."""
        cost_keys = {f.name for f in fields(EpochCosts)}
        unknown = set(d) - cost_keys - _METRIC_KEYS - {"epoch", "step_size", "val_n"}
        if unknown:
            raise ValueError(f"EpochRecord: unknown keys {sorted(unknown)}")
        costs = EpochCosts(**{k: v for k, v in d.items() if k in cost_keys})
        return EpochRecord(d["epoch"], EpochMetrics.from_dict(d), d["step_size"], d["val_n"], costs)


@dataclass(frozen=True)
class Progress:
    """Where training stands before epoch `epoch` (0-based): step size, early-stopping state, and
    the outer shift the item groups sit at. A pure value: `advance` returns the next one."""

    epoch: int = 0
    lr: float = 0.0
    prev_train: float = math.inf
    best_val: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    offset: int = 0
    stopped: bool = False


def advance(
    pr: Progress, train_metric: float, val_rmse: float | None, *, early_rounds: int, schedule: str, step_decay: float, last_shift: int
) -> tuple[Progress, bool]:
    """Progress after one epoch and whether that epoch is the new best (the factors to keep).

    `schedule` 'decay': lr *= step_decay; 'bold_driver': lr *= 1.05 when the training metric
    fell, 0.5 when it rose. With `early_rounds` > 0 and a validation RMSE, training stops after
    that many epochs without improvement; otherwise every epoch is the best so far."""
    epoch = pr.epoch + 1
    best_val, best_epoch, since, stop = pr.best_val, pr.best_epoch, pr.since_best, False
    if early_rounds > 0 and val_rmse is not None:
        if val_rmse < best_val:
            best_val, best_epoch, since = val_rmse, epoch, 0
        else:
            since += 1
            stop = since >= early_rounds
    else:
        best_epoch = epoch
    lr = pr.lr * (1.05 if train_metric < pr.prev_train else 0.5) if schedule == "bold_driver" else pr.lr * step_decay
    nxt = Progress(epoch, lr, train_metric, best_val, best_epoch, since, last_shift, stop)
    return nxt, best_epoch == epoch


def total(sums: Sums) -> tuple[float, int]:
    """Sum per-outer-block (loss or sse, n) in (G, J) order: the same float whatever plan produced them."""
    value, n = 0.0, 0
    for key in sorted(sums):
        value += sums[key][0]
        n += int(sums[key][1])
    return value, n


def epoch_metrics(loss: str, sums: Sums, val_sums: Sums) -> tuple[EpochMetrics, int]:
    """(the epoch's metrics, validation ratings scored) from the training `sums` (loss, ratings,
    updates per outer block) and the validation `val_sums` (sse, ratings). `metrics.train` is
    what the step schedule watches: training RMSE (squared) or mean loss per update (ranking)."""
    value, n = total(sums)
    updates = sum(int(sums[key][2]) for key in sorted(sums))
    vsse, val_n = total(val_sums)
    if loss == "squared":
        train_rmse = float(np.sqrt(value / n)) if n else float("nan")
        val_rmse = float(np.sqrt(vsse / val_n)) if val_n else None
        return EpochMetrics("squared", train_rmse, val_rmse, int(n), int(n)), int(val_n)
    train_loss = value / updates if updates else float("nan")
    return EpochMetrics(loss, train_loss, None, updates, int(n)), int(val_n)


class EpochOutcome(NamedTuple):
    """What running one epoch returns to the loop."""

    sums: Sums  # training [loss, ratings, updates] per outer block
    val_sums: Sums  # validation [sse, ratings] per outer block; empty without validation
    last_shift: int  # the epoch's last outer shift: where the item groups now sit
    costs: EpochCosts


def early_stopping(params: DSGDParams, validation: bool) -> bool:
    """Whether early stopping is on: a validation metric exists and earlyStoppingRounds > 0."""
    return validation and params.earlyStoppingRounds > 0 and not params.ranking


def run_epochs(
    params: DSGDParams,
    progress: Progress,
    step: Callable[[Progress], EpochOutcome | None],
    *,
    validation: bool,
    keep_best: Callable[[Progress], None] | None = None,
    max_epochs: int | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[list[EpochRecord], Progress, bool]:
    """Run epochs from `progress` until maxIter, early stopping, or `max_epochs` epochs here.

    `step(progress)` runs one epoch (None: it could not, e.g. a block was missing; the loop
    stops and reports it). With early stopping on, `keep_best(progress)` is called before an
    epoch overwrites factors that are the best so far (epoch `progress.best_epoch`), so the
    caller can keep them; the final factors are the best ones when `best_epoch == epoch`.
    `on_epoch(record)` sees each epoch's record as it ends (the multi-task plan logs it).

    Returns (one record per epoch run, the final progress, whether no step failed).
    """
    early = early_stopping(params, validation)
    history: list[EpochRecord] = []
    for _ in range(params.maxIter if max_epochs is None else max_epochs):
        if progress.stopped or progress.epoch >= params.maxIter:
            break
        if early and keep_best is not None and progress.epoch > 0 and progress.best_epoch == progress.epoch:
            keep_best(progress)
        outcome = step(progress)
        if outcome is None:
            return history, progress, False
        metrics, val_n = epoch_metrics(params.loss, outcome.sums, outcome.val_sums)
        nxt, _ = advance(
            progress,
            metrics.train,
            metrics.validation,
            early_rounds=params.earlyStoppingRounds if early else 0,
            schedule=params.schedule,
            step_decay=params.stepDecay,
            last_shift=outcome.last_shift,
        )
        record = EpochRecord(progress.epoch + 1, metrics, progress.lr, val_n, outcome.costs)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        progress = nxt
    return history, progress, True


class TaskProgress:
    """Progress of epochs that run inside one Spark task, as lines on the task's stderr.

    The single-task plan runs every epoch of a job in one task, so the driver logs them only when
    the job ends (at 10M ratings, a ranking fit's 110 epochs are one job of many minutes). The
    task prints its first and last epoch and at most one line per `every_s` seconds between: on
    the console under a local master, in the executor's stderr log on a cluster.
    """

    def __init__(self, max_iter: int, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic, out: TextIO | None = None):
        self.max_iter, self.every_s, self.clock, self.out = max_iter, every_s, clock, out
        self.started = self.last = clock()

    def __call__(self, record: EpochRecord) -> None:
        """Print `record` when it is the first or last epoch or `every_s` passed since the last line."""
        now = self.clock()
        if record.epoch == 1 or record.epoch >= self.max_iter or now - self.last >= self.every_s:
            self.last = now
            out = self.out if self.out is not None else sys.stderr
            print(
                f"recospark DSGD task: epoch {record.epoch}/{self.max_iter} {record.metrics.text()} ({now - self.started:.0f} s in this task)",
                file=out,
                flush=True,
            )

    def finish(self, progress: Progress) -> None:
        """Say so when early stopping ended the epochs before maxIter (no epoch line says it)."""
        if progress.stopped:
            out = self.out if self.out is not None else sys.stderr
            print(
                f"recospark DSGD task: early stopping after epoch {progress.epoch}, best epoch {progress.best_epoch}",
                file=out,
                flush=True,
            )


__all__ = [
    "EpochCosts",
    "EpochMetrics",
    "EpochOutcome",
    "EpochRecord",
    "Progress",
    "Sums",
    "TaskProgress",
    "advance",
    "early_stopping",
    "epoch_metrics",
    "run_epochs",
    "total",
]
