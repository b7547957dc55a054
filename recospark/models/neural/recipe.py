"""The contract between the neural engine and the recipes (placeholder: the engine branch owns this file)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


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

    def build(self, hp: Mapping[str, Any], n_users: int, n_items: int) -> torch.nn.Module: ...

    def batches(self, shard: TrainShard, hp: Mapping[str, Any], epoch: int, rng: np.random.Generator) -> Iterator[Mapping[str, torch.Tensor]]: ...

    def loss(self, net: torch.nn.Module, batch: Mapping[str, torch.Tensor], hp: Mapping[str, Any], epoch: int) -> torch.Tensor: ...

    def validation(self, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> tuple[float, float]: ...

    def factors(self, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None: ...

    def score(self, net: torch.nn.Module, users: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> np.ndarray: ...
