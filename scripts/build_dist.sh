#!/usr/bin/env bash
# Build what a Spark cluster needs to run recospark on workers that do not have it installed
# (the approach of Spark's "Python Package Management" guide):
#
#   dist/recospark-<version>-py3-none-any.whl  the package, for `pip install` on images/gateways
#   dist/recospark.zip                         the package source, for `spark-submit --py-files`
#   dist/recospark-env.tar.gz                  a venv-pack archive of the *dependencies* (numpy,
#                                              numba/llvmlite, pandas, pyarrow, pyyaml, pydantic,
#                                              matplotlib), for `--archives ...#environment`
#
# The environment is packed from a dedicated venv (.venv-dist) that holds the dependencies but
# neither pyspark (every Spark node has its own, and executors put $SPARK_HOME/python/lib/
# pyspark.zip on the workers' PYTHONPATH) nor recospark itself (the code travels in the zip, so
# a code change does not rebuild a 150 MB archive and no stale copy can shadow it).
# venv-pack keeps `bin/python` as a link to the interpreter that made the venv: workers need
# that same Python at the same path (true on this machine and on images built from docker/).
#
#   scripts/build_dist.sh [all|wheel|zip|env]     (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIST_VENV="${DIST_VENV:-.venv-dist}"
OUT="${DIST_DIR:-dist}"
mkdir -p "$OUT"

# One build at a time: other `make test` runs on this checkout may build concurrently.
exec 9>"$OUT/.build.lock"
flock 9

pip_q() {  # quiet pip; its full log only when it fails
  local log; log="$(mktemp)"
  "$@" -q >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; return 1; }
  rm -f "$log"
}

dist_venv() {
  if [ ! -f "$DIST_VENV/.installed" ] || [ pyproject.toml -nt "$DIST_VENV/.installed" ]; then
    rm -rf "$DIST_VENV"
    "$PYTHON" -m venv "$DIST_VENV"
    pip_q "$DIST_VENV/bin/pip" install --upgrade pip
    # The runtime dependencies from pyproject.toml, minus pyspark, plus the `dist` extra's tools.
    mapfile -t deps < <("$DIST_VENV/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["dist"]:
    if re.match(r"^(pyspark|py4j)\b", req.strip(), re.I) is None:
        print(req)
PY
)
    pip_q "$DIST_VENV/bin/pip" install "${deps[@]}"
    touch "$DIST_VENV/.installed"
  fi
}

build_wheel() {
  dist_venv
  local tmp; tmp="$(mktemp -d)"
  # --no-isolation would need setuptools>=68 in the dist venv; isolation fetches it from the index.
  "$DIST_VENV/bin/python" -m build --wheel --outdir "$tmp" . >"$tmp/build.log" 2>&1 \
    || { cat "$tmp/build.log" >&2; exit 1; }
  rm -f "$OUT"/recospark-*.whl
  mv "$tmp"/recospark-*.whl "$OUT/"
  rm -rf "$tmp" build
  ls -l "$OUT"/recospark-*.whl
}

build_zip() {
  # Package source only (no __pycache__), importable as `recospark` from the zip's root.
  "$PYTHON" - "$OUT/recospark.zip" <<'PY'
import os, sys, zipfile
target = sys.argv[1]
tmp = target + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for folder, dirs, files in os.walk("recospark"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                zf.write(os.path.join(folder, name))
os.replace(tmp, target)
print(f"{target}: {len(zipfile.ZipFile(target).namelist())} files")
PY
}

build_env() {
  dist_venv
  local tmp="$OUT/.tmp-recospark-env.tar.gz"
  rm -f "$tmp"
  # compress-level 1: the archive is built often and shipped over a LAN; 3x faster than 9.
  "$DIST_VENV/bin/venv-pack" -p "$DIST_VENV" -o "$tmp" --compress-level 1 -q
  chmod 644 "$tmp"
  mv "$tmp" "$OUT/recospark-env.tar.gz"
  ls -lh "$OUT/recospark-env.tar.gz"
}

case "${1:-all}" in
  all) build_wheel; build_zip; build_env ;;
  wheel) build_wheel ;;
  zip) build_zip ;;
  env) build_env ;;
  *) echo "usage: $0 [all|wheel|zip|env]" >&2; exit 2 ;;
esac
