"""Two runs on one output root (issue 21): no run deletes what a live run writes or reads, and a
second writer of an output fails with one retryable line. Local roots and the Hadoop code path
(file:// forced through it) alike."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_movielens_ratings, write_movielens
from recospark import fs, io, jvm, leases
from recospark.config import load_config
from recospark.errors import OutputBusy
from recospark.paths import join_path, local_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "hadoop"])
def root(request, tmp_path, monkeypatch) -> str:
    """An output root on the local code path, or a file:// root forced through the Hadoop FileSystem one."""
    if request.param == "hadoop":
        request.getfixturevalue("spark")
        monkeypatch.setattr(fs, "is_local", lambda uri: False)
        return f"file://{tmp_path / 'out'}"
    return str(tmp_path / "out")


def _spark():
    return fs.active_session()


def current_version(root: Path, relpath: str) -> str:
    """The version the reader-facing path points at: a symlink (local) or the pointer manifest (Hadoop)."""
    target = root / relpath
    if target.is_symlink():
        return target.resolve().name
    return json.loads((target / fs.MANIFEST).read_text())["version"]


def check_root(root: Path) -> dict[str, dict]:
    """Every version folder complete, no lease or temporary file left, and each output's current
    manifest matching its files (rows of the Parquet parts, the files listed). Returns the manifests."""
    versions = root / "_versions"
    leftovers = [p for p in versions.rglob("*") if p.is_file() and (p.name.endswith((".lease", ".tmp", ".dead")))]
    assert not leftovers, leftovers
    folders = [p for p in versions.rglob("*") if p.is_dir() and fs.VERSION_RE.match(p.name)]
    assert folders and all((p / fs.MANIFEST).is_file() for p in folders), [p for p in folders if not (p / fs.MANIFEST).is_file()]
    empty = [p for p in versions.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty  # not even the folder of an output claimed but never published
    manifests = {}
    for relpath in sorted({str(p.parent.relative_to(versions)) for p in folders}):
        version = current_version(root, relpath)
        folder = versions / relpath / version
        manifest = json.loads((folder / fs.MANIFEST).read_text())
        assert (manifest["output"], manifest["version"]) == (relpath, version)
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        if isinstance(manifest.get("files"), list):  # publish_files lists what it wrote (ingest's `files` are its sources)
            assert files == manifest["files"], relpath
        parts = [p for p in folder.iterdir() if p.name.endswith(".parquet")]
        if parts:
            assert manifest["rows"] == sum(pq.read_metadata(p).num_rows for p in parts), relpath
        manifests[relpath] = manifest
    return manifests


def _publish_rows(cfg, relpath: str, value: int, n: int = 50) -> io.Published:
    """Publish a small Parquet output without Spark (writers here need not be Spark jobs)."""

    def write(path: str) -> int:
        folder = local_path(path)
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": list(range(n)), "value": [value] * n}), folder / "part-00000.parquet")
        return n

    return io.publish(_spark(), cfg, relpath, write)


def test_the_run_id_is_the_schedulers_on_one_line_or_else_a_fresh_one():
    assert leases.run_id({"RECOSPARK_RUN_ID": " airflow:d:manual\n:train:try1 "}) == "airflow:d:manual :train:try1"
    blank, unset = leases.run_id({"RECOSPARK_RUN_ID": " \t"}), leases.run_id({})
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", blank) and re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", unset)
    assert blank != unset


def test_a_second_publisher_of_one_output_fails_while_the_first_publishes(root):
    cfg = load_config(None, [f"output.root={root}"])
    out = local_path(root)
    first_version = io.publish_files(_spark(), cfg, "metrics", {"m.json": '{"v": 0}'}).version
    inside, finish, result = threading.Event(), threading.Event(), {}

    def slow(path: str) -> int:
        inside.set()
        assert finish.wait(60)
        local_path(path).mkdir(parents=True)
        (local_path(path) / "m.json").write_text('{"v": 1}')
        return 1

    def first() -> None:
        result["published"] = io.publish(_spark(), cfg, "metrics", slow, extra={"files": ["m.json"]})

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(60)
        busy = rf"^metrics under {re.escape(root)} is being published by another run \(run {leases.RUN_ID}, host .+, pid {os.getpid()}, since .+\); retry"
        with pytest.raises(OutputBusy, match=busy):
            io.publish_files(_spark(), cfg, "metrics", {"m.json": '{"v": 2}'})
    finally:
        finish.set()
        thread.join(60)
    second_version = result["published"].version
    assert current_version(out, "metrics") == second_version
    assert (out / "_versions" / "metrics" / second_version / "m.json").read_text() == '{"v": 1}'
    # The loser wrote nothing; once the first has ended, the output is free again.
    assert sorted(p.name for p in (out / "_versions" / "metrics").iterdir() if not p.name.startswith(".")) == [
        first_version,
        second_version,
    ]
    third = io.publish_files(_spark(), cfg, "metrics", {"m.json": '{"v": 3}'})
    assert check_root(out)["metrics"]["version"] == third.version
    assert sorted(p.name for p in (out / "_versions" / "metrics").iterdir() if not p.name.startswith(".")) == [
        second_version,
        third.version,
    ]


def _lease(folder: Path, name: str, *, host: str, pid: int, age: float = 0.0) -> None:
    beat = time.time() - age
    text = {
        "kind": name.split(".")[1],
        "run": "other",
        "token": "t",
        "host": host,
        "pid": pid,
        "pid_start": leases._proc_start(pid),
        "heartbeat_at": beat,
    }
    (folder / name).write_text(json.dumps(text))
    os.utime(folder / name, (beat, beat))


def _version(folder: Path, name: str, *, complete: bool, age: float = 0.0) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "part-0").write_text("x")
    if complete:
        (folder / name / fs.MANIFEST).write_text(json.dumps({"version": name}))
    then = time.time() - age
    os.utime(folder / name, (then, then))


def test_pruning_spares_live_writers_and_pins_and_removes_what_is_abandoned(root):
    grace = 600
    cfg = load_config(None, [f"output.root={root}", "output.keep_versions=1", f"output.abandoned_after_seconds={grace}"])
    folder = local_path(root) / "_versions" / "ratings"
    folder.mkdir(parents=True)
    alive = subprocess.Popen(["sleep", "300"])  # another run on this host, still running
    gone = subprocess.Popen(["true"])
    gone.wait()  # a run on this host that has ended (killed, say) without cleaning up
    here = leases._HOST
    v = [f"2020010{i}T000000-0000000{i}" for i in range(1, 10)]
    try:
        _version(folder, v[1], complete=True)  # old, unpinned: beyond keep_versions
        _version(folder, v[2], complete=True)  # pinned by a live run
        _lease(folder, f"{v[2]}.read-aa.lease", host=here, pid=alive.pid)
        _version(folder, v[3], complete=True)  # pinned by a run that is gone
        _lease(folder, f"{v[3]}.read-bb.lease", host=here, pid=gone.pid)
        _version(folder, v[4], complete=False)  # in flight: its writer runs
        _lease(folder, f"{v[4]}.write.lease", host=here, pid=alive.pid)
        _version(folder, v[5], complete=False)  # its writer is gone
        _lease(folder, f"{v[5]}.write.lease", host=here, pid=gone.pid)
        _version(folder, v[6], complete=False)  # written from another host that still beats
        _lease(folder, f"{v[6]}.write.lease", host="elsewhere.invalid", pid=1, age=grace / 2)
        _version(folder, v[7], complete=False, age=2 * grace)  # another host, silent for longer than the grace
        _lease(folder, f"{v[7]}.write.lease", host="elsewhere.invalid", pid=1, age=2 * grace)
        _version(folder, v[8], complete=False)  # no lease (a writer from before leases), young
        old_legacy = "20200110T000000-0000000a"
        _version(folder, old_legacy, complete=False, age=2 * grace)  # no lease and old: abandoned

        new = _publish_rows(cfg, "ratings", 1).version
        left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert left == sorted([new, v[2], f"{v[2]}.read-aa.lease", v[4], f"{v[4]}.write.lease", v[6], f"{v[6]}.write.lease", v[8]])
    finally:
        alive.kill()
        alive.wait()
    # The live run has ended: its pin and its half-written version go with the next publish.
    newer = _publish_rows(cfg, "ratings", 2).version
    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert left == sorted([newer, v[6], f"{v[6]}.write.lease", v[8]])


def test_a_pinned_reader_reads_its_version_to_the_end_while_two_writers_publish_and_prune(spark, root):
    cfg = load_config(None, [f"output.root={root}", "output.keep_versions=1"])
    out = local_path(root)
    pinned = _publish_rows(cfg, "ratings", 0).version
    busy, published, errors = [], [], []

    def writer(w: int) -> None:
        done = 0
        while done < 3:
            try:
                published.append(_publish_rows(cfg, "ratings", 10 * w + done).version)
                done += 1
            except OutputBusy:
                busy.append(w)
                time.sleep(0.05)
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)
                return

    with leases.claim(cfg, []):  # the reader's run: its pins last until it ends
        src = io.source(cfg, "ratings")
        assert src.version == pinned
        df = src.read(spark)
        assert sorted(df.collect()) == [(i, 0) for i in range(50)]
        writers = [threading.Thread(target=writer, args=(w,)) for w in (1, 2)]
        for t in writers:
            t.start()
        reads = 0
        while any(t.is_alive() for t in writers) or reads < 2:
            assert sorted(df.collect()) == [(i, 0) for i in range(50)]
            reads += 1
        for t in writers:
            t.join(60)
        if errors:
            raise errors[0]
        assert len(published) == 6
        assert sorted(df.collect()) == [(i, 0) for i in range(50)]  # to the end
        # keep_versions=1: only the current version and the pinned one remain.
        names = sorted(p.name for p in (out / "_versions" / "ratings").iterdir() if fs.VERSION_RE.match(p.name))
        assert names == sorted([pinned, current_version(out, "ratings")])
        assert current_version(out, "ratings") in published
    # The reader's run has ended: the next publish prunes its version.
    last = _publish_rows(cfg, "ratings", 99).version
    assert not (out / "_versions" / "ratings" / pinned).exists()
    assert check_root(out)["ratings"]["version"] == last


@pytest.mark.slow
def test_two_pipelines_on_one_root_one_runs_the_other_fails_with_one_retryable_line(tmp_path):
    source = write_movielens(tmp_path / "ml", small_movielens_ratings(), {i: f"Movie {i} (1995)" for i in range(1, 25)})
    root = tmp_path / "out"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    common = [
        f"data.source={source}",
        f"output.root={root}",
        "train.models=global_mean,bias",
        "spark.spark.master=local[2]",
        "spark.spark.driver.memory=1g",
        "spark.spark.sql.shuffle.partitions=2",
        "report.sample_users=2",
    ]
    procs = []
    for seed in (1, 2):
        sets = [a for kv in [*common, f"split.seed={seed}"] for a in ("--set", kv)]
        cmd = [sys.executable, "-m", "recospark.cli", "pipeline", "--conf", str(REPO / "conf" / "local.yaml"), *sets]
        procs.append((seed, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    ends = {}
    for seed, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
        ends[seed] = (proc.returncode, stdout, stderr, proc.pid)
    assert sorted(code for code, *_ in ends.values()) == [0, 1], {s: (c, e[-2000:]) for s, (c, _, e, _) in ends.items()}
    assert all("Traceback" not in stderr for _, _, stderr, _ in ends.values())
    winner = next(s for s, (c, *_) in ends.items() if c == 0)
    loser = next(s for s, (c, *_) in ends.items() if c == 1)
    errors = [line for line in ends[loser][2].splitlines() if "error" in line.lower()]
    assert len(errors) == 1, errors
    assert re.fullmatch(
        rf"recospark: error: \S+ under {re.escape(str(root))} is being published by another run "
        rf"\(run \S+, host \S+, pid {ends[winner][3]}, since \S+\); retry once that run has ended",
        errors[0],
    ), errors[0]
    # Every output is the winner's, complete, matching its files, and chained to the versions it wrote.
    manifests = check_root(root)
    assert {"ratings", "movies", "splits/random/train", "models/bias", "recommendations/bias", "metrics", "report"} <= set(manifests)
    digest = load_config(REPO / "conf" / "local.yaml", [*common, f"split.seed={winner}"]).digest()
    assert {m["config_hash"] for m in manifests.values()} == {digest}
    for relpath, manifest in manifests.items():
        for uri in manifest["inputs"]:
            if "/_versions/" in uri:
                name = uri.split("/_versions/", 1)[1]
                output, version = name.rsplit("/", 1)
                assert version == current_version(root, output), (relpath, uri)
    assert not (root / "_checkpoints").exists() or not any((root / "_checkpoints").iterdir())


def test_publishing_through_hadoop_keeps_versions_in_place_behind_a_pointer(spark, tmp_path, monkeypatch):
    """On hdfs:// and s3a:// the version folder never moves (so it can be pinned): the output's
    `_manifest.json` is the pointer, replaced by one rename, and the data stays under `_versions/`."""
    monkeypatch.setattr(fs, "is_local", lambda uri: False)
    root = f"file://{tmp_path}/out"
    cfg = load_config(None, [f"output.root={root}", "output.keep_versions=1"])
    legacy = tmp_path / "out" / "metrics"  # an output published in place by an older recospark
    legacy.mkdir(parents=True)
    (legacy / "als.json").write_text("{}")
    (legacy / fs.MANIFEST).write_text(json.dumps({"version": "old", "rows": None}))
    assert io.source(cfg, "metrics").uri == f"file://{legacy}"  # read in place, unpinned
    versions = [io.publish_files(spark, cfg, "metrics", {"als.json": json.dumps({"rmse": r})}).version for r in (1.0, 0.9)]
    pointer = json.loads((legacy / fs.MANIFEST).read_text())
    assert pointer["version"] == versions[1] and sorted(p.name for p in legacy.iterdir() if not p.name.startswith(".")) == [fs.MANIFEST]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("metrics.replaced-")]  # moved aside, not deleted
    with leases.claim(cfg, []):
        src = io.source(cfg, "metrics")
        assert src.uri == f"file://{tmp_path}/out/_versions/metrics/{versions[1]}"
        assert io.read_json(src.file("als.json")) == {"rmse": 0.9}
    assert io.read_manifest(cfg, "metrics") == pointer
    assert jvm.hadoop_read(spark, join_path(root, "metrics", "missing.json")) is None
    assert not (tmp_path / "out" / "_versions" / "metrics" / versions[0]).exists()  # keep_versions=1
