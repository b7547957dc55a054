"""`recospark compile` caches the signatures the tasks call, so a run starts with machine code."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from recospark.cli import main

# Runs in a fresh interpreter: in this one, other tests may already have compiled any signature.
_PROBE = textwrap.dedent(
    """
    import numpy as np, pyarrow as pa
    from recospark import scoring, topn_kernels
    from recospark.compiled import compile_kernels
    from recospark.models import ease_kernels
    from recospark.models.sgd import kernel_ranking, kernel_squared

    compile_kernels()
    dispatchers = [getattr(m, name) for m in (topn_kernels, ease_kernels, kernel_squared, kernel_ranking)
                   for name in dir(m) if hasattr(getattr(m, name), "signatures")]
    before = {d.__name__: len(d.signatures) for d in dispatchers}

    class Held:  # what a Broadcast is to the worker: a holder of .value
        def __init__(self, value): self.value = value

    rng = np.random.default_rng(0)
    item_ids = np.arange(1, 31, dtype=np.int32)
    factors = pa.array([rng.normal(size=4).astype(np.float32).tolist() for _ in range(5)], pa.list_(pa.float32()))
    rated = pa.array([[1, 2], [3], [], [4, 5, 6], [7]], pa.list_(pa.int32()))
    users = pa.array(np.arange(1, 6, dtype=np.int32))
    plan = scoring.scan_plan(item_ids, rng.normal(size=(30, 4)).astype(np.float32), np.zeros(4, np.float32))
    batch = pa.RecordBatch.from_arrays([users, factors, rated], ["u", "f", "x"])
    list(scoring._factor_batches(iter([batch]), Held(plan), 5, 2))
    scorer = ease_kernels.EASEBlockScorer(Held(item_ids), Held(rng.normal(size=(30, 30)).astype(np.float32)), False)
    ratings = pa.array([[4.0, 5.0], [3.0], [], [1.0, 2.0, 3.0], [5.0]], pa.list_(pa.float32()))
    batch = pa.RecordBatch.from_arrays([users, rated, ratings], ["u", "h", "r"])
    list(scoring._scored_batches(iter([batch]), scorer, None, 5, 2, False, False))
    list(ease_kernels.gram_tiles([(np.array([0, 2], np.int32), np.array([1.0, 1.0]))], n=3))
    after = {d.__name__: len(d.signatures) for d in dispatchers}
    print({name: after[name] - before[name] for name in before if after[name] != before[name]})
    """
)


@pytest.mark.slow  # a fresh interpreter that loads every kernel: make test runs it, make check does not
def test_a_scoring_task_compiles_nothing_after_compile() -> None:
    """The factor path and a BlockScorer path, fed Arrow batches as Spark sends them (read-only
    arrays), and EASE's Gram worker: none of their kernel calls needs a signature compile left out."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "{}", done.stdout + done.stderr


def test_the_command_reports_each_group(capsys) -> None:
    assert main(["compile"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("kernels ready: top-n selection ") and "EASE" in line and "DSGD ranking losses" in line
    counts = re.search(r"(\d+) signatures? compiled into numba's cache, (\d+) loaded from it\)$", line.strip())
    assert counts and int(counts[1]) + int(counts[2]) >= 4, line  # at least one signature per kernel group
