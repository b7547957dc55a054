"""The driver side of neural training: one `TorchDistributor.run`, its outcome or one clear error.

Imports no torch: the ranks import it (`distributed.train_rank`, reached through `run_rank`, so
the driver never pays torch's import). Under a local master (``local[...]``) TorchDistributor
runs ``torchrun`` on the driver (``local_mode=True``); under a cluster master it runs one barrier
task per process on the executors, and Spark's barrier stage retry applies when a task fails.

A failed rank prints one marker line (`ERROR_MARK`) before it exits; whatever TorchDistributor
raises (the local command's output tail, or the barrier task's Python error) carries it, and
`launch` turns it into one line: the model, the rank and that rank's own error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pyspark.ml.torch.distributor import TorchDistributor
from pyspark.sql import SparkSession

from recospark.models import OVERLAP_PROPERTY
from recospark.models.neural import openmp_wait
from recospark.models.neural.job import ERROR_MARK, PROGRESS_MARK, TrainJob

__all__ = ["launch", "local_master", "rank_error", "rank_threads", "run_rank"]

log = logging.getLogger(__name__)
_ERROR_LINE = re.compile(ERROR_MARK + r" rank=(\d+) (.*)")
# what a rank reports when another rank died under it
_PEER_FAILURE = re.compile(r"gloo|Connection (reset|closed)|DistBackendError|DistNetworkError|Broken pipe", re.IGNORECASE)


def run_rank(job: TrainJob) -> dict[str, Any]:
    """What TorchDistributor runs on every rank (a torch-free trampoline into `distributed`)."""
    openmp_wait(spin=job.spin)
    from recospark.models.neural.distributed import train_rank

    return train_rank(job)


def local_master(spark: SparkSession) -> bool:
    """A local master runs torchrun on the driver; anything else runs barrier tasks on the executors."""
    master = spark.sparkContext.master or ""
    return master == "local" or master.startswith("local[")


def local_cores(master: str) -> int:
    """The cores a local master runs on: local -> 1, local[N] / local[N, F] -> N, local[*] -> all.

    >>> local_cores("local[2,4]"), local_cores("local")
    (2, 1)
    """
    match = re.match(r"local\[(\d+|\*)", master)
    if match is None:
        return 1
    return (os.cpu_count() or 1) if match.group(1) == "*" else int(match.group(1))


def rank_threads(spark: SparkSession, num_processes: int) -> int:
    """torch threads per rank: under local[N], N cores shared by the ranks; on a cluster, the cores
    of one task (spark.task.cpus, which the barrier task holds)."""
    if local_master(spark):
        return max(1, local_cores(spark.sparkContext.master or "") // num_processes)
    return max(1, int(spark.conf.get("spark.task.cpus", "1") or 1))


def rank_error(text: str) -> tuple[int, str] | None:
    r"""(rank, message) of the failed rank that caused the others' failures, from the marker lines in `text`.

    When one rank fails, the others fail too, in a collective, with gloo's "connection reset by
    peer": the first marker whose error is not such a consequence names the cause.

    >>> rank_error(f"{ERROR_MARK} rank=0 RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer\n"
    ...            f"{ERROR_MARK} rank=1 ValueError: bad input")
    (1, 'ValueError: bad input')
    """
    found = [(int(m.group(1)), m.group(2).strip()) for m in _ERROR_LINE.finditer(text)]
    causes = [f for f in found if not _PEER_FAILURE.search(f[1])]
    pick = causes or found
    return pick[0] if pick else None


class _Capture:
    """Where the ranks' output goes while they train: the debug log, not the console (a doctest and
    the CLI's one-line errors stay clean). TorchDistributor prints a local torchrun's output to
    stdout and the executors' streamed output to stderr; the marker lines of failed ranks are kept,
    and rank 0's epoch lines (`PROGRESS_MARK`) go to the log at INFO, as they come."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if PROGRESS_MARK in line:  # rank 0's epoch lines: the fit's progress, at INFO
                log.info("%s", line.split(PROGRESS_MARK, 1)[1].strip())
            elif line.strip():
                log.debug("rank output: %s", line)
                if ERROR_MARK in line:
                    self.failures.append(line)
        return len(text)

    def flush(self) -> None:
        pass


_in_flight = [0]  # launches running in this driver (the train stage may fit models on several threads)
_in_flight_lock = threading.Lock()
_scratch: dict[str, str | None] = {}  # while launches run: our TMPDIR folder and the TMPDIR it replaced


@contextlib.contextmanager
def _counted() -> Iterator[bool]:
    """Count this launch while it runs; yields whether it started as the only one.

    While any launch runs, TMPDIR points at a private folder, removed when the last one ends:
    torchrun makes a `torchelastic_*` log folder in the temp folder at every start and never
    removes it (one per neural fit, piling up in the driver's /tmp).
    """
    with _in_flight_lock:
        alone = _in_flight[0] == 0
        if alone:
            _scratch["previous"] = os.environ.get("TMPDIR")
            folder = tempfile.mkdtemp(prefix="recospark-torchrun-")
            _scratch["folder"] = os.environ["TMPDIR"] = folder
        _in_flight[0] += 1
    try:
        yield alone
    finally:
        with _in_flight_lock:
            _in_flight[0] -= 1
            if _in_flight[0] == 0:
                previous = _scratch.pop("previous", None)
                if previous is None:
                    os.environ.pop("TMPDIR", None)
                else:
                    os.environ["TMPDIR"] = previous
                shutil.rmtree(_scratch.pop("folder", None) or "", ignore_errors=True)


def launch(spark: SparkSession, job: TrainJob, num_processes: int) -> dict[str, Any]:
    """Train `job` on `num_processes` ranks; the ranks' (identical) result, or one-line RuntimeError.

    A rank's OpenMP threads spin between operations (`openmp_wait`) only when it cannot share its
    cores: one local rank, started while no other launch and no Spark job of this application ran,
    and not from a `for_each_model` that fits models side by side (`train.concurrent_fits` > 1,
    where another fit may start while this one trains).
    """
    with _counted() as alone:
        local = local_master(spark)
        return _launch(spark, replace(job, spin=local and num_processes == 1 and alone and _cores_free(spark)), num_processes, local)


def _cores_free(spark: SparkSession) -> bool:
    """No Spark job of this application runs, and no other model's work can start beside this one."""
    sc = spark.sparkContext
    return sc.getLocalProperty(OVERLAP_PROPERTY) != "true" and not sc.statusTracker().getActiveJobsIds()


def _launch(spark: SparkSession, job: TrainJob, num_processes: int, local: bool) -> dict[str, Any]:
    name = job.recipe.name
    log.info("%s: training on %d process(es) (%s)", name, num_processes, "torchrun on the driver" if local else "barrier tasks")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local, use_gpu=False)
    # TorchDistributor's logger repeats every start/finish at INFO; ours says it once
    logging.getLogger("TorchDistributor").setLevel(logging.WARNING)
    capture = _Capture()
    try:
        with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
            result = distributor.run(run_rank, job)
    except Exception as err:
        text = str(err)
        found = rank_error("\n".join(capture.failures)) or rank_error(text)
        where = f"rank {found[0]} of {num_processes}: {found[1]}" if found else _last_error_line(text)
        raise RuntimeError(f"{name}: training failed on {where}") from None
    if not isinstance(result, dict) or "weights" not in result:
        raise RuntimeError(f"{name}: training returned no weights (got {type(result).__name__})")
    return result


def _last_error_line(text: str) -> str:
    """The most telling line of an error without a rank marker (e.g. torchrun failed to start)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception)\b", line):
            return line[:500]
    return (lines[-1] if lines else "unknown error")[:500]
