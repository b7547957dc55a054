"""The report's figures as PNG bytes, from small in-memory data (no Spark in here).

matplotlib's object API with the Agg canvas (`Figure`, never `pyplot`) keeps no global state,
needs no display, and is safe to call from any thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100
_TRAIN, _TEST, _VAL = "#1f77b4", "#d62728", "#ff7f0e"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def rating_distribution(counts: Mapping[float, int]) -> bytes:
    """A bar per rating value (rating -> count): shows the scale and how skewed the ratings are."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    values = sorted(counts)
    # bars at positions with the ratings as tick labels: matplotlib logs two INFO lines per plot
    # for category strings that parse as numbers
    x = np.arange(len(values))
    ax.bar(x, [counts[v] for v in values], color=_TRAIN)
    ax.set_xticks(x, [str(v).removesuffix(".0") for v in values])
    ax.set_xlabel("rating")
    ax.set_ylabel("number of ratings")
    ax.set_title("Rating distribution")
    return _png(fig)


def long_tail(per_user: Sequence[int] | np.ndarray, per_item: Sequence[int] | np.ndarray) -> bytes:
    """Ratings per user and per item, sorted descending on a log axis: the head and the tail at a glance."""
    fig = Figure(figsize=(10, 3.4))
    for i, (counts, who) in enumerate(((per_user, "user"), (per_item, "item"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ordered = np.sort(np.asarray(counts, dtype=float))[::-1]
        ax.plot(np.arange(1, len(ordered) + 1), ordered, color=_TRAIN)
        ax.fill_between(np.arange(1, len(ordered) + 1), ordered, alpha=0.25, color=_TRAIN)
        ax.set_yscale("log")
        ax.set_xlabel(f"{who}s, most active first")
        ax.set_ylabel("ratings")
        median = float(np.median(ordered)) if len(ordered) else 0.0
        ax.set_title(f"Ratings per {who} ({len(ordered)} {who}s, median {median:g})")
    return _png(fig)


def split_over_time(periods: Sequence[str], train: Sequence[int], test: Sequence[int], cutoff: str) -> bytes:
    """Train and test ratings per month, stacked: shows that a chronological split tests on the future only."""
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(periods))
    ax.bar(x, train, color=_TRAIN, label="train")
    ax.bar(x, test, bottom=train, color=_TEST, label="test")
    step = max(1, len(periods) // 12)
    ax.set_xticks(x[::step], [periods[i] for i in range(0, len(periods), step)], rotation=45, ha="right")
    ax.set_ylabel("ratings per month")
    ax.set_title(f"Chronological split: train before {cutoff}, test from it on")
    ax.legend()
    return _png(fig)


def learning_curve(epochs: Sequence[int], series: Mapping[str, Sequence[float | None]], title: str, xlabel: str = "epoch") -> bytes:
    """One line per series (e.g. train_rmse, val_rmse); missing points are gaps."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    colors = {"train": _TRAIN, "val": _VAL, "test": _TEST}
    for label, values in series.items():
        y = np.array([np.nan if v is None else float(v) for v in values])
        color = next((c for key, c in colors.items() if label.startswith(key)), None)
        ax.plot(list(epochs), y, marker="o", markersize=3, label=label, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def factor_heatmap(name: str, users: np.ndarray, user_ids: Sequence[int], items: np.ndarray, item_ids: Sequence[int]) -> bytes:
    """Sampled rows of the user and item factor matrices on one symmetric colour scale."""
    fig = Figure(figsize=(10, 4.2))
    limit = float(max(np.abs(users).max(initial=0.0), np.abs(items).max(initial=0.0))) or 1.0
    image = None
    for i, (mat, ids, who) in enumerate(((users, user_ids, "users"), (items, item_ids, "items"))):
        ax = fig.add_subplot(1, 2, i + 1)
        image = ax.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xlabel("latent dimension")
        ax.set_ylabel(f"{who} (id)")
        step = max(1, len(ids) // 10)
        ax.set_yticks(range(0, len(ids), step), [str(ids[j]) for j in range(0, len(ids), step)], fontsize=7)
        ax.set_title(f"{name}: {len(ids)} sampled {who}")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8)
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
        return buf.getvalue()
    return _png(fig)


def accuracy_vs_novelty(
    names: Sequence[str], ndcg: Sequence[float], popularity: Sequence[float], coverage: Sequence[float], k: int
) -> bytes:
    """NDCG@k against the lists' mean train popularity and against catalogue coverage, one point per model.

    Up and left on the first panel (accurate, less obvious films), up and right on the second
    (accurate, more of the catalogue) is better.
    """
    fig = Figure(figsize=(9, 3.6))
    for position, (xs, label) in enumerate(((popularity, "mean train ratings of recommended films"), (coverage, "catalogue coverage")), 1):
        ax = fig.add_subplot(1, 2, position)
        ax.scatter(xs, ndcg, color=_TRAIN)
        for name, x, y in zip(names, xs, ndcg, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"NDCG@{k}")
        ax.grid(alpha=0.3)
    return _png(fig)
