"""Blobs: one self-describing byte string per sub-block, factor block or index; pure numpy.

Blocks cross the JVM as opaque `binary` values and sit in the executor-local store as files, so
one format serves both: an 8-word int64 header (magic, kind, G, J, a, b, n, and the rank for
factor blobs or part + 1 for partial sub-blocks) followed by the raw arrays. Decoding returns
views of the buffer (a memory map, or bytes): reading a block copies nothing.

Partial sub-blocks ("R"/"V" with a part) are what the setup pass writes: one per input partition,
holding global ids. `merge_subs` turns a sub-block's partials into its canonical blob (ids made
rows of the inner blocks, sorted by (user, item)) whatever the input partitioning.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from recospark.models.sgd.layout import FactorBlock, Index, SubBlock

MAGIC = 0x44534744  # "DSGD"
_HEADER = 8  # int64 words: magic, kind, G, J, a, b, n, and rank (factor blobs) or part + 1 (partial sub-blocks)
# R training / V validation sub-blocks, PU / PI user / item factor blocks, IX an index (3, 4: retired id lists)
KINDS = {"R": 1, "V": 2, "U": 3, "I": 4, "PU": 5, "PI": 6, "IX": 7}
_KIND_NAMES = {v: k for k, v in KINDS.items()}


class BlobHeader(NamedTuple):
    """A blob's decoded header: kind name, outer groups (G, J), inner blocks (a, b), row count n, and rank (factor blobs) or part + 1 (partial sub-blocks)."""

    kind: str
    G: int
    J: int
    a: int
    b: int
    n: int
    rank: int


def encode(kind: str, G: int, J: int, a: int, b: int, arrays: list[np.ndarray], n: int, rank: int = 0) -> bytes:
    """The 8-word header followed by `arrays`' raw bytes, in order (C-contiguous; the reader knows their dtypes from `kind`)."""
    header = np.array([MAGIC, KINDS[kind], G, J, a, b, n, rank], dtype=np.int64)
    return b"".join([header.tobytes(), *[np.ascontiguousarray(x).tobytes() for x in arrays]])


def header(buf) -> BlobHeader:
    """The header of any blob (bytes, memoryview or memory map); a ValueError when the magic word is not there.

    >>> header(encode_sub("R", 1, 2, 0, 3, [5], [7], [4.0]))
    BlobHeader(kind='R', G=1, J=2, a=0, b=3, n=1, rank=0)
    """
    h = np.frombuffer(buf, dtype=np.int64, count=_HEADER)
    if int(h[0]) != MAGIC:
        raise ValueError("not a DSGD blob")
    return BlobHeader(_KIND_NAMES[int(h[1])], *(int(x) for x in h[2:]))


# ---------------------------------------------------------------------------------------------
# sub-blocks


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


def decode_sub(buf) -> SubBlock:
    """A sub-block whose arrays are read-only views of `buf`: nothing is copied, so a memory-mapped file stays on disk."""
    h = header(buf)
    off = _HEADER * 8
    n = h.n
    u = np.frombuffer(buf, np.int32, n, off)
    i = np.frombuffer(buf, np.int32, n, off + 4 * n)
    r = np.frombuffer(buf, np.float32, n, off + 8 * n)
    return SubBlock(h.G, h.J, h.a, h.b, u, i, r)


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


# ---------------------------------------------------------------------------------------------
# factor blocks and indexes


def encode_factors(fb: FactorBlock) -> bytes:
    """A factor block as a blob: header, `lo`, ids, factors and biases, then the length of `lo` as a trailing int64 word."""
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
    """A factor block; `writable` copies the arrays out of the buffer (training updates them)."""
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


def encode_index(index: Index) -> bytes:
    """An index as a blob: header (with K as the rank word), block starts and ids, then the count of starts as a trailing word."""
    return (
        encode("IX", 0, 0, 0, 0, [index.starts.astype(np.int64), index.ids.astype(np.int32)], len(index.ids), index.K)
        + np.int64(len(index.starts)).tobytes()
    )


def decode_index(buf) -> Index:
    """An index from its blob; the arrays are copies, so the index does not keep the buffer (or its memory map) alive."""
    h = header(buf)
    nst = int(np.frombuffer(buf, np.int64, 1, len(buf) - 8)[0])
    off = _HEADER * 8
    starts = np.frombuffer(buf, np.int64, nst, off).copy()
    ids = np.frombuffer(buf, np.int32, h.n, off + 8 * nst).copy()
    return Index(ids, starts, h.rank)


__all__ = [
    "KINDS",
    "MAGIC",
    "BlobHeader",
    "decode_factors",
    "decode_index",
    "decode_sub",
    "encode",
    "encode_factors",
    "encode_index",
    "encode_sub",
    "header",
    "merge_subs",
]
