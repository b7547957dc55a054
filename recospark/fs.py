"""Files on any file system: local folders, and any Hadoop FileSystem (hdfs://, s3a://) through the JVM.

Publishing and leases (`recospark.io`, `recospark.leases`) go through a `Store`: the few
operations they rely on, each with the same meaning on every file system (an exclusive create,
an atomic replace, a rename that says whether it happened), and the reader-facing pointer of
the versioned layout. On local roots `<root>/<output>` is a symlink to the current version; on
other file systems (which have no usable symlinks) it is `<root>/<output>/_manifest.json`, a
copy of the current version's manifest. Small files (manifests, metrics, an HTML page) go
through `read_text`, `write_text` and `remove_tree`.

Every read and write of publishing and leases decides local vs Hadoop here (io's preflight
checks `check_writable` and `published` look at local roots only), so a test can send `file://`
roots through the Hadoop code path by patching `fs.is_local`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import SparkSession

from recospark import jvm
from recospark.errors import OutputError, PublishError
from recospark.paths import is_local, join_path, local_path

MANIFEST = "_manifest.json"
VERSIONS = "_versions"
VERSION_RE = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")

__all__ = [
    "MANIFEST",
    "VERSIONS",
    "VERSION_RE",
    "HadoopStore",
    "LocalStore",
    "Store",
    "active_session",
    "active_spark",
    "can_store",
    "new_version",
    "parse_object",
    "read_text",
    "remove_tree",
    "store",
    "to_json",
    "utc_now",
    "write_text",
]


def new_version() -> str:
    """`20261125T101010-` + microseconds (5 hex digits) + 3 random hex digits: names sort by creation time,
    which pruning relies on to keep the newest versions.

    >>> bool(VERSION_RE.match(new_version()))
    True
    """
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{int(now % 1 * 1_000_000):05x}{uuid.uuid4().hex[:3]}"


def utc_now() -> str:
    """The timestamps of manifests and leases: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_json(obj: Any) -> str:
    """The text of every JSON file recospark writes (manifests, leases, metrics): sorted keys, indented.

    >>> print(to_json({"b": 1, "a": [2]}), end="")
    {
      "a": [
        2
      ],
      "b": 1
    }
    """
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def parse_object(text: str | None) -> dict[str, Any] | None:
    """A JSON object, or None for a missing, half-written (HDFS shows a file before it is closed) or other value."""
    try:
        info = json.loads(text) if text else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def active_session() -> SparkSession | None:
    """The application's session, also on threads that have no active session of their own."""
    return SparkSession.getActiveSession() or SparkSession._instantiatedSession


def active_spark(path: str) -> SparkSession:
    """The session that a non-local `path` is reached through; a user error without one."""
    spark = active_session()
    if spark is None:
        raise OutputError(f"{path}: a non-local path needs an active SparkSession")
    return spark


# --------------------------------------------------------------------------- stores


class Store(Protocol):
    """The few file operations publishing and leases need; paths are URIs or local paths."""

    def list(self, folder: str) -> dict[str, tuple[bool, float]]:
        """Name -> (is a folder, mtime in seconds) of `folder`'s entries; hidden names left out, a missing folder is empty."""

    def read(self, path: str) -> str | None:
        """The file's text, or None when it is missing (also when it vanished while being read)."""

    def mtime(self, path: str) -> float | None:
        """Modification time in seconds since the epoch, or None when missing: how leases tell a live heartbeat."""

    def exists(self, path: str) -> bool:
        """Whether a file or folder is at `path`."""

    def create_new(self, path: str, text: str) -> bool:
        """Create `path` with `text` only if nothing is there; False when it exists already.

        The exclusive create that makes a lease: of two runs, exactly one gets True, and no reader
        ever sees the file half-written.
        """

    def write(self, path: str, text: str) -> None:
        """Write `path`, replacing it atomically: a reader sees the old text or the new, never a mix."""

    def rename(self, src: str, dst: str) -> bool:
        """Move `src` to `dst` (always a fresh name); False when `src` is gone (another run moved it first)."""

    def delete(self, path: str) -> None:
        """Delete a file or a folder with everything in it; a missing one is fine."""

    def remove_empty(self, folder: str) -> bool:
        """Remove `folder` only if it is empty; whether it was removed."""

    def refresh(self, path: str, token: str) -> None:
        """The heartbeat of a lease this process holds (`token` is its owner's): its mtime becomes now."""

    def current(self, root: str, relpath: str) -> str | None:
        """The version the reader-facing path `<root>/<relpath>` points at, or None when nothing usable is published."""

    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None:
        """Point the reader-facing path at `version` in one step; data from another tool found there is moved aside."""


class LocalStore:
    """Local folders: exclusive creation by `link(2)`, replacement by `rename(2)`, the pointer is a symlink."""

    def list(self, folder: str) -> dict[str, tuple[bool, float]]:
        """`os.scandir`, without following symlinks: a reader-facing link is listed as a file, not a folder."""
        out = {}
        try:
            entries = list(os.scandir(local_path(folder)))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                out[entry.name] = (entry.is_dir(follow_symlinks=False), entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue
        return out

    def read(self, path: str) -> str | None:
        """The file's text (UTF-8), or None when it is missing."""
        try:
            return local_path(path).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mtime(self, path: str) -> float | None:
        """`stat(2)` mtime, or None when missing."""
        try:
            return local_path(path).stat().st_mtime
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        """Whether anything is at `path` (a dangling symlink counts as missing)."""
        return local_path(path).exists()

    def _temp(self, p: Path, text: str) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text, encoding="utf-8")
        return tmp

    def create_new(self, path: str, text: str) -> bool:
        """Write a temporary file, then `link(2)` it to `path`: fails if `path` exists, and the content is whole.

        Retried when another run removes the parent folder between the two steps.
        """
        p = local_path(path)
        for attempt in range(3):
            try:
                tmp = self._temp(p, text)  # whole content first, so no reader ever sees a half-written lease
                try:
                    os.link(tmp, p)
                    return True
                finally:
                    tmp.unlink(missing_ok=True)
            except FileExistsError:
                return False
            except FileNotFoundError:  # another run removed the empty folder meanwhile
                if attempt == 2:
                    raise
        return False

    def write(self, path: str, text: str) -> None:
        """A temporary file beside `path`, then `os.replace` (atomic within one file system)."""
        p = local_path(path)
        os.replace(self._temp(p, text), p)

    def rename(self, src: str, dst: str) -> bool:
        """`rename(2)`; False when `src` is gone."""
        try:
            os.rename(local_path(src), local_path(dst))
            return True
        except FileNotFoundError:
            return False

    def delete(self, path: str) -> None:
        """A folder's tree, or a file or symlink (a symlink's target is left alone)."""
        p = local_path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def remove_empty(self, folder: str) -> bool:
        """`rmdir(2)`, which refuses a folder with anything in it."""
        try:
            local_path(folder).rmdir()
            return True
        except OSError:
            return False

    def refresh(self, path: str, token: str) -> None:
        """Touch the lease file (its mtime is the heartbeat); a lease removed meanwhile is left removed."""
        with suppress(FileNotFoundError):
            os.utime(local_path(path))

    def current(self, root: str, relpath: str) -> str | None:
        """The symlink's target version, if it points into this output's `_versions/` at a published version (one with a manifest)."""
        target = local_path(join_path(root, relpath))
        if not target.is_symlink():
            return None
        resolved = target.resolve()
        if resolved.parent != local_path(join_path(root, VERSIONS, relpath)).resolve() or not (resolved / MANIFEST).is_file():
            return None
        return resolved.name

    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None:
        """Swap the symlink atomically (a new link renamed over the old); a plain folder there is moved aside."""
        _swap_symlink(local_path(join_path(root, VERSIONS, relpath, version)), local_path(join_path(root, relpath)))


def _swap_symlink(version_dir: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_symlink():
        # A plain folder from an older layout or another tool: move it aside, never delete it.
        target.rename(target.with_name(f"{target.name}.replaced-{uuid.uuid4().hex[:8]}"))
    link = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(os.path.relpath(version_dir, target.parent), link)
    os.replace(link, target)


class HadoopStore:
    """Any Hadoop file system (hdfs://, s3a://, ...): exclusive creation by `create(path, overwrite=false)`,
    replacement by FileContext's rename with OVERWRITE (one NameNode operation on HDFS), and the pointer
    is `<root>/<output>/_manifest.json`."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _fs(self, path: str) -> tuple[Any, Any]:
        return jvm.hadoop_fs(self.spark, path)

    def list(self, folder: str) -> dict[str, tuple[bool, float]]:
        """`FileSystem.listStatus`; hidden names (and the local file system's `.crc` files) left out."""
        fs, p = self._fs(folder)
        try:
            statuses = fs.listStatus(p)
        except Exception:  # FileNotFoundException: no such folder (yet, or any more)
            return {}
        out = {}
        for st in statuses:
            name = st.getPath().getName()
            if not name.startswith("."):  # also the local file system's .crc files
                out[name] = (bool(st.isDirectory()), st.getModificationTime() / 1000)
        return out

    def read(self, path: str) -> str | None:
        """The file's text, or None when missing or deleted between the check and the open."""
        try:
            data = jvm.hadoop_read(self.spark, path)
        except Exception:  # deleted between exists() and open()
            return None
        return None if data is None else data.decode("utf-8")

    def mtime(self, path: str) -> float | None:
        """`getFileStatus(...).getModificationTime()` in seconds, or None when missing."""
        fs, p = self._fs(path)
        try:
            return float(fs.getFileStatus(p).getModificationTime()) / 1000
        except Exception:
            return None

    def exists(self, path: str) -> bool:
        """`FileSystem.exists`."""
        fs, p = self._fs(path)
        return bool(fs.exists(p))

    def _put(self, fs: Any, hpath: Any, text: str, overwrite: bool) -> None:
        out = fs.create(hpath, overwrite)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def create_new(self, path: str, text: str) -> bool:
        """`create(path, overwrite=false)`: False when the file exists, however the client wraps that error."""
        fs, p = self._fs(path)
        try:
            self._put(fs, p, text, overwrite=False)
            return True
        except Exception as err:
            if "FileAlreadyExistsException" in str(err) or fs.exists(p):  # however the client wraps it
                return False
            raise

    def write(self, path: str, text: str) -> None:
        """A temporary file, then FileContext's rename with OVERWRITE; where FileContext is missing, delete then rename."""
        fs, p = self._fs(path)
        tmp = jvm.hadoop_path(self.spark, p.getParent(), f".{p.getName()}.{uuid.uuid4().hex[:8]}.tmp")
        self._put(fs, tmp, text, overwrite=False)
        try:
            jvm.hadoop_replace(self.spark, tmp, p)
        except Exception:  # a file system without FileContext support: replace in two steps
            fs.delete(p, False)
            if not fs.rename(tmp, p):
                fs.delete(tmp, False)
                raise PublishError(f"could not replace {path}") from None

    def rename(self, src: str, dst: str) -> bool:
        """`FileSystem.rename`; False when it did not happen (Hadoop reports that rather than raising)."""
        fs, p = self._fs(src)
        try:
            return bool(fs.rename(p, jvm.hadoop_path(self.spark, dst)))
        except Exception:
            return False

    def delete(self, path: str) -> None:
        """Recursive `FileSystem.delete`; a missing path is fine."""
        fs, p = self._fs(path)
        fs.delete(p, True)

    def remove_empty(self, folder: str) -> bool:
        """Non-recursive `FileSystem.delete`, which refuses a folder with anything in it."""
        fs, p = self._fs(folder)
        try:
            return bool(fs.delete(p, False))  # refuses a folder with anything in it
        except Exception:
            return False

    def refresh(self, path: str, token: str) -> None:
        """Rewrite the lease with a new `heartbeat_at` while its token is still ours: object stores ignore `setTimes`."""
        # Object stores ignore setTimes, so the heartbeat rewrites the lease (only while it is still ours).
        info = parse_object(self.read(path))
        if info is not None and info.get("token") == token:
            self.write(path, to_json({**info, "heartbeat_at": time.time()}))

    def current(self, root: str, relpath: str) -> str | None:
        """The version named by `<root>/<relpath>/_manifest.json`, if that version's own manifest exists."""
        pointer = parse_object(self.read(join_path(root, relpath, MANIFEST)))
        version = pointer.get("version") if pointer else None
        if not isinstance(version, str) or not self.exists(join_path(root, VERSIONS, relpath, version, MANIFEST)):
            return None  # nothing published, or an output from before versions stayed in place
        return version

    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None:
        """Write the pointer manifest (one atomic replace); anything else found at the path is moved aside first."""
        target = join_path(root, relpath)
        # Data from an older layout or another tool: move it aside, never delete it.
        if set(self.list(target)) - {MANIFEST} and not self.rename(target, f"{target}.replaced-{uuid.uuid4().hex[:8]}"):
            raise PublishError(f"could not move {target} aside before publishing")
        self.write(join_path(target, MANIFEST), manifest_text)


def store(root: str, spark: SparkSession | None = None) -> Store:
    """The store for an output root: local, or Hadoop through `spark` (else the active session)."""
    if is_local(root):
        return LocalStore()
    return HadoopStore(spark if spark is not None else active_spark(root))


def can_store(root: str) -> bool:
    """Whether `store(root)` works now: a local root always, another once a SparkSession is active."""
    return is_local(root) or active_session() is not None


# --------------------------------------------------------------------------- small files


def read_text(path: str) -> str | None:
    """A small text file on any file system, or None when it does not exist."""
    if is_local(path):
        p = local_path(path)
        return p.read_text(encoding="utf-8") if p.is_file() else None
    data = jvm.hadoop_read(active_spark(path), path)
    return None if data is None else data.decode("utf-8")


def write_text(spark: SparkSession | None, path: str, text: str) -> None:
    """Write (or overwrite) a small text file on any file system, creating its folder."""
    if is_local(path):
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return
    fs, hpath = jvm.hadoop_fs(spark if spark is not None else active_spark(path), path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def remove_tree(spark: SparkSession | None, uri: str) -> None:
    """Delete a folder on any file system; a missing one is fine.

    >>> folder = join_path(tmp_out, "scratch")
    >>> write_text(None, join_path(folder, "a.txt"), "a")
    >>> remove_tree(None, folder)
    >>> read_text(join_path(folder, "a.txt")) is None
    True
    """
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    fs, hpath = jvm.hadoop_fs(spark if spark is not None else active_spark(uri), uri)
    if fs.exists(hpath):
        fs.delete(hpath, True)
