"""The torch modules of the autoencoder recipes (imported by `autoencoders.py`'s methods only: this imports torch).

Every network reads a batch of users' histories as sparse rows (row, item, value), and its first
layer is an `ItemInput`: it adds up the weight rows of the rated items, nnz x width multiply-adds,
where the dense product of an n_users x n_items matrix costs n_users x n_items x width. At ML-25M's
shape (59,047 items, about 150 rated per user) that dense product was over half of a Mult-VAE step.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AutoRecNet", "ItemInput", "MultDAENet", "MultVAENet", "row_means"]


class ItemInput(nn.Module):
    """``nn.Linear(n_items, width)`` over sparse input rows, its weight stored item-major ([n_items, width]).

    ``forward(rows, items, values, n_rows)`` is ``linear(x)`` for the [n_rows, n_items] matrix x
    holding `values` at (rows, items) and 0 elsewhere (the pairs are unique: ingest keeps one rating
    per pair), without building x: the rated items' weight rows (contiguous, as an embedding
    table's) are summed per row, weighted by the values (``embedding_bag``). ``from_linear`` takes a Linear's weights, so a network
    starts from the same draws as with its dense layer; weights saved with the dense layer's
    [width, n_items] ``weight`` still load (transposed on load).

    >>> layer = ItemInput(torch.tensor([[1.0], [10.0], [100.0]]), torch.tensor([0.5]))
    >>> layer(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 3.0]), 2).tolist()
    [[201.5], [30.5]]
    """

    def __init__(self, item_weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.item_weight = nn.Parameter(item_weight.detach().clone().contiguous())
        self.bias = nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ItemInput:
        """The same layer as `linear` (its weight transposed once)."""
        return cls(linear.weight.detach().t(), linear.bias.detach())

    def forward(self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
        """[n_rows, width]; `rows` ascending (a row's entries side by side)."""
        if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):  # O(entries), against embedding_bag's O(entries x width)
            raise ValueError("ItemInput: rows must be ascending (each row's entries side by side); sort the entries by row")
        offsets = torch.searchsorted(rows, torch.arange(n_rows, dtype=rows.dtype))
        summed = F.embedding_bag(items, self.item_weight, offsets, mode="sum", per_sample_weights=values.to(self.item_weight.dtype))
        return summed + self.bias

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        old = prefix + "weight"  # the dense layer's name and layout, [width, n_items]
        if old in state_dict and prefix + "item_weight" not in state_dict:
            state_dict[prefix + "item_weight"] = state_dict.pop(old).t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _squared_norm(weight: torch.Tensor) -> torch.Tensor:
    """||weight||^2 without a weight-sized temporary in the forward pass (a catalogue-wide layer is 10-100 MB)."""
    return torch.linalg.vector_norm(weight) ** 2


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
        self.encoder = ItemInput.from_linear(nn.Linear(n_items, hidden))  # PyTorch's default Linear initialisation
        self.decoder = nn.Linear(hidden, n_items)

    def forward(self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(every item's reconstructed rating for each of the `n_rows` users, the L2 term's ||V||^2 + ||W||^2);
        user `rows[j]` rated `items[j]` with `values[j]` (the input r_u, sparse)."""
        code = torch.sigmoid(self.encoder(rows, items, self.dropout(values), n_rows))
        return self.decoder(code), self.weight_norm()

    def weight_norm(self) -> torch.Tensor:
        """||V||^2 + ||W||^2 (the paper's L2 term, biases excluded)."""
        return _squared_norm(self.encoder.item_weight) + _squared_norm(self.decoder.weight)


class _Multinomial(nn.Module):
    """Shared by Mult-VAE and Mult-DAE: L2-normalised input with dropout, tanh layers, item logits."""

    def __init__(self, n_items: int, dropout: float) -> None:
        super().__init__()
        self.n_items = n_items
        self.dropout = nn.Dropout(dropout)

    encoder: nn.Sequential  # the subclass's; its first layer an ItemInput

    def encode(self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
        """The encoder on x / ||x|| per user (an empty history stays 0), after input dropout while training;
        x holds `values` at (rows, items)."""
        norms = torch.zeros(n_rows).index_add_(0, rows, values * values).sqrt().clamp(min=1e-12)  # as F.normalize
        first = self.encoder[0](rows, items, self.dropout(values / norms[rows]), n_rows)
        return self.encoder[1:](first)

    def weight_norm(self) -> torch.Tensor:
        """Sum of squared weights of every layer (biases excluded)."""
        weights = [m.weight for m in self.modules() if isinstance(m, nn.Linear)] + [
            m.item_weight for m in self.modules() if isinstance(m, ItemInput)
        ]
        return sum((_squared_norm(w) for w in weights), torch.zeros(()))


def _tanh_stack(widths: Sequence[int], tanh_last: bool, items_in: bool = False) -> nn.Sequential:
    """Linear layers through `widths` with tanh between them (and after the last when `tanh_last`);
    with `items_in`, the first is an `ItemInput` (an encoder reading sparse item rows)."""
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(pairwise(widths)):
        linear = _init_paper(nn.Linear(n_in, n_out))
        layers.append(ItemInput.from_linear(linear) if items_in and index == 0 else linear)
        if tanh_last or index < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MultVAENet(_Multinomial):
    """Liang et al. 2018's Mult-VAE: q(z|x) = N(mu, diag(exp(logvar))), p(x|z) multinomial over items."""

    def __init__(self, n_items: int, hidden: Sequence[int], latent: int, dropout: float) -> None:
        super().__init__(n_items, dropout)
        self.latent = latent
        self.encoder = _tanh_stack([n_items, *hidden, 2 * latent], tanh_last=False, items_in=True)
        self.decoder = _tanh_stack([latent, *reversed(hidden), n_items], tanh_last=False)

    def forward(
        self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item logits, mu, logvar) of `n_rows` users, user `rows[j]` having clicked `items[j]` (`values[j]`,
        1 for a click); z is sampled while training and is mu in eval mode."""
        code = self.encode(rows, items, values, n_rows)
        mu, logvar = code[:, : self.latent], code[:, self.latent :]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


class MultDAENet(_Multinomial):
    """Liang et al. 2018's Mult-DAE: the same tanh layers without the stochastic code."""

    def __init__(self, n_items: int, hidden: Sequence[int], latent: int, dropout: float) -> None:
        super().__init__(n_items, dropout)
        self.encoder = _tanh_stack([n_items, *hidden, latent], tanh_last=True, items_in=True)
        self.decoder = _tanh_stack([latent, *reversed(hidden), n_items], tanh_last=False)

    def forward(self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(item logits of `n_rows` users, as `MultVAENet.forward` reads them; the sum of squared weights for the L2 term)."""
        return self.decoder(self.encode(rows, items, values, n_rows)), self.weight_norm()
