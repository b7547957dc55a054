"""The torch modules of the deep rating recipes (imported by `deep.py`'s methods only: this imports torch)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["ConcatMLP", "ResidualMF", "mlp", "tower_all"]

# users x items pairs pushed through the dense layers at once when scoring every item
_PAIRS_PER_CHUNK = 1 << 18


def mlp(widths: Sequence[int], dropout: float) -> nn.Sequential:
    """Dense layers widths[0] -> widths[1] -> ..., each followed by ReLU and dropout (none when 0)."""
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(widths):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _PairNet(nn.Module):
    """User and item embeddings and a dense tower over their concatenation, scored pair by pair.

    The first dense layer acts on [p_u, q_i], so `score_all` splits it (`tower_all`): scoring every
    item for a block of users is one broadcast instead of a concatenation per pair.
    """

    def __init__(
        self, n_users: int, n_items: int, dim: int, hidden: Sequence[int], dropout: float, init_std: float, embedding_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        widths = [2 * dim, *hidden]
        self.first = nn.Linear(widths[0], widths[1])
        self.rest = nn.Sequential(nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else []), mlp(widths[1:], dropout))
        self.head = nn.Linear(widths[-1], 1)

    def tower(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The dense tower's scalar output for embedding pairs (any leading shape); the concatenated
        embeddings are dropped out while training."""
        return self.head(self.rest(self.first(self.embedding_dropout(torch.cat([p, q], dim=-1))))).squeeze(-1)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """Embeddings of user rows; -1 (unknown at fit time) takes the mean user embedding."""
        known = users >= 0
        vectors = self.user(users.clamp(min=0))
        return torch.where(known[:, None], vectors, self.user.weight.mean(0, keepdim=True))

    def _tower_all(self, p: torch.Tensor) -> torch.Tensor:
        """[len(p), n_items]: the tower for every (user vector, catalogue item) pair, in chunks."""
        return tower_all(p, self.item.weight, self.first, nn.Sequential(self.rest, self.head))


def tower_all(users: torch.Tensor, items: torch.Tensor, first: nn.Linear, rest: nn.Module) -> torch.Tensor:
    """[len(users), len(items)]: rest(first([u, i])) squeezed, for every (user row, item row) pair.

    `first` acts on [u, i], so it is W_u u + W_i i + b: the item half is computed once and each
    user's half is broadcast onto it, a chunk of pairs at a time (no users x items x width
    concatenation).
    """
    dim = users.shape[1]
    item_half = items @ first.weight[:, dim:].T + first.bias  # [n_items, h]
    user_half = users @ first.weight[:, :dim].T  # [B, h]
    chunk = max(1, _PAIRS_PER_CHUNK // max(1, len(items)))
    parts = [rest(user_half[start : start + chunk, None, :] + item_half[None, :, :]).squeeze(-1) for start in range(0, len(users), chunk)]
    return torch.cat(parts) if parts else users.new_zeros(0, len(items))


class ConcatMLP(_PairNet):
    """The tutorials' deep network: [p_u, q_i] -> dense layers with ReLU and dropout -> mu + output."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        hidden: Sequence[int],
        dropout: float,
        init_std: float,
        mean: float,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__(n_users, n_items, dim, hidden, dropout, init_std, embedding_dropout)
        self.mean = nn.Parameter(torch.tensor(float(mean)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted ratings, each pair's squared embedding norm for the L2 term)."""
        p, q = self.user(users), self.item(items)
        return self.mean + self.tower(p, q), (p * p).sum(-1) + (q * q).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] predicted ratings of every item."""
        return self.mean + self._tower_all(self.user_vectors(users))


class ResidualMF(_PairNet):
    """mu + b_u + b_i + p_u . q_i + a residual dense tower over [p_u, q_i].

    The tower's output layer starts at zero, so training starts from plain biased MF and the tower
    learns what the dot product leaves over (the residual).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        hidden: Sequence[int],
        dropout: float,
        init_std: float,
        mean: float,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__(n_users, n_items, dim, hidden, dropout, init_std, embedding_dropout)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.mean = nn.Parameter(torch.tensor(float(mean)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted ratings, each pair's squared norm of embeddings and biases for the L2 term)."""
        p, q = self.user(users), self.item(items)
        bu, bi = self.user_bias(users).squeeze(-1), self.item_bias(items).squeeze(-1)
        prediction = self.mean + bu + bi + (p * q).sum(-1) + self.tower(p, q)
        return prediction, (p * p).sum(-1) + (q * q).sum(-1) + bu * bu + bi * bi

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] predicted ratings of every item (-1: mean user vector, no user bias)."""
        p = self.user_vectors(users)
        bu = torch.where(users >= 0, self.user_bias(users.clamp(min=0)).squeeze(-1), torch.zeros(()))
        dot = p @ self.item.weight.T
        return self.mean + bu[:, None] + self.item_bias.weight.T + dot + self._tower_all(p)
