"""The dot-product recipes: `neural_mf` (the Keras MF tutorial) and `gmf` (He et al. 2017's GMF).

Both reduce to a dot product of a user and an item vector, so their fitted models export factor
tables and rank through the shared factor scorer (`recospark.scoring.top_n`):

- neural_mf: user [p_u, 1, b_u + mu] . item [q_i, b_i, 1] = mu + b_u + b_i + p_u . q_i, the
  predicted rating. Trained on the ratings with MSE plus an L2 penalty on the batch's rows, Adam.
- gmf: user [h * p_u, b] . item [q_i, 1] = h . (p_u * q_i) + b, the logit of "u interacts with i"
  (the output layer's weights h folded into the user vector). Trained as the paper does: every
  rated item a positive, `numNegatives` items the user never rated drawn per positive each epoch,
  log loss, Adam. Shards by user so a rank knows each of its users' positives exactly.

This module imports no torch (the recipes' Params exist without the extra); the methods import
it, and the networks live in `mf_nets.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from recospark.models.neural.metrics import ranking_validation, squared_error
from recospark.models.neural.recipe import TrainShard
from recospark.models.params import Bounds

if TYPE_CHECKING:
    import torch

__all__ = ["GMF", "NEURAL_MF", "GMFRecipe", "NeuralMFRecipe", "sample_negatives", "shuffled_slices"]


def shuffled_slices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices 0..n-1 in one random order, cut into batches: every row exactly once per epoch."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def sample_negatives(shard: TrainShard, per_row: int, rng: np.random.Generator, rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(user rows, item rows): `per_row` items per training row, uniform over the items its user has
    not rated in `shard` (redrawn up to `rounds` times; a user who rated almost everything may keep
    a positive). Needs a shard sorted by (user, item), as shard_by="users" gives."""
    keys = shard.users * shard.n_items + shard.items  # ascending: the shard is sorted by (user, item)
    users = np.repeat(shard.users, per_row)
    items = rng.integers(0, shard.n_items, size=len(users))
    check = np.arange(len(users))  # the draws not yet known to miss the user's rated items
    for _ in range(rounds):
        cand = users[check] * shard.n_items + items[check]
        pos = np.minimum(np.searchsorted(keys, cand), max(len(keys) - 1, 0))
        check = check[keys[pos] == cand] if len(keys) else check[:0]
        if not len(check):
            break
        items[check] = rng.integers(0, shard.n_items, size=len(check))
    return users, items


def _factor_scores(users_mat: np.ndarray, items_mat: np.ndarray, users: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Rows of users_mat @ items_mat.T for `users` (rows; -1 takes the `unknown` user vector)."""
    vectors = np.where((users >= 0)[:, None], users_mat[np.maximum(users, 0)], unknown[None, :])
    return (vectors @ items_mat.T).astype(np.float32)


def _factors_numpy(net: Any) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        users, items = getattr(net, "module", net).factors()
    return users.numpy().astype(np.float32), items.numpy().astype(np.float32)


def labelled_batches(shard: TrainShard, hp: Mapping[str, Any], rng: np.random.Generator) -> Iterator[Mapping[str, torch.Tensor]]:
    """Every rated item (label 1) and `numNegatives` fresh unrated items per rated item (label 0),
    shuffled, `batchSize` at a time: the batches of the sampled-negative recipes (GMF, NeuMF)."""
    import torch

    neg_users, neg_items = sample_negatives(shard, int(hp["numNegatives"]), rng)
    users = np.concatenate([shard.users, neg_users])
    items = np.concatenate([shard.items, neg_items])
    labels = np.concatenate([np.ones(len(shard.users), np.float32), np.zeros(len(neg_users), np.float32)])
    order = rng.permutation(len(users))  # shuffled once, then cut: the batches of `shuffled_slices`
    columns = {"users": torch.from_numpy(users[order]), "items": torch.from_numpy(items[order]), "labels": torch.from_numpy(labels[order])}
    size = int(hp["batchSize"])
    for start in range(0, len(order), size):
        yield {name: column[start : start + size] for name, column in columns.items()}


class PairRatingMethods:
    """Training and prediction of a network over (user row, item row) pairs that outputs a rating:
    row batches, MSE plus `regParam` times the batch's penalty, RMSE on validation. The net's
    forward returns (prediction, per-row penalty). Shared by neural MF and the deep rating recipes."""

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """Every training row once per epoch, in an order drawn from `rng`."""
        import torch

        for idx in shuffled_slices(len(shard.users), int(hp["batchSize"]), rng):
            yield {
                "users": torch.from_numpy(shard.users[idx]),
                "items": torch.from_numpy(shard.items[idx]),
                "ratings": torch.from_numpy(shard.ratings[idx]),
            }

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """MSE plus `regParam` times the mean L2 penalty of the batch's rows (embeddings and biases)."""
        prediction, penalty = net(batch["users"], batch["items"])
        return ((prediction - batch["ratings"]) ** 2).mean() + float(hp["regParam"]) * penalty.mean()

    def predict(
        self,
        net: torch.nn.Module,
        users: np.ndarray,
        items: np.ndarray,
        hist_items: Sequence[np.ndarray],
        hist_ratings: Sequence[np.ndarray],
    ) -> np.ndarray:
        """The network's rating for each (user row, item row) pair; no history needed."""
        import torch

        with torch.no_grad():
            prediction, _ = net(torch.from_numpy(np.asarray(users, np.int64)), torch.from_numpy(np.asarray(items, np.int64)))
        return prediction.numpy().astype(np.float32, copy=False)

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(sum of squared errors, row count) on the validation rows: the engine reports RMSE."""
        return squared_error(self.predict(net, val.users, val.items, [], []), val.ratings)


class NeuralMFRecipe(PairRatingMethods):
    """Keras MF: user and item embeddings, biases and the global mean, dot product, MSE, Adam."""

    # Defaults chosen on the validation carve of ML-100K's u1.base (never u1.test) among embeddingDim
    # 16-128, regParam 0.02-0.3, stepSize 0.001-0.005 and batchSize 256-1024; the validation RMSE
    # bottoms out a few epochs before maxIter (earlyStoppingRounds keeps the best epoch).

    name = "neural_mf"
    objective: Literal["rating", "ranking"] = "rating"
    shard_by: Literal["rows", "users"] = "rows"
    dot_product = True
    defaults: Mapping[str, Any] = MappingProxyType(
        {"embeddingDim": 64, "regParam": 0.1, "initStd": 0.01, "maxIter": 15, "stepSize": 0.002, "batchSize": 512}
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "embeddingDim": "length of the user and item embeddings (>= 1)",
            "regParam": "L2 penalty on the embeddings and biases of each batch's rows, per row (>= 0)",
            "initStd": "standard deviation of the initial embeddings (> 0; biases start at 0, mu at the mean rating)",
        }
    )

    bounds: Mapping[str, Bounds] = MappingProxyType({"embeddingDim": Bounds(ge=1), "regParam": Bounds(ge=0), "initStd": Bounds(gt=0)})

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """`BiasedDot` with mu starting at the mean training rating."""
        from recospark.models.neural.recipes.mf_nets import BiasedDot

        return BiasedDot(n_users, n_items, int(hp["embeddingDim"]), float(hp["initStd"]), float(hp["ratingMean"]))

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """user [p_u, 1, b_u + mu] and item [q_i, b_i, 1]: their dot product is the predicted rating."""
        return _factors_numpy(net)

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """The predicted rating of every item; a user unknown at fit time gets mu + b_i (no p_u, no b_u)."""
        users_mat, items_mat = _factors_numpy(net)
        unknown = np.zeros(users_mat.shape[1], np.float32)  # no p_u, no b_u: mu + b_i
        unknown[-2], unknown[-1] = 1.0, float(cast(Any, getattr(net, "module", net)).mean.detach())
        return _factor_scores(users_mat, items_mat, np.asarray(users, np.int64), unknown)


class GMFRecipe:
    """He et al. 2017's GMF: element-wise product, output layer, sigmoid, log loss on positives and sampled negatives."""

    # Defaults chosen on the validation carve of the benchmark protocol's train split (never its test
    # split) among embeddingDim 8-64, regParam 0-0.05, stepSize 0.002-0.005 and itemBias on/off: a
    # small per-row L2 (not in the paper) delays the overfitting that sets in after a few epochs.

    name = "gmf"
    objective: Literal["rating", "ranking"] = "ranking"
    shard_by: Literal["rows", "users"] = "users"
    dot_product = True
    validation_metric = "ndcg"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "embeddingDim": 32,
            "numNegatives": 4,
            "regParam": 0.01,
            "itemBias": False,
            "initStd": 0.01,
            "maxIter": 15,
            "stepSize": 0.002,
            "batchSize": 512,
        }
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "embeddingDim": "predictive factors: length of the user and item embeddings (>= 1)",
            "numNegatives": "items the user never rated drawn per rated item, each epoch (>= 1; the paper's 4)",
            "regParam": "L2 penalty on the embeddings (and item biases) of each batch's rows, per row (>= 0)",
            "itemBias": "add a learned item bias to the logit (not in the paper; lets the model learn popularity directly)",
            "initStd": "standard deviation of the initial embeddings (> 0; the paper's 0.01)",
        }
    )

    bounds: Mapping[str, Bounds] = MappingProxyType(
        {"embeddingDim": Bounds(ge=1), "numNegatives": Bounds(ge=1), "regParam": Bounds(ge=0), "initStd": Bounds(gt=0)}
    )

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """`GMFNet`, with an item bias when `itemBias` is set."""
        from recospark.models.neural.recipes.mf_nets import GMFNet

        return GMFNet(n_users, n_items, int(hp["embeddingDim"]), float(hp["initStd"]), bool(hp.get("itemBias", False)))

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """The epoch's positives plus `numNegatives` fresh negatives per positive (drawn from `rng`), shuffled together."""
        return labelled_batches(shard, hp, rng)

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """Log loss on the logits plus `regParam` times the mean L2 penalty of the batch's rows."""
        import torch

        logits, penalty = net(batch["users"], batch["items"])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
        return bce + float(hp["regParam"]) * penalty.mean()

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(sum of NDCG@10 over this rank's validation users, their count); their train items are never ranked."""
        users_mat, items_mat = _factors_numpy(net)
        unknown = np.zeros(users_mat.shape[1], np.float32)
        return ranking_validation(lambda u, _h, _r: _factor_scores(users_mat, items_mat, u, unknown), train, val, k=10)

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """user [h * p_u, b(, 1)] and item [q_i, 1(, b_i)]: their dot product is the logit."""
        return _factors_numpy(net)

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """Every item's logit; a user unknown at fit time gets b (plus b_i): one ranking for all of them."""
        users_mat, items_mat = _factors_numpy(net)
        unknown = np.zeros(users_mat.shape[1], np.float32)
        # no p_u: the output bias b (and b_i) for every item
        bias_col = -2 if bool(getattr(net, "module", net).item_bias is not None) else -1
        unknown[bias_col] = users_mat[0, bias_col] if len(users_mat) else 0.0
        if bias_col == -2:
            unknown[-1] = 1.0
        return _factor_scores(users_mat, items_mat, np.asarray(users, np.int64), unknown)


NEURAL_MF = NeuralMFRecipe()
GMF = GMFRecipe()
