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

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: setup java demo test pipeline bench clean

setup: java $(VENV)/.installed

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing openjdk-17-jre-headless"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/recospark pipeline --conf $(CONF) --set data.source=$(DATA) --set output.root=$(OUT)

pipeline: demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf out build dist .pytest_cache
