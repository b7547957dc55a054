"""The autoencoder recipes: `autorec` (AutoRec, Sedhain et al. 2015), `mult_vae` and `mult_dae`
(Liang et al. 2018). Each reads one user's whole history as its input vector, so all three shard
by user and score a user from the history the scorer hands them (a user unknown at fit time is
scored from that history too: no user embedding is involved).

autorec is U-AutoRec, not the paper's better I-AutoRec, because of where the data is. I-AutoRec
encodes an item's column of ratings across all users and predicts r_ui = W_u . h_i + b_u, where
the item code h_i is a function of that whole column. Ranking or predicting needs every item's
code, so it needs every item's full column: a rank holding a shard of users has partial
columns, and the executors' scorer holds one block of users' histories. Sharding by item would
fix training only; the codes would still have to be computed after training from all ranks
and shipped as an extra table. U-AutoRec's input is the user's own ratings vector, which the
user shard and the scorer both have exactly, and it predicts for any user with a history.

- autorec: r_u (0 where unrated) -> sigmoid(V r_u + mu) -> W h + b; squared error on the observed
  ratings only (the unrated zeros are inputs, never targets) plus regParam/2 (||V||^2 + ||W||^2)
  per observed rating. Objective "rating": `score` is the reconstructed rating of every item.
  By default (`userCentering`) inputs and targets are the ratings minus the user's mean rating,
  added back when scoring: on the validation carve this did better than the paper's raw ratings.
- mult_vae: the click vector (every rated item is 1) L2-normalised, dropout on the input, an
  encoder to a Gaussian code (mu, logvar), a decoder to item logits, multinomial log-likelihood
  plus beta times the KL term; beta grows linearly from 0 to betaMax over annealEpochs (counted in
  epochs, not steps, so the schedule does not change with the world size or the batch size).
  `score` is the item logit at z = mu. `hiddenLayers` are tanh layers on both sides of the code:
  the paper's [600] (n_items -> 600 -> 2 x 200 -> 600 -> n_items) is one setting away, but the
  default is none (n_items -> 2 x 200 -> n_items) and betaMax 0.5, chosen on the validation carve
  of ML-100K's benchmark split, where the 600-unit layer overfits its 943 users within a few
  dozen epochs.
- mult_dae: the same input and layers with a deterministic tanh code (no sampling, no KL);
  multinomial log-likelihood plus regParam times the squared weights. `score` is the item logit.
  The default has no hidden layer, as mult_vae (the paper's Mult-DAE is n_items -> 200 -> n_items).

This module imports no torch (the recipes' Params exist without the extra); the methods import
it, and the networks live in `autoencoders_nets.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from recospark.models.neural.metrics import histories, ranking_validation, squared_error
from recospark.models.neural.recipe import TrainShard
from recospark.models.neural.recipes.mf import shuffled_slices
from recospark.models.params import Bounds

if TYPE_CHECKING:
    import torch

    from recospark.models.neural.recipes.autoencoders_nets import AutoRecNet

__all__ = ["AUTOREC", "MULT_DAE", "MULT_VAE", "AutoRecRecipe", "MultDAERecipe", "MultVAERecipe", "user_batches"]


def user_batches(shard: TrainShard, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of `batch_size` users in one random order: (positions of their rows in the shard,
    each row's user index within the batch). Every row once per epoch; needs rows grouped by user
    (shard_by="users").

    >>> shard = TrainShard(np.array([0, 0, 2]), np.array([1, 3, 0]), np.ones(3, np.float32), 3, 4)
    >>> sorted((pos.tolist(), local.tolist()) for pos, local in user_batches(shard, 1, np.random.default_rng(0)))
    [([0, 1], [0, 0]), ([2], [0])]
    """
    _, starts, counts = np.unique(shard.users, return_index=True, return_counts=True)
    for chosen in shuffled_slices(len(starts), batch_size, rng):
        n = counts[chosen]
        offsets = np.cumsum(n) - n
        positions = np.repeat(starts[chosen] - offsets, n) + np.arange(int(n.sum()))
        yield positions, np.repeat(np.arange(len(chosen)), n)


def _user_batches(shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Tensors of `user_batches`, plus the epoch's progress (epoch + share of its batches done) for annealing."""
    import torch

    batches = list(user_batches(shard, int(hp["batchSize"]), rng))
    for index, (positions, local) in enumerate(batches):
        yield {
            "rows": torch.from_numpy(local),
            "items": torch.from_numpy(shard.items[positions]),
            "ratings": torch.from_numpy(shard.ratings[positions]),
            "n_rows": torch.tensor(int(local[-1]) + 1),
            "progress": torch.tensor(epoch + (index + 1) / len(batches), dtype=torch.float64),
        }


def _flat(hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row of each history entry, its item, its rating) as flat tensors."""
    import torch

    lengths = np.array([len(h) for h in hist_items], dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    items = np.concatenate([np.asarray(h, np.int64) for h in hist_items]) if len(rows) else np.zeros(0, np.int64)
    ratings = np.concatenate([np.asarray(r, np.float32) for r in hist_ratings]) if len(rows) else np.zeros(0, np.float32)
    return torch.from_numpy(rows), torch.from_numpy(items), torch.from_numpy(ratings)


def _hidden(hp: Mapping[str, Any]) -> list[int]:
    widths = [int(w) for w in hp["hiddenLayers"]]
    if min(widths, default=1) < 1:
        raise ValueError(f"hiddenLayers must hold positive widths, got {list(hp['hiddenLayers'])}")
    return widths


class _UserRecipe:
    """What the autoencoders share: user batches, scoring from the users' histories (sparse rows)."""

    name: str
    objective: Literal["rating", "ranking"]
    shard_by: Literal["rows", "users"] = "users"
    defaults: Mapping[str, Any]
    docs: Mapping[str, str]
    binary_input = True  # the click vector (mult_*) or the ratings (autorec)

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """`batchSize` users at a time in one random order, each with all of its rows: every row once per epoch."""
        return _user_batches(shard, hp, epoch, rng)

    def _input(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The batch's users as the networks read them: (row, item, value, number of rows), a value per rated item."""
        values = batch["ratings"] if not self.binary_input else batch["ratings"].new_ones(batch["ratings"].shape)
        return batch["rows"], batch["items"], values, int(batch["n_rows"])

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items] from each user's history alone (`users` is not used)."""
        import torch

        rows, items, ratings = _flat(hist_items, hist_ratings)
        values = ratings.new_ones(ratings.shape) if self.binary_input else ratings
        with torch.no_grad():
            return cast("torch.Tensor", net(rows, items, values, len(hist_items))[0]).numpy().astype(np.float32, copy=False)

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """None: the score is a non-linear function of the whole history."""
        return None


class AutoRecRecipe(_UserRecipe):
    """U-AutoRec (Sedhain et al. 2015): the user's ratings vector reconstructed, loss on observed ratings only.

    Examples
    --------
    >>> AUTOREC.name, AUTOREC.objective, AUTOREC.shard_by
    ('autorec', 'rating', 'users')
    """

    name = "autorec"
    objective: Literal["rating", "ranking"] = "rating"
    binary_input = False
    defaults: Mapping[str, Any] = MappingProxyType(
        {"hiddenUnits": 200, "regParam": 3.0, "dropout": 0.0, "userCentering": True, "maxIter": 40, "stepSize": 0.001, "batchSize": 32}
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "hiddenUnits": "width of the sigmoid code layer (>= 1; the paper's k, 500)",
            "regParam": "L2 penalty regParam/2 (||V||^2 + ||W||^2), divided by the batch's observed ratings (>= 0)",
            "dropout": "dropout on the input ratings while training (the targets stay every observed rating), in [0, 1)",
            "userCentering": "reconstruct ratings minus the user's mean rating, then add it back (false: the paper's raw ratings)",
        }
    )
    bounds: Mapping[str, Bounds] = MappingProxyType({"hiddenUnits": Bounds(ge=1), "regParam": Bounds(ge=0), "dropout": Bounds(ge=0, lt=1)})

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """An `AutoRecNet` over the catalogue (PyTorch's default Linear initialisation)."""
        from recospark.models.neural.recipes.autoencoders_nets import AutoRecNet

        return AutoRecNet(n_items, int(hp["hiddenUnits"]), float(hp["dropout"]), float(hp["ratingMean"]), bool(hp["userCentering"]))

    @staticmethod
    def _targets(net: torch.nn.Module, rows: torch.Tensor, ratings: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(each row's target: its rating, minus its user's mean when centring; the [n_rows] offsets added back)."""
        from recospark.models.neural.recipes.autoencoders_nets import row_means

        inner = cast("AutoRecNet", getattr(net, "module", net))
        if float(inner.centred) == 0.0:
            return ratings, ratings.new_zeros(n_rows)
        means = row_means(rows, ratings, n_rows, float(inner.mean))
        return ratings - means[rows], means

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """Mean squared error over the batch's observed ratings plus the L2 term shared out per rating."""
        rows, items, n_rows = batch["rows"], batch["items"], int(batch["n_rows"])
        targets, _ = self._targets(net, rows, batch["ratings"], n_rows)
        out, norm = net(rows, items, targets, n_rows)
        err = out[rows, items] - targets
        return (err * err).mean() + 0.5 * float(hp["regParam"]) * norm / len(err)

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items]: every item's reconstructed rating from the user's history alone."""
        import torch

        rows, items, ratings = _flat(hist_items, hist_ratings)
        n_rows = len(hist_items)
        targets, offsets = self._targets(net, rows, ratings, n_rows)
        with torch.no_grad():
            out, _ = net(rows, items, targets, n_rows)
        return (out + offsets[:, None]).numpy().astype(np.float32, copy=False)

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(squared error sum, count) on the validation rows, each user reconstructed from its train rows."""
        users, index = np.unique(val.users, return_inverse=True)
        scores = self.score(net, users, *histories(train, users))
        return squared_error(scores[index, val.items], val.ratings)


class _MultRecipe(_UserRecipe):
    objective: Literal["rating", "ranking"] = "ranking"
    validation_metric = "ndcg"

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(sum of NDCG@10 over the validation users, their count), train items excluded."""
        return ranking_validation(lambda users, items, ratings: self.score(net, users, items, ratings), train, val, k=10)

    @staticmethod
    def log_likelihood(logits: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Mean over the `n_rows` users of sum_i x_ui log softmax(logits_u)_i (the multinomial log-likelihood),
        x holding `values` at (rows, items)."""
        import torch

        return (torch.log_softmax(logits, dim=1)[rows, items] * values).sum() / n_rows


class MultVAERecipe(_MultRecipe):
    """Mult-VAE (Liang et al. 2018): multinomial likelihood, Gaussian code, KL annealed to betaMax.

    Examples
    --------
    >>> MULT_VAE.name, MULT_VAE.objective, MULT_VAE.shard_by
    ('mult_vae', 'ranking', 'users')
    """

    name = "mult_vae"
    defaults: Mapping[str, Any] = MappingProxyType(
        {
            "hiddenLayers": [],
            "latentDim": 200,
            "dropout": 0.5,
            "betaMax": 0.5,
            "annealEpochs": 20,
            "maxIter": 100,
            "stepSize": 0.001,
            "batchSize": 100,
            # its validation NDCG climbs slowly and noisily: 3 epochs without a gain stopped it at 50 of
            # 100 on the benchmark protocol's carve, 10 let it run to 80 and scored higher there
            "earlyStoppingRounds": 10,
        }
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "hiddenLayers": "widths of the tanh layers between the items and the code, encoder order; the decoder mirrors them",
            "latentDim": "dimension of the Gaussian code z (>= 1)",
            "dropout": "dropout on the normalised input while training, in [0, 1)",
            "betaMax": "the KL term's weight once annealed (the paper's cap is 0.2)",
            "annealEpochs": "epochs over which the KL weight grows linearly from 0 to betaMax (> 0)",
        }
    )
    bounds: Mapping[str, Bounds] = MappingProxyType(
        {
            "hiddenLayers": Bounds(ge=1),
            "latentDim": Bounds(ge=1),
            "dropout": Bounds(ge=0, lt=1),
            "betaMax": Bounds(ge=0),
            "annealEpochs": Bounds(gt=0),
        }
    )

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `MultVAENet` with the paper's initialisation."""
        from recospark.models.neural.recipes.autoencoders_nets import MultVAENet

        return MultVAENet(n_items, _hidden(hp), int(hp["latentDim"]), float(hp["dropout"]))

    @staticmethod
    def beta(hp: Mapping[str, Any], progress: float) -> float:
        """The KL weight after `progress` epochs: betaMax * min(1, progress / annealEpochs).

        >>> MULT_VAE.beta({"betaMax": 0.2, "annealEpochs": 10}, 5.0), MULT_VAE.beta({"betaMax": 0.2, "annealEpochs": 10}, 30.0)
        (0.1, 0.2)
        """
        return float(hp["betaMax"]) * min(1.0, progress / float(hp["annealEpochs"]))

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """-E[log p(x|z)] + beta KL(q(z|x) || N(0, I)), each averaged over the batch's users."""
        import torch

        x = self._input(batch)
        logits, mu, logvar = net(*x)
        kl = 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(1).mean()
        return -self.log_likelihood(logits, *x) + self.beta(hp, float(batch["progress"])) * kl


class MultDAERecipe(_MultRecipe):
    """Mult-DAE (Liang et al. 2018): the denoising autoencoder with the multinomial likelihood.

    Examples
    --------
    >>> MULT_DAE.name, MULT_DAE.objective, MULT_DAE.shard_by
    ('mult_dae', 'ranking', 'users')
    """

    name = "mult_dae"
    defaults: Mapping[str, Any] = MappingProxyType(
        {"hiddenLayers": [], "latentDim": 200, "dropout": 0.5, "regParam": 0.001, "maxIter": 50, "stepSize": 0.001, "batchSize": 100}
    )
    docs: Mapping[str, str] = MappingProxyType(
        {
            "hiddenLayers": "widths of the tanh layers between the items and the code, encoder order; the decoder mirrors them",
            "latentDim": "width of the tanh code layer (>= 1)",
            "dropout": "dropout on the normalised input while training (the denoising), in [0, 1)",
            "regParam": "L2 penalty on every weight matrix, added to the per-user loss (>= 0)",
        }
    )
    bounds: Mapping[str, Bounds] = MappingProxyType(
        {"hiddenLayers": Bounds(ge=1), "latentDim": Bounds(ge=1), "dropout": Bounds(ge=0, lt=1), "regParam": Bounds(ge=0)}
    )

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A `MultDAENet` with the paper's initialisation."""
        from recospark.models.neural.recipes.autoencoders_nets import MultDAENet

        return MultDAENet(n_items, _hidden(hp), int(hp["latentDim"]), float(hp["dropout"]))

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """-log p(x | corrupted x) averaged over the batch's users, plus regParam * sum of squared weights."""
        x = self._input(batch)
        logits, norm = net(*x)
        return -self.log_likelihood(logits, *x) + float(hp["regParam"]) * norm


AUTOREC = AutoRecRecipe()
MULT_VAE = MultVAERecipe()
MULT_DAE = MultDAERecipe()
