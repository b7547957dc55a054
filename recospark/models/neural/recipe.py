"""The contract between the neural engine and the recipes (one network each): `Recipe` and `TrainShard`.

A recipe is pure torch + numpy: it builds a network, cuts a rank's shard into mini-batches, says
what to minimise and how to validate and score. The engine (`distributed.py`) does everything
else: reading the shard, seeding, DDP, equal step counts across ranks, history, persistence,
scoring on the executors. Each recipe becomes one pyspark.ml Estimator/Model pair whose Params are
its `defaults` (documented by `docs`) plus the engine's shared ones (`estimator.SHARED_DOCS`).

Rules a recipe module follows (tests/test_neural.py checks them for every registered recipe):

- It imports without torch: the estimator reads `name`, `objective`, `shard_by`, `defaults` and
  `docs` when the model table is imported, with or without the `neural` extra. Import torch (and
  the module holding the `torch.nn.Module` classes) inside the methods.
- `defaults` holds `maxIter` (epochs), `stepSize` (Adam's learning rate) and `batchSize`, plus the
  recipe's own knobs (camelCase; int, float, bool, str or a list of int/float); `docs` documents
  each of its own knobs in one line. `seed`, `numProcesses`, `earlyStoppingRounds` and the column
  Params are the engine's (a recipe may override their defaults).
- Everything random comes from `torch.manual_seed` (set by the engine before `build`, and again
  per rank before training) or from the `rng` handed to `batches`.

What the engine adds to `hp` (besides every Param value): ``ratingMean``, the mean training rating
(for a global-mean bias; computed by Spark, the same on every rank).

Optional attributes the engine reads with `getattr`:

- ``bounds: Mapping[str, recospark.models.params.Bounds]``: the values a knob accepts (checked by
  the configuration before Spark starts and by the estimator before fitting), e.g.
  ``{"embeddingDim": Bounds(ge=1)}``.
- ``check(hp) -> list[str]``: rules across knobs, one message per problem.
- ``dot_product: bool`` (default False): `factors` returns matrices and the model is scored
  through factor tables (`recospark.scoring.top_n`); otherwise through `score` on the executors.
- ``validation_metric: str`` (default "rmse" for rating recipes, "ndcg" for ranking ones): the
  name recorded in the history; rating recipes' (num, den) are reported as sqrt(num/den), ranking
  recipes' as num/den. Lower is better for "rmse", higher for anything else.
- ``predict(net, users, items, hist_items, hist_ratings) -> np.ndarray``: float32 [n] predictions
  of (user row, item row) pairs for rating recipes; without it the engine calls `score` on the
  pairs' users and picks the columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:  # torch is optional: types only
    import torch

__all__ = ["Recipe", "TrainShard"]


@dataclass(frozen=True)
class TrainShard:
    """One rank's training rows, already mapped to embedding rows (0-based, dense)."""

    users: np.ndarray  # int64 [n] user rows in 0..n_users-1
    items: np.ndarray  # int64 [n] item rows in 0..n_items-1
    ratings: np.ndarray  # float32 [n] the ratings
    n_users: int  # global counts (every rank sees the same)
    n_items: int
    # shard_by == "users": rows are grouped by user and sorted (users ascending, then items ascending);
    # every row of a user is in the same shard. shard_by == "rows": any order, disjoint across ranks.


class Recipe(Protocol):
    name: str  # the model name in train.models, e.g. "mult_vae"
    objective: Literal["rating", "ranking"]  # rating: RMSE + ranking metrics; ranking: ranking metrics only
    shard_by: Literal["rows", "users"]  # how training rows are split across ranks
    defaults: Mapping[str, Any]  # hyper-parameter name (camelCase, becomes a Param) -> default
    docs: Mapping[str, str]  # hyper-parameter name -> one-line doc (becomes the Param doc)

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module:
        """A freshly initialised network; called after torch.manual_seed(seed) on every rank (same init everywhere)."""
        ...

    def batches(
        self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator
    ) -> Iterator[Mapping[str, torch.Tensor]]:
        """The epoch's mini-batches from this rank's shard (shuffling and negative sampling use `rng`,
        which the engine seeds from (seed, epoch, rank)); the engine makes every rank run the same number of steps."""
        ...

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """A scalar to minimise (mean over the batch); `net` may be the DDP wrapper: call net(...) for the
        forward pass and use getattr(net, "module", net) for attribute access."""
        ...

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]:
        """(numerator, denominator) on this rank's validation rows; the engine all-reduces both (see the
        module docstring for how they are reported). `val` holds the validation rows of the same
        users/items mapping; rows whose user or item is unknown are already dropped."""
        ...

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """Dot-product models: (user_matrix [n_users, d], item_matrix [n_items, d]) float32 whose row dot
        product is the model's score; None for the others."""
        ...

    def score(
        self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 [len(users), n_items]: every item's score (column j = item row j) for each user row in
        `users` (int64 rows, -1 for a user unknown at fit time), given each user's train history (item
        rows int64, ratings float32). Higher ranks first; rating recipes return the predicted rating.
        Called under torch.no_grad() with net.eval(); deterministic. The engine excludes rated items
        and breaks ties."""
        ...
