"""The shape of the code: one-way imports, no cycles, one source per default, the model table."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from recospark.config import Config, ModelSection, model_names
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
    assert list(MODELS) == [n for n in model_names() if n in MODELS]
    assert set(MODELS) == set(model_names())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_config_key_of_a_model_maps_to_a_param_or_is_a_setting(name):
    spec = MODELS[name]
    section = type(Config().model_conf(name))
    assert issubclass(section, ModelSection)
    assert set(section.model_fields) == set(spec.params) | set(spec.settings)


def _signature_defaults(cls: type) -> dict[str, object]:
    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and p.default is not None
    }


@pytest.mark.parametrize("name", ["sgd", "bias"])
def test_conf_defaults_estimator_defaults_and_signatures_agree(name):
    """Where the pipeline's defaults are the estimator's own (one source), all three agree."""
    spec = MODELS[name]
    estimator = spec.estimator()
    defaults = {p.name: v for p, v in estimator._defaultParamMap.items()}
    conf = Config().model_conf(name).model_dump()
    for key, value in conf.items():
        assert defaults[spec.params[key]] == value, f"{name}.{key}"
    for param, value in _signature_defaults(spec.estimator).items():
        assert defaults[param] == value, f"{spec.estimator.__name__}({param}=...)"
    set_params = {
        k: p.default for k, p in inspect.signature(spec.estimator.setParams).parameters.items() if p.default is not inspect.Parameter.empty
    }
    init = {k: p.default for k, p in inspect.signature(spec.estimator.__init__).parameters.items() if p.default is not inspect.Parameter.empty}
    assert set_params == init


def test_fitted_sgd_model_carries_no_training_params():
    """Estimator and model Params split as pyspark splits _ALSParams / _ALSModelParams."""
    est = MODELS["sgd"].estimator
    model = MODELS["sgd"].model
    est_params = {p.name for p in est().params}
    model_params = {p.name for p in model().params}
    assert {"stepSize", "maxIter", "regParam", "ratingCol"} <= est_params
    assert model_params == {"userCol", "itemCol", "predictionCol", "coldStartStrategy"}
