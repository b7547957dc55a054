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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "recospark_dag.py"
EXPECTED_TASKS = ["ingest", "split", "train_als", "train_sgd", "evaluate", "recommend", "report"]
EXPECTED_EDGES = {
    ("ingest", "split"),
    ("split", "train_als"),
    ("split", "train_sgd"),
    ("train_als", "evaluate"),
    ("train_sgd", "evaluate"),
    ("evaluate", "recommend"),
    ("recommend", "report"),
}
SUBSET_USERS = 50  # ML-100K users 1..50: ~5.6k ratings

# Airflow reads its configuration when first imported: point it at a private home first, and
# only when Airflow is installed (the main venv's suite must not see these variables).
if importlib.util.find_spec("airflow") is not None and "RECOSPARK_TEST_AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="recospark-airflow-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["RECOSPARK_TEST_AIRFLOW_HOME"] = _home
    os.environ["AIRFLOW_HOME"] = _home
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
    assert "recospark" in bag.dags


def test_task_order_retries_and_connection():
    dag = _dagbag().dags["recospark"]
    assert sorted(dag.task_ids) == sorted(EXPECTED_TASKS)
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    assert edges == EXPECTED_EDGES
    order = [t.task_id for t in dag.topological_sort()] if hasattr(dag, "topological_sort") else None
    if order:
        assert order[0] == "ingest" and order[-1] == "report"
    for task in dag.tasks:
        assert type(task).__name__ == "SparkSubmitOperator"
        assert task.retries == 2, task.task_id
        assert task._conn_id == os.environ.get("RECOSPARK_SPARK_CONN_ID", "spark_default")
        stage = "train" if task.task_id.startswith("train_") else task.task_id
        assert Path(task.application) == ROOT / "jobs" / f"{stage}.py"
        assert Path(task.application).is_file()
        args = task.application_args
        assert any(a.startswith("output.root=") and a.endswith("/{{ ds }}") for a in args), args
    assert "train.models=als" in dag.get_task("train_als").application_args
    assert "train.models=sgd" in dag.get_task("train_sgd").application_args


def test_dag_file_imports_nothing_heavy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('recospark_dag', {str(DAG_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'recospark', 'numba', 'torch'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"heavy modules imported by the DAG file: {out.stdout}"


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


def _small_conf(path: Path) -> Path:
    conf = {
        "data": {"download": False},
        "split": {"strategy": "random", "seed": 42},
        "als": {"max_iter": 5, "num_blocks": 2},
        "sgd": {"rank": 8, "max_iter": 5, "num_blocks": 2},
        "recommend": {"user_block_size": 64},
        "spark": {
            "spark.sql.shuffle.partitions": 4,
            "spark.default.parallelism": 2,
            "spark.ui.enabled": False,
            "spark.ui.showConsoleProgress": False,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
        },
    }
    path.write_text(json.dumps(conf))  # JSON is YAML
    return path


def test_dag_test_runs_end_to_end(airflow_db, small_source, tmp_path, monkeypatch, capsys):
    import pyspark

    spark_bin = Path(pyspark.__file__).resolve().parent / "bin"
    out_base = tmp_path / "out"
    monkeypatch.setenv("PATH", f"{spark_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("RECOSPARK_CONF", str(_small_conf(tmp_path / "small.yaml")))
    monkeypatch.setenv("RECOSPARK_DIST", "")  # local master: the driver's venv has everything
    monkeypatch.setenv("RECOSPARK_OUTPUT_BASE", str(out_base))
    monkeypatch.setenv("RECOSPARK_DATA_SOURCE", str(small_source))
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)

    bag = _dagbag()
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags["recospark"]
    for task in dag.tasks:  # a failure here should fail the test now, not wait for retry_delay
        task.retries = 0

    from datetime import datetime, timezone

    logical_date = datetime(2024, 5, 1, tzinfo=timezone.utc)
    started = time.monotonic()
    run = dag.test(logical_date=logical_date)
    seconds = time.monotonic() - started

    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
    with capsys.disabled():
        print(f"\n[airflow] db migrate {airflow_db:.0f} s; dag.test() {seconds:.0f} s; run {run.run_id}: {states}", flush=True)
    assert states == {t: "success" for t in EXPECTED_TASKS}, states
    day = out_base / "2024-05-01"
    for output in ("ratings", "splits/random/train", "models/als", "models/sgd", "metrics/als.json",
                   "metrics/sgd.json", "recommendations/als", "recommendations/sgd", "report/index.html"):
        assert (day / output).exists(), f"missing {day / output}"
