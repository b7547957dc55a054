"""SparkSession from config. The master is never chosen here.

Precedence, highest first:

1. what spark-submit was given (`--conf`, `--driver-memory` and the other flags, the
   properties file, `spark-defaults.conf`), and `--conf` in PYSPARK_SUBMIT_ARGS;
2. the conf file's `spark:` section (and `--set spark.<key>=...`);
3. recospark's defaults below.

pyspark's `SparkSession.builder.config()` would set every option over what spark-submit put in
the JVM's SparkConf (so `--conf spark.sql.shuffle.partitions=400` silently became the conf file's
8); here the builder only gets the keys nobody set before.

When does a setting take effect? Under spark-submit the driver JVM is already running when this
code runs, so the settings the launcher reads (driver memory, driver Java options and class path,
packages, master, deploy mode) cannot change any more: a conf file that sets them gets a warning
naming the spark-submit flag to use instead. A bare `recospark <stage>` run is different:
pyspark starts the JVM from this SparkConf (it passes every entry as `--conf` to
`spark-submit pyspark-shell`), so there the conf's `spark.driver.memory` does apply, and so does
recospark's log4j2 file (quiet start-up, see recospark/conf/log4j2.properties).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.find_spark_home import _find_spark_home
from pyspark.sql import SparkSession

from recospark import jvm
from recospark.config import Config
from recospark.errors import ConfigError, ExecutorsUnavailable

log = logging.getLogger(__name__)

LOG4J2_FILE = Path(__file__).resolve().parent / "conf" / "log4j2.properties"

# Read by the launcher before the driver JVM starts: under spark-submit, too late to set here.
JVM_START_ONLY = {
    "spark.driver.memory": "--driver-memory {value}",
    "spark.driver.extraJavaOptions": '--driver-java-options "{value}"',
    "spark.driver.defaultJavaOptions": '--conf "spark.driver.defaultJavaOptions={value}"',
    "spark.driver.extraClassPath": "--driver-class-path {value}",
    "spark.driver.extraLibraryPath": "--driver-library-path {value}",
    "spark.driver.cores": "--driver-cores {value} (cluster mode)",
    "spark.master": "--master {value}",
    "spark.submit.deployMode": "--deploy-mode {value}",
    "spark.jars.packages": "--packages {value}",
    "spark.jars.repositories": "--repositories {value}",
    "spark.jars.excludes": "--exclude-packages {value}",
    "spark.pyspark.driver.python": "--conf spark.pyspark.driver.python={value}",
}

# Seconds a non-local application waits for its first executor before failing (0: forever).
EXECUTOR_WAIT_ENV = "RECOSPARK_EXECUTOR_WAIT_SECONDS"
EXECUTOR_WAIT_DEFAULT = 180.0
SIZING_KEYS = (
    "spark.executor.cores",
    "spark.executor.memory",
    "spark.executor.memoryOverhead",
    "spark.cores.max",
    "spark.executor.instances",
)


def defaults() -> dict[str, str]:
    """Applied only where neither spark-submit nor the conf file set them."""
    interactive = sys.stdout.isatty() and sys.stderr.isatty()
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Spark's `[Stage 3:==>  (2 + 1) / 8]` bars redraw with \r: fine in a terminal, line
        # noise in spark-submit logs, Airflow task logs and CI.
        "spark.ui.showConsoleProgress": "true" if interactive else "false",
    }


def _read_properties(path: Path) -> dict[str, str]:
    """spark-defaults.conf: `key value` or `key=value` per line, # comments."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        m = re.match(r"([^\s=:]+)\s*(?:[=:\s]\s*(.*))?$", line)
        if m and m.group(1).startswith("spark."):
            out[m.group(1)] = (m.group(2) or "").strip()
    return out


def _spark_defaults_file() -> Path | None:
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if not conf_dir:
        try:
            conf_dir = os.path.join(_find_spark_home(), "conf")
        except Exception:
            return None
    path = Path(conf_dir) / "spark-defaults.conf"
    return path if path.is_file() else None


def _submit_args_conf() -> dict[str, str]:
    """`--conf k=v` pairs in PYSPARK_SUBMIT_ARGS (pyspark appends them after ours, so they win)."""
    words = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    out = {}
    for i, word in enumerate(words):
        pair = words[i + 1] if word in ("--conf", "-c") and i + 1 < len(words) else word[7:] if word.startswith("--conf=") else None
        if pair and "=" in pair:
            key, value = pair.split("=", 1)
            out[key] = value
    return out


def launched_settings() -> tuple[dict[str, str], str]:
    """Settings in force before recospark sets anything, and where they came from.

    Under spark-submit (or next to a running SparkContext) that is the JVM's SparkConf: every
    spark-submit flag, --conf, --properties-file and spark-defaults.conf entry. In a bare
    `recospark` run the JVM does not exist yet: spark-defaults.conf and PYSPARK_SUBMIT_ARGS.
    """
    if jvm.jvm_running():
        SparkContext._ensure_initialized()
        return dict(SparkConf().getAll()), "spark-submit"
    path = _spark_defaults_file()
    settings = _read_properties(path) if path else {}
    settings.update(_submit_args_conf())
    return settings, "spark-defaults.conf/PYSPARK_SUBMIT_ARGS"


def resolve_settings(
    conf_spark: Mapping[str, str], launched: Mapping[str, str], jvm_running: bool, log_level: str = "WARN"
) -> tuple[dict[str, str], list[str]]:
    """(options for the builder, warnings): the conf file's and recospark's settings that
    nobody set before, and what cannot take effect."""
    options: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in conf_spark.items():
        value = str(value)
        if key in launched:
            if launched[key] != value:
                log.info("%s=%s from spark-submit kept (the conf file's %s is not applied)", key, launched[key], value)
            continue
        if jvm_running and key in JVM_START_ONLY:
            warnings.append(
                f"{key}={value} in the conf file's spark: section cannot take effect: the driver JVM was started "
                f"by spark-submit before the conf file was read; pass spark-submit {JVM_START_ONLY[key].format(value=value)}"
            )
            continue
        options[key] = value
    for key, value in defaults().items():
        if key not in launched and key not in options:
            options[key] = value
    if not jvm_running and LOG4J2_FILE.is_file():
        java_opts = options.get("spark.driver.extraJavaOptions", launched.get("spark.driver.extraJavaOptions", ""))
        if "log4j2.configurationFile" not in java_opts and "log4j.configurationFile" not in java_opts:
            ours = f"-Dlog4j2.configurationFile={LOG4J2_FILE.as_uri()} -Drecospark.logLevel={log_level}"
            options["spark.driver.extraJavaOptions"] = f"{java_opts} {ours}".strip()
    return options, warnings


def build_session(cfg: Config, app_name: str = "recospark") -> SparkSession:
    """The SparkSession of one recospark run: the conf's `spark:` settings and recospark's defaults fill only what
    spark-submit (or an already running JVM) left unset, and a setting that can no longer take effect is a warning.

    On a cluster master it also waits for the first executor (see `wait_for_executors`), so a
    mis-sized job fails with a message instead of hanging.
    """
    # Python workers must run the interpreter that has numpy/numba; on a cluster the conf's
    # spark.pyspark.python (pointing into the shipped archive) takes precedence over this.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # "Closing down clientserver connection"
    jvm_running = jvm.jvm_running()
    launched, source = launched_settings()
    options, warnings = resolve_settings(cfg.spark, launched, jvm_running, cfg.runtime.log_level)
    for warning in warnings:
        log.warning(warning)
    builder = SparkSession.builder
    # spark-submit names an application after its file (jobs/train.py -> "train.py") unless
    # given --name: keep a --name, replace the file name with ours.
    submitted_name = launched.get("spark.app.name")
    if not submitted_name or submitted_name == os.path.basename(sys.argv[0] if sys.argv else ""):
        builder = builder.appName(app_name)
    for key, value in options.items():
        builder = builder.config(key, value)
    log.debug("session options (over %s): %s", source, options)
    try:
        spark = builder.getOrCreate()
        configure(spark, cfg)
    except Exception as err:
        refused = refused_setting(err)
        if refused is None:
            raise
        raise ConfigError(refused) from err
    wait_for_executors(spark)
    return spark


_REFUSED = re.compile(r"\[INVALID_CONF_VALUE[.\w]*\] (.*?) ?(?:SQLSTATE: \w+)?$", re.MULTILINE)
_REFUSED_KEY = re.compile(r'in the config "([^"]+)"')


def refused_setting(err: BaseException) -> str | None:
    """One line naming the Spark setting Spark refused at session start (INVALID_CONF_VALUE), or None.

    Spark checks a SQL setting's value only once the session applies it, after the JVM started:
    the user fixes it in the conf's `spark:` section or spark-submit's --conf.
    """
    found = _REFUSED.search(str(err))
    if found is None:
        return None
    key = _REFUSED_KEY.search(found.group(1))
    where = f"spark: {key.group(1)}" if key else "spark: section"
    return f"{where}: {found.group(1).strip()} (set in the conf's spark: section or spark-submit --conf)"


def configure(spark: SparkSession, cfg: Config) -> None:
    """Per-run settings that also apply to a session someone else built (tests, notebooks)."""
    spark.sparkContext.setLogLevel(cfg.runtime.log_level)
    # No checkpoint dir here: each stage sets its own under runtime.checkpoint_dir and removes it
    # when it ends (recospark.runtime); ALS with maxIter >= 20 needs one or dies with StackOverflowError.
    spark.conf.set("spark.sql.session.timeZone", "UTC")


def wait_for_executors(spark: SparkSession, timeout: float | None = None) -> None:
    """On a cluster master with static allocation, wait for the first executor; fail after
    `timeout` seconds (RECOSPARK_EXECUTOR_WAIT_SECONDS, default 180; 0 waits forever) instead
    of Spark's endless "Initial job has not accepted any resources"."""
    sc = spark.sparkContext
    master = sc.master or ""
    conf = sc.getConf()
    if master.startswith("local") or conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return
    if timeout is None:
        try:
            timeout = float(os.environ.get(EXECUTOR_WAIT_ENV, EXECUTOR_WAIT_DEFAULT))
        except ValueError:
            timeout = EXECUTOR_WAIT_DEFAULT
    if timeout <= 0:
        return
    started = time.monotonic()
    while jvm.registered_executors(spark) == 0:
        if time.monotonic() - started > timeout:
            sizing = ", ".join(f"{k}={conf.get(k, '(unset)')}" for k in SIZING_KEYS)
            message = (
                f"no executor registered within {timeout:.0f} s on {master}: no worker can host an executor of "
                f"this size, or the cluster is busy ({sizing}). Size the executors to the workers (spark-submit "
                f"--executor-cores/--executor-memory/--total-executor-cores, or the conf's spark: section), "
                f"or set {EXECUTOR_WAIT_ENV}=0 to wait for a busy cluster"
            )
            spark.stop()
            raise ExecutorsUnavailable(message)
        time.sleep(0.5)
    log.debug("first executor after %.1f s", time.monotonic() - started)
