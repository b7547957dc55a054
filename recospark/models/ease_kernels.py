"""EASE's workers and driver-side linear algebra: numpy and numba only, nothing from Spark.

Python workers unpickle `gram_tiles` and `EASEBlockScorer` by reference, so this module is what a
fresh worker imports for EASE; keeping pyspark.ml and pandas out of it keeps that import short.
`recospark.models.ease` holds the Estimator/Model and the Spark plumbing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numba import njit

__all__ = [
    "TILE",
    "EASEBlockScorer",
    "assemble_gram",
    "ease_scores",
    "ease_weights",
    "gram_tiles",
    "keep_most_rated",
    "sum_tiles",
    "warm_up",
]

# Gram tiles are TILE x TILE float64 (32 MB): the unit of the shuffle and of the driver's assembly.
TILE = 2048
# Users per call of the compiled Gram loop (bounds the worker's concatenated history arrays).
_USERS_PER_CHUNK = 4096


@njit(cache=True, nogil=True)
def _add_pairs(gram: np.ndarray, indptr: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:  # pragma: no cover - compiled
    """gram[i, j] += v_i v_j for every pair of items i <= j of each user (upper triangle only)."""
    for u in range(len(indptr) - 1):
        start, stop = indptr[u], indptr[u + 1]
        for a in range(start, stop):
            ia, va = idx[a], vals[a]
            for b in range(a, stop):
                ib = idx[b]
                if ia <= ib:
                    gram[ia, ib] += va * vals[b]
                else:
                    gram[ib, ia] += va * vals[b]


def _flatten(chunk: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(i) for i, _ in chunk), dtype=np.int64, count=len(chunk))
    indptr = np.zeros(len(chunk) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    idx = np.fromiter((j for i, _ in chunk for j in i), dtype=np.int64, count=int(indptr[-1]))
    vals = np.fromiter((x for _, values in chunk for x in values), dtype=np.float64, count=int(indptr[-1]))
    return indptr, idx, vals


def gram_tiles(rows: Iterable[tuple[Any, Any]], n: int, tile: int = TILE) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """mapPartitions worker: this partition's X^T X as upper-triangular tiles ((a, b), block), a <= b.

    `rows` are users as (column indices, values), each index in [0, n) at most once per user. The
    partition's partial Gram is one dense n x n float64 (8 n^2 bytes per task); tiles that are all
    zero are not emitted. Diagonal tiles hold only their upper triangle (see `assemble_gram`).
    """
    gram: np.ndarray | None = None
    chunk: list[tuple[Any, Any]] = []

    def flush() -> None:
        nonlocal gram
        if chunk:
            gram = np.zeros((n, n)) if gram is None else gram
            _add_pairs(gram, *_flatten(chunk))
            chunk.clear()

    for row in rows:
        chunk.append((row[0], row[1]))
        if len(chunk) >= _USERS_PER_CHUNK:
            flush()
    flush()
    if gram is None:
        return
    for a in range(0, n, tile):
        for b in range(a, n, tile):
            block = gram[a : a + tile, b : b + tile]
            if block.any():
                yield (a // tile, b // tile), np.ascontiguousarray(block)


def sum_tiles(tiles: Iterable[tuple[tuple[int, int], np.ndarray]]) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """mapPartitions worker after the shuffle: one summed block per tile key.

    A plain dict instead of `reduceByKey`: pyspark's merger would spill the partial Grams to disk
    whenever the worker holds more than spark.python.worker.memory, which one n x n Gram exceeds.
    """
    summed: dict[tuple[int, int], np.ndarray] = {}
    for key, block in tiles:
        if key in summed:
            summed[key] += block
        else:
            summed[key] = np.array(block, dtype=np.float64)  # own, writable copy
    yield from summed.items()


def assemble_gram(tiles: Iterable[tuple[tuple[int, int], np.ndarray]], n: int, tile: int = TILE) -> np.ndarray:
    """The symmetric n x n Gram from summed upper tiles (each key once), mirrored below the diagonal."""
    gram = np.zeros((n, n))
    for (a, b), block in tiles:
        rows, cols = slice(a * tile, a * tile + block.shape[0]), slice(b * tile, b * tile + block.shape[1])
        if a == b:
            gram[rows, cols] = block + np.triu(block, 1).T
        else:
            gram[rows, cols] = block
            gram[cols, rows] = block.T
    return gram


def ease_weights(gram: np.ndarray, reg: float) -> np.ndarray:
    """B = I - P diag(1/diag P) with P = (gram + reg I)^-1, in float64; `gram` is overwritten.

    Column j of B is divided by -P_jj, so B's diagonal is exactly 0.
    """
    gram[np.diag_indices_from(gram)] += reg
    weights = np.linalg.inv(gram)
    diagonal = np.diag(weights).copy()
    weights /= -diagonal[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def keep_most_rated(item_ids: np.ndarray, counts: np.ndarray, cap: int) -> np.ndarray:
    """Boolean mask of the `cap` items with most ratings, ties broken by the smaller item id."""
    order = np.lexsort((item_ids, -counts))  # last key first: count descending, then id ascending
    keep = np.zeros(len(item_ids), dtype=bool)
    keep[order[:cap]] = True
    return keep


@njit(cache=True, nogil=True)
def _sum_rows(
    out: np.ndarray, indptr: np.ndarray, pos: np.ndarray, vals: np.ndarray, weights: np.ndarray
) -> None:  # pragma: no cover - compiled
    """out[r] = sum over the user's items k of vals[k] * weights[pos[k]] (x_u B for a sparse x_u)."""
    n = out.shape[1]
    for r in range(out.shape[0]):
        row = out[r]
        for k in range(indptr[r], indptr[r + 1]):
            src = weights[pos[k]]
            v = vals[k]
            for c in range(n):
                row[c] += v * src[c]


def ease_scores(
    item_ids: np.ndarray,
    weights: np.ndarray,
    hist_items: Sequence[np.ndarray],
    hist_ratings: Sequence[np.ndarray] | None,
    binary: bool,
) -> np.ndarray:
    """x_u B for a block of users: float32 [len(hist_items), len(item_ids)].

    `item_ids` (sorted ascending) label B's rows and columns; history items not among them (beyond
    the cap, or unseen in fitting) are ignored, so a user without any known item scores 0 everywhere.
    """
    n_users = len(hist_items)
    out = np.zeros((n_users, len(item_ids)), dtype=np.float32)
    positions, values = [], []
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    for r, items in enumerate(hist_items):
        items = np.asarray(items)
        pos = np.searchsorted(item_ids, items)
        inside = pos < len(item_ids)
        known = np.zeros(len(items), dtype=bool)
        known[inside] = item_ids[pos[inside]] == items[inside]
        positions.append(pos[known])
        if binary or hist_ratings is None:
            values.append(np.ones(int(known.sum()), dtype=np.float32))
        else:
            values.append(np.asarray(hist_ratings[r], dtype=np.float32)[known])
        indptr[r + 1] = indptr[r] + int(known.sum())
    if indptr[-1] and len(item_ids):
        _sum_rows(out, indptr, np.concatenate(positions).astype(np.int64), np.concatenate(values), weights)
    return out


class EASEBlockScorer:
    """recospark.scoring's BlockScorer for EASE: item ids and B (float32) as Spark broadcasts.

    Pickled into the scoring tasks, so it carries only the two Broadcast handles and the flag;
    `.value` is read inside `score`, once per Python worker.
    """

    def __init__(self, item_ids: Any, weights: Any, binary: bool) -> None:
        self._item_ids = item_ids
        self._weights = weights
        self.binary = bool(binary)

    def item_ids(self) -> np.ndarray:
        """The items inside the cap, int32 ascending: B's rows and columns, one score column each."""
        return self._item_ids.value

    def score(self, user_ids: np.ndarray, hist_items: Sequence[np.ndarray], hist_ratings: Sequence[np.ndarray]) -> np.ndarray:
        """x_u B for each user of the block (see `ease_scores`); history items outside the cap are ignored."""
        return ease_scores(self._item_ids.value, self._weights.value, hist_items, hist_ratings, self.binary)

    def unpersist(self) -> None:
        """Drop the broadcast copies on the executors (the model rebroadcasts on its next blockScorer())."""
        self._item_ids.unpersist()
        self._weights.unpersist()


def warm_up() -> float:
    """Compile (or load from numba's on-disk cache) both kernels through the calls EASE's tasks make
    (`gram_tiles`, `ease_scores`), so the argument types match; returns the seconds it took."""
    started = time.perf_counter()
    list(gram_tiles([(np.array([0, 1], np.int32), np.array([1.0, 1.0]))], n=2))
    ease_scores(np.array([0, 1], np.int32), np.zeros((2, 2), np.float32), [np.array([0], np.int32)], [np.array([1.0], np.float32)], False)
    return time.perf_counter() - started
