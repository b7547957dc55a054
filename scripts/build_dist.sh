#!/usr/bin/env bash
# Build what a Spark cluster needs to run recospark on workers that do not have it installed
# (the approach of Spark's "Python Package Management" guide):
#
#   dist/recospark-<version>-py3-none-any.whl  the package, for `pip install` on images/gateways
#   dist/recospark.zip                         the package source, for `spark-submit --py-files`
#   dist/recospark-env.tar.gz                  a venv-pack archive of what the executors' Python
#                                              workers import (numpy, numba/llvmlite, pandas,
#                                              pyarrow, pyyaml, pydantic), for `--archives ...#environment`
#   dist/recospark-env-full.tar.gz             (`env-full`, on demand) the same plus the driver-only
#                                              dependencies (matplotlib, for the report stage), for
#                                              cluster deploy mode, where the driver runs in the archive
#   dist/recospark-env-neural.tar.gz           (`env-neural`, on demand: `make dist-neural`) the executor
#                                              environment plus the `neural` extra (CPU-only torch, pinned
#                                              in pyproject.toml, and safetensors), for clusters that train
#                                              or score the neural models; `env` stays free of torch
#
# Each Spark application unpacks the archive into every executor's work dir, so it holds only
# what executors import (measured with `python -X importtime` as the workers' interpreter over a
# whole pipeline run: numpy, numba, llvmlite, pandas, pyarrow, and pydantic + pyyaml through
# recospark.config; never matplotlib), and no pip, setuptools, packaging tools or test suites.
#
# The environment is packed from a dedicated venv (.venv-dist) that holds the dependencies but
# neither pyspark (every Spark node has its own, and executors put $SPARK_HOME/python/lib/
# pyspark.zip on the workers' PYTHONPATH) nor recospark itself (the code travels in the zip, so
# a code change does not rebuild a 150 MB archive and no stale copy can shadow it).
# venv-pack keeps `bin/python` as a link to the interpreter that made the venv: workers need
# that same Python at the same path (true on this machine and on images built from docker/).
#
# The neural models' ranks run in fresh interpreters that torchrun starts next to the executors'
# Python workers; `recospark.models.neural` passes the workers' sys.path (with the --py-files zip)
# on to them, so the neural archive holds no copy of the code either.
#
#   scripts/build_dist.sh [all|wheel|zip|env|env-full|env-neural]     (default all = wheel zip env)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIST_VENV="${DIST_VENV:-.venv-dist}"
TOOLS_VENV="${TOOLS_VENV:-.venv-dist-tools}"
# Runtime dependencies the executors never import (pyproject names, lower case).
DRIVER_ONLY="${DRIVER_ONLY:-matplotlib}"
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

deps() {  # deps executor|full|neural|tools: requirement strings from pyproject.toml
  "$PYTHON" - "$1" "$DRIVER_ONLY" <<'PY'
import re, sys, tomllib
profile, driver_only = sys.argv[1], set(sys.argv[2].lower().split())
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
if profile == "tools":
    reqs = project["optional-dependencies"]["dist"]
else:
    reqs = [r for r in project["dependencies"] if re.match(r"^(pyspark|py4j)\b", r.strip(), re.I) is None]
    if profile in ("executor", "neural"):
        reqs = [r for r in reqs if re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0].lower() not in driver_only]
    if profile == "neural":
        reqs += project["optional-dependencies"]["neural"]
print("\n".join(reqs))
PY
}

make_venv() {  # make_venv DIR PROFILE: a venv with those requirements, rebuilt when pyproject.toml changes
  local dir="$1" profile="$2"
  if [ ! -f "$dir/.installed" ] || [ pyproject.toml -nt "$dir/.installed" ] || [ "$0" -nt "$dir/.installed" ]; then
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    pip_q "$dir/bin/pip" install --upgrade pip
    mapfile -t reqs < <(deps "$profile")
    pip_q "$dir/bin/pip" install "${reqs[@]}"
    if [ "$profile" != tools ]; then
      # Nothing installs packages on the executors: pip and setuptools stay out of the archive,
      # and so do the packages' own test suites and Cython sources (~90 MB: pandas/tests alone
      # is 39 MB), which nothing imports at run time.
      pip_q "$dir/bin/pip" uninstall -y pip setuptools
      find "$dir"/lib/python3*/site-packages -mindepth 2 -depth -type d -name tests -exec rm -rf {} +
      find "$dir"/lib/python3*/site-packages \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -type f -delete
    fi
    touch "$dir/.installed"
  fi
}

dist_venv() { make_venv "$TOOLS_VENV" tools; }

build_wheel() {
  dist_venv
  local tmp; tmp="$(mktemp -d)"
  # --no-isolation would need setuptools>=77 in the dist venv; isolation fetches it from the index.
  "$TOOLS_VENV/bin/python" -m build --wheel --outdir "$tmp" . >"$tmp/build.log" 2>&1 \
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

build_env() {  # build_env executor|full|neural
  local profile="$1" venv="$DIST_VENV" name="recospark-env.tar.gz"
  if [ "$profile" = full ]; then venv="$DIST_VENV-full"; name="recospark-env-full.tar.gz"; fi
  if [ "$profile" = neural ]; then venv="$DIST_VENV-neural"; name="recospark-env-neural.tar.gz"; fi
  dist_venv
  make_venv "$venv" "$profile"
  local tmp="$OUT/.tmp-$name"
  rm -f "$tmp"
  # compress-level 1: the archive is built often and shipped over a LAN; 3x faster than 9.
  "$TOOLS_VENV/bin/venv-pack" -p "$venv" -o "$tmp" --compress-level 1 -q
  chmod 644 "$tmp"
  mv "$tmp" "$OUT/$name"
  echo "$OUT/$name: $(du -h "$OUT/$name" | cut -f1) compressed, $(du -sh "$venv" | cut -f1) unpacked per executor"
}

case "${1:-all}" in
  all) build_wheel; build_zip; build_env executor ;;
  wheel) build_wheel ;;
  zip) build_zip ;;
  env) build_env executor ;;
  env-full) build_env full ;;
  env-neural) build_env neural ;;
  *) echo "usage: $0 [all|wheel|zip|env|env-full|env-neural]" >&2; exit 2 ;;
esac
