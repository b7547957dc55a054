"""DSGD's data layout, schedule and executor-local block store: pure Python/numpy, no Spark.

Layout (B = `num_blocks` outer blocks, K = `inner_blocks` inner blocks, D = B*K):

* user u -> hash block h = `hash_blocks(u, seed, D, salt)` (splitmix64), outer group G = h // K,
  inner block a = h % K; items likewise (J, b) with another salt. `Index` holds every id's block
  and row, 4 bytes per id: built in the single task from the training sub-blocks, or once on the
  driver from the distinct ids when several tasks must agree on it.
* The factor matrix of user group G is one float32 array P_G whose rows are ordered by (a, id):
  inner block a is the CONTIGUOUS row range [lo[a], lo[a+1]). Same for Q_J and inner blocks b.
* The setup pass cuts each input partition into partial sub-blocks holding global ids (it needs
  no index: blocks are hashes); `merge_subs` turns a sub-block's partials into one canonical blob
  of inner-block rows, sorted by (user, item), whatever the input partitioning.
* A sub-block (G, J, a, b) holds the ratings of users of (G, a) on items of (J, b) as three
  arrays sorted by (user, item): `users` (int32 rows of P_G[lo[a]:lo[a+1]]), `items` (int32 rows
  of Q_J[lo[b]:lo[b+1]]) and `ratings` (float32): a CSR over the inner block's users (`indptr`).

Schedule of one epoch (a function of seed, B, K and the epoch only, never of how many tasks or
threads run it, so any execution plan gives bit-identical factors):

* outer strata: shifts S in `strata_order(seed, epoch, B, first)`; stratum S pairs user group G
  with item group J = (G + S) mod B for every G: B disjoint outer blocks.
* inner steps: for each G, shifts s in `inner_order(seed, epoch, S, G, K)`; step t pairs inner
  block a with b = (a + s_t) mod K for every a: K disjoint sub-blocks per group. All sub-blocks of
  one step (every G, every a) touch pairwise disjoint user rows and item rows, so threads run
  them concurrently without locks; a step ends before the next one starts.
* within a sub-block, ratings are visited in stored (user, item) order: the "partial random"
  order of LIBMF (Chin et al. 2015), randomness coming from the block schedule. On ML-100K u1
  and a 10M-rating MovieLens-shaped set it converged like a full random permutation, at 2-4x
  the update rate (P rows stay in L1 across a user's ratings).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pyspark.files import SparkFiles

MAGIC = 0x44534744  # "DSGD"
_HEADER = 8  # int64 words: magic, kind, G, J, a, b, n, and rank (factor blobs) or part + 1 (partial sub-blocks)
KINDS = {"R": 1, "V": 2, "U": 3, "I": 4, "PU": 5, "PI": 6, "IX": 7}
_KIND_NAMES = {v: k for k, v in KINDS.items()}


def seed_seq(seed: int, *parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) % (1 << 63), *[int(p) for p in parts]])


# ---------------------------------------------------------------------------------------------
# hashing ids into blocks, and the id index


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def hash_blocks(ids: np.ndarray, seed: int, d: int, salt: int) -> np.ndarray:
    """Block (0..d-1) of each id: splitmix64 of the id mixed with (seed, salt); a pure function
    of (seed, salt, d, id), identical on every machine and whatever the partitioning."""
    with np.errstate(over="ignore"):
        key = np.uint64((int(seed) * 0x100000001B3 + int(salt) * 0x9E3779B1) % (1 << 64))
        z = np.asarray(ids).astype(np.uint64) ^ key
        z = z + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(d)).astype(np.int64)


class Index(NamedTuple):
    """The rows of every user (or item): ids ordered by (hash block, id), and where each of the
    D = B*K blocks starts. Block h is (group h // K, inner block h % K); an id's row in its inner
    block is its rank among the block's ids. 4 bytes per id, so it travels in task closures."""

    ids: np.ndarray  # int32, sorted by (block, id)
    starts: np.ndarray  # int64, D + 1
    K: int

    @staticmethod
    def build(ids: np.ndarray, seed: int, B: int, K: int, salt: int) -> Index:
        ids = np.unique(np.asarray(ids, np.int64))
        blk = hash_blocks(ids, seed, B * K, salt)
        order = np.lexsort((ids, blk))
        return Index(ids[order].astype(np.int32), np.searchsorted(blk[order], np.arange(B * K + 1)).astype(np.int64), K)

    @staticmethod
    def from_blocks(blocks: list[np.ndarray], K: int) -> Index:
        """From the sorted ids of each of the D blocks, in block order."""
        starts = np.zeros(len(blocks) + 1, np.int64)
        starts[1:] = np.cumsum([len(x) for x in blocks])
        ids = np.concatenate([np.asarray(x, np.int32) for x in blocks]) if blocks else np.zeros(0, np.int32)
        return Index(ids, starts, K)

    def encode(self) -> bytes:
        return (
            encode("IX", 0, 0, 0, 0, [self.starts.astype(np.int64), self.ids.astype(np.int32)], len(self.ids), self.K)
            + np.int64(len(self.starts)).tobytes()
        )

    @staticmethod
    def decode(buf) -> Index:
        h = header(buf)
        nst = int(np.frombuffer(buf, np.int64, 1, len(buf) - 8)[0])
        off = _HEADER * 8
        starts = np.frombuffer(buf, np.int64, nst, off).copy()
        ids = np.frombuffer(buf, np.int32, h.n, off + 8 * nst).copy()
        return Index(ids, starts, h.rank)

    def block(self, group: int, inner: int) -> np.ndarray:
        h = group * self.K + inner
        return self.ids[self.starts[h] : self.starts[h + 1]]

    def size(self, group: int, inner: int) -> int:
        h = group * self.K + inner
        return int(self.starts[h + 1] - self.starts[h])

    def lookup(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(known, group, inner, row in the inner block) of each id in `x`: a direct table when
        ids are dense enough (MovieLens: at most a few hundred thousand), else a binary search."""
        x = np.asarray(x, np.int64)
        if not len(self.ids):
            z = np.zeros(len(x), np.int64)
            return np.zeros(len(x), bool), z, z, z
        blk = np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))
        local = np.arange(len(self.ids), dtype=np.int64) - self.starts[blk]
        lo, hi = int(self.ids.min()), int(self.ids.max())
        if hi - lo <= 8 * len(self.ids) + (1 << 20):
            slot = np.full(hi - lo + 1, -1, np.int64)
            slot[self.ids.astype(np.int64) - lo] = np.arange(len(self.ids))
            inside = (x >= lo) & (x <= hi)
            where = np.full(len(x), -1, np.int64)
            where[inside] = slot[x[inside] - lo]
            known = where >= 0
        else:
            order = np.argsort(self.ids, kind="stable")
            sorted_ids = self.ids[order].astype(np.int64)
            pos = np.minimum(np.searchsorted(sorted_ids, x), len(sorted_ids) - 1)
            known = sorted_ids[pos] == x
            where = np.where(known, order[pos], -1)
        where = np.where(known, where, 0)
        b = blk[where]
        return known, b // self.K, b % self.K, local[where]


# ---------------------------------------------------------------------------------------------
# schedule


def strata_order(seed: int, epoch: int, d: int, first: int = 0) -> list[int]:
    """The outer shifts S of one epoch (stratum S pairs user group G with item group (G + S) mod d):
    a seeded permutation, rotated so it starts with `first`, the shift the item groups already
    sit at after the previous epoch (saves one item move per epoch when several tasks run)."""
    rest = [s for s in np.random.default_rng(seed_seq(seed, 2, epoch)).permutation(d).tolist() if s != first % d]
    return [first % d] + [int(s) for s in rest]


def inner_order(seed: int, epoch: int, shift: int, group: int, k: int) -> list[int]:
    """The inner shifts of user group `group` in outer stratum `shift`: a seeded permutation of range(k)."""
    if k == 1:
        return [0]
    return [int(s) for s in np.random.default_rng(seed_seq(seed, 4, epoch, shift, group)).permutation(k)]


def step_blocks(seed: int, epoch: int, shift: int, groups, B: int, K: int) -> list[list[tuple[int, int, int, int]]]:
    """The K inner steps of outer stratum `shift` for the user groups `groups`: step t lists the
    sub-blocks (G, J, a, b) that run concurrently (pairwise disjoint rows)."""
    orders = {G: inner_order(seed, epoch, shift, G, K) for G in groups}
    steps = []
    for t in range(K):
        step: list[tuple[int, int, int, int]] = []
        for G in groups:
            J = (G + shift) % B
            s = orders[G][t]
            step.extend((G, J, a, (a + s) % K) for a in range(K))
        steps.append(step)
    return steps


def owner(group: int, tasks: int) -> int:
    """The task (0..tasks-1) that owns user group `group` for the whole run."""
    return group % tasks


def item_home(item_group: int, shift: int, B: int, tasks: int) -> int:
    """The task holding item group J during outer stratum `shift`: the owner of G = (J - shift) mod B."""
    return owner((item_group - shift) % B, tasks)


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule and early stopping, shared by the driver and the single-task worker


@dataclass(frozen=True)
class Progress:
    """Where training stands before epoch `epoch` (0-based): step size, early-stopping state, and
    the outer shift the item groups sit at. A pure value: `advance` returns the next one."""

    epoch: int = 0
    lr: float = 0.0
    prev_train: float = math.inf
    best_val: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    offset: int = 0
    stopped: bool = False


def advance(
    pr: Progress, train_rmse: float, val_rmse: float | None, *, early_rounds: int, schedule: str, step_decay: float, last_shift: int
) -> tuple[Progress, bool]:
    """Progress after one epoch and whether that epoch is the new best (the factors to keep)."""
    epoch = pr.epoch + 1
    best_val, best_epoch, since, stop = pr.best_val, pr.best_epoch, pr.since_best, False
    if early_rounds > 0 and val_rmse is not None:
        if val_rmse < best_val:
            best_val, best_epoch, since = val_rmse, epoch, 0
        else:
            since += 1
            stop = since >= early_rounds
    else:
        best_epoch = epoch
    lr = pr.lr * (1.05 if train_rmse < pr.prev_train else 0.5) if schedule == "bold_driver" else pr.lr * step_decay
    nxt = Progress(epoch, lr, train_rmse, best_val, best_epoch, since, last_shift, stop)
    return nxt, best_epoch == epoch


# ---------------------------------------------------------------------------------------------
# blobs: one self-describing byte string per sub-block / id list / factor block


def encode(kind: str, G: int, J: int, a: int, b: int, arrays: list[np.ndarray], n: int, rank: int = 0) -> bytes:
    header = np.array([MAGIC, KINDS[kind], G, J, a, b, n, rank], dtype=np.int64)
    return b"".join([header.tobytes(), *[np.ascontiguousarray(x).tobytes() for x in arrays]])


class BlobHeader(NamedTuple):
    kind: str
    G: int
    J: int
    a: int
    b: int
    n: int
    rank: int


def header(buf) -> BlobHeader:
    h = np.frombuffer(buf, dtype=np.int64, count=_HEADER)
    if int(h[0]) != MAGIC:
        raise ValueError("not a DSGD blob")
    return BlobHeader(_KIND_NAMES[int(h[1])], *(int(x) for x in h[2:]))


class SubBlock(NamedTuple):
    """Ratings of user inner block (G, a) x item inner block (J, b), sorted by (user, item).

    `users`/`items` are int32 rows of the inner blocks' views P_G[lo_a:hi_a] / Q_J[lo_b:hi_b],
    `ratings` float32. Arrays may be read-only views of a memory-mapped file.
    """

    G: int
    J: int
    a: int
    b: int
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    def indptr(self, n_users: int) -> np.ndarray:
        """CSR row pointer over the inner block's `n_users` users: user u's ratings are
        positions indptr[u]:indptr[u+1]."""
        return np.searchsorted(self.users, np.arange(n_users + 1, dtype=np.int32)).astype(np.int64)


def decode_sub(buf) -> SubBlock:
    h = header(buf)
    off = _HEADER * 8
    n = h.n
    u = np.frombuffer(buf, np.int32, n, off)
    i = np.frombuffer(buf, np.int32, n, off + 4 * n)
    r = np.frombuffer(buf, np.float32, n, off + 8 * n)
    return SubBlock(h.G, h.J, h.a, h.b, u, i, r)


def encode_sub(kind: str, G: int, J: int, a: int, b: int, users, items, ratings, part: int | None = None) -> bytes:
    """A sub-block blob; `part` marks a partial one (the rows of one input partition)."""
    return encode(
        kind,
        G,
        J,
        a,
        b,
        [np.asarray(users, np.int32), np.asarray(items, np.int32), np.asarray(ratings, np.float32)],
        len(ratings),
        0 if part is None else part + 1,
    )


def merge_subs(bufs: list, user_ids: np.ndarray, item_ids: np.ndarray) -> bytes:
    """Partial blobs of sub-block (G, J, a, b), which carry global ids, -> the sub-block: ids
    turned into rows of the inner blocks (`user_ids`/`item_ids`: their sorted ids; ratings of
    other ids, i.e. validation ratings of users or items without training ratings, dropped), sorted
    by (user, item) and, for a repeated pair, rating: the same bytes whatever the number or order
    of the partials."""
    subs = [decode_sub(b) for b in bufs]
    h = header(bufs[0])
    u = np.concatenate([s.users for s in subs]).astype(np.int64)
    i = np.concatenate([s.items for s in subs]).astype(np.int64)
    r = np.concatenate([s.ratings for s in subs])
    ul, ok_u = _rows(user_ids, u)
    il, ok_i = _rows(item_ids, i)
    keep = ok_u & ok_i
    if not keep.all():
        ul, il, r = ul[keep], il[keep], r[keep]
    key = (ul << 32) | il
    order = np.argsort(key)  # unique keys: any sort gives the same order
    if len(key) > 1 and not np.all(np.diff(key[order]) > 0):  # repeated pairs: order them by rating too
        order = np.argsort(r, kind="stable")
        order = order[np.argsort(key[order], kind="stable")]
    return encode_sub(h.kind, h.G, h.J, h.a, h.b, ul[order], il[order], r[order])


def _rows(sorted_ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each x in sorted_ids, found)."""
    if not len(sorted_ids):
        return np.zeros(len(x), np.int64), np.zeros(len(x), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, x), len(sorted_ids) - 1)
    return pos.astype(np.int64), sorted_ids[pos] == x


def decode_ids(buf) -> tuple[BlobHeader, np.ndarray]:
    h = header(buf)
    return h, np.frombuffer(buf, np.int32, h.n, _HEADER * 8)


class FactorBlock(NamedTuple):
    """One user group (kind "U") or item group ("I"): ids ordered by (inner block, id), the row
    offsets of its K inner blocks (`lo`, K + 1 int64), factor rows (float32 n x rank) and biases."""

    kind: str
    group: int
    ids: np.ndarray
    lo: np.ndarray
    factors: np.ndarray
    biases: np.ndarray


def encode_factors(fb: FactorBlock) -> bytes:
    n, k = fb.factors.shape
    return (
        encode(
            "PU" if fb.kind == "U" else "PI",
            fb.group,
            0,
            0,
            0,
            [fb.lo.astype(np.int64), fb.ids.astype(np.int32), fb.factors.astype(np.float32), fb.biases.astype(np.float32)],
            n,
            k,
        )
        + np.int64(len(fb.lo)).tobytes()
    )


def decode_factors(buf, writable: bool = True) -> FactorBlock:
    h = header(buf)
    n, k = h.n, h.rank
    nlo = int(np.frombuffer(buf, np.int64, 1, len(buf) - 8)[0])
    off = _HEADER * 8
    lo = np.frombuffer(buf, np.int64, nlo, off)
    off += 8 * nlo
    ids = np.frombuffer(buf, np.int32, n, off)
    off += 4 * n
    P = np.frombuffer(buf, np.float32, n * k, off).reshape(n, k)
    off += 4 * n * k
    bias = np.frombuffer(buf, np.float32, n, off)
    if writable:
        lo, ids, P, bias = lo.copy(), ids.copy(), P.copy(), bias.copy()
    return FactorBlock("U" if h.kind == "PU" else "I", h.G, ids, lo, P, bias)


def init_factors(kind: str, group: int, ids_by_inner: list[np.ndarray], rank: int, init_std: float, seed: int) -> FactorBlock:
    """The initial factors of one group from its ids per inner block: seeded by (seed, kind, group)."""
    ids = np.concatenate([np.asarray(x, np.int32) for x in ids_by_inner]) if ids_by_inner else np.zeros(0, np.int32)
    lo = np.zeros(len(ids_by_inner) + 1, np.int64)
    lo[1:] = np.cumsum([len(x) for x in ids_by_inner])
    rng = np.random.default_rng(seed_seq(seed, 3, 0 if kind == "U" else 1, group))
    P = (rng.standard_normal((len(ids), rank)) * init_std).astype(np.float32)
    return FactorBlock(kind, group, ids, lo, P, np.zeros(len(ids), np.float32))


# ---------------------------------------------------------------------------------------------
# the executor-local store


def store_root() -> str:
    """Where a Python worker keeps blocks: under SparkFiles' root directory (the executor's work
    directory; the driver's temporary userFiles directory in local mode, which Spark deletes
    when the SparkContext stops), else the system temp dir (unit tests without Spark)."""
    try:
        root = SparkFiles.getRootDirectory()
    except Exception:
        root = None

    return os.path.join(root or tempfile.gettempdir(), "recospark-dsgd")


# path -> (mmap, size): read-only maps shared by every task of this Python worker; the page cache
# shares them across workers. Entries of other runs are dropped when a task of a new run starts.
_MAPS: dict[str, Any] = {}
_MAPS_LOCK = threading.Lock()


@dataclass
class Store:
    """Executor-local files of one DSGD run: `<store_root>/<run_id>/<name>`, written atomically
    (temporary file + rename), read through shared read-only memory maps."""

    run_id: str
    root: str | None = None  # None: store_root()

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = store_root()

    @property
    def dir(self) -> str:
        return os.path.join(self.root or store_root(), self.run_id)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def put(self, name: str, data: bytes) -> None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = self.path(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path(name))
        with _MAPS_LOCK:
            old = _MAPS.pop(self.path(name), None)
        if old is not None:
            _close(old)

    def get(self, name: str):
        """A read-only buffer (memory map) of file `name`, or None when it is absent."""
        path = self.path(name)
        with _MAPS_LOCK:
            cached = _MAPS.get(path)
            if cached is not None:
                return cached
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                buf = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            return None
        with _MAPS_LOCK:
            _MAPS[path] = buf
        return buf

    def read(self, name: str) -> bytes | None:
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        with _MAPS_LOCK:
            old = _MAPS.pop(self.path(name), None)
        if old is not None:
            _close(old)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(name))

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.dir) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def forget_other_runs(self) -> None:
        """Close this worker's maps of other runs' files (their files may be deleted already)."""
        mine = self.dir + os.sep
        with _MAPS_LOCK:
            stale = [p for p in _MAPS if not p.startswith(mine)]
            bufs = [_MAPS.pop(p) for p in stale]
        for b in bufs:
            _close(b)

    def destroy(self) -> bool:
        """Delete this run's directory; True if there was one."""
        self.forget_other_runs()
        mine = self.dir + os.sep
        with _MAPS_LOCK:
            bufs = [_MAPS.pop(p) for p in [p for p in _MAPS if p.startswith(mine)]]
        for b in bufs:
            _close(b)
        existed = os.path.isdir(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        return existed


def _close(buf) -> None:
    if isinstance(buf, mmap.mmap):
        with contextlib.suppress(BufferError):  # a numpy view is still alive; the map goes when it does
            buf.close()


def sub_name(kind: str, G: int, J: int, a: int, b: int) -> str:
    return f"{kind}-{G}-{J}-{a}-{b}"


def ids_name(kind: str, group: int, inner: int) -> str:
    return f"{kind}-{group}-{inner}"


def factors_name(kind: str, group: int, version: int) -> str:
    return f"P{kind}-{group}-v{version}"


__all__ = [
    "FactorBlock",
    "Progress",
    "Store",
    "SubBlock",
    "advance",
    "decode_factors",
    "decode_ids",
    "decode_sub",
    "encode",
    "encode_factors",
    "encode_sub",
    "factors_name",
    "header",
    "ids_name",
    "init_factors",
    "inner_order",
    "item_home",
    "owner",
    "seed_seq",
    "step_blocks",
    "store_root",
    "strata_order",
    "sub_name",
]
