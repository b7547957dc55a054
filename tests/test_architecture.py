"""The shape of the code: one-way imports, no cycles, one source per default, the model table."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pyspark.ml.param import Param, TypeConverters

from recospark.config import Config, ModelSection, model_names, model_section
from recospark.models.params import conf_key, knob
from recospark.models.sgd.estimator import SGDMatrixFactorization
from recospark.models.table import MODELS

PACKAGE = Path(__file__).resolve().parents[1] / "recospark"
# Stage modules (and the command that drives them): library code must never import these.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
STAGE_MODULES = {m for m in MODULES if m.startswith("recospark.stages")} | {"recospark.cli"}


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(imported recospark module, node) for every import; `from recospark import io` -> recospark.io."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name.startswith("recospark")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recospark"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((sub if sub in MODULES else node.module, node))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {target for target, _ in _imports(tree) if target in MODULES and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle through the package
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    assert _cycle(import_graph()) is None


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_library_modules_never_import_a_stage_module():
    graph = import_graph()
    offenders = {m: sorted(graph[m] & STAGE_MODULES) for m in graph if m not in STAGE_MODULES and graph[m] & STAGE_MODULES}
    assert offenders == {}


# The optional heavy dependency: inside recospark.models.neural, functions may import torch and
# safetensors (the `neural` extra) and the neural modules that import them at their top, so the
# package, the recipes' Params and the model table load without the extra (and without torch's
# seconds-long import).
_NEURAL = "recospark.models.neural"
_OPTIONAL = ("torch", "safetensors", _NEURAL)


def _optional_import(module: str, node: ast.AST) -> bool:
    if not module.startswith(_NEURAL):
        return False
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [getattr(node, "module", None) or ""]
    return all(any(n == o or n.startswith(o + ".") for o in _OPTIONAL) for n in names)


def test_imports_sit_at_module_top():
    """No import hides inside a function (an optional heavy dependency would be the only excuse)."""
    nested = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and not _optional_import(name, node):
                        nested.append(f"{name}:{node.lineno}")
    assert nested == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported as the first recospark module (the others evicted from sys.modules before
    each import), in a fresh interpreter: a cycle fails for some start module with an ImportError."""
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m == 'recospark' or m.startswith('recospark.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append((name, repr(err)))\n"
        "print(failed)\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *sorted(MODULES)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the model table


def test_model_table_and_config_sections_name_the_same_models():
    assert model_names() == tuple(MODELS)
    assert all(isinstance(Config().model_conf(n), ModelSection) for n in MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_models_config_section_is_its_knobs(name):
    """The section is generated from the table entry: one field per knob, the knob's default."""
    spec = MODELS[name]
    section = Config().model_conf(name)
    knobs = {k.key: k.default for k in spec.knobs()}
    assert set(type(section).model_fields) == set(knobs)
    assert section.model_dump() == knobs
    for k in spec.knobs():
        assert k.param is None or k.key == conf_key(k.param)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_knob_defaults_are_the_estimators_own_unless_the_table_overrides_them(name):
    spec = MODELS[name]
    instance = (spec.schema or spec.estimator)()
    for k in spec.knobs():
        if k.param is None:
            continue
        expected = spec.defaults[k.param] if k.param in spec.defaults else instance.getOrDefault(k.param)
        assert k.default == (tuple(expected) if isinstance(expected, list) else expected), f"{name}.{k.key}"


def test_local_yaml_documents_every_knob_with_its_default():
    """conf/local.yaml lists every key with its default: for models, exactly the table's knobs."""
    raw = yaml.safe_load((PACKAGE.parent / "conf" / "local.yaml").read_text(encoding="utf-8"))
    for name, spec in MODELS.items():
        documented = {k: tuple(v) if isinstance(v, list) else v for k, v in (raw.get(name) or {}).items()}
        assert documented == {k.key: k.default for k in spec.knobs()}, name


@pytest.mark.parametrize("name", sorted(n for n, s in MODELS.items() if s.estimator.__module__.startswith("recospark")))
def test_keyword_signatures_repeat_no_default(name):
    """recospark's estimators take `None` keyword defaults: a default lives in `_setDefault` only."""
    cls = MODELS[name].estimator
    for method in (cls.__init__, getattr(cls, "setParams", None)):
        if method is None:
            continue
        defaults = {k: p.default for k, p in inspect.signature(method).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert all(v is None for v in defaults.values()), f"{cls.__name__}.{method.__name__}: {defaults}"


class _FooSGD(SGDMatrixFactorization):
    """A test-only estimator with one more Param, declared once."""

    fooBar: Param[float] = knob("fooBar", "a test-only knob", TypeConverters.toFloat, ge=0)

    def __init__(self, *args: Any) -> None:
        super().__init__()
        self._setDefault(fooBar=0.5)


def test_a_new_param_is_declared_once_and_reaches_config_table_and_engine():
    spec = dataclasses.replace(MODELS["sgd"], name="foo_sgd", estimator=_FooSGD)
    knobs = {k.key: k for k in spec.knobs()}
    assert knobs["foo_bar"].param == "fooBar" and knobs["foo_bar"].default == 0.5
    section = model_section(spec)
    assert section().model_dump()["foo_bar"] == 0.5
    assert section(foo_bar=2.0).model_dump()["foo_bar"] == 2.0
    with pytest.raises(ValidationError, match=r"foo_sgd.foo_bar must be >= 0"):
        section(foo_bar=-1.0)
    values = {**section().model_dump(), "foo_bar": 3.0}
    assert spec.param_values(values)["fooBar"] == 3.0

    class Values:
        def model_values(self, name: str) -> dict[str, Any]:
            return values

    estimator = spec.build(Values())
    assert estimator.getOrDefault("fooBar") == 3.0
    engine = estimator.dsgd_params()
    assert getattr(engine, "extra", {}).get("fooBar", getattr(engine, "fooBar", None)) == 3.0


def test_a_renamed_or_unknown_key_is_an_error_not_a_silent_default():
    with pytest.raises(ValueError, match=r"sgd: keys \['reg'\] name no knob"):
        MODELS["sgd"].param_values({"reg": 0.1})


def test_fitted_sgd_model_carries_no_training_params():
    """Estimator and model Params split as pyspark splits _ALSParams / _ALSModelParams."""
    est = MODELS["sgd"].estimator
    model = MODELS["sgd"].model
    est_params = {p.name for p in est().params}
    model_params = {p.name for p in model().params}
    assert {"stepSize", "maxIter", "regParam", "ratingCol"} <= est_params
    assert model_params == {"userCol", "itemCol", "predictionCol", "coldStartStrategy"}
