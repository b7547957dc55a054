"""The torch module of the `neumf` recipe (imported by `ncf.py`'s methods only: this imports torch)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import cast

import torch
from torch import nn

from recospark.models.neural.recipes.deep_nets import tower_all

__all__ = ["NeuMFNet"]


class NeuMFNet(nn.Module):
    """He et al. 2017's NeuMF: a GMF tower and an MLP tower with their own embeddings.

    GMF: p_u * q_i (`factors` wide). MLP: [p'_u, q'_i] (each layers[0] / 2 wide) through ReLU layers
    layers[0] -> layers[1] -> ... Each tower has its own output layer (h_gmf, h_mlp), and NeuMF's
    logit is alpha (h_gmf . gmf + b_gmf) + (1 - alpha) (h_mlp . mlp + b_mlp): the paper's output
    layer over the concatenated towers, initialised from the pretrained towers' output layers as
    [alpha h_gmf, (1 - alpha) h_mlp], written so that pretraining the towers separately and then
    training them jointly uses the same parameters without copying any.

    `forward` returns (gmf logit, mlp logit, squared norm of the pair's embeddings).
    """

    alpha: torch.Tensor

    def __init__(self, n_users: int, n_items: int, factors: int, layers: Sequence[int], init_std: float, alpha: float) -> None:
        super().__init__()
        # the fused logit's GMF weight: saved with the weights, since scoring has no hyper-parameters
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        if layers[0] % 2:
            raise ValueError(f"mlpLayers[0] is the concatenated MLP embeddings' width and must be even, got {layers[0]}")
        self.gmf_user = nn.Embedding(n_users, factors)
        self.gmf_item = nn.Embedding(n_items, factors)
        self.mlp_user = nn.Embedding(n_users, layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, layers[0] // 2)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=init_std)
        tower: list[nn.Module] = []
        for n_in, n_out in pairwise(layers):
            tower += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.mlp = nn.Sequential(*tower)
        self.gmf_out = nn.Linear(factors, 1)
        self.mlp_out = nn.Linear(layers[-1], 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(GMF logit, MLP logit, penalty) per (user row, item row) pair: the towers' logits kept apart, since
        pretraining fits each alone and the joint loss fuses them with alpha (see the class docstring)."""
        pg, qg, pm, qm = self.gmf_user(users), self.gmf_item(items), self.mlp_user(users), self.mlp_item(items)
        gmf = self.gmf_out(pg * qg).squeeze(-1)
        mlp = self.mlp_out(self.mlp(torch.cat([pm, qm], dim=-1))).squeeze(-1)
        penalty = (pg * pg).sum(-1) + (qg * qg).sum(-1) + (pm * pm).sum(-1) + (qm * qm).sum(-1)
        return gmf, mlp, penalty

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] NeuMF logits of every item; -1 (unknown user) takes the mean user embeddings.

        The MLP tower is scored through `tower_all`, which splits its first layer into a user and an item half."""
        known = (users >= 0)[:, None]
        safe = users.clamp(min=0)
        pg = torch.where(known, self.gmf_user(safe), self.gmf_user.weight.mean(0, keepdim=True))
        pm = torch.where(known, self.mlp_user(safe), self.mlp_user.weight.mean(0, keepdim=True))
        gmf = (pg * self.gmf_out.weight[0]) @ self.gmf_item.weight.T + self.gmf_out.bias
        mlp = tower_all(pm, self.mlp_item.weight, cast(nn.Linear, self.mlp[0]), nn.Sequential(self.mlp[1:], self.mlp_out))
        return self.alpha * gmf + (1.0 - self.alpha) * mlp
