"""Where a task's sub-blocks come from: streamed in its input, or in the executor-local store.

The setup pass leaves partial sub-blocks (one per input partition, global ids). A task reads a
sub-block through its `Source`: the merged blob if the store has it, else its partials merged
now (ids to rows of the index, sorted) and written back, so the next epoch maps the file. A
block found neither streamed nor in the store is recorded in `missing`; the plans then fall
back to streaming (the task trains nothing on partial data).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from recospark.models.sgd import codec
from recospark.models.sgd.kernel_ranking import csr_indptr
from recospark.models.sgd.layout import Index, SubBlock
from recospark.models.sgd.pool import run_jobs
from recospark.models.sgd.settings import TaskConfig
from recospark.models.sgd.store import Store, blob_name, sub_name


class Source:
    """Sub-blocks for a task: merged from its partial blobs (streamed in this task's input, or in
    the store) on first use, then kept merged in memory and in the store."""

    def __init__(self, cfg: TaskConfig, store: Store | None, streamed: dict[str, Any] | None = None):
        self.cfg = cfg
        self.store = store
        self.streamed = streamed or {}
        self.merged: dict[str, SubBlock] = {}
        self.csr: dict[str, tuple] = {}  # ranking: (users, items, ratings, indptr) per sub-block
        self.missing: list[str] = []
        self._listing: list[str] | None = None
        self._lock = threading.Lock()

    def partials(self, kind: str, G: int, J: int, a: int, b: int) -> list | None:
        """Every partial blob of a sub-block (None, and recorded as missing, if any is absent)."""
        name = sub_name(kind, G, J, a, b)
        parts = self._partials(name)
        if len(parts) != self.cfg.part_counts.get((kind, G, J, a, b), 0) or not parts:
            with self._lock:
                self.missing.append(name)
            return None
        return parts

    def _partials(self, name: str) -> list:
        prefix = name + ".p"
        found = {n: b for n, b in self.streamed.items() if n.startswith(prefix)}
        if self.store is not None:
            if self._listing is None:
                self._listing = self.store.names()
            for n in self._listing:
                if n.startswith(prefix) and n not in found:
                    buf = self.store.get(n)
                    if buf is not None:
                        found[n] = buf
        return [found[n] for n in sorted(found)]

    def sub(self, kind: str, G: int, J: int, a: int, b: int) -> SubBlock | None:
        """Sub-block (G, J, a, b) of kind "R" or "V" (None, and recorded as missing, if absent)."""
        name = sub_name(kind, G, J, a, b)
        with self._lock:
            sub = self.merged.get(name)
        if sub is not None:
            return sub
        buf = self.streamed.get(name)
        if buf is None and self.store is not None:
            buf = self.store.get(name)
        if buf is None:
            parts = self.partials(kind, G, J, a, b)
            if parts is None:
                return None
            cfg = self.cfg
            assert cfg.users is not None and cfg.items is not None  # set before any merge
            buf = codec.merge_subs(parts, cfg.users.block(G, a), cfg.items.block(J, b))
            if self.store is not None:
                self.store.put(name, buf)
        sub = codec.decode_sub(buf)
        with self._lock:
            self.merged[name] = sub
        return sub

    def ranking_sub(self, sub: SubBlock, n_users: int) -> tuple:
        """(users, items, ratings, indptr) of a training sub-block as the ranking kernels take
        them: writable copies, a repeated (user, item) pair kept once (its highest rating, which
        merge_subs sorts last), indptr the CSR over the inner block's `n_users` users. Cached."""
        name = sub_name("R", sub.G, sub.J, sub.a, sub.b)
        with self._lock:
            got = self.csr.get(name)
        if got is not None:
            return got
        u, i, r = np.array(sub.users, np.int32), np.array(sub.items, np.int32), np.array(sub.ratings, np.float32)
        if len(u) > 1:
            key = (u.astype(np.int64) << 32) | i.astype(np.int64)
            last = np.r_[np.diff(key) != 0, True]
            if not last.all():
                u, i, r = u[last], i[last], r[last]
        got = (u, i, r, csr_indptr(u, n_users))
        with self._lock:
            self.csr[name] = got
        return got

    def prefetch(self, keys: list[tuple], threads: int) -> None:
        """Merge the sub-blocks `keys` ((kind, G, J, a, b)) on `threads` threads."""
        run_jobs([lambda k=k: self.sub(*k) for k in keys], threads)


def absorb(records: Iterable, store: Store | None) -> tuple[dict[str, Any], list, dict[str, int]]:
    """Split a task's input into streamed blobs (name -> bytes, written to the store when given
    and absent there) and the other records; returns (blobs, others, streamed bytes per kind:
    "R" training sub-blocks, "V" validation sub-blocks)."""
    blobs: dict[str, Any] = {}
    others = []
    nbytes = {"R": 0, "V": 0}
    for rec in records:
        if hasattr(rec, "blob"):  # a Row of the packed frame, streamed as is
            tag, payload = "B", rec.blob
        else:
            _, (tag, payload) = rec
        if tag == "B":
            name = blob_name(payload)
            blobs[name] = payload
            nbytes[name[0]] += len(payload)
            if store is not None and not store.has(name):
                store.put(name, bytes(payload))
        else:
            others.append(rec)
    return blobs, others, nbytes


def build_index(cfg: TaskConfig, source: Source) -> tuple[Index, Index] | None:
    """The single task's index from every training sub-block's partials: the users of inner block
    (G, a) are the ids in sub-blocks (G, *, a, *), the items of (J, b) those in (*, J, *, b)."""
    D = cfg.B * cfg.K
    users: list[list] = [[] for _ in range(D)]
    items: list[list] = [[] for _ in range(D)]
    for kind, G, J, a, b in cfg.part_counts:
        if kind != "R":
            continue
        parts = source.partials(kind, G, J, a, b)
        if parts is None:
            return None
        for buf in parts:
            sub = codec.decode_sub(buf)
            users[G * cfg.K + a].append(sub.users)
            items[J * cfg.K + b].append(sub.items)

    def unique(lists):
        return np.unique(np.concatenate(lists)).astype(np.int32) if lists else np.zeros(0, np.int32)

    blocks = run_jobs([lambda x=x: unique(x) for x in users + items], cfg.threads)
    return Index.from_blocks(blocks[:D], cfg.K), Index.from_blocks(blocks[D:], cfg.K)


def with_index(cfg: TaskConfig, store: Store | None, source: Source) -> TaskConfig | None:
    """`cfg` with its index: given, else from the store, else built from the partials (and stored)."""
    if cfg.users is not None:
        return cfg
    bufs = [store.get(f"IX-{kind}") for kind in "UI"] if store is not None else [None, None]
    if all(b is not None for b in bufs):
        users, items = (codec.decode_index(b) for b in bufs)
    else:
        built = build_index(cfg, source)
        if built is None:
            return None
        users, items = built
        if store is not None:
            store.put("IX-U", codec.encode_index(users))
            store.put("IX-I", codec.encode_index(items))
    out = replace(cfg, users=users, items=items)
    source.cfg = out
    return out


__all__ = ["Source", "absorb", "build_index", "with_index"]
