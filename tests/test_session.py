"""recospark.session: spark-submit's settings win over the conf file's `spark:` section, which
only fills what is unset; settings that need a JVM restart are warned about; start-up is quiet.

The first tests are pure (no Spark). The last two start real drivers in fresh processes: one
through pyspark's own bin/spark-submit with `--master local[1]`, one as a bare Python process
(pyspark starts the JVM itself), each running a tiny job through `build_session`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recospark import jvm
from recospark import session as S

ROOT = Path(__file__).resolve().parents[1]


def test_spark_submit_values_win_and_conf_fills_the_rest():
    launched = {"spark.sql.shuffle.partitions": "400", "spark.master": "local[1]"}
    conf = {"spark.sql.shuffle.partitions": "8", "spark.default.parallelism": "4", "spark.ui.enabled": "false"}
    options, warnings = S.resolve_settings(conf, launched, jvm_running=True)
    assert "spark.sql.shuffle.partitions" not in options  # spark-submit's 400 stays
    assert options["spark.default.parallelism"] == "4" and options["spark.ui.enabled"] == "false"
    assert warnings == []


def test_jvm_start_settings_warn_with_the_flag_under_spark_submit():
    conf = {"spark.driver.memory": "4g", "spark.driver.extraJavaOptions": "-Dx=1", "spark.executor.memory": "2g"}
    options, warnings = S.resolve_settings(conf, {}, jvm_running=True)
    assert options["spark.executor.memory"] == "2g"  # read when executors start: still applies
    assert "spark.driver.memory" not in options and "spark.driver.extraJavaOptions" not in options
    assert any("spark.driver.memory=4g" in w and "--driver-memory 4g" in w for w in warnings), warnings
    assert any('--driver-java-options "-Dx=1"' in w for w in warnings), warnings
    # Given to spark-submit already: kept, and nothing to warn about.
    options, warnings = S.resolve_settings({"spark.driver.memory": "4g"}, {"spark.driver.memory": "2g"}, jvm_running=True)
    assert warnings == [] and "spark.driver.memory" not in options


def test_bare_run_applies_driver_settings_and_the_log4j2_file():
    options, warnings = S.resolve_settings(
        {"spark.driver.memory": "3g", "spark.driver.extraJavaOptions": "-Dx=1"}, {}, jvm_running=False, log_level="ERROR"
    )
    assert warnings == [] and options["spark.driver.memory"] == "3g"
    java = options["spark.driver.extraJavaOptions"]
    assert java.startswith("-Dx=1 ") and f"-Dlog4j2.configurationFile={S.LOG4J2_FILE.as_uri()}" in java
    assert "-Drecospark.logLevel=ERROR" in java
    # A log4j2 file chosen by the user (conf or spark-defaults.conf) is left alone.
    options, _ = S.resolve_settings({}, {"spark.driver.extraJavaOptions": "-Dlog4j2.configurationFile=/etc/mine"}, jvm_running=False)
    assert "spark.driver.extraJavaOptions" not in options
    assert S.LOG4J2_FILE.is_file()


def test_no_progress_bars_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert S.defaults()["spark.ui.showConsoleProgress"] == "false"
    options, _ = S.resolve_settings({}, {}, jvm_running=True)
    assert options["spark.ui.showConsoleProgress"] == "false"


def test_spark_defaults_and_submit_args_are_read(tmp_path, monkeypatch):
    (tmp_path / "spark-defaults.conf").write_text(
        "# comment\nspark.sql.shuffle.partitions   300\nspark.executor.memory=3g\nspark.eventLog.dir: file:///x\n\n"
    )
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.enabled=true --conf=spark.a=b pyspark-shell")
    monkeypatch.setattr(jvm, "jvm_running", lambda: False)
    settings, _ = S.launched_settings()
    assert settings == {
        "spark.sql.shuffle.partitions": "300",
        "spark.executor.memory": "3g",
        "spark.eventLog.dir": "file:///x",
        "spark.ui.enabled": "true",
        "spark.a": "b",
    }


# What Spark 4 raises when a session applies a SQL setting it cannot read (the JVM runs by then).
REFUSED = (
    "[INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'maybe' in the config \"spark.sql.ansi.enabled\" is invalid. "
    "It should be a/an 'boolean' value. SQLSTATE: 22022\n\nJVM stacktrace:\norg.apache.spark.SparkIllegalArgumentException: ..."
)


def test_a_setting_spark_refuses_is_one_line_naming_it():
    line = S.refused_setting(RuntimeError(REFUSED))
    assert line == (
        "spark: spark.sql.ansi.enabled: The value 'maybe' in the config \"spark.sql.ansi.enabled\" is invalid. "
        "It should be a/an 'boolean' value. (set in the conf's spark: section or spark-submit --conf)"
    )
    assert S.refused_setting(RuntimeError("Java gateway process exited")) is None


@pytest.mark.slow
def test_cli_exits_2_naming_a_setting_spark_refuses(tmp_path, tiny_movielens):
    """The real refusal, end to end: Spark checks the value after its JVM started, and the console
    still prints one line naming the key, exit 2."""
    argv = ["ingest", "--set", f"data.source={tiny_movielens}", "--set", f"output.root={tmp_path / 'out'}"]
    argv += ["--set", "spark.spark.sql.ansi.enabled=maybe", "--set", "spark.spark.ui.enabled=false"]
    proc = subprocess.run([sys.executable, "-m", "recospark", *argv], env=_env(), capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith("recospark: error: spark: spark.sql.ansi.enabled: The value 'maybe'"), last
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "ratings").exists()


PROBE = r"""
import json, sys
from recospark.config import load_config
from recospark.session import build_session

cfg = load_config(None, [
    "output.root=" + sys.argv[1],
    "spark.spark.sql.shuffle.partitions=8",
    "spark.spark.driver.memory=1536m",
    "spark.spark.ui.enabled=false",
    "spark.spark.driver.host=127.0.0.1",
    "spark.spark.driver.bindAddress=127.0.0.1",
])
spark = build_session(cfg, "recospark-probe")
sc = spark.sparkContext
df = spark.range(1000)
rows = df.groupBy((df.id % 7).alias("k")).count().collect()
print("PROBE " + json.dumps({
    "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
    "driver_memory": sc.getConf().get("spark.driver.memory", None),
    "max_heap_mb": sc._jvm.java.lang.Runtime.getRuntime().maxMemory() // (1 << 20),
    "progress": sc.getConf().get("spark.ui.showConsoleProgress", None),
    "app_name": sc.appName,
    "groups": len(rows),
}))
spark.stop()
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "PYSPARK_SUBMIT_ARGS"))}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    return env


def _probe(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])


@pytest.mark.slow
def test_spark_submit_conf_wins_over_the_conf_file(tmp_path):
    import pyspark

    spark_home = Path(pyspark.__file__).resolve().parent
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cmd = [
        str(spark_home / "bin" / "spark-submit"),
        "--master",
        "local[1]",
        "--conf",
        "spark.sql.shuffle.partitions=400",
        "--name",
        "from-spark-submit",
        str(probe),
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**_env(), "SPARK_HOME": str(spark_home)})
    result = _probe(proc)
    assert result["shuffle_partitions"] == "400", result  # not the conf file's 8
    assert result["app_name"] == "from-spark-submit", result  # --name kept
    assert result["progress"] == "false", result  # stdout is a pipe: no progress bars
    assert result["driver_memory"] is None and result["max_heap_mb"] < 1200, result  # 1g default JVM
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout.
    output = proc.stdout + proc.stderr
    assert "spark.driver.memory=1536m" in output and "--driver-memory 1536m" in output, output[-3000:]
    assert "[Stage " not in output


@pytest.mark.slow
def test_bare_run_starts_the_jvm_with_the_conf_and_quietly(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = subprocess.run(
        [sys.executable, str(probe), str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env()
    )
    result = _probe(proc)
    assert result["shuffle_partitions"] == "8" and result["app_name"] == "recospark-probe", result
    assert result["driver_memory"] == "1536m" and result["max_heap_mb"] > 1200, result  # the conf's driver memory applied
    noisy = [ln for ln in proc.stderr.splitlines() if " INFO " in ln or "log4j profile" in ln or "NativeCodeLoader" in ln]
    assert noisy == [], "\n".join(noisy[:20])
