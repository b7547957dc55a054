"""The `neumf` recipe: He et al. 2017's neural matrix factorisation (GMF and MLP towers fused).

Architecture as the paper and the tutorials: GMF with 8 factors, an MLP tower [16 -> 8 -> 4]
over two 8-wide embeddings, each tower with its output layer, fused as
alpha * GMF logit + (1 - alpha) * MLP logit (`alpha` 0.5, the paper's trade-off). Training is
the paper's: every rated item is a positive, `numNegatives` items the user never rated are drawn
per positive each epoch, log loss, Adam. Pretraining as the paper does, inside one fit: for the
first `pretrainIter` epochs the two towers are trained as separate models (the sum of their own
log losses, which share no parameter), then NeuMF's fused logit is trained; the fused output
layer is the towers' own output layers weighted by alpha, so the switch copies nothing.

Shards by user: a rank then knows each of its users' positives exactly (negatives are never a
rated item) and validates its users' NDCG@10 against their full training history.

This module imports no torch (the recipe's Params exist without the extra); the methods import
it, and the network lives in `ncf_nets.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from recospark.models.neural.metrics import ranking_validation
from recospark.models.neural.recipe import TrainShard
from recospark.models.neural.recipes.mf import labelled_batches
from recospark.models.params import Bounds

if TYPE_CHECKING:
    import torch

    from recospark.models.neural.recipes.ncf_nets import NeuMFNet

__all__ = ["NEUMF", "NeuMFRecipe"]


class NeuMFRecipe:
    """NeuMF (He et al. 2017): GMF + MLP towers, sampled negatives, log loss, optional tower pretraining.

    Examples
    --------
    >>> NEUMF.name, NEUMF.objective, NEUMF.shard_by
    ('neumf', 'ranking', 'users')
    """

    name = "neumf"
    objective: Literal["rating", "ranking"] = "ranking"
    shard_by: Literal["rows", "users"] = "users"
    validation_metric = "ndcg"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "embeddingDim": 8,
            "mlpLayers": [16, 8, 4],
            "numNegatives": 4,
            "alpha": 0.5,
            "pretrainIter": 0,
            "regParam": 0.0,
            "initStd": 0.01,
            "maxIter": 12,
            "stepSize": 0.002,
            "batchSize": 1024,
        }
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "embeddingDim": "GMF's predictive factors: length of its user and item embeddings (>= 1)",
            "mlpLayers": "MLP tower widths: the first is the concatenated user and item embeddings (even), then each ReLU layer",
            "numNegatives": "items the user never rated drawn per rated item, each epoch (>= 1; the paper's 4)",
            "alpha": "weight of the GMF logit in NeuMF's fused logit, the MLP's is 1 - alpha (the paper's 0.5)",
            "pretrainIter": "epochs (of maxIter) that train the GMF and MLP towers as separate models before fusing them (>= 0)",
            "regParam": "L2 penalty on the embeddings of each batch's rows, per row (>= 0)",
            "initStd": "standard deviation of the initial embeddings (> 0; the paper's 0.01)",
        }
    )

    bounds: Mapping[str, Bounds] = MappingProxyType(
        {
            "embeddingDim": Bounds(ge=1),
            "mlpLayers": Bounds(ge=1),
            "numNegatives": Bounds(ge=1),
            "alpha": Bounds(ge=0, le=1),
            "pretrainIter": Bounds(ge=0),
            "regParam": Bounds(ge=0),
            "initStd": Bounds(gt=0),
        }
    )

    def check(self, hp: Mapping[str, Any]) -> list[str]:
        """Rules the bounds cannot say: mlpLayers holds an even embedding width and at least one layer."""
        layers = [int(w) for w in hp["mlpLayers"]]
        if len(layers) < 2 or layers[0] % 2:
            return [
                f"mlpLayers must start with an even width (the two concatenated MLP embeddings) and list at least one layer, got {layers}"
            ]
        return []

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `NeuMFNet` (PyTorch's default initialisation for the dense layers)."""
        from recospark.models.neural.recipes.ncf_nets import NeuMFNet

        layers = [int(w) for w in hp["mlpLayers"]]
        problems = self.check(hp)
        if problems:
            raise ValueError(problems[0])
        return NeuMFNet(n_users, n_items, int(hp["embeddingDim"]), layers, float(hp["initStd"]), float(hp["alpha"]))

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """Every rated item (label 1) and numNegatives fresh unrated items per rated item (label 0), shuffled."""
        return labelled_batches(shard, hp, rng)

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """Log loss of the fused logit (or, while pretraining, the sum of each tower's own log loss) plus the L2 term."""
        from torch.nn.functional import binary_cross_entropy_with_logits as log_loss

        gmf, mlp, penalty = net(batch["users"], batch["items"])
        labels, alpha = batch["labels"], float(hp["alpha"])
        if epoch < int(hp["pretrainIter"]):
            fit = log_loss(gmf, labels) + log_loss(mlp, labels)
        else:
            fit = log_loss(alpha * gmf + (1.0 - alpha) * mlp, labels)
        return fit + float(hp["regParam"]) * penalty.mean()

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(sum of NDCG@10 over the validation users, their count), train items excluded."""
        return ranking_validation(lambda users, items, ratings: self.score(net, users, items, ratings), train, val, k=10)

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """None: the MLP tower is not a dot product."""
        return None

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items]: NeuMF's fused logit of every item (-1: the mean user embeddings)."""
        import torch

        with torch.no_grad():
            scores = cast("NeuMFNet", getattr(net, "module", net)).score_all(torch.from_numpy(np.asarray(users, np.int64)))
        return scores.numpy().astype(np.float32, copy=False)


NEUMF = NeuMFRecipe()
