"""One frozen, validated configuration object, loaded once from YAML plus `--set` overrides.

Stages take the object, not a path, so tests build it inline. Every error names the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recospark.errors import ConfigError
from recospark.models.baselines import BIAS_DEFAULTS
from recospark.models.puresvd import PURESVD_DEFAULTS
from recospark.models.sgd.params import SGD_DEFAULTS
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
    root: str = "out/local"
    keep_versions: int = Field(2, ge=1, description="published versions kept per output")


class SplitConf(_Section):
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
        if self.name:
            return self.name
        return self.canonical if self.strategy == "canonical" else self.strategy


class ModelSection(_Section):
    """Base of every model's section: the section's name is the model's name in `train.models`.

    Keys are the pipeline's names for the model's Params (recospark.models.table maps them).
    """


class ALSConf(ModelSection):
    """Spark MLlib ALS on explicit ratings (predicts ratings)."""

    rank: int = Field(10, ge=1)
    max_iter: int = Field(20, ge=1)
    reg_param: float = Field(0.1, ge=0)
    nonnegative: bool = False
    seed: int = 42
    num_blocks: int = Field(4, ge=1)
    checkpoint_interval: int = Field(5, ge=1)
    curve_iters: tuple[int, ...] = Field(
        (),
        description="train records ALS's RMSE curve by refitting at these maxIter values (and at max_iter) on "
        "train minus the validation carve, e.g. [1, 5, 10]: one extra ALS fit per point; () skips it",
    )


class ALSImplicitConf(ModelSection):
    """Spark MLlib ALS with implicitPrefs: ratings as confidence 1 + alpha * r (ranks items).

    Defaults chosen on the validation carve of ML-100K's top-N protocol (bench/ranking_protocol.md).
    """

    rank: int = Field(30, ge=1)
    max_iter: int = Field(15, ge=1)
    reg_param: float = Field(0.2, ge=0)
    alpha: float = Field(0.1, ge=0)
    nonnegative: bool = False
    seed: int = 42
    num_blocks: int = Field(4, ge=1)
    checkpoint_interval: int = Field(5, ge=1)


def _sgd(param: str) -> Any:
    return SGD_DEFAULTS[param]


class SGDConf(ModelSection):
    """recospark's DSGD matrix factorization on explicit ratings (squared loss); defaults are the estimator's."""

    rank: int = Field(_sgd("rank"), ge=1)
    max_iter: int = Field(_sgd("maxIter"), ge=1, description="epochs")
    reg_param: float = Field(_sgd("regParam"), ge=0, description="L2 on factors")
    bias_reg_param: float = Field(_sgd("biasRegParam"), ge=0, description="L2 on biases")
    step_size: float = Field(_sgd("stepSize"), gt=0)
    step_decay: float = Field(_sgd("stepDecay"), gt=0, le=1)
    schedule: Literal["decay", "bold_driver"] = _sgd("schedule")
    num_blocks: int = Field(_sgd("numBlocks"), ge=1, description="B: B x B outer rating blocks, Spark-level strata")
    inner_blocks: int = Field(_sgd("innerBlocks"), ge=1, description="K: inner blocks per outer block; a task's threads run them")
    threads: int = Field(_sgd("threads"), ge=0, description="kernel threads per task; 0: the executor's cores")
    tasks: int = Field(_sgd("tasks"), ge=0, description="Spark tasks per stratum; 0: 1 in local mode, else min(B, executors)")
    init_std: float = Field(_sgd("initStd"), gt=0)
    seed: int = _sgd("seed")
    early_stopping_rounds: int = Field(_sgd("earlyStoppingRounds"), ge=0, description="0 disables early stopping")
    checkpoint_interval: int = Field(_sgd("checkpointInterval"), ge=1, description="epochs between lineage cuts")


class SGDRankConf(ModelSection):
    """The same DSGD engine with a top-N ranking loss (positives vs sampled negatives).

    Defaults (BPR) chosen on the validation carve of ML-100K's top-N protocol (bench/ranking_protocol.md).
    """

    loss: Literal["bpr", "warp"] = "bpr"
    rank: int = Field(128, ge=1)
    max_iter: int = Field(110, ge=1, description="epochs")
    reg_param: float = Field(0.02, ge=0, description="L2 on factors")
    bias_reg_param: float = Field(0.01, ge=0, description="L2 on item biases")
    step_size: float = Field(0.01, gt=0)
    step_decay: float = Field(1.0, gt=0, le=1)
    schedule: Literal["decay", "bold_driver"] = "decay"
    num_blocks: int = Field(2, ge=1)
    inner_blocks: int = Field(_sgd("innerBlocks"), ge=1)
    threads: int = Field(_sgd("threads"), ge=0)
    tasks: int = Field(_sgd("tasks"), ge=0)
    init_std: float = Field(0.1, gt=0)
    seed: int = 42
    num_negatives: int = Field(5, ge=1, description="bpr: negatives per positive")
    positive_threshold: float = Field(0.0, ge=0, description="ratings >= this are positives; 0: every rated item")
    block_weighting: bool = Field(True, description="unbiased block-restricted negatives (see recospark/models/sgd/ranking.py)")
    margin: float = Field(1.0, ge=0, description="warp: margin")
    max_trials: int = Field(100, ge=1, description="warp: negatives tried per positive")
    max_norm: float = Field(0.0, ge=0, description="warp: project factor rows to this norm; 0 disables (1.5 for warp)")
    early_stopping_rounds: int = Field(0, ge=0, description="0: train max_iter epochs (tune picks max_iter on NDCG)")
    checkpoint_interval: int = Field(5, ge=1)


class PureSVDConf(ModelSection):
    """PureSVD (Cremonesi et al. 2010): truncated SVD of the user x item matrix, a top-N baseline."""

    rank: int = Field(PURESVD_DEFAULTS["rank"], ge=1)
    binary: bool = Field(PURESVD_DEFAULTS["binary"], description="true: 1 for every rated item instead of the rating")


class BlendConf(ModelSection):
    """A weighted blend of other models' per-user standardized scores (recospark/models/blend.py).

    Defaults: the blend chosen on the validation carve of ML-100K's top-N protocol.
    """

    components: tuple[str, ...] = Field(("als_implicit", "sgd_rank", "puresvd"), description="models blended")
    weights: tuple[float, ...] = Field((0.3, 0.6, 0.1), description="one weight >= 0 per component")

    @model_validator(mode="after")
    def _aligned(self) -> BlendConf:
        if len(self.weights) != len(self.components):
            raise ValueError(f"{len(self.weights)} weights for {len(self.components)} components")
        if any(w < 0 for w in self.weights) or not any(self.weights):
            raise ValueError("weights must be >= 0 and not all 0")
        if "blend" in self.components:
            raise ValueError("a blend cannot contain itself")
        return self


class BiasConf(ModelSection):
    """Regularized user+item bias baseline (Koren 2008): b_i, then b_u on the residual."""

    reg_item: float = Field(BIAS_DEFAULTS["regItem"], ge=0)
    reg_user: float = Field(BIAS_DEFAULTS["regUser"], ge=0)


class GlobalMeanConf(ModelSection):
    """The global mean rating; its top-N is the popularity list (most-rated train items first)."""


class TrainConf(_Section):
    models: tuple[str, ...] = ("als", "sgd", "global_mean", "bias")
    use_tuned: bool = Field(False, description="start from tuning/tuning.json's best params when present")

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
    n: int = Field(10, ge=1)
    user_block_size: int = Field(2048, ge=1, description="users scored per vectorized block")


class TuneConf(_Section):
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
    sample_users: int = Field(3, ge=1, description="users shown with their top-10 next to their favourites")
    factor_sample: int = Field(30, ge=2, description="users and items in the factor heat map")


class PipelineConf(_Section):
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
    checkpoint_dir: str | None = Field(None, description="defaults to <output.root>/_checkpoints")
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"


class GenerateConf(_Section):
    """Synthetic MovieLens-shaped data: long-tailed activity and popularity, low-rank truth plus noise."""

    users: int = Field(943, ge=1)
    items: int = Field(1682, ge=1)
    ratings: int = Field(100_000, ge=1, description="target count; the exact count is in the result")
    rank: int = Field(8, ge=1, description="rank of the latent truth")
    noise: float = Field(0.8, ge=0, description="std of the Gaussian noise before rounding to the scale")
    layout: Literal["ml-100k", "ml-1m", "ml-10m", "csv"] = "csv"
    seed: int = 7
    partitions: int = Field(0, ge=0, description="0: one per ~250k ratings")
    folder: str = Field("generated", description="written under output.root; point data.source at it")


class FaultsConf(_Section):
    """Off by default: makes one chosen task fail on its first attempt, to prove retries are safe."""

    sgd_partition: int | None = Field(None, description="SGD block whose first attempt fails")
    dataframe_partition: int | None = Field(None, description="ingest partition whose first attempt fails")


class Config(_Section):
    data: DataConf = DataConf()
    output: OutputConf = OutputConf()
    split: SplitConf = SplitConf()
    als: ALSConf = ALSConf()
    als_implicit: ALSImplicitConf = ALSImplicitConf()
    sgd: SGDConf = SGDConf()
    sgd_rank: SGDRankConf = SGDRankConf()
    puresvd: PureSVDConf = PureSVDConf()
    blend: BlendConf = BlendConf()
    bias: BiasConf = BiasConf()
    global_mean: GlobalMeanConf = GlobalMeanConf()
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

    @model_validator(mode="after")
    def _grids_name_model_keys(self) -> Config:
        for name, grid in self.tune.grids.items():
            if name not in model_names():
                raise ValueError(f"tune.grids.{name}: unknown model; known: {', '.join(model_names())}")
            section = type(getattr(self, name))
            unknown = sorted(k for k in grid if k not in section.model_fields)
            if unknown:
                raise ValueError(f"tune.grids.{name}: unknown key(s) {unknown}; known: {sorted(section.model_fields)}")
            empty = sorted(k for k, values in grid.items() if not values)
            if empty:
                raise ValueError(f"tune.grids.{name}: no values for {empty}")
        return self

    @model_validator(mode="after")
    def _blend_components_are_models(self) -> Config:
        unknown = [c for c in self.blend.components if c not in model_names()]
        if unknown:
            raise ValueError(f"blend.components: unknown model(s) {unknown}; known: {', '.join(model_names())}")
        return self

    def model_conf(self, name: str) -> ModelSection:
        """The config section of model `name` (a key of `train.models`)."""
        section = getattr(self, name, None)
        if not isinstance(section, ModelSection):
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(model_names())}")
        return section

    @property
    def checkpoint_dir(self) -> str:
        return self.runtime.checkpoint_dir or join_path(self.output.root, "_checkpoints")

    def digest(self) -> str:
        """Stable hash of every setting, recorded in manifests to tell runs apart."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _assign(raw, key, value)
        return _validate(raw, source="overrides")


def model_names() -> tuple[str, ...]:
    """Every model the pipeline knows: the Config sections that are model sections, in order."""
    names = []
    for name, info in Config.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, ModelSection):
            names.append(name)
    return tuple(names)


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
