"""dags/recospark_dag.py under a real Airflow 3 with the Apache Spark provider.

These run in their own venv (`make airflow-test`, .venv-airflow: Airflow's pins stay out of the
main venv) and skip where Airflow is not installed. AIRFLOW_HOME and the sqlite metadata DB
live in a temporary folder; `airflow db migrate` runs once per module. The end-to-end test
runs `dag.test()` against a local master (`local[2]`, from the connection in
AIRFLOW_CONN_SPARK_DEFAULT) on a small slice of MovieLens 100K, with spark-submit taken from
the pyspark install of this venv.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "recospark_dag.py"
SUBSET_USERS = 50  # ML-100K users 1..50: ~5.6k ratings


def _local_defaults(key: str) -> list[str]:
    import yaml

    section, name = key.split(".")
    return list(yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())[section][name])


def expected_graph(models: list[str], stages: list[str] | None = None) -> tuple[set[str], set[tuple[str, str]]]:
    """wait_for_data >> <pipeline.stages, train fanned out per model> >> prune_old_runs."""
    layers = [["wait_for_data"]]
    for stage in stages or _local_defaults("pipeline.stages"):
        layers.append([f"train_{m}" for m in models] if stage == "train" else [stage])
    layers.append(["prune_old_runs"])
    edges = {(a, b) for up, down in itertools.pairwise(layers) for a in up for b in down}
    return {t for layer in layers for t in layer}, edges


# Airflow reads its configuration when first imported: point it at a private home first, and
# only when Airflow is installed (the main venv's suite must not see these variables).
if importlib.util.find_spec("airflow") is not None and "RECOSPARK_TEST_AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="recospark-airflow-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["RECOSPARK_TEST_AIRFLOW_HOME"] = _home
    os.environ["AIRFLOW_HOME"] = _home
    os.environ["RECOSPARK_DAG_CACHE"] = _home  # the temporary confs' task graphs go with the home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_home}/airflow.db"
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

pytest.importorskip(
    "airflow.providers.apache.spark.operators.spark_submit",
    reason="apache-airflow and apache-airflow-providers-apache-spark are not installed in this venv; "
    "`make airflow-test` runs these tests in .venv-airflow",
)


def _dagbag():
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.1
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=str(DAG_FILE))


def _dag_module():
    """The DAG file as a module, for its helper functions (prune_runs, data_arrived, ...)."""
    spec = importlib.util.spec_from_file_location("recospark_dag_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conf_models(path: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load(path.read_text())["train"]["models"])


@pytest.fixture(scope="module")
def airflow_db():
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return time.monotonic() - started


def test_dag_imports_without_errors():
    bag = _dagbag()
    assert bag.import_errors == {}, bag.import_errors
    assert list(bag.dags) == ["recospark"]


def test_task_graph_from_the_conf_file(monkeypatch):
    """conf/cluster.yaml's train.models gives the training tasks; the graph is exactly this."""
    monkeypatch.delenv("RECOSPARK_CONF", raising=False)
    monkeypatch.delenv("RECOSPARK_CORES_MAX", raising=False)
    models = _conf_models(ROOT / "conf" / "cluster.yaml")
    tasks, edges = expected_graph(models)
    dag = _dagbag().dags["recospark"]
    assert set(dag.task_ids) == tasks
    assert {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids} == edges
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "wait_for_data" and order[-1] == "prune_old_runs", order
    assert order.index("split") < min(order.index(f"train_{m}") for m in models) < order.index("evaluate"), order
    assert dag.max_active_runs == 1 and dag.catchup is False

    sensor = dag.get_task("wait_for_data")
    assert sensor.mode == "reschedule" and sensor.poke_interval == 300
    spark_tasks = [t for t in dag.tasks if t.task_id not in ("wait_for_data", "prune_old_runs")]
    assert len(spark_tasks) == 5 + len(models)
    cores_total = 16  # conf/cluster.yaml: spark.cores.max 16, spark.executor.cores 4
    for task in spark_tasks:
        assert type(task).__name__ == "RecosparkSubmitOperator", task.task_id
        assert task.retries == 2 and task.retry_exponential_backoff == 2.0, task.task_id
        assert task.on_failure_callback, task.task_id
        assert task._conn_id == "spark_default"
        stage = "train" if task.task_id.startswith("train_") else task.task_id
        assert Path(task.application) == ROOT / "jobs" / f"{stage}.py" and Path(task.application).is_file()
        args = task.application_args
        assert args[:2] == ["--conf", str(ROOT / "conf" / "cluster.yaml")]
        assert "output.root={{ var.value.get('recospark_output_base', 'hdfs:///recospark/out') }}/{{ ds }}" in args
        expected_cores = str(max(cores_total // len(models) // 4 * 4, 4)) if stage == "train" else str(cores_total)
        assert task.conf["spark.cores.max"] == expected_cores, (task.task_id, task.conf)
    for m in models:
        assert dag.get_task(f"train_{m}").application_args[-2:] == ["--set", f"train.models={m}"]
    for t in ("evaluate", "recommend", "report"):
        assert dag.get_task(t).application_args[-1] == f"train.models={','.join(models)}"
    ingest_args = dag.get_task("ingest").application_args
    assert "data.source={{ var.value.get('recospark_data_source', 'hdfs:///recospark/data/ml-25m') }}" in ingest_args
    assert not any(a.startswith("data.source") for a in dag.get_task("split").application_args)


def test_training_tasks_follow_train_models(tmp_path, monkeypatch):
    conf = tmp_path / "two.yaml"
    conf.write_text("train:\n  models: bias,als\nspark:\n  spark.cores.max: 6\n")
    monkeypatch.setenv("RECOSPARK_CONF", str(conf))
    monkeypatch.setenv("RECOSPARK_DAG_CACHE", str(tmp_path / "graphs"))
    dag = _dagbag().dags["recospark"]
    assert len(list((tmp_path / "graphs").glob("recospark-dag-*.json"))) == 1  # the graph is cached where asked
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("RECOSPARK_DAG_CACHE", str(tmp_path / "not-a-folder"))  # a cache it cannot write: the DAG still loads
    assert set(_dagbag().dags["recospark"].task_ids) == expected_graph(["bias", "als"])[0]
    tasks, edges = expected_graph(["bias", "als"])
    assert set(dag.task_ids) == tasks
    assert {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids} == edges
    assert dag.get_task("train_als").conf["spark.cores.max"] == "3" and dag.get_task("split").conf["spark.cores.max"] == "6"
    # No train.models in the conf: the defaults listed in conf/local.yaml.
    conf.write_text("output:\n  root: /tmp/x\n")
    dag = _dagbag().dags["recospark"]
    assert {t for t in dag.task_ids if t.startswith("train_")} == {f"train_{m}" for m in _conf_models(ROOT / "conf" / "local.yaml")}
    # `all`: every model of the model table, resolved by `recospark tasks` in a subprocess (the DAG imports no recospark).
    conf.write_text("train:\n  models: all\n")
    from recospark.config import Config, load_config

    every = list(load_config(None, ["train.models=all"]).train.models)
    dag = _dagbag().dags["recospark"]
    assert sorted(t for t in dag.task_ids if t.startswith("train_")) == sorted(f"train_{m}" for m in every), every
    assert Config  # imported here, in the test process, never by the DAG file


def test_stage_order_follows_pipeline_stages(tmp_path, monkeypatch):
    conf = tmp_path / "order.yaml"
    stages = ["ingest", "split", "tune", "train", "recommend", "evaluate", "report"]
    conf.write_text(f"pipeline:\n  stages: [{', '.join(stages)}]\ntrain:\n  models: [als, sgd]\n")
    monkeypatch.setenv("RECOSPARK_CONF", str(conf))
    dag = _dagbag().dags["recospark"]
    tasks, edges = expected_graph(["als", "sgd"], stages)
    assert set(dag.task_ids) == tasks
    assert {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids} == edges
    assert dag.get_task("recommend").downstream_task_ids == {"evaluate"}


def test_dag_file_imports_nothing_heavy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('recospark_dag', {str(DAG_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'recospark', 'numba', 'numpy', 'pandas', 'torch'})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY="))
    assert line == "HEAVY=", f"heavy modules imported by the DAG file: {line}"


def test_prune_runs_removes_only_old_day_folders(tmp_path):
    mod = _dag_module()
    from datetime import date

    for name in ("2024-03-01", "2024-04-01", "2024-04-20", "2024-05-01", "latest", "2023-13-99x"):
        (tmp_path / name).mkdir()
    (tmp_path / "2024-01-01").write_text("a file, not a run folder")
    removed = mod.prune_runs(str(tmp_path), date(2024, 5, 1), 30)
    assert removed == [str(tmp_path / "2024-03-01")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2023-13-99x", "2024-01-01", "2024-04-01", "2024-04-20", "2024-05-01", "latest"]
    assert mod.prune_runs(str(tmp_path), date(2030, 1, 1), 0) == []  # 0 keeps everything


def test_data_arrival_check(tmp_path):
    mod = _dag_module()
    assert not mod.data_arrived(str(tmp_path / "ml-100k-upload"))
    (tmp_path / "ml").mkdir()
    assert not mod.data_arrived(str(tmp_path / "ml"))
    (tmp_path / "ml" / "u.data").write_text("1\t1\t5\t0\n")
    assert mod.data_arrived(str(tmp_path / "ml")) and mod.data_arrived(f"file://{tmp_path / 'ml'}")
    assert mod.data_arrived("ml-25m")  # a MovieLens name: ingest downloads it


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    ml100k = ROOT.parent / "shared" / "data" / "ml-100k"
    folder = tmp_path_factory.mktemp("ml-100k-small")
    if (ml100k / "u.data").is_file():
        lines = (ml100k / "u.data").read_bytes().splitlines(keepends=True)
        (folder / "u.data").write_bytes(b"".join(x for x in lines if x.strip() and int(x.split(b"\t", 1)[0]) <= SUBSET_USERS))
        for name in ("u.item", "u.genre"):
            shutil.copy(ml100k / name, folder / name)
        return folder
    pytest.skip(f"MovieLens 100K not found at {ml100k}")


def _small_conf(path: Path, models: list[str]) -> Path:
    conf = {
        # Not the data the run reads: the Variable recospark_data_source must win over it.
        "data": {"source": "ml-100k", "download": False},
        "split": {"strategy": "random", "seed": 42},
        "als": {"max_iter": 5, "num_user_blocks": 2, "num_item_blocks": 2},
        "sgd": {"rank": 8, "max_iter": 5, "num_blocks": 2},
        "train": {"models": models},
        "recommend": {"user_block_size": 64},
        "spark": {
            "spark.sql.shuffle.partitions": 4,
            "spark.default.parallelism": 2,
            "spark.ui.enabled": False,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
        },
    }
    path.write_text(json.dumps(conf))  # JSON is YAML
    return path


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}


def _run_env(monkeypatch, tmp_path, source: Path, models: list[str]) -> Path:
    out_base = tmp_path / "out"
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("RECOSPARK_CONF", str(_small_conf(tmp_path / "small.yaml", models)))
    monkeypatch.setenv("RECOSPARK_DIST", "")  # local master: the driver's venv has everything
    monkeypatch.setenv("RECOSPARK_OUTPUT_BASE", str(out_base))
    monkeypatch.delenv("RECOSPARK_DATA_SOURCE", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_RECOSPARK_DATA_SOURCE", str(source))  # the Variable, from the environment
    monkeypatch.setenv("RECOSPARK_RETENTION_DAYS", "30")
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    return out_base


FAKE_SPARK_SUBMIT = """#!/bin/sh
echo "$RECOSPARK_RUN_ID $*" >> "$FAKE_SUBMIT_LOG"
exit "$FAKE_SUBMIT_EXIT"
"""


@pytest.mark.parametrize("exit_code, expected_attempts", [(2, 1), (1, 3)])
def test_exit_2_fails_without_retries(exit_code, expected_attempts, airflow_db, small_source, tmp_path, monkeypatch):
    """A job exiting 2 (bad config, missing input) fails its task on the first attempt; exit 1 is
    retried, each attempt with its own RECOSPARK_RUN_ID."""
    _run_env(monkeypatch, tmp_path, small_source, ["als"])
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "spark-submit").write_text(FAKE_SPARK_SUBMIT)
    (fake_bin / "spark-submit").chmod(0o755)
    log = tmp_path / "submits.log"
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SUBMIT_LOG", str(log))
    monkeypatch.setenv("FAKE_SUBMIT_EXIT", str(exit_code))
    # The failure hook: a module of the deployment's own, named by RECOSPARK_ON_FAILURE.
    (tmp_path / "on_call.py").write_text(
        "import os\n"
        "def page(context):\n"
        "    with open(os.environ['FAILURE_LOG'], 'a') as f:\n"
        "        f.write(context['task_instance'].task_id + '\\n')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RECOSPARK_ON_FAILURE", "on_call:page")
    monkeypatch.setenv("FAILURE_LOG", str(tmp_path / "failures.log"))

    dag = _dagbag().dags["recospark"]
    ingest = dag.get_task("ingest")
    assert ingest.retries == 2
    ingest.retry_delay = timedelta(0)  # retries without the 5-minute wait
    ingest.retry_exponential_backoff = 0

    from datetime import datetime, timezone

    run = dag.test(logical_date=datetime(2024, 5, exit_code, tzinfo=timezone.utc))
    states = _states(run)
    attempts = log.read_text().splitlines()
    assert states["wait_for_data"] == "success" and states["ingest"] == "failed", states
    assert states["split"] == "upstream_failed", states
    assert len(attempts) == expected_attempts, attempts
    assert all("jobs/ingest.py" in a for a in attempts)
    # Each attempt's driver is named after its Airflow task attempt (the run id in output claims).
    run_ids = [a.split(" ", 1)[0] for a in attempts]
    assert run_ids == [f"airflow:recospark:{run.run_id}:ingest:try{n}" for n in range(1, expected_attempts + 1)], run_ids
    failures = (tmp_path / "failures.log").read_text().split()
    assert failures == ["ingest"], failures  # the failure hook ran once, after the last attempt


def test_python_tasks_run(airflow_db, small_source, tmp_path, monkeypatch):
    """wait_for_data and prune_old_runs for real, the Spark tasks marked successful (fast)."""
    out_base = _run_env(monkeypatch, tmp_path, small_source, ["als"])
    old, recent = out_base / "2024-03-01", out_base / "2024-04-20"
    for folder in (old, recent):
        folder.mkdir(parents=True)
    dag = _dagbag().dags["recospark"]
    from datetime import datetime, timezone

    run = dag.test(
        logical_date=datetime(2024, 5, 3, tzinfo=timezone.utc), mark_success_pattern=r"ingest|split|train_.*|evaluate|recommend|report"
    )
    assert _states(run) == dict.fromkeys(expected_graph(["als"])[0], "success"), _states(run)
    assert not old.exists() and recent.exists()


def test_dag_test_runs_end_to_end(airflow_db, small_source, tmp_path, monkeypatch, capsys):
    import pyspark

    models = ["als", "sgd"]
    spark_bin = Path(pyspark.__file__).resolve().parent / "bin"
    monkeypatch.setenv("PATH", f"{spark_bin}{os.pathsep}{os.environ['PATH']}")
    out_base = _run_env(monkeypatch, tmp_path, small_source, models)
    old, recent = out_base / "2024-03-01", out_base / "2024-04-20"
    for folder in (old, recent):
        (folder / "ratings").mkdir(parents=True)

    bag = _dagbag()
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags["recospark"]
    for task in dag.tasks:  # a failure here should fail the test now, not wait for retry_delay
        task.retries = 0

    from datetime import datetime, timezone

    started = time.monotonic()
    run = dag.test(logical_date=datetime(2024, 5, 1, tzinfo=timezone.utc))
    seconds = time.monotonic() - started

    states = _states(run)
    with capsys.disabled():
        print(f"\n[airflow] db migrate {airflow_db:.0f} s; dag.test() {seconds:.0f} s; run {run.run_id}: {states}", flush=True)
    assert states == dict.fromkeys(expected_graph(models)[0], "success"), states
    day = out_base / "2024-05-01"
    for output in (
        "ratings",
        "splits/random/train",
        "models/als",
        "models/sgd",
        "metrics/als.json",
        "metrics/sgd.json",
        "recommendations/als",
        "recommendations/sgd",
        "report/index.html",
    ):
        assert (day / output).exists(), f"missing {day / output}"
    manifest = json.loads((day / "ratings" / "_manifest.json").read_text())
    assert str(small_source) in json.dumps(manifest), "ingest did not read the Variable's data source"
    assert not old.exists() and recent.exists(), "prune_old_runs: 2024-03-01 (> 30 days) removed, 2024-04-20 kept"


def test_blend_trains_after_its_components(tmp_path, monkeypatch):
    """train_blend loads the models its components' tasks publish, so it runs after them; a
    component that is not trained in this DAG is fitted by the blend task itself (no edge)."""
    conf = tmp_path / "blend.yaml"
    conf.write_text(
        "train:\n  models: [als_implicit, puresvd, blend, global_mean]\nblend:\n  components: [als_implicit, sgd_rank, puresvd]\n  weights: [0.3, 0.6, 0.1]\n"
    )
    monkeypatch.setenv("RECOSPARK_CONF", str(conf))
    dag = _dagbag().dags["recospark"]
    assert set(dag.get_task("train_blend").upstream_task_ids) == {"split", "train_als_implicit", "train_puresvd"}
    assert "train_blend" in dag.get_task("train_als_implicit").downstream_task_ids
    assert set(dag.get_task("train_global_mean").upstream_task_ids) == {"split"}
