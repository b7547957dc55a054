"""Where every rating and factor row lives, and the order an epoch visits them: pure numpy, no Spark.

Layout (B = `numBlocks` outer blocks, K = `innerBlocks` inner blocks, D = B*K):

* user u -> hash block h = `hash_blocks(u, seed, D, USER_SALT)` (splitmix64), outer group
  G = h // K, inner block a = h % K; items likewise (J, b) with `ITEM_SALT`. `Index` holds every
  id's block and row, 4 bytes per id: built in the single task from the training sub-blocks, or
  once on the driver from the distinct ids when several tasks must agree on it.
* The factor matrix of user group G is one float32 array P_G (`FactorBlock`) whose rows are
  ordered by (a, id): inner block a is the CONTIGUOUS row range [lo[a], lo[a+1]). Same for Q_J.
* A sub-block (G, J, a, b) (`SubBlock`) holds the ratings of users of (G, a) on items of (J, b)
  as three arrays sorted by (user, item): `users` (int32 rows of P_G[lo[a]:lo[a+1]]), `items`
  (int32 rows of Q_J[lo[b]:lo[b+1]]) and `ratings` (float32): a CSR over the inner block's users.

Schedule of one epoch (a function of seed, B, K and the epoch only, never of how many tasks or
threads run it, so any execution plan gives bit-identical factors):

* outer strata: shifts S in `strata_order(seed, epoch, B, first)`; stratum S pairs user group G
  with item group J = (G + S) mod B for every G: B disjoint outer blocks.
* inner steps: for each G, shifts s in `inner_order(seed, epoch, S, G, K)`; step t pairs inner
  block a with b = (a + s_t) mod K for every a: K disjoint sub-blocks per group. All sub-blocks of
  one step (every G, every a) touch pairwise disjoint user rows and item rows, so threads run
  them concurrently without locks; a step ends before the next one starts.
* within a sub-block, ratings are visited in stored (user, item) order: the "partial random"
  order of LIBMF (Chin et al. 2015), randomness coming from the block schedule (ranking losses
  visit a seeded permutation instead, see `stratum.sub_seed`).

Ownership (multi-task plan): task `owner(G, tasks)` keeps user group G for the whole run; item
group J sits in task `item_home(J, S, B, tasks)` during stratum S and moves between strata.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

USER_SALT, ITEM_SALT = 1, 2  # `hash_blocks` salts of user and item ids


def seed_seq(seed: int, *parts: int) -> np.random.SeedSequence:
    """The seeded generator state of one use of the run's seed (parts name the use: 2 strata, 3 init, 4 inner, 5 sub-block)."""
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
        """The index of the distinct `ids` (the multi-task plan's driver builds it this way)."""
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

    def block(self, group: int, inner: int) -> np.ndarray:
        """The sorted ids of inner block (group, inner): row r of the block is id block(...)[r]."""
        h = group * self.K + inner
        return self.ids[self.starts[h] : self.starts[h + 1]]

    def size(self, group: int, inner: int) -> int:
        """How many ids inner block (group, inner) holds: the row count of its factor view."""
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
# the blocks in memory


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


class FactorBlock(NamedTuple):
    """One user group (kind "U") or item group ("I"): ids ordered by (inner block, id), the row
    offsets of its K inner blocks (`lo`, K + 1 int64), factor rows (float32 n x rank) and biases."""

    kind: str
    group: int
    ids: np.ndarray
    lo: np.ndarray
    factors: np.ndarray
    biases: np.ndarray

    def views(self, inner: int) -> tuple[np.ndarray, np.ndarray]:
        """(factor rows, biases) of inner block `inner`: writable views, what a kernel updates."""
        lo, hi = int(self.lo[inner]), int(self.lo[inner + 1])
        return self.factors[lo:hi], self.biases[lo:hi]


def init_factors(kind: str, group: int, ids_by_inner: list[np.ndarray], rank: int, init_std: float, seed: int) -> FactorBlock:
    """The initial factors of one group from its ids per inner block: seeded by (seed, kind, group)."""
    ids = np.concatenate([np.asarray(x, np.int32) for x in ids_by_inner]) if ids_by_inner else np.zeros(0, np.int32)
    lo = np.zeros(len(ids_by_inner) + 1, np.int64)
    lo[1:] = np.cumsum([len(x) for x in ids_by_inner])
    rng = np.random.default_rng(seed_seq(seed, 3, 0 if kind == "U" else 1, group))
    P = (rng.standard_normal((len(ids), rank)) * init_std).astype(np.float32)
    return FactorBlock(kind, group, ids, lo, P, np.zeros(len(ids), np.float32))


# ---------------------------------------------------------------------------------------------
# schedule and ownership


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


__all__ = [
    "ITEM_SALT",
    "USER_SALT",
    "FactorBlock",
    "Index",
    "SubBlock",
    "hash_blocks",
    "init_factors",
    "inner_order",
    "item_home",
    "owner",
    "seed_seq",
    "step_blocks",
    "strata_order",
]
