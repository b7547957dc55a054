"""recospark, daily: one spark-submit per stage, outputs partitioned by the run's logical date.

    wait_for_data >> <the conf's pipeline.stages, in order> >> prune_old_runs
    e.g. wait_for_data >> ingest >> split >> [train_<model> for each model in train.models]
        >> recommend >> evaluate >> report >> prune_old_runs
    (train_blend after the training tasks of its components: it loads what they published)

Every Spark task runs `spark-submit jobs/<stage>.py --conf <conf> --set output.root=<base>/<ds> ...`
through the Spark provider's SparkSubmitOperator (the subclass below). The Spark master (and
deploy mode, queue, spark-submit binary) comes from the Airflow connection, never from this file:

    # standalone, client mode
    airflow connections add spark_default --conn-type spark --conn-host spark://spark-master --conn-port 7077 \
        --conn-extra '{"deploy-mode": "client"}'
    # YARN:       --conn-type spark --conn-host yarn --conn-extra '{"deploy-mode": "cluster", "queue": "batch"}'
    # Kubernetes: --conn-type spark --conn-host k8s://https://kube-apiserver:6443 --conn-extra '{"deploy-mode": "cluster", "namespace": "spark"}'
    # local:      AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}'

Settings read when the file is parsed (environment of the DAG processor; cheap, no database):

    RECOSPARK_SPARK_CONN_ID   Airflow connection id                          [spark_default]
    RECOSPARK_HOME            checkout holding jobs/ and conf/ on the workers  [this file's ../]
    RECOSPARK_CONF            conf file (driver-local path in client mode)     [$RECOSPARK_HOME/conf/cluster.yaml]
                              its pipeline.stages gives the tasks and their order, its train.models
                              one training task per model, as `python -m recospark tasks --conf`
                              resolves them (recospark's defaults where the conf is silent)
    RECOSPARK_DIST            folder with recospark.zip + recospark-env.tar.gz from `make dist`;
                              shipped with --py-files/--archives when present  [$RECOSPARK_HOME/dist];
                              "" when the Spark nodes have recospark installed (docker/)
    RECOSPARK_CORES_MAX       cores one recospark application may take; the training tasks run in
                              parallel and split it (spark.cores.max per application, a multiple of
                              spark.executor.cores)                             [the conf's spark.cores.max]
    RECOSPARK_ON_FAILURE      "module:function" called with the task context when a task fails
                              for good (after its retries), e.g. to page someone  [unset: log only]
    RECOSPARK_DAG_CACHE       folder for the cached task graph of each conf (one small JSON file
                              per conf file and recospark version)       [the system's temp folder]

Read when a task runs (Airflow Variables, each defaulting to an environment variable):

    recospark_output_base     outputs go to <base>/<ds>   [RECOSPARK_OUTPUT_BASE or hdfs:///recospark/out]
    recospark_data_source     raw MovieLens folder        [RECOSPARK_DATA_SOURCE or the conf's data.source]
    recospark_retention_days  prune_old_runs deletes <base>/<day> folders older than this many
                              days before the run's date; 0 keeps everything [RECOSPARK_RETENTION_DAYS or 30]
    RECOSPARK_DRIVER_PYTHON   client mode with shipping: the driver's interpreter on the Airflow
                              worker (needs the project's dependencies)
                              [$RECOSPARK_HOME/.venv/bin/python when it exists, else the worker's Python]

Each Spark task's driver runs with RECOSPARK_RUN_ID=airflow:<dag_id>:<run_id>:<task_id>:try<n>, the
run id recospark writes in its output claims, so a run that finds an output busy names the Airflow
task attempt holding it (not in standalone cluster mode: the provider cannot set that driver's
environment there, and recospark falls back to a time-and-random id).

Exit codes: a stage that exits 2 (bad config, missing input: a permanent user error) fails its
task at once, without retries; any other failure is retried (2 retries, exponential back-off).

Nothing heavy is imported here (no pyspark, no recospark): the DAG processor parses this file
often, and the Spark work happens in the spark-submit processes. The task graph comes from
recospark itself, run once per conf in a subprocess and cached (`_task_graph`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date, datetime, timedelta
from importlib import import_module
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

log = logging.getLogger(__name__)

HOME = Path(os.environ.get("RECOSPARK_HOME") or Path(__file__).resolve().parents[1])
CONF = os.environ.get("RECOSPARK_CONF") or str(HOME / "conf" / "cluster.yaml")
CONN_ID = os.environ.get("RECOSPARK_SPARK_CONN_ID", "spark_default")
DIST = os.environ.get("RECOSPARK_DIST", str(HOME / "dist"))
LOG4J2 = HOME / "recospark" / "conf" / "log4j2.properties"
EXIT_USER_ERROR = 2  # recospark.cli: a permanent user error (bad config, missing input)


def driver_python() -> str:
    configured = os.environ.get("RECOSPARK_DRIVER_PYTHON")
    if configured:
        return configured
    venv = HOME / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _recospark_python() -> str:
    """An interpreter that can import recospark: this one (Airflow's venv installs the project), else
    the driver's (RECOSPARK_DRIVER_PYTHON or $RECOSPARK_HOME/.venv)."""
    if importlib.util.find_spec("recospark") is not None:
        return sys.executable
    return driver_python()


def _task_graph(conf: str) -> dict:
    """What the conf asks for, resolved by recospark itself (`python -m recospark tasks --conf ...`:
    pipeline.stages, train.models with `all` and the defaults applied, each composite model's
    components, the spark settings). It runs in a subprocess so the DAG file imports nothing heavy,
    and is cached per conf file and recospark version (keyed on their modification times), so the
    DAG processor pays it once, not at every parse. A conf recospark refuses fails the import with
    recospark's one-line message."""
    stats = [Path(conf), HOME / "recospark" / "models" / "table.py", HOME / "recospark" / "config.py"]
    key = "|".join([conf, str(HOME)] + [f"{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.exists() else "-" for p in stats])
    folder = Path(os.environ.get("RECOSPARK_DAG_CACHE") or tempfile.gettempdir())
    cache = folder / f"recospark-dag-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    proc = subprocess.run(
        [_recospark_python(), "-m", "recospark", "tasks", "--conf", conf], capture_output=True, text=True, timeout=300, cwd=str(HOME)
    )
    if proc.returncode != 0:
        raise ValueError(
            f"recospark tasks --conf {conf} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        )
    graph = json.loads(proc.stdout)
    if "ingest" not in graph["stages"] or "train" not in graph["stages"]:
        raise ValueError(f"pipeline.stages must include ingest and train (got {graph['stages']})")
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(graph), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as e:  # only a cache: the DAG works without it, resolved again at every parse
        log.warning("RECOSPARK_DAG_CACHE: cannot cache the task graph in %s (%s); it is resolved again at every parse", folder, e)
    return graph


GRAPH = _task_graph(CONF)
MODELS = list(GRAPH["models"])
COMPONENTS = {model: list(parts) for model, parts in GRAPH["components"].items()}
STAGES = list(GRAPH["stages"])
SPARK_CONF = {str(k): v for k, v in GRAPH["spark"].items()}


def _cores_max() -> tuple[int | None, int | None]:
    """(cores of one application, cores of one training task), from RECOSPARK_CORES_MAX or the conf."""
    total = os.environ.get("RECOSPARK_CORES_MAX") or SPARK_CONF.get("spark.cores.max")
    if not total:
        return None, None
    total = int(total)
    per_executor = int(SPARK_CONF.get("spark.executor.cores", 1))
    share = total // max(len(MODELS), 1) // per_executor * per_executor
    return total, max(share, per_executor)


CORES_MAX, TRAIN_CORES_MAX = _cores_max()


# Jinja, rendered when a task runs: Variables are read then, not at parse time.
def _q(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


OUTPUT_BASE = "{{ var.value.get('recospark_output_base', '" + _q(os.environ.get("RECOSPARK_OUTPUT_BASE", "hdfs:///recospark/out")) + "') }}"
OUTPUT_ROOT = OUTPUT_BASE + "/{{ ds }}"
DATA_SOURCE = "{{ var.value.get('recospark_data_source', '" + _q(os.environ.get("RECOSPARK_DATA_SOURCE") or GRAPH["data_source"]) + "') }}"
RUN_ID = "airflow:{{ dag.dag_id }}:{{ run_id }}:{{ ti.task_id }}:try{{ ti.try_number }}"  # see the docstring
RETENTION_DAYS = "{{ var.value.get('recospark_retention_days', '" + _q(os.environ.get("RECOSPARK_RETENTION_DAYS", "30")) + "') }}"


class RecosparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator for recospark's jobs.

    * exit code 2 from the job (recospark's permanent user errors: bad config, missing input)
      raises AirflowFailException: the task fails now, retries are skipped; other failures
      raise as usual and are retried. spark-submit returns the driver's exit code in client
      mode and local mode; in cluster mode it reports the application's failure as 1, so there
      every failure is retried.
    * client mode with shipped artifacts: the driver runs on this Airflow worker, so its Python
      is RECOSPARK_DRIVER_PYTHON (not the executors' ./environment/bin/python).
    * the driver JVM (client mode) and spark-submit itself log through recospark's log4j2 file
      from their first line (SPARK_SUBMIT_OPTS, which leaves the cluster's
      spark.driver.extraJavaOptions alone).
    """

    def execute(self, context):
        self.conf = dict(self.conf or {})
        shipped = self.conf.get("spark.pyspark.python") == "./environment/bin/python"
        connection = self._get_hook()._connection or {}
        deploy_mode = connection.get("deploy_mode") or "client"
        if deploy_mode == "cluster" and str(connection.get("master") or "").startswith("spark://"):
            # The provider refuses env_vars in standalone cluster mode (it cannot reach that driver).
            self.env_vars = {k: v for k, v in (self.env_vars or {}).items() if k != "RECOSPARK_RUN_ID"} or None
        self._hook = None  # rebuilt by super().execute with the final conf
        if shipped and deploy_mode != "cluster" and "spark.pyspark.driver.python" not in self.conf:
            self.conf["spark.pyspark.driver.python"] = driver_python()
        saved = os.environ.get("SPARK_SUBMIT_OPTS")
        if LOG4J2.is_file() and "log4j2.configurationFile" not in (saved or ""):
            os.environ["SPARK_SUBMIT_OPTS"] = f"{saved or ''} -Dlog4j2.configurationFile={LOG4J2.as_uri()}".strip()
        try:
            return super().execute(context)
        except AirflowException as err:
            process = getattr(self._hook, "_submit_sp", None)
            if process is not None and process.returncode == EXIT_USER_ERROR:
                raise AirflowFailException(
                    f"{self.task_id}: the job exited with {EXIT_USER_ERROR}, a permanent error (bad config or missing "
                    "input; see the log above): not retried"
                ) from err
            raise
        finally:
            if saved is None:
                os.environ.pop("SPARK_SUBMIT_OPTS", None)
            else:
                os.environ["SPARK_SUBMIT_OPTS"] = saved


def _shipping() -> dict:
    """--py-files + --archives from `make dist` when present: workers need nothing installed."""
    if not DIST:
        return {}
    zip_path, env_path = Path(DIST) / "recospark.zip", Path(DIST) / "recospark-env.tar.gz"
    if not (zip_path.is_file() and env_path.is_file()):
        return {}
    return {"py_files": str(zip_path), "archives": f"{env_path}#environment", "conf": {"spark.pyspark.python": "./environment/bin/python"}}


def _submit(task_id: str, stage: str, *sets: str, cores_max: int | None = CORES_MAX) -> RecosparkSubmitOperator:
    shipping = _shipping()
    conf = dict(shipping.pop("conf", {}))
    if cores_max:
        conf["spark.cores.max"] = str(cores_max)
    args = ["--conf", CONF, "--set", f"output.root={OUTPUT_ROOT}"]
    if stage == "ingest":  # data.source is only read by ingest
        args += ["--set", f"data.source={DATA_SOURCE}"]
    for item in sets:
        args += ["--set", item]
    return RecosparkSubmitOperator(
        task_id=task_id,
        conn_id=CONN_ID,
        application=str(HOME / "jobs" / f"{stage}.py"),
        application_args=args,
        name=f"recospark-{task_id}-{{{{ ds_nodash }}}}",
        conf=conf,
        env_vars={"RECOSPARK_RUN_ID": RUN_ID},
        **shipping,
    )


# --- raw data arrival and retention (plain Python, no Spark) --------------------------------------

RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")


def _hadoop(*args: str) -> subprocess.CompletedProcess | None:
    binary = shutil.which("hadoop") or shutil.which("hdfs")
    if binary is None:
        return None
    return subprocess.run([binary, "fs", *args], capture_output=True, text=True, timeout=300)


def data_arrived(source: str) -> bool:
    """A local folder (or zip) holding a MovieLens ratings file; a MovieLens name (downloaded by
    ingest); an hdfs://, s3a://... folder, checked with `hadoop fs -test` when hadoop is installed."""
    if "://" in source and not source.startswith("file://"):
        for name in RATINGS_FILES:
            proc = _hadoop("-test", "-e", f"{source.rstrip('/')}/{name}")
            if proc is None:
                log.warning("no hadoop command here: cannot check %s, assuming it has arrived", source)
                return True
            if proc.returncode == 0:
                return True
        return False
    path = Path(source.removeprefix("file://"))
    if path.exists():
        return (path.is_file() and path.suffix == ".zip") or any((path / name).exists() for name in RATINGS_FILES)
    return re.fullmatch(r"ml-[a-z0-9-]+", source) is not None  # a MovieLens name: ingest downloads it


def prune_runs(base: str, today: date, retention_days: int) -> list[str]:
    """Delete <base>/<YYYY-MM-DD> folders older than retention_days before `today`; nothing else."""
    if retention_days <= 0:
        return []
    cutoff = today - timedelta(days=retention_days)
    is_day = re.compile(r"\d{4}-\d{2}-\d{2}")
    old: list[str] = []
    if "://" in base and not base.startswith("file://"):
        proc = _hadoop("-ls", "-C", base)
        if proc is None or proc.returncode != 0:
            log.warning("cannot list %s (no hadoop command, or it failed): nothing pruned", base)
            return []
        for path in proc.stdout.split():
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if is_day.fullmatch(name) and date.fromisoformat(name) < cutoff:
                old.append(path)
        for path in old:
            _hadoop("-rm", "-r", "-skipTrash", path)
        return old
    root = Path(base.removeprefix("file://"))
    if not root.is_dir() or root.resolve() == Path("/"):
        return []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and is_day.fullmatch(child.name) and date.fromisoformat(child.name) < cutoff:
            shutil.rmtree(child)
            old.append(str(child))
    return old


def on_failure(context) -> None:
    """on_failure_callback: runs when a task has failed for good (no retry left, or exit 2)."""
    ti = context.get("task_instance") or context.get("ti")
    log.error("recospark task %s failed for good (run %s)", getattr(ti, "task_id", "?"), context.get("run_id"))
    target = os.environ.get("RECOSPARK_ON_FAILURE")
    if target:
        module, _, function = target.partition(":")
        getattr(import_module(module), function)(context)


default_args = {
    "owner": "recospark",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": 2.0,  # 5, 10 minutes (a float multiplier in Airflow 3)
    "execution_timeout": timedelta(hours=3),
    "on_failure_callback": on_failure,
}

with DAG(
    dag_id="recospark",
    description="MovieLens ingest, split, one training task per model, evaluation, top-N and report, one Spark application per stage",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["recospark", "spark"],
    doc_md=__doc__,
) as dag:

    @task.sensor(task_id="wait_for_data", poke_interval=300, timeout=6 * 3600, mode="reschedule")
    def wait_for_data(source: str) -> bool:
        log.info("waiting for the raw data at %s", source)
        return data_arrived(source)

    @task(task_id="prune_old_runs", retries=0)
    def prune_old_runs(base: str, day: str, retention_days: str) -> list[str]:  # `ds` is a reserved name
        removed = prune_runs(base, date.fromisoformat(day), int(retention_days))
        log.info("pruned %d run folder(s) older than %s days under %s: %s", len(removed), retention_days, base, removed)
        return removed

    models = f"train.models={','.join(MODELS)}"
    previous = [wait_for_data(DATA_SOURCE)]
    for stage in STAGES:  # the conf's pipeline.stages, in order
        if stage == "train":
            trains = {m: _submit(f"train_{m}", "train", f"train.models={m}", cores_max=TRAIN_CORES_MAX) for m in MODELS}
            for model, parts in COMPONENTS.items():  # the blend loads its components' published models
                for part in parts:
                    trains[part] >> trains[model]
            current = list(trains.values())
        else:
            current = [_submit(stage, stage, *([models] if stage in ("tune", "recommend", "evaluate", "report") else []))]
        for task_ in previous:
            task_ >> current
        previous = current
    prune = prune_old_runs(OUTPUT_BASE, "{{ ds }}", RETENTION_DAYS)
    for task_ in previous:
        task_ >> prune
