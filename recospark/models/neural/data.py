"""Each rank's training rows, read straight from the fit rows' Parquet files (pyarrow, no Spark, no torch).

The driver writes the fit rows once (user, item, rating, is-validation) and computes the sorted
unique user and item ids with Spark: O(users + items) on the driver, never the ratings. Every
rank then reads the Parquet files itself, keeps the rows of its shard and maps ids to embedding
rows by binary search in those sorted ids, so an id's row is its rank in the sorted ids.

Shards come from a stable 64-bit hash (splitmix64's finalizer, the same on every machine and
Python version): of (user, item) for ``shard_by="rows"``, of the user for ``"users"``, modulo the
world size. Rows are then sorted (user row, item row, rating), so a shard's content and order
depend only on the data and the world size, never on file order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from recospark.models.neural.recipe import TrainShard
from recospark.paths import is_local, local_path

__all__ = ["ITEM", "RATING", "USER", "VALIDATION", "load_shards", "read_rows", "rows_of", "shard_of", "stable_hash"]

# column names of the fit rows' Parquet files
USER, ITEM, RATING, VALIDATION = "u", "i", "r", "v"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit affects every output bit (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stable_hash(*columns: np.ndarray) -> np.ndarray:
    """uint64 hash of equal-length integer columns, row by row.

    >>> stable_hash(np.array([1, 2]), np.array([10, 10])).dtype
    dtype('uint64')
    """
    out = np.full(len(columns[0]), _GOLDEN, dtype=np.uint64)
    for col in columns:
        out = _mix(out ^ np.asarray(col).astype(np.int64).view(np.uint64)) + _GOLDEN
    return _mix(out)


def shard_of(users: np.ndarray, items: np.ndarray, by: Literal["rows", "users"], world: int) -> np.ndarray:
    """The rank (0..world-1) that trains each row: by (user, item) for "rows", by user for "users"."""
    if by == "users":
        h = stable_hash(users)
    elif by == "rows":
        h = stable_hash(users, items)
    else:
        raise ValueError(f"shard_by must be 'rows' or 'users', got {by!r}")
    return (h % np.uint64(world)).astype(np.int64)


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Embedding rows (int64) of `ids` in ascending unique `sorted_ids`; -1 for an id not there.

    >>> rows_of(np.array([3, 7, 9]), np.array([9, 3, 4]))
    array([ 2,  0, -1])
    """
    ids = np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    clipped = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[clipped] == ids, clipped, -1).astype(np.int64)


def _dataset(path: str) -> pads.Dataset:
    """The Parquet folder at `path` (a local path, a file: URI or any URI pyarrow's file systems read)."""
    if is_local(path):
        return pads.dataset(str(local_path(path)), format="parquet")
    filesystem, inner = pafs.FileSystem.from_uri(path)
    return pads.dataset(inner, format="parquet", filesystem=filesystem)


def read_rows(path: str, by: Literal["rows", "users"], rank: int, world: int) -> dict[str, np.ndarray]:
    """This rank's rows of the fit rows at `path` (all columns), read batch by batch so a rank never
    holds more than its shard plus one batch."""
    parts: dict[str, list[np.ndarray]] = {USER: [], ITEM: [], RATING: [], VALIDATION: []}
    for batch in _dataset(path).to_batches(columns=list(parts)):
        cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in parts}
        keep = shard_of(cols[USER], cols[ITEM], by, world) == rank
        for name in parts:
            parts[name].append(cols[name][keep])
    dtypes = {USER: np.int64, ITEM: np.int64, RATING: np.float32, VALIDATION: np.bool_}
    return {name: np.concatenate(chunks).astype(dtypes[name]) if chunks else np.zeros(0, dtypes[name]) for name, chunks in parts.items()}


def split_shard(rows: dict[str, np.ndarray], user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[TrainShard, TrainShard]:
    """(train, validation) shards from a rank's raw rows: ids mapped to rows, rows with an unknown id
    dropped (validation rows of users or items absent from training), sorted by (user, item, rating)."""
    urow, irow = rows_of(user_ids, rows[USER]), rows_of(item_ids, rows[ITEM])
    known = (urow >= 0) & (irow >= 0)
    out = []
    for part in (~rows[VALIDATION] & known, rows[VALIDATION] & known):
        u, i, r = urow[part], irow[part], rows[RATING][part]
        order = np.lexsort((r, i, u))
        out.append(TrainShard(u[order], i[order], r[order].astype(np.float32), len(user_ids), len(item_ids)))
    return out[0], out[1]


def load_shards(
    path: str, user_ids: np.ndarray, item_ids: np.ndarray, by: Literal["rows", "users"], rank: int, world: int
) -> tuple[TrainShard, TrainShard]:
    """(train, validation) rows of `rank` out of `world`, read from the Parquet folder at `path`."""
    return split_shard(read_rows(path, by, rank, world), user_ids, item_ids)
