"""The tutorials' neural recommenders, trained on Spark with Spark's own TorchDistributor.

PyTorch is an optional extra (``pip install 'recospark[neural]'``), so nothing imported with this
package, the generated estimators (`recospark.models.neural.estimator`) or the recipes' Params
imports torch: the model table and the config sections exist without it. torch is imported by the
modules that train and score (`distributed`, `scorer`, the recipes' networks), which only run once
a neural model is fitted or used. `require_torch` is the preflight: it finds the packages without
importing them, so a run that configures a neural model without the extra stops before Spark starts.

Layout (the contract between the engine and the recipes is `recipe.py`):

- `recipe.py`      the `Recipe` protocol and `TrainShard`
- `recipes/`       one module per family of networks; `recipes/__init__.py` is the registry
- `data.py`        each rank's shard read straight from Parquet, ids mapped to embedding rows
- `distributed.py` the TorchDistributor launch and the per-rank training loop (gloo, DDP)
- `weights.py`     safetensors in and out; anything else is refused
- `estimator.py`   one pyspark.ml Estimator/Model pair per recipe, Params from the recipe
- `scorer.py`      the executors' batched scorer (`BlockScorer`) and pair predictions
"""

from __future__ import annotations

import os
from importlib.util import find_spec

from recospark.errors import UserError

__all__ = ["EXTRA", "TorchMissingError", "openmp_wait", "require_torch", "torch_available"]

EXTRA = "recospark[neural]"
# what the extra installs and the neural models import
_PACKAGES = ("torch", "safetensors")


class TorchMissingError(UserError, ImportError):
    """A neural model is configured but the `neural` extra is not installed (exit code 2)."""


def torch_available() -> bool:
    """Whether the neural extra is importable here, found without importing torch (which takes seconds)."""
    return all(find_spec(name) is not None for name in _PACKAGES)


def require_torch(model_name: str, key: str | None = "train.models") -> None:
    """Raise `TorchMissingError` (one line naming the extra) when PyTorch or safetensors is missing.

    Cheap enough for a preflight before Spark starts: the packages are looked up, not imported.
    `key` is the configuration key that asked for the model (None: the model itself is named).

    Examples
    --------
    >>> require_torch("neural_mf")  # the dev environment installs the extra
    """
    missing = [name for name in _PACKAGES if find_spec(name) is None]
    if missing:
        who = f"{key} includes {model_name}, which needs" if key else f"{model_name} needs"
        raise TorchMissingError(f"{who} PyTorch ({', '.join(missing)} not installed): pip install '{EXTRA}'")


# set when recospark chose OMP_WAIT_POLICY in this process, so a rank started from it may choose again
_OURS = "RECOSPARK_OMP_WAIT_POLICY"


def openmp_wait(spin: bool = False) -> None:
    """How torch's OpenMP threads wait between parallel regions, unless the user chose
    (OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment).

    Call before torch is first imported in a process (OpenMP reads it once).
    spin=False, PASSIVE: idle threads sleep at once. On a busy machine (other ranks, Spark tasks,
    other jobs) spinning threads made small networks' epochs many times slower than one thread.
    spin=True, OpenMP's default (a short spin, then sleep): for a process that has its cores to
    itself, such as the one local training rank; waking sleeping threads at every operation
    multiplied the step time of the small-batch networks (GMF, NeuMF; README, neural models).

    >>> import os
    >>> mine = {k: os.environ.pop(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", _OURS) if k in os.environ}
    >>> openmp_wait(); os.environ["OMP_WAIT_POLICY"]
    'PASSIVE'
    >>> openmp_wait(spin=True); "OMP_WAIT_POLICY" in os.environ
    False
    >>> os.environ.update(mine)
    """
    if os.environ.get(_OURS) == os.environ.get("OMP_WAIT_POLICY"):  # ours (or nobody's): choose again
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.pop(_OURS, None)
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or spin:
        return
    os.environ["OMP_WAIT_POLICY"] = os.environ[_OURS] = "PASSIVE"
