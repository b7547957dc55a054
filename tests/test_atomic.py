"""Atomic publishing under a killed process, idempotent re-runs, and retried injected faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality

from recospark import fs, io
from recospark.schema import RATINGS
from recospark.stages import ingest


def write_ml100k(folder: Path, users: int, items: int = 30) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{m}\t{1 + (u * m) % 5}\t{880000000 + u * 100 + m}" for u in range(1, users + 1) for m in range(1, items + 1)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")


def failed_tasks(spark, group: str) -> int:
    tracker = spark.sparkContext.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in (tracker.getJobInfo(j).stageIds if tracker.getJobInfo(j) else [])]
    return sum(info.numFailedTasks for info in map(tracker.getStageInfo, stages) if info)


@pytest.mark.slow
def test_killed_stage_leaves_previous_output_intact(spark, cfg_factory, tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    write_ml100k(small, 20)
    write_ml100k(big, 3000)
    cfg = cfg_factory(f"data.source={small}")
    ingest.run(spark, cfg)
    before = io.read_output(spark, cfg, "ratings", RATINGS).cache()
    assert before.count() == 600
    root = Path(cfg.output.root)
    versions = root / "_versions" / "ratings"
    existing = set(versions.iterdir())

    scratch = tmp_path / "killed-jvm-tmp"
    scratch.mkdir()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "TMPDIR": str(scratch)}
    cmd = [
        sys.executable,
        "-m",
        "recospark.cli",
        "ingest",
        "--set",
        f"data.source={big}",
        "--set",
        f"output.root={root}",
        "--set",
        "spark.spark.master=local[1]",
        "--set",
        "spark.spark.ui.enabled=false",
        # SIGKILL runs no shutdown hook: the JVM's scratch (blockmgr-*, spark-*, artifacts-*) must
        # land in tmp_path, not in the machine's temp folder, for the test to leave nothing behind.
        "--set",
        f"spark.spark.driver.extraJavaOptions=-Djava.io.tmpdir={scratch}",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_dir() for p in set(versions.iterdir()) - existing):  # the new version is being written: kill now
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the stage finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert any(scratch.glob("blockmgr-*")), "the killed driver's scratch went elsewhere"
    partial = set(versions.iterdir()) - existing  # the version folder, its write lease and the run's claim
    assert any(p.is_dir() for p in partial) and not any((p / fs.MANIFEST).exists() for p in partial)
    after = io.read_output(spark, cfg, "ratings", RATINGS)
    assert_df_equality(after, before, ignore_row_order=True)
    assert io.read_manifest(cfg, "ratings")["rows"] == 600

    # The next successful run publishes and clears the half-written version: its writer is gone.
    ingest.run(spark, cfg)
    assert not any(p.exists() for p in partial)
    before.unpersist()


@pytest.mark.slow
def test_rerun_is_idempotent_and_injected_fault_is_retried(spark, cfg_factory, tmp_path):
    source = tmp_path / "src"
    write_ml100k(source, 50)
    (source / "u.data").write_text((source / "u.data").read_text() + "oops\n")
    clean = cfg_factory(f"data.source={source}")
    ingest.run(spark, clean)
    expected = io.read_output(spark, clean, "ratings", RATINGS)
    expected_rejected = io.read_output(spark, clean, "rejected")

    faulty = clean.with_overrides({"faults.dataframe_partition": 0, "output.root": str(tmp_path / "faulty")})
    spark.sparkContext.setJobGroup("fault-test", "ingest with an injected fault")
    try:
        ingest.run(spark, faulty)
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert failed_tasks(spark, "fault-test") >= 1
    assert_df_equality(io.read_output(spark, faulty, "ratings", RATINGS), expected, ignore_row_order=True)
    assert_df_equality(io.read_output(spark, faulty, "rejected"), expected_rejected, ignore_row_order=True)

    ingest.run(spark, clean)  # a re-run publishes a new version with the same rows
    assert_df_equality(io.read_output(spark, clean, "ratings", RATINGS), expected, ignore_row_order=True)
