"""The torch modules of the dot-product recipes (imported by `mf.py`'s methods only: this imports torch)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BiasedDot", "GMFNet"]


class BiasedDot(nn.Module):
    """mu + b_u + b_i + p_u . q_i (the Keras MF tutorial's embeddings, biases and dot product).

    `forward` returns (prediction, penalty): the penalty is each row's squared norm of the
    embeddings and biases it used, for an L2 term on the batch's rows only.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, mean: float) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.mean = nn.Parameter(torch.tensor(float(mean)))
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, q = self.user(users), self.item(items)
        bu, bi = self.user_bias(users).squeeze(-1), self.item_bias(items).squeeze(-1)
        prediction = (p * q).sum(-1) + bu + bi + self.mean
        penalty = (p * p).sum(-1) + (q * q).sum(-1) + bu * bu + bi * bi
        return prediction, penalty

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """user [p_u, 1, b_u + mu] . item [q_i, b_i, 1] = the prediction."""
        ones_u = torch.ones(self.user.num_embeddings, 1)
        ones_i = torch.ones(self.item.num_embeddings, 1)
        users = torch.cat([self.user.weight, ones_u, self.user_bias.weight + self.mean], dim=1)
        items = torch.cat([self.item.weight, self.item_bias.weight, ones_i], dim=1)
        return users, items


class GMFNet(nn.Module):
    """He et al. 2017's GMF: logit = h . (p_u * q_i) + b (the sigmoid lives in the loss), plus an
    optional item bias b_i (not in the paper: it lets the model learn popularity directly)."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, item_bias: bool = False) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.out = nn.Linear(dim, 1)
        self.item_bias = nn.Embedding(n_items, 1) if item_bias else None
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, q = self.user(users), self.item(items)
        logits = self.out(p * q).squeeze(-1)
        penalty = (p * p).sum(-1) + (q * q).sum(-1)
        if self.item_bias is not None:
            bi = self.item_bias(items).squeeze(-1)
            logits = logits + bi
            penalty = penalty + bi * bi
        return logits, penalty

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """user [h * p_u, b(, 1)] . item [q_i, 1(, b_i)] = the logit (the output weights folded into the user vector)."""
        h, b = self.out.weight[0], self.out.bias
        n_users, n_items = self.user.num_embeddings, self.item.num_embeddings
        users = [self.user.weight * h, b.expand(n_users, 1)]
        items = [self.item.weight, torch.ones(n_items, 1)]
        if self.item_bias is not None:
            users.append(torch.ones(n_users, 1))
            items.append(self.item_bias.weight)
        return torch.cat(users, dim=1), torch.cat(items, dim=1)
