"""The `rbm` recipe: Salakhutdinov, Mnih and Hinton 2007's restricted Boltzmann machine for ratings.

Each user is one RBM over the items they rated: every rated item is a softmax visible unit over
the rating values (`ratingValues`), and binary hidden units are shared through the weights
W[i, k, f] by every user. Training is contrastive divergence with `cdSteps` Gibbs rounds. So
that DDP can average it like any other gradient, the recipe minimises the free-energy surrogate
mean_u [F(v_u) - F(v_u^k)] with the negative sample v_u^k held constant: its gradient is exactly
the negated CD-k update (positive phase minus negative phase), plus an L2 term on W (the paper's
weight decay). The last Gibbs round keeps the visible probabilities instead of a sample.

Prediction is the paper's mean field: p_f = p(h_f = 1 | the user's rated items), then for every
item the softmax over rating values given p, and the predicted rating is the expected value.
The user's history is the input, so the recipe shards by user and scores any user with a
history (the user rows themselves are not used).

This module imports no torch (the recipe's Params exist without the extra); the methods import
it, and the network lives in `rbm_nets.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from recospark.models.neural.metrics import histories, squared_error
from recospark.models.neural.recipe import TrainShard
from recospark.models.neural.recipes.autoencoders import user_batches
from recospark.models.params import Bounds

if TYPE_CHECKING:
    import torch

    from recospark.models.neural.recipes.rbm_nets import SoftmaxRBM

__all__ = ["RBM", "RBMRecipe", "rating_levels"]


def rating_levels(ratings: np.ndarray, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """int64 index of the nearest rating value for each rating (ties to the smaller value).

    >>> rating_levels(np.array([1.0, 4.0, 4.6, 5.0]), [1, 2, 3, 4, 5]).tolist()
    [0, 3, 4, 4]
    """
    grid = np.asarray(values, np.float64)
    return np.abs(np.asarray(ratings, np.float64)[:, None] - grid[None, :]).argmin(1).astype(np.int64)


def _values_problem(hp: Mapping[str, Any]) -> str | None:
    values = [float(v) for v in hp["ratingValues"]]
    if len(values) < 2 or sorted(set(values)) != values:
        return f"ratingValues must list at least two distinct values in ascending order, got {list(hp['ratingValues'])}"
    return None


def _values(hp: Mapping[str, Any]) -> list[float]:
    problem = _values_problem(hp)
    if problem:
        raise ValueError(problem)
    return [float(v) for v in hp["ratingValues"]]


class RBMRecipe:
    """A softmax-visible RBM per user with shared weights, trained by CD-k; the expected rating predicts.

    Examples
    --------
    >>> RBM.name, RBM.objective, RBM.shard_by
    ('rbm', 'rating', 'users')
    """

    name = "rbm"
    objective: Literal["rating", "ranking"] = "rating"
    shard_by: Literal["rows", "users"] = "users"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "hiddenUnits": 100,
            "cdSteps": 1,
            "ratingValues": [1.0, 2.0, 3.0, 4.0, 5.0],
            "regParam": 0.001,
            "initStd": 0.01,
            "maxIter": 22,
            "stepSize": 0.003,
            "batchSize": 64,
        }
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "hiddenUnits": "number of binary hidden units (>= 1; the paper's F)",
            "cdSteps": "Gibbs rounds of contrastive divergence per update (>= 1; the paper's T)",
            "ratingValues": "the rating values, ascending: one softmax unit each (a rating counts as the nearest value)",
            "regParam": "weight decay: L2 penalty on W added to the per-user surrogate loss (>= 0)",
            "initStd": "standard deviation of the initial weights (> 0; biases start at 0)",
        }
    )
    bounds: Mapping[str, Bounds] = MappingProxyType(
        {"hiddenUnits": Bounds(ge=1), "cdSteps": Bounds(ge=1), "regParam": Bounds(ge=0), "initStd": Bounds(gt=0)}
    )

    def check(self, hp: Mapping[str, Any]) -> list[str]:
        """Rules the bounds cannot say: ratingValues ascending and distinct."""
        problem = _values_problem(hp)
        return [problem] if problem else []

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `SoftmaxRBM` with one softmax of len(ratingValues) units per item."""
        from recospark.models.neural.recipes.rbm_nets import SoftmaxRBM

        return SoftmaxRBM(n_items, _values(hp), int(hp["hiddenUnits"]), float(hp["initStd"]))

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """`batchSize` users at a time in one random order, each with all of its rows (as rating levels)."""
        import torch

        levels = rating_levels(shard.ratings, _values(hp))
        for positions, local in user_batches(shard, int(hp["batchSize"]), rng):
            yield {
                "rows": torch.from_numpy(local),
                "items": torch.from_numpy(shard.items[positions]),
                "levels": torch.from_numpy(levels[positions]),
                "n_rows": torch.tensor(int(local[-1]) + 1),
            }

    @staticmethod
    def visible(
        n_rows: int, n_items: int, levels: int, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot v [n_rows, n_items, levels], mask [n_rows, n_items] of the rated items)."""
        import torch

        v = torch.zeros(n_rows, n_items, levels)
        v[rows, items, values] = 1.0
        return v, v.sum(2)

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """mean_u [F(v_u) - F(v_u^k)] + regParam ||W||^2: its gradient is the negated CD-k update plus weight decay."""
        inner = cast("SoftmaxRBM", getattr(net, "module", net))
        v, mask = self.visible(int(batch["n_rows"]), inner.n_items, inner.levels, batch["rows"], batch["items"], batch["levels"])
        difference, norm = net(v, mask, int(hp["cdSteps"]))
        return difference.mean() + float(hp["regParam"]) * norm

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items]: every item's expected rating given the user's history (`users` unused)."""
        import torch

        inner = cast("SoftmaxRBM", getattr(net, "module", net))
        values = inner.rating_values.numpy()
        lengths = np.array([len(h) for h in hist_items], dtype=np.int64)
        rows = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
        items = torch.from_numpy(np.concatenate(list(hist_items)).astype(np.int64) if len(rows) else np.zeros(0, np.int64))
        ratings = np.concatenate(list(hist_ratings)) if len(rows) else np.zeros(0, np.float32)
        levels = torch.from_numpy(rating_levels(ratings, values))
        v, _ = self.visible(len(lengths), inner.n_items, inner.levels, rows, items, levels)
        with torch.no_grad():
            probs, _ = net(v)
        return (probs @ inner.rating_values).numpy().astype(np.float32, copy=False)

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(squared error sum, count) on the validation rows, each user's expected ratings from its train rows."""
        users, index = np.unique(val.users, return_inverse=True)
        scores = self.score(net, users, *histories(train, users))
        return squared_error(scores[index, val.items], val.ratings)

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """None: the prediction is a softmax of a non-linear function of the history."""
        return None


RBM = RBMRecipe()
