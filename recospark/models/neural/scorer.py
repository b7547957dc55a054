"""Scoring neural models on the executors: a `BlockScorer` for top-N lists and pair predictions.

Models that are not a dot product (deep nets, autoencoders, the RBM) rank through
`recospark.scoring.top_n_scored` with a `NeuralBlockScorer`: it is pickled into the tasks with
the recipe, its hyper-parameters and two broadcasts (the weights as safetensors bytes, the
sorted user ids), so the weights travel once per executor. Each Python worker builds the network
once per broadcast (cached), loads the weights through the safetensors check, sets torch's
threads to the task's cores and asks the recipe for a block of users' scores against every item.
Excluding rated items and the tie rule (smaller movie_id first) are `recospark.scoring`'s.

`predict_pairs` gives rating recipes' predictions for (user, item) rows (for RMSE), NaN for an
id the model never saw, as ALS does with coldStartStrategy "nan".

torch is imported inside the worker functions only: the driver builds scorers without it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recospark.models.neural import openmp_wait, weights
from recospark.models.neural.data import rows_of
from recospark.models.neural.recipe import Recipe
from recospark.schema import MOVIE_ID, PREDICTION, RATING, USER_ID

__all__ = ["NeuralBlockScorer", "predict_pairs"]

# (recipe name, weights digest) -> network, per Python worker
_NETWORKS: dict[tuple[str, str], Any] = {}
_ITEMS, _HIST_ITEMS, _HIST_RATINGS = "_items", "_hist_items", "_hist_ratings"


def task_cores() -> int:
    """Cores of the running Spark task (spark.task.cpus), 1 outside a task."""
    ctx = TaskContext.get()
    return max(1, int(ctx.cpus())) if ctx is not None else 1


def weights_key(weights_bytes: bytes, n_users: int, n_items: int) -> str:
    """Names one set of weights by content: a worker's cached network is reused only for the same weights.

    Content, not the broadcast object: a worker's broadcast objects are freed when the driver
    unpersists them, and a later broadcast may sit at the same address (two fits of one recipe in
    one application, the validation fit then the final one, would share a stale network).
    """
    digest = hashlib.blake2b(weights_bytes, digest_size=16).hexdigest()
    return f"{digest}:{n_users}:{n_items}"


def network(recipe: Recipe, hp: dict[str, Any], weights_bc: Any, key: str, n_users: int, n_items: int) -> Any:
    """The recipe's network with the broadcast weights, in eval mode; built once per worker and weights `key`."""
    openmp_wait()
    import torch

    slot = (recipe.name, key)
    net = _NETWORKS.get(slot)
    if net is None:
        torch.manual_seed(0)  # the initial values are overwritten by the weights; seeded anyway
        net = recipe.build(hp, n_users, n_items)
        state = {k: torch.from_numpy(v) for k, v in weights.from_bytes(weights_bc.value, f"{recipe.name} weights").items()}
        net.load_state_dict(state, strict=True)
        net.eval()
        _NETWORKS.clear()  # one model's network per worker at a time
        _NETWORKS[slot] = net
    return net


class NeuralBlockScorer:
    """`recospark.scoring.BlockScorer` of a fitted neural model (small: heavy arrays are broadcasts)."""

    def __init__(self, recipe: Recipe, hp: dict[str, Any], weights_bc: Any, user_ids_bc: Any, item_ids: np.ndarray) -> None:
        self.recipe = recipe
        self.hp = dict(hp)
        self.weights_bc = weights_bc
        self.user_ids_bc = user_ids_bc
        self._item_ids = np.asarray(item_ids, np.int32)
        self._key = weights_key(weights_bc.value, len(user_ids_bc.value), len(self._item_ids))  # on the driver, once

    def item_ids(self) -> np.ndarray:
        """The items seen in fitting, int32 ascending: the network's item rows, one score column each."""
        return self._item_ids

    def _inputs(self, user_ids: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> tuple:
        """Raw ids -> embedding rows: users (-1 unknown), each history's known items and their ratings."""
        users = rows_of(self.user_ids_bc.value, np.asarray(user_ids))
        items, ratings = [], []
        for h, r in zip(hist_items, hist_ratings, strict=True):
            rows = rows_of(self._item_ids, np.asarray(h))
            known = rows >= 0
            items.append(rows[known])
            ratings.append(np.asarray(r, np.float32)[known])
        return users, items, ratings

    def _net(self) -> Any:
        return network(self.recipe, self.hp, self.weights_bc, self._key, len(self.user_ids_bc.value), len(self._item_ids))

    def score(self, user_ids: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [len(user_ids), len(item_ids())]: the recipe's scores (rated items are excluded by the caller)."""
        openmp_wait()
        import torch

        torch.set_num_threads(task_cores())
        users, items, ratings = self._inputs(user_ids, hist_items, hist_ratings)
        with torch.no_grad():
            scores = np.asarray(self.recipe.score(self._net(), users, items, ratings), dtype=np.float32)
        if np.isnan(scores).any():
            raise ValueError(f"{self.recipe.name}: the network scored NaN")
        return scores

    def predict(
        self, user_ids: np.ndarray, item_ids: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]
    ) -> np.ndarray:
        """float32 predictions of (user_ids[k], item_ids[k]) pairs, one history per pair's user; NaN for unknown ids.

        Uses the recipe's `predict` when it has one, else its `score` on each distinct user.
        """
        openmp_wait()
        import torch

        torch.set_num_threads(task_cores())
        users, items, ratings = self._inputs(user_ids, hist_items, hist_ratings)
        cols = rows_of(self._item_ids, np.asarray(item_ids))
        out = np.full(len(users), np.nan, np.float32)
        known = np.flatnonzero((users >= 0) & (cols >= 0))
        if len(known) == 0:
            return out
        net = self._net()
        with torch.no_grad():
            if hasattr(self.recipe, "predict"):
                out[known] = self.recipe.predict(net, users[known], cols[known], [items[k] for k in known], [ratings[k] for k in known])
            else:
                distinct, first, where = np.unique(users[known], return_index=True, return_inverse=True)
                scores = self.recipe.score(net, distinct, [items[known[f]] for f in first], [ratings[known[f]] for f in first])
                out[known] = np.asarray(scores, np.float32)[where, cols[known]]
        return out


def _predict_batches(batches: Iterator[pa.RecordBatch], scorer: NeuralBlockScorer, block: int) -> Iterator[pa.RecordBatch]:
    """Worker: rows of (user_id, items, hist items, hist ratings) -> (user_id, movie_id, prediction) rows."""
    for batch in batches:
        for start in range(0, batch.num_rows, block):
            part = batch.slice(start, block)
            users = part.column(0).to_numpy().astype(np.int32)
            asked = part.column(1).to_pylist()
            hist = part.column(2).to_pylist()
            hist_r = part.column(3).to_pylist()
            counts = np.array([len(a) for a in asked], np.int64)
            pair_users = np.repeat(users, counts)
            pair_items = np.array([i for a in asked for i in a], np.int32)
            h_items = [np.asarray(hist[r], np.int32) for r in range(len(users)) for _ in range(counts[r])]
            h_ratings = [np.asarray(hist_r[r], np.float32) for r in range(len(users)) for _ in range(counts[r])]
            pred = scorer.predict(pair_users, pair_items, h_items, h_ratings)
            yield pa.RecordBatch.from_arrays(
                [pa.array(pair_users, pa.int32()), pa.array(pair_items, pa.int32()), pa.array(pred, pa.float32())],
                names=[USER_ID, MOVIE_ID, PREDICTION],
            )


def predict_pairs(pairs: DataFrame, history: DataFrame, scorer: NeuralBlockScorer, block: int = 1024) -> DataFrame:
    """`user_id, movie_id, prediction` for the distinct (user_id, movie_id) rows of `pairs`, each user's
    `history` (user_id, movie_id, rating rows: the training rows) handed to the network."""
    asked = (
        pairs.select(F.col(USER_ID).cast("int"), F.col(MOVIE_ID).cast("int"))
        .where(F.col(USER_ID).isNotNull() & F.col(MOVIE_ID).isNotNull())
        .distinct()
        .groupBy(USER_ID)
        .agg(F.collect_list(MOVIE_ID).alias(_ITEMS))
    )
    lists = history.groupBy(F.col(USER_ID).cast("int").alias(USER_ID)).agg(
        F.sort_array(
            F.collect_list(F.struct(F.col(MOVIE_ID).cast("int").alias(MOVIE_ID), F.col(RATING).cast("float").alias(RATING)))
        ).alias("_h")
    )
    rows = asked.join(lists, USER_ID, "left").select(
        USER_ID,
        _ITEMS,
        F.coalesce(F.col(f"_h.{MOVIE_ID}"), F.array().cast("array<int>")).alias(_HIST_ITEMS),
        F.coalesce(F.col(f"_h.{RATING}"), F.array().cast("array<float>")).alias(_HIST_RATINGS),
    )

    def predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _predict_batches(batches, scorer, block)

    return rows.mapInArrow(predict, f"{USER_ID} int, {MOVIE_ID} int, {PREDICTION} float")
