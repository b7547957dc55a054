"""The torch module of the `rbm` recipe (imported by `rbm.py`'s methods only: this imports torch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SoftmaxRBM"]


class SoftmaxRBM(nn.Module):
    """Salakhutdinov, Mnih and Hinton 2007's RBM for collaborative filtering.

    Each user is one RBM whose visible units are the items that user rated, each a softmax over
    the K rating values (one-hot v[i, k]); every user shares the weights W[i, k, f], the visible
    biases b[i, k] and the hidden biases c[f]. Tensors here are dense over the catalogue: v is
    [B, n_items, K] with zero rows for unrated items, and `mask` [B, n_items] marks the rated ones.
    """

    rating_values: torch.Tensor

    def __init__(self, n_items: int, values: Sequence[float], hidden: int, init_std: float) -> None:
        super().__init__()
        levels = len(values)
        self.n_items, self.levels, self.hidden = n_items, levels, hidden
        # the rating of each softmax unit: saved with the weights, since scoring has no hyper-parameters
        self.register_buffer("rating_values", torch.tensor([float(v) for v in values], dtype=torch.float32))
        self.weight = nn.Parameter(torch.randn(n_items * levels, hidden) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_items, levels))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))

    def hidden_logits(self, v: torch.Tensor) -> torch.Tensor:
        """[B, F]: c_f + sum_{i,k} v[i, k] W[i, k, f]."""
        return self.hidden_bias + v.reshape(len(v), -1) @ self.weight

    def visible_logits(self, h: torch.Tensor) -> torch.Tensor:
        """[B, n_items, K]: b[i, k] + sum_f h_f W[i, k, f]."""
        return self.visible_bias + (h @ self.weight.T).reshape(len(h), self.n_items, self.levels)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """[B]: F(v) = -sum_{i,k} v[i, k] b[i, k] - sum_f softplus(hidden logit f); p(v) is proportional to exp(-F(v))."""
        return -(v * self.visible_bias).sum((1, 2)) - F.softplus(self.hidden_logits(v)).sum(1)

    def gibbs(self, v: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
        """v after `steps` rounds of h ~ p(h | v), v ~ p(v | h) on the rated items only; the last
        round keeps the softmax probabilities instead of a sample (less noise in the negative phase)."""
        for step in range(steps):
            h = torch.bernoulli(torch.sigmoid(self.hidden_logits(v)))
            probs = torch.softmax(self.visible_logits(h), dim=2)
            if step < steps - 1:
                probs = F.one_hot(torch.multinomial(probs.reshape(-1, self.levels), 1).squeeze(1), self.levels).to(v.dtype).reshape(v.shape)
            v = probs * mask[:, :, None]
        return v

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None, cd_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """With `cd_steps` = 0: ([B, n_items, K] rating-value probabilities of every item given the
        rated ones (mean field, p(v_i = k | p(h | v))), ||W||^2). With `cd_steps` = k > 0: ([B]
        F(v) - F(v_k), ||W||^2), v_k from k Gibbs rounds on the rated items (`mask`) and held
        constant, so the difference's gradient is the CD-k update."""
        norm = (self.weight**2).sum()
        if cd_steps <= 0:
            return torch.softmax(self.visible_logits(torch.sigmoid(self.hidden_logits(v))), dim=2), norm
        if mask is None:
            raise ValueError("contrastive divergence needs the mask of rated items")
        with torch.no_grad():
            negative = self.gibbs(v, mask, cd_steps)
        return self.free_energy(v) - self.free_energy(negative), norm
