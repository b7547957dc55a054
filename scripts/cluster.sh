#!/usr/bin/env bash
# A Spark standalone cluster on this machine, from the launcher that ships inside pyspark:
# one master and $WORKERS workers, every process bound to 127.0.0.1, each started in the
# background with its PID recorded, so `stop` ends exactly those processes (and the executors
# their workers launched), whatever happened in between.
#
#   scripts/cluster.sh start            # master spark://127.0.0.1:7077 + 2 workers x 1 core x 1g
#   scripts/cluster.sh status
#   scripts/cluster.sh submit jobs/pipeline.py --conf conf/local.yaml --set output.root=out/cluster
#   scripts/cluster.sh stop
#
# Environment (defaults in brackets):
#   CLUSTER_DIR   [out/cluster]   pids/, logs/, work/ (executor stdout/stderr), master.url
#   MASTER_PORT   [7077]          master RPC port; `start` fails if it is taken
#   WORKERS [2]  WORKER_CORES [1]  WORKER_MEMORY [1g]
#   PYTHON        [.venv/bin/python]  the driver's interpreter (client mode); has pyspark + recospark
#   DIST          [dist]          where `make dist` put recospark.zip and recospark-env.tar.gz
#   SUBMIT_OPTS   []              extra spark-submit options for `submit`, e.g. "--conf spark.eventLog.enabled=true"
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/out/cluster}"
MASTER_PORT="${MASTER_PORT:-7077}"
WORKERS="${WORKERS:-2}"
WORKER_CORES="${WORKER_CORES:-1}"
WORKER_MEMORY="${WORKER_MEMORY:-1g}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DIST="${DIST:-$ROOT/dist}"
START_TIMEOUT="${START_TIMEOUT:-90}"

mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
PID_DIR="$CLUSTER_DIR/pids"
LOG_DIR="$CLUSTER_DIR/logs"
WORK_DIR="$CLUSTER_DIR/work"

# Loopback only: RPC, block manager and web UIs all bind to SPARK_LOCAL_IP.
export SPARK_LOCAL_IP=127.0.0.1
export SPARK_MASTER_HOST=127.0.0.1
# No REST submission server on the master (port 6066): submissions go through spark-submit only.
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
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
  echo "cluster up: $url with $WORKERS workers x $WORKER_CORES core(s) x $WORKER_MEMORY; master UI http://127.0.0.1:$ui_port; pids in $PID_DIR"
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
  echo "cluster stopped (${#pids[@]} processes)"
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
  # shellcheck disable=SC2086
  exec "$SPARK_HOME/bin/spark-submit" \
    --master "$url" --deploy-mode client \
    --archives "$DIST/recospark-env.tar.gz#environment" \
    --py-files "$DIST/recospark.zip" \
    --conf spark.pyspark.python=./environment/bin/python \
    --conf spark.pyspark.driver.python="$PYTHON" \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --driver-memory 1g --executor-memory 768m --executor-cores 1 --total-executor-cores "$((WORKERS * WORKER_CORES))" \
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
