"""recospark, daily: one spark-submit per stage, outputs partitioned by the run's logical date.

    ingest >> split >> [train_als, train_sgd] >> evaluate >> recommend >> report

Every task runs `spark-submit jobs/<stage>.py --conf <conf> --set output.root=<base>/<ds> ...`
through the Spark provider's SparkSubmitOperator. The Spark master (and deploy mode, queue,
spark-submit binary) comes from the Airflow connection, never from this file:

    # standalone, client mode
    airflow connections add spark_default --conn-type spark --conn-host spark://spark-master --conn-port 7077 \
        --conn-extra '{"deploy-mode": "client"}'
    # YARN:       --conn-type spark --conn-host yarn --conn-extra '{"deploy-mode": "cluster", "queue": "batch"}'
    # Kubernetes: --conn-type spark --conn-host k8s://https://kube-apiserver:6443 --conn-extra '{"deploy-mode": "cluster", "namespace": "spark"}'
    # local:      AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}'

Settings, read from the environment of the scheduler/DAG processor and the workers (cheap, no
database access at parse time); the paths are also Airflow Variables, read when a task runs:

    RECOSPARK_SPARK_CONN_ID   Airflow connection id                         [spark_default]
    RECOSPARK_HOME            checkout holding jobs/ and conf/ on the workers [this file's ../]
    RECOSPARK_CONF            conf file (driver-local path: client mode)      [$RECOSPARK_HOME/conf/cluster.yaml]
    RECOSPARK_DIST            folder with recospark.zip + recospark-env.tar.gz from `make dist`;
                              shipped with --py-files/--archives when present [$RECOSPARK_HOME/dist];
                              set it to "" when the Spark nodes have recospark installed (docker/)
    RECOSPARK_DRIVER_PYTHON   client mode with shipping: the Airflow worker's interpreter for the driver
                              (needs the dependencies; the code comes from the zip) [unset: cluster mode]
    Variable recospark_output_base  outputs go to <base>/<ds>                [$RECOSPARK_OUTPUT_BASE or hdfs:///recospark/out]
    Variable recospark_data_source  raw MovieLens folder (data.source), used when RECOSPARK_DATA_SOURCE is set
                                    (its default); without that env var the conf's data.source applies

Nothing heavy is imported here (no pyspark, no recospark): the DAG processor parses this file
often, and the Spark work happens in the spark-submit processes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

HOME = Path(os.environ.get("RECOSPARK_HOME") or Path(__file__).resolve().parents[1])
CONF = os.environ.get("RECOSPARK_CONF") or str(HOME / "conf" / "cluster.yaml")
CONN_ID = os.environ.get("RECOSPARK_SPARK_CONN_ID", "spark_default")
DIST = os.environ.get("RECOSPARK_DIST", str(HOME / "dist"))
DRIVER_PYTHON = os.environ.get("RECOSPARK_DRIVER_PYTHON", "")
MODELS = ["als", "sgd"]  # evaluate, recommend and report cover both trained models

# Jinja, rendered when the task runs: Variables are read then, not at parse time.
OUTPUT_ROOT = (
    "{{ var.value.get('recospark_output_base', '"
    + os.environ.get("RECOSPARK_OUTPUT_BASE", "hdfs:///recospark/out").replace("'", "")
    + "') }}/{{ ds }}"
)
# data.source: the conf's, unless RECOSPARK_DATA_SOURCE is set (then Variable recospark_data_source wins).
DATA_SOURCE_DEFAULT = os.environ.get("RECOSPARK_DATA_SOURCE", "").replace("'", "")
DATA_SOURCE = "{{ var.value.get('recospark_data_source', '" + DATA_SOURCE_DEFAULT + "') }}" if DATA_SOURCE_DEFAULT else None


def _shipping() -> dict:
    """--py-files + --archives from `make dist` when present: workers need nothing installed."""
    if not DIST:
        return {}
    zip_path, env_path = Path(DIST) / "recospark.zip", Path(DIST) / "recospark-env.tar.gz"
    if not (zip_path.is_file() and env_path.is_file()):
        return {}
    conf = {"spark.pyspark.python": "./environment/bin/python"}
    if DRIVER_PYTHON:  # client mode: the driver runs here, not inside the unpacked archive
        conf["spark.pyspark.driver.python"] = DRIVER_PYTHON
    return {"py_files": str(zip_path), "archives": f"{env_path}#environment", "conf": conf}


def _args(*sets: str) -> list[str]:
    args = ["--conf", CONF, "--set", f"output.root={OUTPUT_ROOT}"]
    for item in sets:
        args += ["--set", item]
    return args


def _submit(task_id: str, stage: str, *sets: str) -> SparkSubmitOperator:
    shipping = _shipping()
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=CONN_ID,
        application=str(HOME / "jobs" / f"{stage}.py"),
        # data.source is only read by ingest.
        application_args=_args(*sets) + (["--set", f"data.source={DATA_SOURCE}"] if stage == "ingest" and DATA_SOURCE else []),
        name=f"recospark-{task_id}-{{{{ ds_nodash }}}}",
        **shipping,
    )


default_args = {
    "owner": "recospark",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=3),
}

with DAG(
    dag_id="recospark",
    description="MovieLens ingest, split, ALS and DSGD training, evaluation, top-N and report, one Spark application per stage",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["recospark", "spark"],
    doc_md=__doc__,
) as dag:
    models = f"train.models={','.join(MODELS)}"
    ingest = _submit("ingest", "ingest")
    split = _submit("split", "split")
    train_als = _submit("train_als", "train", "train.models=als")
    train_sgd = _submit("train_sgd", "train", "train.models=sgd")
    evaluate = _submit("evaluate", "evaluate", models)
    recommend = _submit("recommend", "recommend", models)
    report = _submit("report", "report", models)

    ingest >> split >> [train_als, train_sgd] >> evaluate >> recommend >> report
