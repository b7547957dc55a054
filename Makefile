# One-command entry points. `make demo` and `make test` install what is missing first:
# a JRE (apt-get, when `java` is absent), a virtualenv in .venv, and the package.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The real MovieLens 100K beside the project when present, else download it (checksum-verified).
DATA ?= $(if $(wildcard ../shared/data/ml-100k/u.data),../shared/data/ml-100k,ml-100k)
OUT ?= out/demo
CONF ?= conf/local.yaml
PYTEST_ARGS ?=

# Airflow lives in its own venv: its pins must not move the main venv's.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_BIN := $(AIRFLOW_VENV)/bin
# spark-submit artifacts (scripts/build_dist.sh): wheel, --py-files zip, --archives environment.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
WHEEL := dist/recospark-$(VERSION)-py3-none-any.whl
ZIP := dist/recospark.zip
ENV_ARCHIVE := dist/recospark-env.tar.gz
NEURAL_ARCHIVE := dist/recospark-env-neural.tar.gz
PY_SOURCES := $(shell find recospark -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null)
# docker/ (needs a Docker engine with compose; not available on the CI machine)
COMPOSE ?= docker compose -f docker/compose.yaml
DOCKER_CONF ?= /opt/recospark/docker/recospark.yaml
DOCKER_ARGS ?= --set output.root=/data/out/manual

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: setup java demo test check lint pipeline bench clean dist dist-full dist-neural cluster-artifacts cluster-test airflow-setup airflow-test \
	docker-check docker-up docker-submit docker-down runbook

setup: java $(VENV)/.installed

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing openjdk-17-jre-headless"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,neural]"
	$(BIN)/recospark compile
	touch $@

demo: setup
	$(BIN)/recospark pipeline --conf $(CONF) --set data.source=$(DATA) --set output.root=$(OUT)

pipeline: demo

# The whole suite, including the standalone-cluster test (needs the --py-files zip and the
# environment archive). The airflow tests skip here: they run in their own venv (airflow-test).
test: setup cluster-artifacts
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast loop while editing: lint and types, then every test not marked slow, e2e, cluster,
# airflow or browser (pyproject.toml lists the marks). No spark-submit artifacts, no cluster.
check: lint
	$(BIN)/python -m pytest -q -m "not slow and not e2e and not cluster and not airflow and not browser" $(PYTEST_ARGS)

# ruff (lint + format check) and mypy over the package; CI runs this next to the tests.
lint: setup
	$(BIN)/ruff check recospark tests bench jobs scripts dags conftest.py
	$(BIN)/ruff format --check recospark tests bench jobs scripts dags conftest.py
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run.py

# --- spark-submit packaging -------------------------------------------------------------------
# setup first: the cluster script and spark-submit's driver run on .venv/bin/python.
dist: setup $(WHEEL) $(ZIP) $(ENV_ARCHIVE)

# The environment plus the driver-only dependencies (matplotlib), for cluster deploy mode,
# where the driver runs inside the archive: dist/recospark-env-full.tar.gz.
dist-full: dist
	PYTHON=$(PYTHON) scripts/build_dist.sh env-full

# The executors' environment plus the neural extra (CPU-only torch, safetensors), for clusters
# that train or score the neural models: dist/recospark-env-neural.tar.gz, its size printed.
# `make dist` stays free of torch.
dist-neural: setup $(NEURAL_ARCHIVE)

$(NEURAL_ARCHIVE): pyproject.toml scripts/build_dist.sh
	PYTHON=$(PYTHON) scripts/build_dist.sh env-neural

cluster-artifacts: $(ZIP) $(ENV_ARCHIVE)

$(WHEEL): pyproject.toml $(PY_SOURCES)
	PYTHON=$(PYTHON) scripts/build_dist.sh wheel

$(ZIP): $(PY_SOURCES)
	PYTHON=$(PYTHON) scripts/build_dist.sh zip

# Dependencies only (the code travels in the zip): rebuilt when pyproject.toml changes.
$(ENV_ARCHIVE): pyproject.toml scripts/build_dist.sh
	PYTHON=$(PYTHON) scripts/build_dist.sh env

# Master + 2 workers on 127.0.0.1 (scripts/cluster.sh), the pipeline submitted in client mode,
# outputs compared with local mode.
cluster-test: setup cluster-artifacts
	$(BIN)/python -m pytest -m cluster tests/test_cluster.py $(PYTEST_ARGS)

# Every fenced bash block of README.md, in order, in a fresh clone of this commit
# (scripts/run_readme.py; `--list` shows which blocks run and why the others cannot here).
runbook:
	$(PYTHON) scripts/run_readme.py $(RUNBOOK_ARGS)

# --- Airflow ----------------------------------------------------------------------------------
airflow-setup: java $(AIRFLOW_VENV)/.installed

# apache-airflow-providers-apache-spark pulls pyspark-client, whose Python files overwrite
# pyspark's in site-packages (its version may differ): reinstall pyspark last so the Python
# side matches the jars that spark-submit runs.
$(AIRFLOW_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_BIN)/pip install -q --upgrade pip
	$(AIRFLOW_BIN)/pip install -q -e ".[airflow,dev]"
	$(AIRFLOW_BIN)/pip install -q --no-deps --force-reinstall \
	  "pyspark==$$($(AIRFLOW_BIN)/python -c 'import importlib.metadata as m; print(m.version("pyspark"))')"
	touch $@

airflow-test: airflow-setup
	PYSPARK_PYTHON=$(abspath $(AIRFLOW_BIN)/python) PYSPARK_DRIVER_PYTHON=$(abspath $(AIRFLOW_BIN)/python) \
	  $(AIRFLOW_BIN)/python -m pytest -m airflow tests/test_airflow.py $(PYTEST_ARGS)

# --- docker/ (not run on the CI machine: no Docker engine there) -------------------------------
# Static checks that need no engine: compose.yaml parses, build contexts and files exist, every
# published port is bound to 127.0.0.1, the Spark image matches the pyspark client.
docker-check: setup
	$(BIN)/python scripts/check_docker.py

docker-up:
	$(COMPOSE) up -d --build

# Submits the pipeline into the compose cluster from the spark-master container (client mode,
# driver in that container; the image already holds the package, so nothing is shipped).
docker-submit:
	$(COMPOSE) exec spark-master mkdir -p /data/spark-events
	$(COMPOSE) exec spark-master /opt/spark/bin/spark-submit \
	  --master spark://spark-master:7077 --deploy-mode client \
	  /opt/recospark/jobs/pipeline.py --conf $(DOCKER_CONF) $(DOCKER_ARGS)

docker-down:
	$(COMPOSE) down

clean:
	rm -rf out build dist .pytest_cache
