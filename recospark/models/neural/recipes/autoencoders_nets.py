"""The torch modules of the autoencoder recipes (imported by `autoencoders.py`'s methods only: this imports torch)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AutoRecNet", "MultDAENet", "MultVAENet", "dense_rows", "row_means"]


def dense_rows(rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int, n_items: int) -> torch.Tensor:
    """[n_rows, n_items] float32 with values at (rows, items) and 0 elsewhere."""
    x = torch.zeros(n_rows, n_items)
    x[rows, items] = values.to(torch.float32)
    return x


def row_means(rows: torch.Tensor, values: torch.Tensor, n_rows: int, empty: float) -> torch.Tensor:
    """[n_rows]: the mean of each row's values (`empty` for a row without any)."""
    sums = torch.zeros(n_rows).index_add_(0, rows, values.to(torch.float32))
    counts = torch.zeros(n_rows).index_add_(0, rows, torch.ones(len(rows)))
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.full((n_rows,), float(empty)))


def _init_paper(layer: nn.Linear) -> nn.Linear:
    """Liang et al.'s initialisation: Xavier (Glorot) weights, biases from N(0, 0.001^2)."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.normal_(layer.bias, std=0.001)
    return layer


class AutoRecNet(nn.Module):
    """U-AutoRec: ratings vector r_u -> sigmoid(V r_u + mu) -> W h + b, every item's reconstructed rating.

    With `dropout` > 0, input ratings are dropped while training (a denoising AutoRec): the targets
    stay every observed rating, so the network learns to predict ratings it did not see. With
    `centred`, inputs and outputs are ratings minus the user's mean rating (the recipe centres them).
    """

    mean: torch.Tensor
    centred: torch.Tensor

    def __init__(self, n_items: int, hidden: int, dropout: float = 0.0, mean: float = 0.0, centred: bool = False) -> None:
        super().__init__()
        self.n_items = n_items
        # saved with the weights, since scoring has no hyper-parameters: the mean training rating (the
        # offset of a user without history) and whether ratings are centred on each user's mean
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("centred", torch.tensor(1.0 if centred else 0.0))
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.Linear(n_items, hidden)
        self.decoder = nn.Linear(hidden, n_items)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every item's reconstructed rating, the L2 term's ||V||^2 + ||W||^2)."""
        return self.decoder(torch.sigmoid(self.encoder(self.dropout(x)))), self.weight_norm()

    def weight_norm(self) -> torch.Tensor:
        """||V||^2 + ||W||^2 (the paper's L2 term, biases excluded)."""
        return (self.encoder.weight**2).sum() + (self.decoder.weight**2).sum()


class _Multinomial(nn.Module):
    """Shared by Mult-VAE and Mult-DAE: L2-normalised input with dropout, tanh layers, item logits."""

    def __init__(self, n_items: int, dropout: float) -> None:
        super().__init__()
        self.n_items = n_items
        self.dropout = nn.Dropout(dropout)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x / ||x|| per user (an empty history stays 0), then input dropout while training."""
        return self.dropout(F.normalize(x, dim=1))

    def weight_norm(self) -> torch.Tensor:
        """Sum of squared weights of every layer (biases excluded)."""
        return sum(((m.weight**2).sum() for m in self.modules() if isinstance(m, nn.Linear)), torch.zeros(()))


def _tanh_stack(widths: Sequence[int], tanh_last: bool) -> nn.Sequential:
    """Linear layers through `widths` with tanh between them (and after the last when `tanh_last`)."""
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(pairwise(widths)):
        layers.append(_init_paper(nn.Linear(n_in, n_out)))
        if tanh_last or index < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MultVAENet(_Multinomial):
    """Liang et al. 2018's Mult-VAE: q(z|x) = N(mu, diag(exp(logvar))), p(x|z) multinomial over items."""

    def __init__(self, n_items: int, hidden: Sequence[int], latent: int, dropout: float) -> None:
        super().__init__(n_items, dropout)
        self.latent = latent
        self.encoder = _tanh_stack([n_items, *hidden, 2 * latent], tanh_last=False)
        self.decoder = _tanh_stack([latent, *reversed(hidden), n_items], tanh_last=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item logits, mu, logvar); z is sampled while training and is mu in eval mode."""
        code = self.encoder(self.prepare(x))
        mu, logvar = code[:, : self.latent], code[:, self.latent :]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


class MultDAENet(_Multinomial):
    """Liang et al. 2018's Mult-DAE: the same tanh layers without the stochastic code."""

    def __init__(self, n_items: int, hidden: Sequence[int], latent: int, dropout: float) -> None:
        super().__init__(n_items, dropout)
        self.encoder = _tanh_stack([n_items, *hidden, latent], tanh_last=True)
        self.decoder = _tanh_stack([latent, *reversed(hidden), n_items], tanh_last=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(item logits, the sum of squared weights for the L2 term)."""
        return self.decoder(self.encoder(self.prepare(x))), self.weight_norm()
