"""The engine's run records: the execution plan, what a single-task job and a run report. No Spark.

Everything the driver learns travels in typed records with explicit fields: an epoch's
`epochs.EpochRecord` (metrics and costs), a multi-task stage's `plan_multi.TaskStats`, and
here a single-task job's `JobStats` (sent to the driver as JSON: it is a DataFrame row), the
driver's `JobReport` of that job and the run's `RunInfo`.
They become plain dicts only at the engine's edge (`DSGDResult.history` / `.info`, which the
model and the train manifest store), through `to_dict`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from recospark.models.sgd.epochs import EpochRecord, Progress


@dataclass(frozen=True)
class ExecutionPlan:
    """How a run executes: `tasks` fat tasks of `threads` kernel threads (see `run.plan_execution`)."""

    tasks: int
    threads: int
    local: bool
    use_profile: bool  # a TaskResourceProfile asks `threads` CPUs per task
    reason: str

    @property
    def single(self) -> bool:
        """Whether one task trains everything (the single-task plan), else several tasks exchange item blocks."""
        return self.tasks == 1


@dataclass(frozen=True)
class JobStats:
    """What one single-task plan job reports: its costs, the epochs it ran and where training
    stands. Sent to the driver as JSON (`to_json`), the job's one stats row."""

    compile_seconds: float = 0.0
    streamed_bytes: int = 0
    streamed_val_bytes: int = 0
    pid: int = 0
    threads: int = 0
    missing: int = 0  # blocks the task needed and found neither streamed nor in its store
    missing_example: tuple[str, ...] = ()
    index_seconds: float = 0.0
    started_at: float = 0.0  # epoch seconds, to measure the task's start delay
    merge_seconds: float | None = None
    n_train: int | None = None  # ratings kept after merging (validation rows of unknown ids dropped)
    n_validation: int | None = None
    history: tuple[EpochRecord, ...] = ()
    progress: Progress | None = None
    finished: bool = False  # training ended in this job: the best factors follow the stats row
    load_seconds: float = 0.0
    output_seconds: float = 0.0
    output_bytes: int = 0
    task_seconds: float = 0.0

    def to_json(self) -> bytes:
        """The stats row's bytes: every field, with the history and progress as plain JSON (no pickle crosses to the driver)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["missing_example"] = list(self.missing_example)
        d["history"] = [h.to_dict() for h in self.history]
        d["progress"] = None if self.progress is None else asdict(self.progress)
        return json.dumps(d).encode()

    @staticmethod
    def from_json(blob: bytes) -> JobStats:
        """The inverse of `to_json`; a history entry with an unknown key raises."""
        d = json.loads(blob)
        d["missing_example"] = tuple(d["missing_example"])
        d["history"] = tuple(EpochRecord.from_dict(h) for h in d["history"])
        d["progress"] = None if d["progress"] is None else Progress(**d["progress"])
        return JobStats(**d)

    def summary(self) -> dict[str, Any]:
        """The job's scalars (no history, no progress), as `RunInfo.to_dict` lists them."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("history", "progress", "started_at")}
        d["missing_example"] = list(self.missing_example)
        return d


@dataclass(frozen=True)
class JobReport:
    """One single-task plan job as the driver saw it: the task's stats and the job's own costs."""

    stats: JobStats
    job_seconds: float
    streamed: bool  # the job streamed the blocks into its task
    task_start_delay: float  # submission to the task's start

    def to_dict(self) -> dict[str, Any]:
        """The job's scalars and the driver's costs of it, flat and JSON-ready."""
        return self.stats.summary() | {
            "job_seconds": self.job_seconds,
            "streamed": self.streamed,
            "task_start_delay": self.task_start_delay,
        }


@dataclass
class RunInfo:
    """What one DSGD run did: its plan, setup, jobs and timings (`DSGDResult.info` as a dict)."""

    plan: ExecutionPlan
    run_id: str
    jobs: int = 0  # Spark jobs that trained
    misses: int = 0  # times a task missed its blocks and the plan fell back to streaming
    partials: dict[str, int] = field(default_factory=dict)  # partial blobs per kind (R, V)
    packed_bytes: dict[str, int] = field(default_factory=dict)  # |R| as blobs per kind: 12 bytes per rating + 64 per partial
    store_written_at_setup: bool = False
    setup_index_seconds: float | None = None  # multi task: the driver's index
    setup_pack_seconds: float | None = None
    setup_seconds: float | None = None
    single_jobs: list[JobReport] | None = None  # single task: one per job
    export_seconds: float | None = None
    fit_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for the manifest and the model's metadata; unset (None) entries left out."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["plan"] = asdict(self.plan)
        if self.single_jobs is not None:
            d["single_jobs"] = [job.to_dict() for job in self.single_jobs]
        return {k: v for k, v in d.items() if v is not None}


__all__ = ["ExecutionPlan", "JobReport", "JobStats", "RunInfo"]
