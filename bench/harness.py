"""What every bench script shares: the MovieLens sizes, a run's configuration and its session.

A bench script measures the pipeline's own code. It loads a `recospark.config` object (a conf
file plus `--set`-style overrides), builds its session with `recospark.session.build_session`
(which fills only what spark-submit left unset), runs the stages (`recospark.stages.<stage>.run`)
or the model table's estimators (`recospark.models.table.MODELS[name].build(cfg)`), and reads
metrics through `recospark.ranking` and the evaluate stage's functions. Nothing here splits,
scores or fits; tests/test_architecture.py checks that no bench file does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCAL_CONF = ROOT / "conf" / "local.yaml"
ML100K = Path(os.environ.get("RECOSPARK_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))

# MovieLens shapes the `generate` stage writes: (users, items, ratings, layout); 100k is the real ML-100K
SIZES: dict[str, tuple[int, int, int, str] | None] = {
    "100k": None,
    "1m": (6040, 3706, 1_000_209, "ml-1m"),
    "10m": (69878, 10677, 10_000_054, "ml-10m"),
    "25m": (162541, 59047, 25_000_095, "csv"),
}


def data_overrides(size: str, root: Path) -> list[str]:
    """Overrides that point a run at `size`'s ratings with every output under `root`: the real
    ML-100K, or what `generate` writes (run `generate_missing` first) under root/generated."""
    overrides = [f"output.root={root}", f"runtime.checkpoint_dir={root}/_checkpoints"]
    shape = SIZES[size]
    if shape is None:
        return [*overrides, f"data.source={ML100K}"]
    users, items, n, layout = shape
    return [
        *overrides,
        f"generate.users={users}",
        f"generate.items={items}",
        f"generate.ratings={n}",
        f"generate.layout={layout}",
        f"data.source={root}/generated",
    ]


def spark_overrides(master: str = "local[2]", driver_memory: str = "2g", shuffle_partitions: int = 8) -> list[str]:
    """The conf's spark: section for a bench run (spark-submit's own settings still win).
    8 shuffle partitions, as in the runs README reports (conf/local.yaml's 4 suit the ML-100K demo)."""
    return [
        f"spark.spark.master={master}",
        f"spark.spark.driver.memory={driver_memory}",
        f"spark.spark.sql.shuffle.partitions={shuffle_partitions}",
        "spark.spark.ui.enabled=false",
    ]


def config(size: str, root: Path, conf: Path = LOCAL_CONF, overrides: Sequence[str] = ()):
    """The run's `recospark.config.Config`: `conf`, then the size's data overrides, then `overrides`."""
    from recospark.config import load_config

    return load_config(conf, [*data_overrides(size, root), *overrides])


def session(cfg, name: str):
    """The pipeline's session for `cfg` (`recospark.session.build_session`), Python workers on
    this interpreter, loopback only unless the environment says otherwise."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from recospark.session import build_session

    return build_session(cfg, name)


def generate_missing(spark, cfg, size: str) -> None:
    """Run the `generate` stage unless `size` is the real ML-100K or its data is already there."""
    if SIZES[size] is not None and not Path(cfg.data.source).is_dir():
        from recospark.stages import generate

        generate.run(spark, cfg)


def uptime_load() -> str:
    """The load averages `uptime` prints: figures from a shared machine are read next to them."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()
