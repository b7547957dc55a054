"""Per-epoch validation signals a recipe computes on its rank's rows (numpy; the engine all-reduces them).

`ranking_validation` is exact NDCG@k over the rank's validation users with the pipeline's
definitions (binary relevance, 1/log2(rank + 1) discounts, ideal DCG over min(k, |relevant|),
see `recospark.ranking`) and its selection (`recospark.scoring.rank_block`: the user's training
items excluded, ties by the smaller item). It needs every training row of a user on the same
rank, so it suits recipes that shard by user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recospark.models.neural.recipe import TrainShard
from recospark.scoring import rank_block

__all__ = ["histories", "ranking_validation", "squared_error"]


def squared_error(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(sum of squared errors, count): the engine reports sqrt(sum / count) = RMSE.

    >>> squared_error(np.array([3.0, 4.0]), np.array([4.0, 4.0]))
    (1.0, 2.0)
    """
    err = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return float(np.dot(err, err)), float(len(err))


def histories(shard: TrainShard, users: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's (item rows, ratings) in a shard sorted by user (shard_by="users"); empty when absent."""
    start = np.searchsorted(shard.users, users, side="left")
    stop = np.searchsorted(shard.users, users, side="right")
    return [shard.items[a:b] for a, b in zip(start, stop, strict=True)], [shard.ratings[a:b] for a, b in zip(start, stop, strict=True)]


def ranking_validation(
    score: Callable[[np.ndarray, Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray],
    train: TrainShard,
    val: TrainShard,
    k: int = 10,
    block: int = 1024,
) -> tuple[float, float]:
    """(sum of NDCG@k over the validation users, their count).

    `score(user_rows, hist_items, hist_ratings)` returns float32 [len(user_rows), n_items]; each
    user's training items (from `train`) are its history and are never ranked.
    """
    users = np.unique(val.users)
    item_rows = np.arange(train.n_items, dtype=np.int64)
    relevant_keys = np.unique(val.users * train.n_items + val.items)  # sorted: by user, then item
    relevant_users = relevant_keys // train.n_items
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for start in range(0, len(users), block):
        part = users[start : start + block]
        hist_items, hist_ratings = histories(train, part)
        scores = np.array(score(part, hist_items, hist_ratings), dtype=np.float32)
        u, rank, item, _ = rank_block(part, scores, hist_items, item_rows, k)
        keys = u.astype(np.int64) * train.n_items + item
        pos = np.minimum(np.searchsorted(relevant_keys, keys), len(relevant_keys) - 1)
        hit = relevant_keys[pos] == keys
        dcg = np.zeros(len(part))
        np.add.at(dcg, np.searchsorted(part, u[hit]), discounts[rank[hit] - 1])
        n_rel = np.searchsorted(relevant_users, part, side="right") - np.searchsorted(relevant_users, part, side="left")
        ideal = np.cumsum(discounts)[np.minimum(n_rel, k) - 1]
        total += float(np.sum(dcg / ideal))
    return total, float(len(users))
