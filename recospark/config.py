"""One frozen, validated configuration object, loaded once from YAML plus `--set` overrides.

Stages take the object, not a path, so tests build it inline. Every error names the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from recospark.errors import ConfigError
from recospark.models.table import MODELS, Knob, ModelSpec
from recospark.paths import join_path

MOVIELENS_NAMES = (
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest-small",
    "ml-latest",
)
CANONICAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConf(_Section):
    """`data.*`: where the MovieLens files come from and how strict ingest is with them."""

    source: str = Field("ml-100k", description="MovieLens name (downloaded once) or a local folder")
    cache_dir: str = Field("~/.cache/recospark", description="where downloads are kept")
    layout: Literal["auto", "ml-100k", "ml-1m", "ml-10m", "csv"] = "auto"
    download: bool = Field(True, description="false: never touch the network")
    max_extract_bytes: int = Field(8 << 30, gt=0, description="refuse archives larger than this")
    canonical_splits: Literal["auto", "always", "never"] = Field(
        "auto", description="ml-100k's u1..u5/ua/ub files: ingested into canonical/ when split.strategy is canonical (auto)"
    )
    max_rejected_fraction: float = Field(
        0.1, ge=0, le=1, description="ingest fails (and publishes nothing) when more rating lines than this are rejected"
    )


class OutputConf(_Section):
    """`output.*`: where every stage publishes, how many versions stay, when another run's lease counts as abandoned."""

    root: str = "out/local"
    keep_versions: int = Field(2, ge=1, description="published versions kept per output")
    abandoned_after_seconds: int = Field(
        600, ge=1, description="a lease (another run's claim, write or pin) on another host without a heartbeat for this long is abandoned"
    )


class SplitConf(_Section):
    """`split.*`: how ratings become train and test; the same settings and seed give the same split."""

    strategy: Literal["random", "stratified", "chronological", "leave_last_k", "canonical"] = "random"
    name: str | None = Field(None, description="folder under splits/; defaults to the strategy")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    min_user_ratings: int = Field(5, ge=2, description="stratified/leave_last_k: users below stay in train")
    time_quantile: float = Field(0.8, gt=0, lt=1, description="chronological: cut at this quantile of time")
    cutoff: datetime | None = Field(None, description="chronological: explicit UTC cut; overrides quantile")
    last_k: int = Field(1, ge=1)
    canonical: Literal["u1", "u2", "u3", "u4", "u5", "ua", "ub"] = "u1"
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept aside for early stopping and tuning")

    @property
    def effective_name(self) -> str:
        """The folder under `splits/` that later stages read: `name` if set, else the canonical file or the strategy."""
        if self.name:
            return self.name
        return self.canonical if self.strategy == "canonical" else self.strategy


class ModelSection(_Section):
    """Base of every model's section: the section's name is the model's name in `train.models`.

    The sections are not written here: `model_section` builds each from the model table entry,
    whose knobs are the estimator's Params (keys are the Params' names in snake_case).
    """


def _field_type(knob: Knob) -> Any:
    if knob.bounds.choices is not None:
        return Literal[tuple(knob.bounds.choices)]
    return knob.type | None if knob.default is None else knob.type


def model_section(spec: ModelSpec) -> type[ModelSection]:
    """The configuration section of one model, generated from its table entry's knobs: one field per
    knob (type, default and description from the Param), checked by the estimator's own bounds."""

    def check(self: ModelSection) -> ModelSection:
        problems = spec.problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(f"{spec.name}.{p}" for p in problems))
        return self

    fields: dict[str, Any] = {k.key: (_field_type(k), Field(k.default, description=k.doc)) for k in spec.knobs()}
    doc = f"The `{spec.name}` model ({spec.estimator.__name__}, a {spec.objective} model): its score is {spec.score}."
    return create_model(
        f"{spec.name.title().replace('_', '')}Conf",
        __base__=ModelSection,
        __doc__=doc,
        __validators__={"_check": model_validator(mode="after")(check)},  # type: ignore[dict-item]
        **fields,
    )


MODEL_SECTIONS: dict[str, type[ModelSection]] = {name: model_section(spec) for name, spec in MODELS.items()}


class TrainConf(_Section):
    """`train.*`: which models of the model table are fitted, and whether validation carves are scored for the pick."""

    models: tuple[str, ...] = ("als", "sgd", "global_mean", "ease")
    use_tuned: bool = Field(False, description="start from tuning/tuning.json's best params when present")
    validation: bool = Field(
        True,
        description="fit each model once more on train minus the validation carve (split.validation_fraction) and score "
        "its lists on the carve: the validation metrics `recommend` picks the recommended lists by (never the test split)",
    )
    concurrent_fits: int = Field(
        1,
        ge=1,
        description="models fitted at once, on driver threads (as CrossValidator's parallelism): small fits are mostly "
        "driver latency and overlap, big ones compete for the same cores and add their memory",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            return model_names() if v == "all" else tuple(s.strip() for s in v.split(","))
        return v

    @field_validator("models")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in v if m not in model_names()]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(model_names())}")
        if not v:
            raise ValueError("no models: name at least one")
        return v


class EvaluateConf(_Section):
    """`evaluate.*`: the cut-off k, what counts as relevant, and what happens to users and items unseen in train."""

    k: int = Field(10, ge=1)
    relevance_threshold: float | None = Field(
        4.0, description="a test rating at or above this is relevant; null: every test item is relevant"
    )
    cold_start: Literal["drop", "fallback"] = Field(
        "drop",
        description="drop: unseen users/items are left out of the metric and counted; "
        "fallback: they are predicted from the global mean plus the known bias",
    )


class RecommendConf(_Section):
    """`recommend.*`: list length and the number of users scored per vectorized block (memory, not results)."""

    n: int = Field(10, ge=1)
    user_block_size: int = Field(2048, ge=1, description="users scored per vectorized block")


class TuneConf(_Section):
    """`tune.*`: the grid search on validation carved from train (test never seen); grids use configuration keys."""

    method: Literal["train_validation_split", "cross_validator"] = "train_validation_split"
    num_folds: int = Field(3, ge=2)
    train_ratio: float = Field(0.8, gt=0, lt=1)
    grids: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "als": {"rank": [10, 20], "reg_param": [0.05, 0.1]},
            "sgd": {"rank": [64, 128], "reg_param": [0.05, 0.08]},
        }
    )


class ReportConf(_Section):
    """`report.*`: how much of the published outputs the HTML report samples."""

    sample_users: int = Field(3, ge=1, description="users shown with their top-10 next to their favourites")
    factor_sample: int = Field(30, ge=2, description="users and items in the factor heat map")


class PipelineConf(_Section):
    """`pipeline.*`: the stages `recospark pipeline` runs, in order, in one Spark application."""

    stages: tuple[Literal["ingest", "split", "tune", "train", "recommend", "evaluate", "report"], ...] = (
        "ingest",
        "split",
        "train",
        "recommend",
        "evaluate",
        "report",
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return tuple(s.strip() for s in v.split(",")) if isinstance(v, str) else v


class RuntimeConf(_Section):
    """`runtime.*`: checkpoint folder and log level; nothing here changes a published result."""

    checkpoint_dir: str | None = Field(None, description="defaults to <output.root>/_checkpoints")
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"


class GenerateConf(_Section):
    """Synthetic MovieLens-shaped data: long-tailed activity and popularity, low-rank truth plus noise, planted tastes."""

    users: int = Field(943, ge=1)
    items: int = Field(1682, ge=1)
    ratings: int = Field(100_000, ge=1, description="target count; the exact count is in the result")
    rank: int = Field(8, ge=1, description="rank of the latent truth")
    noise: float = Field(0.8, ge=0, description="std of the Gaussian noise before rounding to the scale")
    beta: float = Field(
        4.0,
        ge=0,
        description="taste strength: a user picks item i with probability ~ popularity_i * exp(beta * p_u.t_i); 0: by popularity alone",
    )
    layout: Literal["ml-100k", "ml-1m", "ml-10m", "csv"] = "csv"
    seed: int = 7
    partitions: int = Field(0, ge=0, description="0: one per ~250k ratings")
    folder: str = Field("generated", description="written under output.root; point data.source at it")


class FaultsConf(_Section):
    """Off by default: makes one chosen task fail on its first attempt, to prove retries are safe."""

    sgd_partition: int | None = Field(None, description="SGD block whose first attempt fails")
    dataframe_partition: int | None = Field(None, description="ingest partition whose first attempt fails")


class _Config(_Section):
    """Every section but the models' (which `Config` adds from the model table)."""

    data: DataConf = DataConf()
    output: OutputConf = OutputConf()
    split: SplitConf = SplitConf()
    train: TrainConf = TrainConf()
    evaluate: EvaluateConf = EvaluateConf()
    recommend: RecommendConf = RecommendConf()
    tune: TuneConf = TuneConf()
    report: ReportConf = ReportConf()
    pipeline: PipelineConf = PipelineConf()
    runtime: RuntimeConf = RuntimeConf()
    generate: GenerateConf = GenerateConf()
    faults: FaultsConf = FaultsConf()
    spark: dict[str, str] = Field(default_factory=dict, description="passed to SparkSession.builder.config")

    @field_validator("spark", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): _spark_value(val) for k, val in v.items()}
        return v

    @field_validator("spark", mode="after")
    @classmethod
    def _spark_values_spark_can_read(cls, v: dict[str, str]) -> dict[str, str]:
        # A size or count Spark cannot parse would fail after the JVM starts (a bad driver memory
        # kills it with no word on why), so the common ones are checked here.
        for key, value in v.items():
            if key.endswith(_SPARK_SIZE_SUFFIXES) and not _SPARK_SIZE.fullmatch(value):
                raise ValueError(
                    f"spark: {key}={value!r} is not a size Spark reads: a whole number with an optional unit "
                    "(b, k, m, g, t, p; e.g. 4g or 512m)"
                )
            if key in _SPARK_POSITIVE_COUNTS and not (value.strip().isdigit() and int(value) >= 1):
                raise ValueError(f"spark: {key}={value!r} must be a whole number >= 1")
        return v

    @model_validator(mode="after")
    def _grids_name_model_keys(self) -> _Config:
        for name, grid in self.tune.grids.items():
            if name not in model_names():
                raise ValueError(f"tune.grids.{name}: unknown model; known: {', '.join(model_names())}")
            params = MODELS[name].param_map()
            unknown = sorted(k for k in grid if k not in params)
            if unknown:
                raise ValueError(f"tune.grids.{name}: unknown key(s) {unknown}; known: {sorted(params)}")
            empty = sorted(k for k, values in grid.items() if not values)
            if empty:
                raise ValueError(f"tune.grids.{name}: no values for {empty}")
        return self

    def model_conf(self, name: str) -> ModelSection:
        """The config section of model `name` (a key of `train.models`)."""
        section = getattr(self, name, None)
        if not isinstance(section, ModelSection):
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(model_names())}")
        return section

    def model_values(self, name: str) -> dict[str, Any]:
        """Model `name`'s configured values by configuration key (what `ModelSpec.build` takes)."""
        return self.model_conf(name).model_dump()

    @property
    def checkpoint_dir(self) -> str:
        """Where stages checkpoint (each in a folder of its own, removed when it ends): `runtime.checkpoint_dir` or under the output root."""
        return self.runtime.checkpoint_dir or join_path(self.output.root, "_checkpoints")

    def digest(self) -> str:
        """Stable hash of every setting, recorded in manifests to tell runs apart."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: Mapping[str, Any]) -> _Config:
        """A copy with dotted `section.key` values replaced, validated again as a whole (as `--set` would be)."""
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _assign(raw, key, value)
        return _validate(raw, source="overrides")


if TYPE_CHECKING:  # the model sections are generated, so type checkers see the fixed sections only
    Config = _Config
else:
    Config = create_model(
        "Config",
        __base__=_Config,
        __doc__="The whole configuration: the fixed sections plus one section per model of the model table.",
        __module__=__name__,
        **{name: (section, section()) for name, section in MODEL_SECTIONS.items()},
    )


def model_names() -> tuple[str, ...]:
    """Every model the pipeline knows, in the model table's order."""
    return tuple(MODELS)


# Spark settings read as byte sizes (JavaUtils.byteStringAs: digits, optional unit) and as counts.
_SPARK_SIZE = re.compile(r"\s*[0-9]+(?:b|k|kb|m|mb|g|gb|t|tb|p|pb)?\s*", re.IGNORECASE)
_SPARK_SIZE_SUFFIXES = (".memory", ".memoryOverhead", ".maxResultSize", ".offHeap.size")
_SPARK_POSITIVE_COUNTS = frozenset(
    {"spark.sql.shuffle.partitions", "spark.default.parallelism", "spark.executor.cores", "spark.task.cpus", "spark.cores.max"}
)


def _spark_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _assign(raw: dict, dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if not head or (not rest and head != dotted):
        raise ConfigError(f"bad key {dotted!r}: expected section.key=value")
    if head == "spark":
        if not rest:
            raise ConfigError("bad key 'spark': use spark.<spark setting>=value, e.g. spark.spark.sql.shuffle.partitions=8")
        raw.setdefault("spark", {})[rest] = value
        return
    if head not in Config.model_fields:
        raise ConfigError(f"unknown config section {head!r} in {dotted!r}; known: {', '.join(Config.model_fields)}")
    node = raw
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling; see conf/local.yaml for every key)")
        elif e["type"] == "value_error" and (not e["loc"] or e["loc"] == ("spark",) or e["loc"][0] in MODELS):
            # a model's own check or a whole-config rule: its message names section.key already
            lines.append(str(e["ctx"]["error"]))
        elif e["type"] == "value_error":
            lines.append(f"{key}: {e['ctx']['error']} (got {e.get('input')!r})")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration in {source}: " + "; ".join(lines)


def _validate(raw: Mapping[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`a.b=c` strings to a mapping; values are YAML scalars so `0.1`, `true`, `[als,sgd]` keep their type."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set {pair!r}: expected key=value, e.g. --set als.rank=20")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read YAML (safe loader), apply `--set` overrides, validate once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass --conf conf/local.yaml or another file in conf/)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(loaded).__name__}")
        raw = loaded or {}
        source = str(p)
    for key, value in parse_overrides(overrides).items():
        _assign(raw, key, value)
    return _validate(raw, source + (" with --set overrides" if overrides else ""))
