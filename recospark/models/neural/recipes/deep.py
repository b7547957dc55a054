"""The deep rating recipes: `dnn` (the tutorials' deep network on concatenated embeddings) and
`residual_mf` (biased MF plus a residual dense tower over the same embeddings).

- dnn: mu + MLP([p_u, q_i]), dense layers with ReLU and dropout, the predicted rating.
- residual_mf: mu + b_u + b_i + p_u . q_i + MLP([p_u, q_i]); the tower's output layer starts at
  zero, so the fit starts as biased MF and the tower only learns what the dot product misses.

Both train on the ratings with MSE plus an L2 penalty on the batch's embedding rows (Adam, the
engine's optimizer), with dropout after the dense layers and, optionally, on the concatenated
embeddings entering them (`embeddingDropout`, as fast.ai's embedding networks: the one knob that
moved dnn on the validation carve). They shard by rows (a rating is one independent example)
and predict a (user, item) pair from the embeddings alone, so the history arguments are unused.
Neither reduces to a dot product (the tower sees the pair), so both score on the executors
through `score`. A user unknown at fit time (-1) is scored with the mean user embedding (and no
user bias).

This module imports no torch (the recipes' Params exist without the extra); the methods import
it, and the networks live in `deep_nets.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from recospark.models.neural.recipes.mf import PairRatingMethods
from recospark.models.params import Bounds

if TYPE_CHECKING:
    import torch

    from recospark.models.neural.recipes.deep_nets import ConcatMLP, ResidualMF

__all__ = ["DNN", "RESIDUAL_MF", "DNNRecipe", "ResidualMFRecipe"]

_DOCS = {
    "embeddingDim": "length of the user and item embeddings (>= 1)",
    "hiddenLayers": "widths of the dense layers over the concatenated embeddings, in order (at least one)",
    "dropout": "dropout after every dense layer's ReLU while training, in [0, 1)",
    "embeddingDropout": "dropout on the concatenated embeddings entering the dense layers while training, in [0, 1)",
    "regParam": "L2 penalty on the embeddings (and biases) of each batch's rows, per row (>= 0)",
    "initStd": "standard deviation of the initial embeddings (> 0)",
}


def hidden_layers(hp: Mapping[str, Any]) -> list[int]:
    """`hiddenLayers` as a list of positive ints, or ValueError naming the Param."""
    widths = [int(w) for w in hp["hiddenLayers"]]
    if not widths or min(widths) < 1:
        raise ValueError(f"hiddenLayers must list at least one positive width, got {list(hp['hiddenLayers'])}")
    return widths


class _PairRecipe(PairRatingMethods):
    """What dnn and residual_mf share: rows in, MSE out, every item scored through the network."""

    name: str
    objective: Literal["rating", "ranking"] = "rating"
    shard_by: Literal["rows", "users"] = "rows"
    defaults: Mapping[str, Any]
    docs: Mapping[str, str] = MappingProxyType(_DOCS)
    bounds: Mapping[str, Bounds] = MappingProxyType(
        {
            "embeddingDim": Bounds(ge=1),
            "hiddenLayers": Bounds(ge=1),
            "dropout": Bounds(ge=0, lt=1),
            "embeddingDropout": Bounds(ge=0, lt=1),
            "regParam": Bounds(ge=0),
            "initStd": Bounds(gt=0),
        }
    )

    def check(self, hp: Mapping[str, Any]) -> list[str]:
        """Rules the bounds cannot say: at least one dense layer."""
        return [] if len(hp["hiddenLayers"]) else ["hiddenLayers must list at least one width"]

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """None: the dense tower sees the (user, item) pair, so no dot product reproduces the score."""
        return None

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items]: the predicted rating of every item (-1: the mean user embedding)."""
        import torch

        with torch.no_grad():
            scores = cast("ConcatMLP | ResidualMF", getattr(net, "module", net)).score_all(torch.from_numpy(np.asarray(users, np.int64)))
        return scores.numpy().astype(np.float32, copy=False)


class DNNRecipe(_PairRecipe):
    """The tutorials' deep network: concatenated user and item embeddings -> ReLU/dropout layers -> rating.

    Examples
    --------
    >>> DNN.name, DNN.objective, DNN.shard_by
    ('dnn', 'rating', 'rows')
    >>> sorted(DNN.docs) == sorted(k for k in DNN.defaults if k not in ("maxIter", "stepSize", "batchSize"))
    True
    """

    name = "dnn"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "embeddingDim": 32,
            "hiddenLayers": [128, 64],
            "dropout": 0.5,
            "embeddingDropout": 0.5,
            "regParam": 0.01,
            "initStd": 0.05,
            "maxIter": 10,
            "stepSize": 0.002,
            "batchSize": 1024,
        }
    )

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `ConcatMLP` whose output starts from the mean training rating (`ratingMean`)."""
        from recospark.models.neural.recipes.deep_nets import ConcatMLP

        return ConcatMLP(
            n_users,
            n_items,
            int(hp["embeddingDim"]),
            hidden_layers(hp),
            float(hp["dropout"]),
            float(hp["initStd"]),
            float(hp["ratingMean"]),
            float(hp["embeddingDropout"]),
        )


class ResidualMFRecipe(_PairRecipe):
    """Biased MF plus a residual dense tower over the embeddings (the tutorials' MF with a residual network).

    Examples
    --------
    >>> RESIDUAL_MF.name, RESIDUAL_MF.objective, RESIDUAL_MF.shard_by
    ('residual_mf', 'rating', 'rows')
    """

    name = "residual_mf"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "embeddingDim": 128,
            "hiddenLayers": [16],
            "dropout": 0.5,
            "embeddingDropout": 0.0,
            "regParam": 0.1,
            "initStd": 0.01,
            "maxIter": 18,
            "stepSize": 0.002,
            "batchSize": 512,
        }
    )

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `ResidualMF` starting from mu = `ratingMean`, zero biases and a zero tower output."""
        from recospark.models.neural.recipes.deep_nets import ResidualMF

        return ResidualMF(
            n_users,
            n_items,
            int(hp["embeddingDim"]),
            hidden_layers(hp),
            float(hp["dropout"]),
            float(hp["initStd"]),
            float(hp["ratingMean"]),
            float(hp["embeddingDropout"]),
        )


DNN = DNNRecipe()
RESIDUAL_MF = ResidualMFRecipe()
