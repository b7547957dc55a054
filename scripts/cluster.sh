#!/usr/bin/env bash
# A Spark standalone cluster on this machine, from the launcher that ships inside pyspark:
# one master and $WORKERS workers, every process bound to 127.0.0.1, each started in the
# background with its PID recorded, so `stop` ends exactly those processes (and the executors
# their workers launched), whatever happened in between.
#
#   scripts/cluster.sh start            # master spark://127.0.0.1:7077 + 2 workers x 1 core x 1g
#   scripts/cluster.sh status
#   scripts/cluster.sh submit jobs/pipeline.py --conf conf/cluster.yaml --set data.source=... --set output.root=$PWD/out/cluster
#   scripts/cluster.sh stop
#
# Environment (defaults in brackets):
#   CLUSTER_DIR   [out/standalone] pids/, logs/, work/ (executors' work dirs), events/, master.url
#   SPARK_MASTER_PORT [7077]      master RPC port (MASTER_PORT works too); `start` fails if it is taken
#   WORKERS [2]  WORKER_CORES [1]  WORKER_MEMORY [1g]
#   CLEANUP_INTERVAL [60]  CLEANUP_TTL [300]  seconds: the workers delete the work dirs of finished
#                                 applications (each holds the unpacked --archives environment,
#                                 ~470 MB per executor) once nothing in them changed for CLEANUP_TTL,
#                                 checking every CLEANUP_INTERVAL (spark.worker.cleanup.*)
#   PYTHON        [.venv/bin/python]  the driver's interpreter (client mode); has pyspark + recospark
#   DIST          [dist]          where `make dist` put recospark.zip and recospark-env.tar.gz
#   EVENTS_DIR    [$CLUSTER_DIR/events]  event logs of `submit`ted applications (spark.eventLog.dir)
#   SUBMIT_OPTS   []              extra spark-submit options for `submit`; they come last, so they win
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/out/standalone}"
MASTER_PORT="${SPARK_MASTER_PORT:-${MASTER_PORT:-7077}}"
CLEANUP_INTERVAL="${CLEANUP_INTERVAL:-60}"
CLEANUP_TTL="${CLEANUP_TTL:-300}"
WORKERS="${WORKERS:-2}"
WORKER_CORES="${WORKER_CORES:-1}"
WORKER_MEMORY="${WORKER_MEMORY:-1g}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DIST="${DIST:-$ROOT/dist}"
START_TIMEOUT="${START_TIMEOUT:-90}"

[ -x "$PYTHON" ] || { echo "cluster.sh: no Python at $PYTHON: run 'make setup' first (or set PYTHON)" >&2; exit 1; }
mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
EVENTS_DIR="${EVENTS_DIR:-$CLUSTER_DIR/events}"
PID_DIR="$CLUSTER_DIR/pids"
LOG_DIR="$CLUSTER_DIR/logs"
WORK_DIR="$CLUSTER_DIR/work"

# Loopback only: RPC, block manager and web UIs all bind to SPARK_LOCAL_IP.
export SPARK_LOCAL_IP=127.0.0.1
export SPARK_MASTER_HOST=127.0.0.1
# No REST submission server on the master (port 6066): submissions go through spark-submit only.
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
# Disks stay flat: every application unpacks the --archives environment into each executor's
# work dir; the workers delete the dirs of finished applications (never of running ones).
export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.worker.cleanup.enabled=true \
  -Dspark.worker.cleanup.interval=$CLEANUP_INTERVAL -Dspark.worker.cleanup.appDataTtl=$CLEANUP_TTL"
export SPARK_PID_DIR="$PID_DIR" SPARK_LOG_DIR="$LOG_DIR" SPARK_WORKER_DIR="$WORK_DIR"
SPARK_HOME="${SPARK_HOME:-$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
export SPARK_HOME

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {  # port_open PORT -> 0 when something listens on 127.0.0.1:PORT
  "$PYTHON" -c 'import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

alive_workers() {  # number of ALIVE workers the master's JSON endpoint reports
  "$PYTHON" -c 'import json, sys, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:%s/json/" % sys.argv[1], timeout=2) as r:
        print(sum(w.get("state") == "ALIVE" for w in json.load(r).get("workers", [])))
except Exception:
    print(0)' "$1"
}

launch() {  # launch NAME CLASS ARGS... : background spark-class (which execs java), record its PID
  local name="$1"; shift
  nohup "$SPARK_HOME/bin/spark-class" "$@" >"$LOG_DIR/$name.out" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
}

start() {
  command -v java >/dev/null 2>&1 || die "java not found (Spark needs a JRE 17+); run 'make java'"
  mkdir -p "$PID_DIR" "$LOG_DIR" "$WORK_DIR"
  if ls "$PID_DIR"/*.pid >/dev/null 2>&1; then
    die "pid files in $PID_DIR: a cluster may be running; run '$0 stop' first"
  fi
  port_open "$MASTER_PORT" && die "127.0.0.1:$MASTER_PORT is taken; set MASTER_PORT"
  local ui_port; ui_port="$(free_port)"
  launch master org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$MASTER_PORT" --webui-port "$ui_port"
  echo "$ui_port" >"$CLUSTER_DIR/master.webui.port"
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$MASTER_PORT"; do
    kill -0 "$(cat "$PID_DIR/master.pid")" 2>/dev/null || { tail -n 30 "$LOG_DIR/master.out" >&2; stop; die "master exited"; }
    ((SECONDS < deadline)) || { stop; die "master not listening after ${START_TIMEOUT}s"; }
    sleep 0.5
  done
  local url="spark://127.0.0.1:$MASTER_PORT"
  echo "$url" >"$CLUSTER_DIR/master.url"
  for i in $(seq 1 "$WORKERS"); do
    mkdir -p "$WORK_DIR/worker-$i"
    launch "worker-$i" org.apache.spark.deploy.worker.Worker \
      --host 127.0.0.1 --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
      --webui-port "$(free_port)" --work-dir "$WORK_DIR/worker-$i" "$url"
  done
  until [ "$(alive_workers "$ui_port")" -ge "$WORKERS" ]; do
    ((SECONDS < deadline)) || { tail -n 30 "$LOG_DIR"/worker-*.out >&2; stop; die "fewer than $WORKERS workers registered after ${START_TIMEOUT}s"; }
    sleep 0.5
  done
  echo "cluster up: $url with $WORKERS workers x $WORKER_CORES core(s) x $WORKER_MEMORY; master UI http://127.0.0.1:$ui_port; state in $CLUSTER_DIR"
}

descendants() {  # every descendant PID of $1 (executors are children of their worker)
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  [ -d "$PID_DIR" ] || { echo "no cluster in $CLUSTER_DIR"; return 0; }
  local pidfile pid pids=()
  # Workers first (they take their executors down with them), then the master.
  for pidfile in "$PID_DIR"/worker-*.pid "$PID_DIR"/master.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      pids+=($(descendants "$pid") "$pid")
    fi
  done
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
      local left=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
      ((left)) || break
      sleep 0.5
    done
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true; done
  fi
  rm -f "$PID_DIR"/*.pid
  # Every application is finished now, but the workers' cleanup only runs while they do: delete
  # what the applications unpacked (the environment, ~470 MB per executor) and keep their logs.
  local freed=0 entry
  for entry in "$WORK_DIR"/worker-*/app-*/*/*; do
    [ -e "$entry" ] || continue
    case "$(basename "$entry")" in stdout|stderr) continue ;; esac
    freed=$((freed + $(du -sk "$entry" | cut -f1)))
    rm -rf "$entry"
  done
  echo "cluster stopped (${#pids[@]} processes); freed $((freed / 1024)) MB of finished applications' files in $WORK_DIR (stdout/stderr kept)"
}

status() {
  local pidfile
  for pidfile in "$PID_DIR"/*.pid; do
    [ -f "$pidfile" ] || { echo "not running"; return 0; }
    local pid; pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then echo "$(basename "$pidfile" .pid) $pid running"; else echo "$(basename "$pidfile" .pid) $pid gone"; fi
  done
  [ -f "$CLUSTER_DIR/master.webui.port" ] && echo "alive workers: $(alive_workers "$(cat "$CLUSTER_DIR/master.webui.port")")"
}

submit() {  # submit APP [APP ARGS...]: client mode, code + environment shipped from dist/
  [ $# -ge 1 ] || die "usage: $0 submit jobs/<stage>.py [--conf FILE] [--set k=v ...]"
  [ -f "$DIST/recospark.zip" ] && [ -f "$DIST/recospark-env.tar.gz" ] || die "no artifacts in $DIST: run 'make dist'"
  local url; url="$(cat "$CLUSTER_DIR/master.url" 2>/dev/null || echo "spark://127.0.0.1:$MASTER_PORT")"
  mkdir -p "$EVENTS_DIR"
  # The driver JVM logs through recospark's log4j2 file from its first line (quiet start-up).
  export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:-} -Dlog4j2.configurationFile=file://$ROOT/recospark/conf/log4j2.properties"
  # These flags win over the conf file's spark: section (recospark.session), so any conf, even
  # conf/cluster.yaml's 4-core/8g executors, runs on this cluster's small workers; the event log
  # goes to a local folder instead of the conf's hdfs:///spark-history.
  # shellcheck disable=SC2086
  exec "$SPARK_HOME/bin/spark-submit" \
    --master "$url" --deploy-mode client \
    --archives "$DIST/recospark-env.tar.gz#environment" \
    --py-files "$DIST/recospark.zip" \
    --conf spark.pyspark.python=./environment/bin/python \
    --conf spark.pyspark.driver.python="$PYTHON" \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --conf spark.eventLog.dir="file://$EVENTS_DIR" \
    --driver-memory 1g --executor-memory 768m --executor-cores 1 --total-executor-cores "$((WORKERS * WORKER_CORES))" \
    --conf spark.executor.memoryOverhead=256m --conf spark.executor.instances="$WORKERS" \
    ${SUBMIT_OPTS:-} \
    "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  submit) shift; submit "$@" ;;
  *) die "usage: $0 start|stop|status|submit jobs/<stage>.py [args]" ;;
esac
