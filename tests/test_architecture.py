"""The shape of the code: one-way imports, no cycles, one source per default, the model table."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
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
from recospark.models.sgd.settings import engine_params
from recospark.models.table import MODELS

PACKAGE = Path(__file__).resolve().parents[1] / "recospark"
# Stage modules (and the command that drives them): library code must never import these.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
STAGE_MODULES = {m for m in MODULES if m.startswith("recospark.stages")} | {"recospark.cli", "recospark.__main__"}


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


@pytest.mark.slow
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


# Py4J internals of pyspark: reached from recospark/jvm.py only (issue 20).
JVM_INTERNAL = re.compile(r"(?<![A-Za-z0-9_])_(?:jvm|jsc|gateway)(?![A-Za-z0-9_])")


def _jvm_internals(text: str) -> list[int]:
    """Lines that mention `_jvm`, `_jsc` or `_gateway`: attributes, `getattr` strings and comments alike."""
    return [n for n, line in enumerate(text.splitlines(), 1) if JVM_INTERNAL.search(line)]


def test_jvm_internals_live_in_one_module():
    mentions = {name: _jvm_internals(path.read_text(encoding="utf-8")) for name, path in MODULES.items() if name != "recospark.jvm"}
    assert {name: lines for name, lines in mentions.items() if lines} == {}
    assert _jvm_internals(MODULES["recospark.jvm"].read_text(encoding="utf-8"))  # the scan does see them there


def test_jvm_internal_scan_finds_planted_uses():
    planted = 'x = spark.sparkContext._jsc.sc()\ny = getattr(sc, "_gateway")\nz = SparkContext._jvm\nok = jvm_running(); _jvm_running = 1\n'
    assert _jvm_internals(planted) == [1, 2, 3]


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
    assert engine_params(estimator).extra["fooBar"] == 3.0


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


# --------------------------------------------------------------------------- bench/: one harness

BENCH = PACKAGE.parent / "bench"
# snake_case words (class names are read as snake_case too) that name a split, a metric, a top-N or a
# model fit: a bench file that defines a function or class named with one of them is a second pipeline.
# Bench scripts run the stages or the model table and read metrics through recospark (bench/harness.py).
_PIPELINE_WORDS = {
    *("split", "splits", "carve", "holdout", "fold", "folds"),
    *("metric", "metrics", "ndcg", "dcg", "precision", "recall", "rmse", "mae", "map", "mrr", "auc", "evaluate", "evaluation"),
    *("top", "topn", "topk", "recommend", "recommendations"),
    *("fit", "train", "tune", "tuner", "predict", "score", "scores", "transform", "model", "estimator"),
    *("als", "bpr", "warp", "ease", "svd", "puresvd", "popularity", "blend", "bias", "baseline"),
}
# Imports that mean a bench file builds its own estimator or evaluator instead of the model table's
# (`MODELS[name].build(cfg)`) and recospark's metrics.
_FOREIGN_MODULES = ("pyspark.ml.recommendation", "pyspark.ml.evaluation", "pyspark.ml.tuning")
_TABLE_CLASSES = {cls.__name__ for spec in MODELS.values() for cls in (spec.estimator, spec.model)}
# (file, name) -> why it is not a second pipeline. Keep this short: each entry is a reviewed exception.
_BENCH_ALLOWED = {
    ("suite_size.py", "mllib_top_n"): "times MLlib's own recommendForAllUsers: the comparison the pipeline's top-N is measured against",
}


def _words(name: str) -> set[str]:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return {w for w in snake.split("_") if w}


def second_pipeline(source: str) -> list[tuple[str, str]]:
    """(name, why) for everything in `source` that defines or builds what the pipeline owns."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = sorted(_words(node.name) & _PIPELINE_WORDS)
            if words:
                found.append((node.name, f"line {node.lineno}: defines {node.name} ({', '.join(words)})"))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "builder"
            and isinstance(node.value, ast.Name)
            and node.value.id == "SparkSession"
        ):
            found.append(("SparkSession.builder", f"line {node.lineno}: builds its own session (use recospark.session.build_session)"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SparkContext":
            found.append(("SparkContext", f"line {node.lineno}: builds its own SparkContext"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(_FOREIGN_MODULES):
                    found.append((alias.name, f"line {node.lineno}: imports {alias.name} (models and metrics come from recospark)"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(_FOREIGN_MODULES):
                found.append((node.module, f"line {node.lineno}: imports {node.module} (models and metrics come from recospark)"))
            for alias in node.names:
                if alias.name in _TABLE_CLASSES:
                    found.append((alias.name, f"line {node.lineno}: imports {alias.name} (build it from recospark.models.table.MODELS)"))
    return found


def test_no_bench_file_defines_its_own_split_metric_top_n_or_model():
    """Every bench script measures the pipeline's code: no split, metric, top-N, model or session of its own."""
    offences = {}
    for path in sorted(BENCH.glob("*.py")):
        found = [why for name, why in second_pipeline(path.read_text(encoding="utf-8")) if (path.name, name) not in _BENCH_ALLOWED]
        if found:
            offences[path.name] = found
    assert offences == {}


def missing_recospark_names(source: str) -> list[str]:
    """`from recospark... import name` lines of `source` whose module or name does not exist (nothing is run)."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "recospark":
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(node.module)
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{node.module}.{alias.name}")
    return missing


def test_bench_scripts_import_only_what_recospark_has():
    """A bench script is run by hand, not by the suite: a module that moved must not leave it broken."""
    broken = {p.name: m for p in sorted(BENCH.glob("*.py")) if (m := missing_recospark_names(p.read_text(encoding="utf-8")))}
    assert broken == {}
    assert missing_recospark_names("from recospark import recommend\nfrom recospark.stages import train\n") == ["recospark.recommend"]


def test_bench_exceptions_name_code_that_exists():
    """A stale exception would let the next file of that name through unread."""
    for file, name in _BENCH_ALLOWED:
        assert name in {n for n, _ in second_pipeline((BENCH / file).read_text(encoding="utf-8"))}, (file, name)


def test_bench_check_finds_a_planted_second_pipeline():
    planted = (
        "from pyspark.sql import SparkSession\n"
        "from pyspark.ml.recommendation import ALS\n"
        "from pyspark.ml.evaluation import RankingEvaluator\n"
        "import pyspark.ml.tuning\n"
        "from recospark.models.puresvd import PureSVD\n"
        "spark = SparkSession.builder.master('local[2]').getOrCreate()\n"
        "def stratified_split(df, ratio, seed): ...\n"
        "def ndcg(lists, relevant): ...\n"
        "def top_k(scores, k): ...\n"
        "def mllib_als(split, rank): ...\n"
        "class EaseModel: ...\n"
        "def run():\n"
        "    def tune_blend(parts): ...\n"
    )
    names = sorted(name for name, _ in second_pipeline(planted))
    imports = ["pyspark.ml.recommendation", "ALS", "pyspark.ml.evaluation", "pyspark.ml.tuning", "PureSVD", "SparkSession.builder"]
    assert names == sorted([*imports, "stratified_split", "ndcg", "top_k", "mllib_als", "EaseModel", "tune_blend"])
    clean = (
        "from harness import config, session\n"
        "from recospark.models.table import MODELS\n"
        "def machine(): return 'x'.split(',')\n"
        "def table(rows): ...\n"
        "def kernel_alone(train, params, cores): ...\n"
        "spark = session(config('100k', '/tmp/x'), 'bench')\n"
    )
    assert second_pipeline(clean) == []
