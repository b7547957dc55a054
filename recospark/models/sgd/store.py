"""The executor-local block store: one directory of files per DSGD run, read through shared memory maps.

Ratings are packed once and stay where they were packed: the setup pass writes each partial
sub-block here, the first task that needs a sub-block merges its partials and writes the result
back, and later epochs read it through a read-only memory map shared by every task of the
Python worker (the page cache shares it across workers). The single-task plan also keeps factor
versions here between jobs. The directory lives under SparkFiles' root, which Spark deletes with
the SparkContext; `fit` deletes it earlier, on success and on failure.

File names: merged sub-blocks "R-G-J-a-b" / "V-G-J-a-b", partials "R-G-J-a-b.p<part>", factor
versions "PU-G-v<epoch>" / "PI-J-v<epoch>", indexes "IX-U" / "IX-I".
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from pyspark.files import SparkFiles

from recospark.models.sgd.codec import header


def store_root() -> str:
    """Where a Python worker keeps blocks: under SparkFiles' root directory (the executor's work
    directory; the driver's temporary userFiles directory in local mode, which Spark deletes
    when the SparkContext stops), else the system temp dir (unit tests without Spark)."""
    try:
        root = SparkFiles.getRootDirectory()
    except Exception:
        root = None

    return os.path.join(root or tempfile.gettempdir(), "recospark-dsgd")


# path -> mmap: read-only maps shared by every task of this Python worker; the page cache shares
# them across workers. Entries of other runs are dropped when a task of a new run starts.
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
        """This run's directory, `<root>/<run_id>`: one per run, so concurrent runs never share a file."""
        return os.path.join(self.root or store_root(), self.run_id)

    def path(self, name: str) -> str:
        """The file of `name` in this run's directory."""
        return os.path.join(self.dir, name)

    def has(self, name: str) -> bool:
        """Whether file `name` exists (a sub-block already merged, a factor version already written)."""
        return os.path.exists(self.path(name))

    def put(self, name: str, data: bytes) -> None:
        """Write file `name` atomically (temporary file + rename) and drop this worker's stale map of it.

        A reader sees the previous file or the whole new one, never a partial write (a retried task
        may write a name again).
        """
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
        """A private copy of file `name` (factor versions, which training updates), or None."""
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        """Delete file `name` and this worker's map of it; a missing file is fine."""
        with _MAPS_LOCK:
            old = _MAPS.pop(self.path(name), None)
        if old is not None:
            _close(old)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(name))

    def names(self) -> list[str]:
        """The files of this run (temporary files left out); empty when the directory does not exist."""
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
    """The store name of merged sub-block (kind, G, J, a, b): `R-G-J-a-b` or `V-G-J-a-b`."""
    return f"{kind}-{G}-{J}-{a}-{b}"


def factors_name(kind: str, group: int, version: int) -> str:
    """The store name of a factor version: `PU-G-v<version>` (user group) or `PI-J-v<version>` (item group)."""
    return f"P{kind}-{group}-v{version}"


def blob_name(blob) -> str:
    """The store name of a sub-block blob: merged "R-G-J-a-b", partial "R-G-J-a-b.p<part>"."""
    h = header(blob)
    if h.kind not in ("R", "V"):
        raise ValueError(f"unexpected blob kind {h.kind}")
    name = sub_name(h.kind, h.G, h.J, h.a, h.b)
    return f"{name}.p{h.rank - 1}" if h.rank else name


__all__ = ["Store", "blob_name", "factors_name", "store_root", "sub_name"]
