"""Exact top-k per row of a score matrix, scanned tile by tile: the selection kernels of `recospark.scoring`.

Imports nothing from Spark. Each row (a user) keeps a k-entry heap whose root is its current
k-th best (score, item id) and a threshold equal to that root's score. A cell is looked at
twice only when its score reaches the threshold, so for nearly all cells the work is one load
and one compare; the first k candidates and the few later improvements go through the heap.

The order is the one rule of recospark's lists: higher score first, and among equal scores the
smaller item id. NaN never enters (it compares false), -inf never enters, excluded positions
(per row, ascending, the columns' positions in scan order) are skipped with a cursor that only
moves forward, so excluded items cost nothing unless they would have entered the list.

`tile_below` is the pruning test of the factor path: from a tile's per-dimension factor range it
bounds every score a block of users can get from the tile (rounding included) and says whether
all of them fall strictly under the users' thresholds, so the tile need not be computed.

`cache=True` on every kernel: a fresh Python worker loads machine code from numba's on-disk
cache; `warm_up` compiles or loads the signatures `scoring` calls, once per process.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = ["excluded_positions", "heaps", "ranked", "scan_tile", "tile_below", "warm_up"]

_NO_ID = np.iinfo(np.int32).min  # threshold id while a heap is not full: nothing ties below it


@njit(cache=True, nogil=True, inline="always")
def _worse(s_a: float, id_a: int, s_b: float, id_b: int) -> bool:
    """Whether (s_a, id_a) ranks after (s_b, id_b): lower score, or same score and larger id."""
    return s_a < s_b or (s_a == s_b and id_a > id_b)


@njit(cache=True, nogil=True)
def _sift_down(hs: np.ndarray, hid: np.ndarray, size: int) -> None:
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        w = left
        right = left + 1
        if right < size and _worse(hs[right], hid[right], hs[left], hid[left]):
            w = right
        if _worse(hs[w], hid[w], hs[i], hid[i]):
            hs[i], hs[w] = hs[w], hs[i]
            hid[i], hid[w] = hid[w], hid[i]
            i = w
        else:
            return


@njit(cache=True, nogil=True)
def _sift_up(hs: np.ndarray, hid: np.ndarray, i: int) -> None:
    while i > 0:
        parent = (i - 1) // 2
        if _worse(hs[i], hid[i], hs[parent], hid[parent]):
            hs[i], hs[parent] = hs[parent], hs[i]
            hid[i], hid[parent] = hid[parent], hid[i]
            i = parent
        else:
            return


def heaps(n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Empty selection state for `n_rows` rows: (heap scores, heap ids, fill, threshold, threshold id,
    cursor: how many of the row's excluded positions are behind the scan)."""
    return (
        np.full((n_rows, k), -np.inf, np.float32),
        np.zeros((n_rows, k), np.int32),
        np.zeros(n_rows, np.int64),
        np.full(n_rows, -np.inf, np.float32),
        np.full(n_rows, _NO_ID, np.int32),
        np.zeros(n_rows, np.int64),
    )


@njit(cache=True, nogil=True, boundscheck=False)
def scan_tile(
    scores: np.ndarray,
    col0: int,
    item_ids: np.ndarray,
    excl_ptr: np.ndarray,
    excl_pos: np.ndarray,
    heap_s: np.ndarray,
    heap_id: np.ndarray,
    fill: np.ndarray,
    thr: np.ndarray,
    thr_id: np.ndarray,
    cursor: np.ndarray,
) -> None:
    """Offer every cell of `scores` (rows x tile columns; column c is position col0 + c) to its row's heap.

    `item_ids[p]` is the id at position p; rows' excluded positions are
    `excl_pos[excl_ptr[r]:excl_ptr[r + 1]]`, ascending. Tiles must come in ascending col0.
    """
    n_rows, width = scores.shape
    k = heap_s.shape[1]
    if k == 0:
        return
    for r in range(n_rows):
        t = thr[r]
        row = scores[r]
        hits = 0
        for c in range(width):  # vectorized: most rows of most tiles have no cell at the threshold
            hits += row[c] >= t
        if hits == 0:
            continue
        tid = thr_id[r]
        for c in range(width):
            s = row[c]
            if s >= t:
                iid = item_ids[col0 + c]
                if s == -np.inf or not (s > t or iid < tid):
                    continue
                pos = col0 + c
                cur = excl_ptr[r] + cursor[r]
                end = excl_ptr[r + 1]
                while cur < end and excl_pos[cur] < pos:
                    cur += 1
                cursor[r] = cur - excl_ptr[r]
                if cur < end and excl_pos[cur] == pos:
                    continue
                hs = heap_s[r]
                hid = heap_id[r]
                f = fill[r]
                if f < k:
                    hs[f] = s
                    hid[f] = iid
                    _sift_up(hs, hid, f)
                    fill[r] = f + 1
                    if f + 1 == k:
                        t = hs[0]
                        tid = hid[0]
                else:
                    hs[0] = s
                    hid[0] = iid
                    _sift_down(hs, hid, k)
                    t = hs[0]
                    tid = hid[0]
        thr[r] = t
        thr_id[r] = tid


@njit(cache=True, nogil=True)
def excluded_positions(
    offsets: np.ndarray, values: np.ndarray, sorted_ids: np.ndarray, scan_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows' excluded ids (`values[offsets[r]:offsets[r + 1]]`, any order) as ascending scan positions:
    (ptr, positions) for `scan_tile`. `scan_pos[j]` is where `sorted_ids[j]` (ascending) is scanned;
    ids not in `sorted_ids` are dropped."""
    n_rows = len(offsets) - 1
    ptr = np.zeros(n_rows + 1, np.int64)
    pos = np.empty(offsets[n_rows] - offsets[0], np.int64)
    out = 0
    for r in range(n_rows):
        start = out
        for v in values[offsets[r] : offsets[r + 1]]:
            p = np.searchsorted(sorted_ids, v)
            if p < len(sorted_ids) and sorted_ids[p] == v:
                pos[out] = scan_pos[p]
                out += 1
        pos[start:out] = np.sort(pos[start:out])
        ptr[r + 1] = out
    return ptr, pos[:out]


@njit(cache=True, nogil=True, boundscheck=False)
def tile_below(
    users: np.ndarray, q_max: np.ndarray, q_min: np.ndarray, q_abs: np.ndarray, gamma: float, thr: np.ndarray, fill: np.ndarray, k: int
) -> bool:
    """Whether no user of the block can score any item of a tile at or above its threshold.

    Per user, ``sum_j max(p_j q_max_j, p_j q_min_j)`` bounds the exact dot product with any item
    of the tile (q_min/q_max: the tile's per-dimension range); ``gamma sum_j |p_j| q_abs_j`` bounds
    the float32 rounding of any summation order (gamma = r u / (1 - r u), with slack). A user whose
    heap is not full, or whose bound reaches its threshold, keeps the tile (strictly below only:
    an item equal to the threshold may still win on a smaller id).
    """
    for r in range(users.shape[0]):
        if fill[r] < k:
            return False
        bound = 0.0
        size = 0.0
        for j in range(users.shape[1]):
            p = np.float64(users[r, j])
            bound += p * q_max[j] if p > 0 else p * q_min[j]
            size += abs(p) * q_abs[j]
        if not bound + gamma * size < thr[r]:
            return False
    return True


@njit(cache=True, nogil=True)
def ranked(
    user_ids: np.ndarray, heap_s: np.ndarray, heap_id: np.ndarray, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The heaps as flat (user_id, rank, item_id, score) rows, each row's best first (score desc, id asc)."""
    total = 0
    for r in range(len(fill)):
        total += fill[r]
    users = np.empty(total, np.int32)
    ranks = np.empty(total, np.int32)
    items = np.empty(total, np.int32)
    scores = np.empty(total, np.float64)
    out = 0
    for r in range(len(fill)):
        f = fill[r]
        hs = heap_s[r, :f].copy()
        hid = heap_id[r, :f].copy()
        # insertion sort, best first (k is small)
        for i in range(1, f):
            s, iid = hs[i], hid[i]
            j = i - 1
            while j >= 0 and _worse(hs[j], hid[j], s, iid):
                hs[j + 1] = hs[j]
                hid[j + 1] = hid[j]
                j -= 1
            hs[j + 1] = s
            hid[j + 1] = iid
        for i in range(f):
            users[out] = user_ids[r]
            ranks[out] = i + 1
            items[out] = hid[i]
            scores[out] = hs[i]
            out += 1
    return users, ranks, items, scores


def warm_up() -> float:
    """Compile (or load from numba's cache) the signatures `scoring` calls; returns the seconds it took.

    Arrays that come from Arrow batches (user ids, history offsets and items, user factors) are
    read-only, a type of their own to numba, so both kinds are compiled."""
    started = time.perf_counter()
    state = heaps(1, 1)
    ids = np.zeros(1, np.int32)
    ptr = np.zeros(2, np.int64)
    scan_tile(np.zeros((1, 1), np.float32), 0, ids, ptr, np.zeros(0, np.int64), *state)
    scan = np.zeros(1, np.int64)
    q = np.zeros(1, np.float64)
    for user_ids, offsets, items, factors in (
        (ids, np.zeros(2, np.int32), ids, np.zeros((1, 1), np.float32)),
        (_readonly(ids), _readonly(np.zeros(2, np.int32)), _readonly(ids), _readonly(np.zeros((1, 1), np.float32))),
    ):
        ranked(user_ids, state[0], state[1], state[2])
        excluded_positions(offsets, items, ids, scan)
        tile_below(factors, q, q, q, 0.0, state[3], state[2], 1)
    excluded_positions(np.zeros(2, np.int64), ids, ids, scan)
    return time.perf_counter() - started


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a
