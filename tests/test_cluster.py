"""The pipeline on a real Spark standalone cluster equals the pipeline in local mode.

`scripts/cluster.sh start` runs a master and two workers (1 core, 1g each) from the launcher that
ships inside pyspark, every process bound to 127.0.0.1, with their PIDs recorded; the fixture
stops exactly those processes (and the executors their workers launched) whatever happens.

The pipeline (ingest, split, train, evaluate, recommend) is submitted in client mode with the
artifacts of `make dist`: the code as `--py-files dist/recospark.zip`, the dependencies as
`--archives dist/recospark-env.tar.gz#environment`, executors on `./environment/bin/python`,
an interpreter with neither pyspark nor recospark installed, so an import that works there
proves the shipping works. The same conf, data and seed then run with `--master local[2]`.

Compared (the stated tolerances):
* split rows: identical (chispa, row order ignored);
* top-N of the bias baseline (a deterministic model): identical rows, scores within 1e-9;
* top-N of ALS and SGD: identical items per user when the factors are bitwise equal, which
  the test reports; otherwise at least 90% overlap;
* RMSE of every model: |cluster - local| <= 1e-3 (ALS/SGD sum floating point values in a
  partition-dependent order; measured differences are printed).
Evidence that the SGD `mapPartitions` tasks ran on the executors, not on the driver, comes
from the application's event log and the executors' stderr under the workers' work dirs, and
is printed in the test log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
BUILD_DIST = ROOT / "scripts" / "build_dist.sh"
DIST = ROOT / "dist"
SUBSET_USERS = 200  # ML-100K users 1..200: ~22k ratings, all 1682 movies; keeps the test short
RMSE_TOLERANCE = 1e-3
TOPN_MIN_OVERLAP = 0.90
SUBMIT_TIMEOUT = 1500  # a safety net: a few minutes on an idle 2-core machine, much longer when it is shared
MODELS = ["als", "bias", "sgd"]
# The workers delete a finished application's work dir once nothing in it changed for CLEANUP_TTL
# seconds, checking every CLEANUP_INTERVAL (scripts/cluster.sh: spark.worker.cleanup.*).
CLEANUP_INTERVAL, CLEANUP_TTL = 5, 20


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _say(capsys, text: str) -> None:
    """Straight to the terminal, so the evidence is in the CI log even when the test passes."""
    with capsys.disabled():
        print(text, flush=True)


@pytest.fixture(scope="module")
def subset(tmp_path_factory, ml100k) -> Path:
    folder = tmp_path_factory.mktemp("ml-100k-subset")
    lines = (ml100k / "u.data").read_bytes().splitlines(keepends=True)
    keep = [line for line in lines if line.strip() and int(line.split(b"\t", 1)[0]) <= SUBSET_USERS]
    (folder / "u.data").write_bytes(b"".join(keep))
    for name in ("u.item", "u.genre"):
        if (ml100k / name).is_file():
            shutil.copy(ml100k / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Path]:
    """The zip is rebuilt every time (code changes often, 1 s); the environment when missing."""
    paths = {"zip": DIST / "recospark.zip", "env": DIST / "recospark-env.tar.gz"}
    subprocess.run([str(BUILD_DIST), "zip"], check=True, cwd=ROOT, capture_output=True)
    if not paths["env"].is_file():
        subprocess.run([str(BUILD_DIST), "env"], check=True, cwd=ROOT)
    return paths


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: a Spark standalone cluster needs a JRE 17+ (make java)")
    home = tmp_path_factory.mktemp("spark-cluster")
    port = _free_port()  # never 7077: other clusters may run on this machine
    env = {
        **os.environ,
        "CLUSTER_DIR": str(home),
        "SPARK_MASTER_PORT": str(port),
        "PYTHON": sys.executable,
        "SPARK_HOME": str(_spark_home()),
        "WORKERS": "2",
        "WORKER_CORES": "1",
        "WORKER_MEMORY": "1g",
        "CLEANUP_INTERVAL": str(CLEANUP_INTERVAL),
        "CLEANUP_TTL": str(CLEANUP_TTL),
    }
    pid_dir = home / "pids"
    started = time.monotonic()
    recorded: dict[str, int] = {}
    try:
        proc = subprocess.run([str(CLUSTER_SH), "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        recorded = {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}
        if proc.returncode != 0:
            pytest.fail(f"cluster did not start:\n{proc.stdout}\n{proc.stderr}")
        yield {
            "home": home,
            "env": env,
            "url": f"spark://127.0.0.1:{port}",
            "pids": recorded,
            "startup_seconds": time.monotonic() - started,
            "start_output": proc.stdout.strip(),
        }
    finally:
        recorded = recorded or {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}
        subprocess.run([str(CLUSTER_SH), "stop"], env=env, cwd=ROOT, capture_output=True, timeout=120)
        # Belt and braces: whatever the script did, none of the recorded processes survives.
        for pid in recorded.values():
            if "org.apache.spark.deploy" in _cmdline(pid):  # still ours, not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, 9)


def _overrides(subset: Path, out: Path, events: Path, models: str) -> list[str]:
    """conf/cluster.yaml as it is, with local paths; small models to keep the test short. Its
    executor sizing (4 cores, 8g) is not overridden: scripts/cluster.sh's spark-submit flags win."""
    sets = {
        "data.source": str(subset),
        "output.root": str(out),
        "pipeline.stages": "ingest,split,train,recommend,evaluate",
        "train.models": models,
        "als.num_user_blocks": "4",
        "als.num_item_blocks": "4",
        "als.max_iter": "5",
        "sgd.num_blocks": "4",
        "sgd.rank": "16",
        "sgd.max_iter": "5",
        "recommend.user_block_size": "256",
        "spark.spark.sql.shuffle.partitions": "8",
        "spark.spark.default.parallelism": "4",
        "spark.spark.ui.enabled": "false",
        # The local run's event log (the cluster run's goes to EVENTS_DIR: cluster.sh's --conf wins).
        "spark.spark.eventLog.dir": f"file://{events}",
        "spark.spark.eventLog.compress": "false",
        "spark.spark.eventLog.rolling.enabled": "false",
    }
    args = ["--conf", str(ROOT / "conf" / "cluster.yaml")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def _app_dirs(home: Path) -> list[Path]:
    return sorted(p for p in home.glob("work/worker-*/app-*") if p.is_dir())


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _snapshot_executors(home: Path, dest: Path) -> dict:
    """The executors' stderr and facts about their work dirs, copied at once: the workers delete
    a finished application's dir CLEANUP_TTL seconds after its last write."""
    facts = {}
    for app in _app_dirs(home):
        for executor in sorted(p for p in app.iterdir() if p.is_dir()):
            key = str(executor.relative_to(home))
            target = dest / key
            target.mkdir(parents=True, exist_ok=True)
            if (executor / "stderr").is_file():
                shutil.copy(executor / "stderr", target / "stderr")
            facts[key] = {"environment_python": (executor / "environment" / "bin" / "python").exists(), "bytes": _du(executor)}
    return facts


@pytest.fixture(scope="module")
def runs(cluster, artifacts, subset, tmp_path_factory, request):
    """Both submissions, concurrently (each is mostly scheduling latency, not CPU)."""
    work = tmp_path_factory.mktemp("runs")
    models = ",".join(MODELS)
    spark_submit = str(_spark_home() / "bin" / "spark-submit")
    procs, result = {}, {"models": models.split(","), "work": work}
    for mode in ("cluster", "local"):
        out, events = work / f"out-{mode}", work / f"events-{mode}"
        events.mkdir()
        app = [str(ROOT / "jobs" / "pipeline.py"), *_overrides(subset, out, events, models), "--json"]
        env = {**cluster["env"], "SPARK_LOCAL_IP": "127.0.0.1"}
        if mode == "cluster":
            env["EVENTS_DIR"] = str(events)
            cmd = [str(CLUSTER_SH), "submit", *app]
        else:
            env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
            cmd = [
                spark_submit,
                "--master",
                "local[2]",
                "--driver-memory",
                "1g",
                "--conf",
                "spark.driver.host=127.0.0.1",
                "--conf",
                "spark.driver.bindAddress=127.0.0.1",
                "--conf",
                f"spark.pyspark.python={sys.executable}",
                *app,
            ]
        log = open(work / f"{mode}.log", "w")
        procs[mode] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True), log, time.monotonic())
        result[mode] = {"out": out, "events": events, "cmd": cmd}
    try:
        for mode, (proc, log, started) in procs.items():
            stdout, _ = proc.communicate(timeout=SUBMIT_TIMEOUT)
            log.close()
            result[mode]["seconds"] = time.monotonic() - started
            if mode == "cluster":
                result["executors"] = _snapshot_executors(cluster["home"], work / "executors")
            if proc.returncode != 0:
                tail = "\n".join((work / f"{mode}.log").read_text(errors="replace").splitlines()[-60:])
                pytest.fail(f"{mode} run failed (exit {proc.returncode}):\n{' '.join(result[mode]['cmd'])}\n{tail}")
            result[mode]["json"] = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])[0]
    finally:
        for proc, log, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return result


def _read(spark, path: Path):
    return spark.read.parquet(str(path))


def test_split_rows_identical(runs, spark, capsys):
    from chispa import assert_df_equality

    split = "random"
    for side in ("train", "test"):
        local = _read(spark, runs["local"]["out"] / "splits" / split / side)
        remote = _read(spark, runs["cluster"]["out"] / "splits" / split / side)
        assert_df_equality(remote, local, ignore_row_order=True, ignore_nullable=True)
    n_train = _read(spark, runs["cluster"]["out"] / "splits" / split / "train").count()
    _say(
        capsys,
        f"\n[cluster] models={','.join(runs['models'])}; cluster run {runs['cluster']['seconds']:.0f} s, "
        f"local run {runs['local']['seconds']:.0f} s (concurrent); split rows identical ({n_train} train)",
    )


def _metrics(run: dict, model: str) -> dict:
    return json.loads((run["out"] / "metrics" / f"{model}.json").read_text())


def test_rmse_within_tolerance(runs, capsys):
    lines = []
    for model in runs["models"]:
        a, b = _metrics(runs["cluster"], model), _metrics(runs["local"], model)
        diff = abs(a["rmse"] - b["rmse"])
        lines.append(f"  {model:<12} rmse cluster={a['rmse']:.6f} local={b['rmse']:.6f} |diff|={diff:.2e} (tolerance {RMSE_TOLERANCE:g})")
        assert a["n_scored"] == b["n_scored"], model
        assert diff <= RMSE_TOLERANCE, lines[-1]
    _say(capsys, "[cluster] RMSE, cluster vs local:\n" + "\n".join(lines))


def _topn(spark, run: dict, model: str):
    rows = _read(spark, run["out"] / "recommendations" / model).select("user_id", "rank", "movie_id", "score").collect()
    return {(r.user_id, r.rank): (r.movie_id, r.score) for r in rows}


def _per_user(top: dict) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for (user, _), (movie, _) in top.items():
        out.setdefault(user, set()).add(movie)
    return out


def test_topn_equal(runs, spark, capsys):
    lines = []
    for model in runs["models"]:
        a, b = _topn(spark, runs["cluster"], model), _topn(spark, runs["local"], model)
        assert a.keys() == b.keys(), f"{model}: different (user, rank) pairs"
        same_rank = sum(a[k][0] == b[k][0] for k in a) / len(a)
        a_sets, b_sets = _per_user(a), _per_user(b)
        overlap = sum(len(a_sets[u] & b_sets[u]) for u in b_sets) / sum(len(s) for s in b_sets.values())
        max_score_diff = max(abs(a[k][1] - b[k][1]) for k in a)
        lines.append(
            f"  {model:<12} {len(a)} rows: same item at same rank {same_rank:.2%}, set overlap {overlap:.2%}, "
            f"max |score diff| {max_score_diff:.2e}"
        )
        if model in ("bias", "global_mean"):
            assert same_rank == 1.0 and max_score_diff <= 1e-9, lines[-1]
        else:
            assert overlap >= TOPN_MIN_OVERLAP, lines[-1]
    _say(capsys, "[cluster] top-N, cluster vs local:\n" + "\n".join(lines))


def _events(folder: Path) -> list[dict]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(("appstatus", "."))]
    assert files, f"no event log under {folder}"
    out = []
    for f in files:
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def test_python_tasks_ran_on_executors(runs, cluster, capsys):
    """SGD's mapPartitions tasks (dsgd.py) ran on the workers' executors, never on the driver."""
    events = _events(runs["cluster"]["events"])
    app_id = next(e["App ID"] for e in events if e["Event"] == "SparkListenerApplicationStart")
    executors = {e["Executor ID"]: e["Executor Info"]["Host"] for e in events if e["Event"] == "SparkListenerExecutorAdded"}
    stage_sites: dict[int, list[str]] = {}
    stage_rdds: dict[int, set[str]] = {}
    for e in events:
        if e["Event"] == "SparkListenerStageSubmitted":
            info = e["Stage Info"]
            stage_sites[info["Stage ID"]] = [r.get("Callsite", "") for r in info.get("RDD Info", [])] + [info.get("Stage Name", "")]
            stage_rdds[info["Stage ID"]] = {r.get("Name", "") for r in info.get("RDD Info", [])}
    job_text: dict[int, str] = {}
    for e in events:
        if e["Event"] == "SparkListenerJobStart":
            props = e.get("Properties") or {}
            text = " ".join(str(props.get(k, "")) for k in ("spark.job.description", "spark.jobGroup.id", "callSite.short"))
            for stage in e.get("Stage IDs", []):
                job_text[stage] = job_text.get(stage, "") + " " + text
    tasks = [(e["Stage ID"], e["Task Info"]["Executor ID"]) for e in events if e["Event"] == "SparkListenerTaskEnd"]
    # A DSGD stratum step is `ratings.union(users).union(items).mapPartitionsWithIndex(kernel)`
    # (recospark/models/sgd/dsgd.py): a Python stage over a PartitionerAwareUnionRDD, the only
    # one of its kind in the pipeline (ALS is JVM-only). PySpark names Python RDDs after the
    # action's call site, so a job description mentioning dsgd counts too, when the model sets one.
    sgd_stages = {
        s
        for s, rdds in stage_rdds.items()
        if {"PythonRDD", "PartitionerAwareUnionRDD"} <= rdds
        or "dsgd" in job_text.get(s, "").lower()
        or any("dsgd.py" in c for c in stage_sites[s])
    }
    python_stages = {s for s, sites in stage_sites.items() if any("recospark/" in c for c in sites)}
    by_executor = Counter(ex for s, ex in tasks)
    sgd_by_executor = Counter(ex for s, ex in tasks if s in sgd_stages)

    lines = [
        f"[cluster] application {app_id} on {cluster['url']} (cluster started in {cluster['startup_seconds']:.1f} s; "
        f"pids {cluster['pids']})",
        f"  executors: {executors}",
        f"  all tasks by executor: {dict(by_executor)}",
        f"  tasks of stages built in recospark/ code by executor: {dict(Counter(ex for s, ex in tasks if s in python_stages))}",
        f"  SGD mapPartitionsWithIndex stages (PythonRDD over PartitionerAwareUnionRDD): {len(sgd_stages)}, tasks by executor: {dict(sgd_by_executor)}",
    ]
    # The executors' own logs on the workers (copied when the run ended): stderr per executor,
    # and the unpacked environment.
    snapshot = runs["work"] / "executors"
    app_executors = {k: v for k, v in runs["executors"].items() if f"/{app_id}/" in k}
    for key, facts in sorted(app_executors.items()):
        text = (snapshot / key / "stderr").read_text(errors="replace")
        marks = [ln for ln in text.splitlines() if "recospark" in ln.lower() and "dsgd" in ln.lower()][:3]
        lines.append(
            f"  {key}: {text.count('Running task')} 'Running task' lines, environment/bin/python "
            f"{'present' if facts['environment_python'] else 'MISSING'}, work dir {facts['bytes'] / 2**20:.0f} MB"
        )
        lines += [f"    {m.strip()[:200]}" for m in marks]
    _say(capsys, "\n".join(lines))

    assert executors and "driver" not in executors
    assert set(by_executor) <= set(executors), "a task ran outside the executors"
    assert len(executors) == 2 and len(by_executor) == 2, "both workers' executors should have run tasks"
    assert len(app_executors) == 2 and all(f["environment_python"] for f in app_executors.values()), app_executors
    assert sgd_stages, f"no DSGD stratum stage among {len(stage_sites)} stages"
    assert sum(sgd_by_executor.values()) > 0 and "driver" not in sgd_by_executor
    assert len(sgd_by_executor) == 2, f"SGD tasks ran on {dict(sgd_by_executor)}, expected both executors"


def test_cluster_listens_on_loopback_only(cluster, runs):
    """Every TCP socket the master, workers and executors listen on is bound to 127.0.0.1."""
    if shutil.which("ss") is None:
        pytest.skip("ss not installed")
    pids = set(cluster["pids"].values())
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert ours, "no listening sockets found for the cluster's processes"
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line


PROBE = """
import json, os, socket, sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("recospark-probe").getOrCreate()

def where(_):
    import numba, numpy, recospark
    from pyspark import TaskContext
    yield {"python": sys.executable, "recospark": recospark.__file__, "numpy": numpy.__file__,
           "numba": numba.__version__, "pid": os.getpid(), "host": socket.gethostname(),
           "partition": TaskContext.get().partitionId()}

rows = spark.sparkContext.parallelize(range(4), 4).mapPartitions(where).collect()
print("PROBE " + json.dumps({"driver_python": sys.executable, "executors": rows}))
spark.stop()
"""


def test_executors_use_the_shipped_environment(cluster, artifacts, runs, tmp_path, capsys):
    """Python workers on the executors run ./environment/bin/python and import recospark from the zip."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = subprocess.run(
        [str(CLUSTER_SH), "submit", str(probe)], cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))
    result = json.loads(line[len("PROBE ") :])
    rows = result["executors"]
    _say(
        capsys,
        "[cluster] Python workers on the executors:\n"
        + "\n".join(f"  partition {r['partition']}: pid {r['pid']} python {r['python']} recospark {r['recospark']}" for r in rows),
    )
    assert len(rows) == 4
    for r in rows:
        assert "/environment/bin/python" in r["python"] and "/work/worker-" in r["python"], r
        assert "recospark.zip" in r["recospark"], r  # the code came from --py-files
        assert "/environment/lib/" in r["numpy"], r  # the dependencies from --archives
    assert result["driver_python"] == sys.executable


def test_executors_that_fit_no_worker_fail_in_bounded_time(cluster, artifacts, subset, tmp_path, capsys):
    """Executors bigger than any worker: a one-line error naming the sizing keys within
    RECOSPARK_EXECUTOR_WAIT_SECONDS, not Spark's endless "Initial job has not accepted any resources"."""
    wait = 15
    env = {**cluster["env"], "RECOSPARK_EXECUTOR_WAIT_SECONDS": str(wait), "SUBMIT_OPTS": "--executor-memory 4g"}
    app = [
        str(ROOT / "jobs" / "ingest.py"),
        "--conf",
        str(ROOT / "conf" / "cluster.yaml"),
        "--set",
        f"data.source={subset}",
        "--set",
        f"output.root={tmp_path / 'out'}",
    ]
    started = time.monotonic()
    proc = subprocess.run([str(CLUSTER_SH), "submit", *app], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    line = next((ln for ln in output.splitlines() if "no executor registered within" in ln), "")
    _say(capsys, f"[cluster] 4g executors on 1g workers: exit {proc.returncode} after {seconds:.0f} s: {line.strip()[:400]}")
    assert proc.returncode != 0 and line, output[-3000:]
    assert "spark.executor.memory=4g" in line and "spark.executor.cores=1" in line and "RECOSPARK_EXECUTOR_WAIT_SECONDS" in line
    assert seconds < wait + 120, seconds


def test_worker_dirs_cleaned_after_applications_finish(cluster, runs, capsys):
    """Last test of the module: every application above has finished, and the workers deleted
    their work dirs (each held the unpacked environment) within the cleanup TTL + interval."""
    sizes = {k: v["bytes"] for k, v in runs["executors"].items()}
    deadline = time.monotonic() + CLEANUP_TTL + 3 * CLEANUP_INTERVAL + 30
    left = _app_dirs(cluster["home"])
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = _app_dirs(cluster["home"])
    work = cluster["home"] / "work"
    _say(
        capsys,
        "[cluster] executor work dirs when the pipeline ended: "
        + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in sorted(sizes.items()))
        + f"; after cleanup: {len(left)} application dirs, {_du(work) / 2**20:.1f} MB under {work}",
    )
    assert left == [], f"work dirs of finished applications still there: {left}"


NEURAL_APP = """
import hashlib, json, sys
from pyspark.sql import SparkSession, functions as F
from recospark.models.neural.estimator import NeuralMF
from recospark.ranking import ranking_metrics
from recospark.scoring import recommend_for

source, checkpoints = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.appName("recospark-neural").getOrCreate()
spark.sparkContext.setCheckpointDir(checkpoints)  # the ranks read the fit rows from here
rows = spark.read.csv(source, sep="\\t", schema="user_id int, movie_id int, rating double, ts long").drop("ts")
is_test = F.abs(F.hash("user_id", "movie_id")) % 5 == 0
train, test = rows.where(~is_test), rows.where(is_test)
model = NeuralMF(numProcesses=2, seed=11, maxIter=4, embeddingDim=16, batchSize=256).fit(train)
scored = model.transform(test).where(~F.isnan("prediction"))
rmse = scored.select(F.sqrt(F.avg((F.col("prediction") - F.col("rating")) ** 2))).first()[0]
ndcg = ranking_metrics(recommend_for(model, train, 10), test, 10, None)["ndcg@10"]
print("NEURAL " + json.dumps({"master": spark.sparkContext.master, "rmse": rmse, "ndcg@10": ndcg, "history": model.history,
                              "weights_sha256": hashlib.sha256(model.weightsBytes).hexdigest(), "ranks": model.trainingRanks}))
spark.stop()
"""


def test_neural_mf_trains_across_both_workers_and_equals_a_local_run(cluster, artifacts, subset, tmp_path, capsys):
    """neural_mf with numProcesses=2 under the cluster master: TorchDistributor runs two barrier
    tasks, one on each worker's executor (each rank records its working directory, the executor's
    work dir), DDP over gloo between them; the same app with the same seed under local[2] runs
    torchrun's two ranks on the driver. Same world size and seed: test RMSE and NDCG@10 within 1e-3
    (the weights are reported, and are equal bit for bit when the ranks' shards and reductions are).

    Executors need torch, which the default environment archive (`make dist`) leaves out. Both
    workers run on this machine, so the executors run the test venv's Python (which has the
    `neural` extra and recospark) through `spark.pyspark.python`, instead of unpacking the `make
    dist-neural` archive (over 1 GB unpacked) per executor; the code still ships as --py-files.
    """
    app = tmp_path / "neural_app.py"
    app.write_text(NEURAL_APP)
    source = str(subset / "u.data")
    results = {}
    for mode in ("cluster", "local"):
        checkpoints = tmp_path / f"checkpoints-{mode}"
        if mode == "cluster":
            env = {**cluster["env"], "SUBMIT_OPTS": f"--conf spark.pyspark.python={sys.executable}"}
            cmd = [str(CLUSTER_SH), "submit", str(app), source, str(checkpoints)]
        else:
            env = {
                **cluster["env"],
                "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable,
            }
            cmd = [
                str(_spark_home() / "bin" / "spark-submit"),
                "--master",
                "local[2]",
                "--driver-memory",
                "1g",
                "--conf",
                "spark.driver.host=127.0.0.1",
                "--conf",
                "spark.driver.bindAddress=127.0.0.1",
                "--conf",
                f"spark.pyspark.python={sys.executable}",
                str(app),
                source,
                str(checkpoints),
            ]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)
        assert proc.returncode == 0, f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("NEURAL "))
        results[mode] = {**json.loads(line[len("NEURAL ") :]), "seconds": time.monotonic() - started}
    remote, local = results["cluster"], results["local"]
    workers = sorted({m.group(1) for r in remote["ranks"] if (m := re.search(r"/work/(worker-\d+)/", r["cwd"]))})
    _say(
        capsys,
        "[cluster] neural_mf, 2 processes: "
        f"cluster ({remote['master']}, {remote['seconds']:.0f} s) rmse={remote['rmse']:.6f} ndcg@10={remote['ndcg@10']:.6f}; "
        f"local ({local['master']}, {local['seconds']:.0f} s) rmse={local['rmse']:.6f} ndcg@10={local['ndcg@10']:.6f}; "
        f"weights bitwise equal: {remote['weights_sha256'] == local['weights_sha256']}\n"
        + "\n".join(f"  cluster rank {r['rank']}: pid {r['pid']} rows {r['rows']} in {r['cwd']}" for r in remote["ranks"]),
    )
    assert remote["master"].startswith("spark://") and local["master"] == "local[2]"
    assert len(remote["ranks"]) == 2 and workers == ["worker-1", "worker-2"], remote["ranks"]
    assert [r["rows"] for r in remote["ranks"]] == [r["rows"] for r in local["ranks"]]  # the same shards
    assert abs(remote["rmse"] - local["rmse"]) <= RMSE_TOLERANCE
    assert abs(remote["ndcg@10"] - local["ndcg@10"]) <= RMSE_TOLERANCE
