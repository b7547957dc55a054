"""Reading and atomically publishing outputs, each with a `_manifest.json`, safely under concurrent runs.

Every write goes to a fresh, immutable version folder `<root>/_versions/<output>/<version>`, the
manifest is written last inside it, and only then does the reader-facing path change: on local
roots `<root>/<output>` is a symlink swapped in one `rename(2)`; on other file systems (hdfs://,
s3a://, which have no usable symlinks) `<root>/<output>/_manifest.json` is a pointer, a copy of the
current version's manifest replaced by one atomic rename. A crash at any point leaves the previous
output readable, and a version folder never moves, so a reader can pin it.

Runs that share an output root see each other through small lease files beside the versions
(`<root>/_versions/<output>/`), written and judged by one code path for every file system:

- `_output.claim.lease`: the one run that may publish the output. It is created exclusively; a
  second run that wants the output while the first is alive fails with `OutputBusy` (exit code 1,
  retryable) naming the output and the other run. The console command claims every output of
  its stages before Spark starts; a library call to `publish` claims the output for that call.
- `<version>.write.lease`: the version is being written (created before the folder, removed once
  the version is current or deleted).
- `<version>.read-<token>.lease`: a run has pinned the version through `source()`; the pin lasts
  until the run (the `claim` scope, else the process) ends.
- `<version>.delete.lease`: a publisher is deleting the version; `source()` does not pin it.

A lease names its run, host, pid and the pid's start time, and its owner refreshes it (a
heartbeat) while it lives. Its owner is gone when, on the same host, that process no longer runs,
or, elsewhere, the lease missed its heartbeat for `output.abandoned_after_seconds`. Pruning, done
by the publisher after each publish, deletes only complete versions beyond `output.keep_versions`
that no live run has pinned, incomplete versions whose writer is gone (or, with no lease at all,
older than the grace period), and leases of owners that are gone.

Readers go through `source()`, which pins the exact version folder (a later republish and its
pruning cannot pull the files from under a running stage) and gives the absolute URI that the
reading stage records in its own manifest's `inputs`: lineage names versions, never the pointer.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from recospark import __version__
from recospark.config import Config
from recospark.errors import OutputError, PrerequisiteError, PublishError, Retryable
from recospark.paths import absolute_uri, is_local, join_path, local_path

MANIFEST = "_manifest.json"
VERSIONS = "_versions"
CLAIM = "_output.claim.lease"

# Which stage publishes each top-level output, for "run X first" messages.
PRODUCERS = {
    "ratings": "ingest",
    "movies": "ingest",
    "rejected": "ingest",
    "canonical": "ingest",
    "splits": "split",
    "tuning": "tune",
    "models": "train",
    "recommendations": "recommend",
    "metrics": "evaluate",
    "report": "report",
}

__all__ = [
    "MANIFEST",
    "RUN_ID",
    "OutputBusy",
    "Published",
    "Source",
    "check_writable",
    "claim",
    "hadoop_fs",
    "output_path",
    "prerequisite_error",
    "publish",
    "publish_dataframe",
    "publish_files",
    "published",
    "read_json",
    "read_manifest",
    "read_output",
    "remove_tree",
    "source",
]

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")
LEASE_RE = re.compile(r"^(?P<subject>[^/]+?)\.(?P<kind>claim|write|delete|read-[0-9a-f]+)\.lease$")

# This process's run: named in every lease it writes and in the other run's error message.
RUN_ID = os.environ.get("RECOSPARK_RUN_ID") or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
_HOST = socket.gethostname()


class OutputBusy(Retryable):
    """Another live run holds an output this run publishes: a later attempt can succeed (exit code 1)."""


@dataclass(frozen=True)
class Published:
    path: str
    rows: int | None
    version: str
    manifest: Mapping[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def output_path(cfg: Config, *parts: str) -> str:
    return join_path(cfg.output.root, *parts)


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any, Any]:
    """(jvm, FileSystem, Path) for a URI on any Hadoop file system: the one place that asks the JVM."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return jvm, hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _session() -> SparkSession | None:
    """The application's session, also on threads that have no active session of their own."""
    return SparkSession.getActiveSession() or SparkSession._instantiatedSession


def _active_spark(path: str) -> SparkSession:
    spark = _session()
    if spark is None:
        raise OutputError(f"{path}: a non-local path needs an active SparkSession")
    return spark


def _active_fs(path: str) -> tuple[Any, Any, Any]:
    return hadoop_fs(_active_spark(path), path)


def check_writable(cfg: Config) -> None:
    """Fail before any long work when the output root cannot be written.

    Probes by creating (and removing) a file in the nearest existing folder: as root,
    `os.access` says yes even for /proc.
    """
    root = cfg.output.root
    if not is_local(root):
        return
    path = local_path(root)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output.root {root!r} exists and is not a folder")
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".recospark-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(
            f"output.root {root!r} is not writable ({probe_dir}: {err.strerror or err}); set output.root to a folder you can write"
        ) from None


# --------------------------------------------------------------------------- file systems


class _Store(Protocol):
    """The few file operations publishing and leases need; paths are URIs or local paths."""

    def list(self, folder: str) -> dict[str, tuple[bool, float]]: ...  # name -> (is folder, mtime s); hidden names left out
    def read(self, path: str) -> str | None: ...
    def mtime(self, path: str) -> float | None: ...
    def exists(self, path: str) -> bool: ...
    def create_new(self, path: str, text: str) -> bool: ...  # False when it exists already
    def write(self, path: str, text: str) -> None: ...  # replaces atomically
    def rename(self, src: str, dst: str) -> bool: ...  # False when src is gone; dst is always a fresh name
    def delete(self, path: str) -> None: ...  # a file or a folder; a missing one is fine
    def remove_empty(self, folder: str) -> bool: ...  # remove the folder only if it is empty
    def refresh(self, path: str, token: str) -> None: ...  # the heartbeat of a lease this process holds
    def current(self, root: str, relpath: str) -> str | None: ...  # the version the reader-facing path points at
    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None: ...


class _LocalStore:
    """Local folders: exclusive creation by `link(2)`, replacement by `rename(2)`, the pointer is a symlink."""

    def list(self, folder: str) -> dict[str, tuple[bool, float]]:
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
        try:
            return local_path(path).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mtime(self, path: str) -> float | None:
        try:
            return local_path(path).stat().st_mtime
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return local_path(path).exists()

    def _temp(self, p: Path, text: str) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text, encoding="utf-8")
        return tmp

    def create_new(self, path: str, text: str) -> bool:
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
        p = local_path(path)
        os.replace(self._temp(p, text), p)

    def rename(self, src: str, dst: str) -> bool:
        try:
            os.rename(local_path(src), local_path(dst))
            return True
        except FileNotFoundError:
            return False

    def delete(self, path: str) -> None:
        p = local_path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def remove_empty(self, folder: str) -> bool:
        try:
            local_path(folder).rmdir()
            return True
        except OSError:
            return False

    def refresh(self, path: str, token: str) -> None:
        with suppress(FileNotFoundError):
            os.utime(local_path(path))

    def current(self, root: str, relpath: str) -> str | None:
        target = local_path(join_path(root, relpath))
        if not target.is_symlink():
            return None
        resolved = target.resolve()
        if resolved.parent != local_path(join_path(root, VERSIONS, relpath)).resolve() or not (resolved / MANIFEST).is_file():
            return None
        return resolved.name

    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None:
        _swap_symlink(local_path(join_path(root, VERSIONS, relpath, version)), local_path(join_path(root, relpath)))


class _HadoopStore:
    """Any Hadoop file system (hdfs://, s3a://, ...): exclusive creation by `create(path, overwrite=false)`,
    replacement by FileContext's rename with OVERWRITE (one NameNode operation on HDFS), and the pointer
    is `<root>/<output>/_manifest.json`."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _fs(self, path: str) -> tuple[Any, Any, Any]:
        return hadoop_fs(self.spark, path)

    def list(self, folder: str) -> dict[str, tuple[bool, float]]:
        _, fs, p = self._fs(folder)
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
        try:
            data = _read_hadoop(self.spark, path)
        except Exception:  # deleted between exists() and open()
            return None
        return None if data is None else data.decode("utf-8")

    def mtime(self, path: str) -> float | None:
        _, fs, p = self._fs(path)
        try:
            return float(fs.getFileStatus(p).getModificationTime()) / 1000
        except Exception:
            return None

    def exists(self, path: str) -> bool:
        _, fs, p = self._fs(path)
        return bool(fs.exists(p))

    def _put(self, fs: Any, hpath: Any, text: str, overwrite: bool) -> None:
        out = fs.create(hpath, overwrite)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def create_new(self, path: str, text: str) -> bool:
        _, fs, p = self._fs(path)
        try:
            self._put(fs, p, text, overwrite=False)
            return True
        except Exception as err:
            if "FileAlreadyExistsException" in str(err) or fs.exists(p):  # however the client wraps it
                return False
            raise

    def write(self, path: str, text: str) -> None:
        jvm, fs, p = self._fs(path)
        tmp = jvm.org.apache.hadoop.fs.Path(p.getParent(), f".{p.getName()}.{uuid.uuid4().hex[:8]}.tmp")
        self._put(fs, tmp, text, overwrite=False)
        rename = jvm.org.apache.hadoop.fs.Options.Rename
        gateway = self.spark.sparkContext._gateway
        assert gateway is not None
        options = gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE
        try:
            jvm.org.apache.hadoop.fs.FileContext.getFileContext(p.toUri(), self.spark.sparkContext._jsc.hadoopConfiguration()).rename(
                tmp, p, options
            )
        except Exception:  # a file system without FileContext support: replace in two steps
            fs.delete(p, False)
            if not fs.rename(tmp, p):
                fs.delete(tmp, False)
                raise PublishError(f"could not replace {path}") from None

    def rename(self, src: str, dst: str) -> bool:
        jvm, fs, p = self._fs(src)
        try:
            return bool(fs.rename(p, jvm.org.apache.hadoop.fs.Path(dst)))
        except Exception:
            return False

    def delete(self, path: str) -> None:
        _, fs, p = self._fs(path)
        fs.delete(p, True)

    def remove_empty(self, folder: str) -> bool:
        _, fs, p = self._fs(folder)
        try:
            return bool(fs.delete(p, False))  # refuses a folder with anything in it
        except Exception:
            return False

    def refresh(self, path: str, token: str) -> None:
        # Object stores ignore setTimes, so the heartbeat rewrites the lease (only while it is still ours).
        info = _parse(self.read(path))
        if info is not None and info.get("token") == token:
            self.write(path, to_json({**info, "heartbeat_at": time.time()}))

    def current(self, root: str, relpath: str) -> str | None:
        pointer = _parse(self.read(join_path(root, relpath, MANIFEST)))
        version = pointer.get("version") if pointer else None
        if not isinstance(version, str) or not self.exists(join_path(root, VERSIONS, relpath, version, MANIFEST)):
            return None  # nothing published, or an output from before versions stayed in place
        return version

    def set_current(self, root: str, relpath: str, version: str, manifest_text: str) -> None:
        target = join_path(root, relpath)
        # Data from an older layout or another tool: move it aside, never delete it.
        if set(self.list(target)) - {MANIFEST} and not self.rename(target, f"{target}.replaced-{uuid.uuid4().hex[:8]}"):
            raise PublishError(f"could not move {target} aside before publishing")
        self.write(join_path(target, MANIFEST), manifest_text)


def _store(root: str, spark: SparkSession | None = None) -> _Store:
    if is_local(root):
        return _LocalStore()
    return _HadoopStore(spark if spark is not None else _active_spark(root))


# --------------------------------------------------------------------------- leases


@dataclass
class _Lease:
    store: _Store
    path: str
    token: str
    grace: float


@dataclass
class _Run:
    """What one run holds: its claims (exclusive, per output) and its pins (per version)."""

    claims: dict[tuple[str, str], _Lease] = field(default_factory=dict)
    pins: dict[tuple[str, str, str], tuple[_Lease, Mapping[str, Any]]] = field(default_factory=dict)
    pending: list[tuple[str, str, float]] = field(default_factory=list)  # claims waiting for a SparkSession


_LOCK = threading.RLock()
_HELD: dict[str, _Lease] = {}  # every lease this process holds, by path: the heartbeat refreshes them
_PROCESS_RUN = _Run()  # pins taken outside any `claim` scope, held until the process ends
_SCOPE: _Run | None = None
_HEARTBEAT: threading.Thread | None = None
_STOP = threading.Event()


def _run() -> _Run:
    return _SCOPE if _SCOPE is not None else _PROCESS_RUN


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return -1 if fields[0] in ("Z", "X") else int(fields[19])  # a zombie has finished


def _process_alive(pid: int, started: Any) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now_started = _proc_start(pid)
    return not (now_started == -1 or (isinstance(started, int) and now_started is not None and now_started != started))


def _parse(text: str | None) -> dict[str, Any] | None:
    try:
        info = json.loads(text) if text else None
    except ValueError:  # being written (HDFS shows a file before it is closed)
        return None
    return info if isinstance(info, dict) else None


def _alive(info: dict[str, Any] | None, mtime: float | None, grace: float, now: float) -> bool:
    """Whether a lease's owner still runs: on this host, its process; elsewhere, a heartbeat within `grace`."""
    if info is not None and info.get("host") == _HOST and isinstance(info.get("pid"), int):
        return _process_alive(info["pid"], info.get("pid_start"))
    last = max(mtime or 0.0, float(info.get("heartbeat_at") or 0.0) if info else 0.0)
    return now - last < grace


def _owner(info: dict[str, Any] | None) -> str:
    if info is None:
        return "a run whose lease is being written"
    return f"run {info.get('run')}, host {info.get('host')}, pid {info.get('pid')}, since {info.get('created_at')}"


def _lease_text(kind: str, relpath: str, version: str | None, token: str) -> str:
    return to_json(
        {
            "kind": kind,
            "output": relpath,
            "version": version,
            "run": RUN_ID,
            "token": token,
            "host": _HOST,
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "created_at": _now(),
            "heartbeat_at": time.time(),
        }
    )


def _heartbeat() -> None:
    while True:
        with _LOCK:
            leases = list(_HELD.values())
        interval = min([60.0] + [lease.grace / 10 for lease in leases])
        if _STOP.wait(max(0.2, interval)):
            return
        for lease in leases:
            try:
                lease.store.refresh(lease.path, lease.token)
            except Exception as err:  # a stopped JVM or an unreachable file system: the next beat tries again
                log.debug("lease heartbeat %s: %s", lease.path, err)


def _hold(lease: _Lease) -> _Lease:
    global _HEARTBEAT
    with _LOCK:
        _HELD[lease.path] = lease
        if _HEARTBEAT is None:
            _HEARTBEAT = threading.Thread(target=_heartbeat, name="recospark-leases", daemon=True)
            _HEARTBEAT.start()
    return lease


def _take(store: _Store, path: str, kind: str, relpath: str, version: str | None, grace: float) -> _Lease:
    """A lease with a fresh name (write, read): created at once."""
    token = uuid.uuid4().hex
    if not store.create_new(path, _lease_text(kind, relpath, version, token)):
        raise PublishError(f"lease {path} exists already")
    return _hold(_Lease(store, path, token, grace))


def _release(lease: _Lease) -> None:
    with _LOCK:
        _HELD.pop(lease.path, None)
    try:
        info = _parse(lease.store.read(lease.path))
        if info is None or info.get("token") == lease.token:
            lease.store.delete(lease.path)
    except Exception as err:  # the lease stays behind and is judged by its owner (gone) later
        log.warning("could not release lease %s: %s", lease.path, err)


def _busy(relpath: str, root: str, info: dict[str, Any] | None) -> OutputBusy:
    return OutputBusy(f"{relpath} under {root} is being published by another run ({_owner(info)}); retry once that run has ended")


def _acquire_claim(store: _Store, root: str, relpath: str, grace: float) -> _Lease:
    """Create the output's claim exclusively; break it first when its owner is gone."""
    path = join_path(root, VERSIONS, relpath, CLAIM)
    info: dict[str, Any] | None = None
    for _ in range(5):
        token = uuid.uuid4().hex
        if store.create_new(path, _lease_text("claim", relpath, None, token)):
            return _hold(_Lease(store, path, token, grace))
        text, mtime = store.read(path), store.mtime(path)
        if text is None or mtime is None:
            continue  # released meanwhile
        info = _parse(text)  # None while its owner is still writing it: then its fresh mtime says alive
        if _alive(info, mtime, grace, time.time()):
            raise _busy(relpath, root, info)
        # Its owner is gone. Move the claim aside (one of several breakers wins), then make sure the
        # moved claim is the one judged dead and not one created meanwhile by a live run.
        aside = join_path(root, VERSIONS, relpath, f".{CLAIM}.{token[:8]}.dead")
        if not store.rename(path, aside):
            continue
        moved = store.read(aside)
        store.delete(aside)
        if moved is not None and moved != text:
            store.create_new(path, moved)  # put the live claim back
            raise _busy(relpath, root, _parse(moved))
        log.warning("%s: the claim of %s was abandoned; taking it over", relpath, _owner(info))
    raise _busy(relpath, root, info)


def _check_claim(lease: _Lease, relpath: str, root: str) -> None:
    """Just before a publish becomes visible: the claim must still be this run's."""
    info = _parse(lease.store.read(lease.path))
    if info is None or info.get("token") != lease.token:
        raise OutputBusy(
            f"{relpath} under {root} was taken over by another run ({_owner(info)}) while this run wrote it; retry once that run has ended"
        )


def _acquire_pending(run: _Run) -> None:
    """Claims of a non-local root wait for a SparkSession (Hadoop's file systems live in the JVM)."""
    if not run.pending or _session() is None:
        return
    with _LOCK:
        pending, run.pending = run.pending, []
    _acquire_all(run, pending)


def _acquire_all(run: _Run, wanted: list[tuple[str, str, float]]) -> None:
    """All or none, in one global order (by output), so two runs never each hold part of the other's set."""
    taken = []
    try:
        for root, relpath, grace in sorted(set(wanted)):
            if (root, relpath) not in run.claims:
                lease = _acquire_claim(_store(root), root, relpath, grace)
                taken.append((root, relpath))
                run.claims[(root, relpath)] = lease
    except BaseException:
        for key in taken:
            _release_claim(run.claims.pop(key), key[0])
        raise


def _release_claim(lease: _Lease, root: str) -> None:
    """Release a claim and remove the output's folders under `_versions/` that it leaves empty
    (an output claimed but never published)."""
    _release(lease)
    folder = lease.path.rsplit("/", 1)[0]
    top = join_path(root, VERSIONS)
    while folder.startswith(top + "/") and lease.store.remove_empty(folder):
        folder = folder.rsplit("/", 1)[0]


def _release_run(run: _Run) -> None:
    with _LOCK:
        pins = [lease for lease, _ in run.pins.values()]
        claims = list(run.claims.items())
        run.pins.clear()
        run.claims.clear()
        run.pending.clear()
    for lease in pins:
        _release(lease)
    for (root, _), lease in claims:
        _release_claim(lease, root)


@contextmanager
def claim(cfg: Config, relpaths: Iterable[str]) -> Iterator[None]:
    """Hold `relpaths` under cfg's output root for one run; every version pinned inside is held too.

    Fails at once with `OutputBusy` (naming the output and the run holding it) when another live
    run holds any of them, before anything is written; all or none are taken. On exit the claims
    and pins are released. Local roots are claimed on entry (no Spark needed); other roots as soon
    as a SparkSession is active, at the run's first `source` or `publish`.

    Examples
    --------
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"output.root={tmp_out}"])
    >>> with claim(cfg, ["metrics"]):  # a second run (here: a second scope) wanting metrics fails
    ...     try:
    ...         with claim(cfg, ["metrics"]):
    ...             pass
    ...     except OutputBusy as err:
    ...         print(str(err).startswith(f"metrics under {tmp_out} is being published by another run (run {RUN_ID}"))
    True
    """
    global _SCOPE
    root, grace = cfg.output.root, float(cfg.output.abandoned_after_seconds)
    outer, run = _SCOPE, _Run()
    wanted = [(root, relpath, grace) for relpath in relpaths]
    if is_local(root) or _session() is not None:
        _acquire_all(run, wanted)
    else:
        run.pending = wanted
    _SCOPE = run
    try:
        yield
    finally:
        _SCOPE = outer
        _release_run(run)


@atexit.register
def _release_at_exit() -> None:
    _STOP.set()
    for run in (_SCOPE, _PROCESS_RUN):
        if run is not None:
            _release_run(run)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Source:
    """One published output, pinned to the version that was current when it was looked up."""

    relpath: str
    uri: str  # absolute URI of the version folder
    manifest: Mapping[str, Any]

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    def read(self, spark: SparkSession, schema: StructType | None = None) -> DataFrame:
        """The Parquet rows, restricted to `schema`'s columns in its order when given."""
        df = spark.read.parquet(self.uri)
        if schema is not None:
            missing = [f.name for f in schema.fields if f.name not in df.columns]
            if missing:
                raise OutputError(f"{self.uri} lacks columns {missing}; it was not written by this version of recospark")
            df = df.select(*[f.name for f in schema.fields])
        return df

    def file(self, name: str) -> str:
        return join_path(self.uri, name)


def prerequisite_error(cfg: Config, relpath: str, needed_by: str = "") -> PrerequisiteError:
    """The error for a missing output: it names the stage that publishes it."""
    producer = PRODUCERS.get(relpath.split("/", 1)[0], "the stage that writes it")
    who = f"{needed_by} needs" if needed_by else "needs"
    return PrerequisiteError(
        f"{who} {relpath}, which is not published under {cfg.output.root}: run `recospark {producer}` first (same --conf and --set)"
    )


def published(cfg: Config, relpath: str) -> bool:
    """Whether a complete version of `relpath` is published (local roots only; True elsewhere)."""
    path = output_path(cfg, relpath)
    return not is_local(path) or (local_path(path) / MANIFEST).is_file()


def source(cfg: Config, relpath: str, *, needed_by: str = "") -> Source:
    """Look up a published output and pin its current version for this run; a missing one names
    the stage that publishes it.

    The pin (a read lease) keeps pruning away from the version until the run ends: the `claim`
    scope around it, else this process. Local roots need no Spark, so stages may call this before
    the SparkContext starts.
    """
    root = cfg.output.root
    store = _store(root)
    run = _run()
    _acquire_pending(run)
    folder = join_path(root, VERSIONS, relpath)
    for _ in range(10):
        version = store.current(root, relpath)
        if version is None:
            return _unversioned(cfg, relpath, needed_by)
        key = (root, relpath, version)
        with _LOCK:
            pinned = run.pins.get(key)
        if pinned is not None:
            return Source(relpath, absolute_uri(join_path(folder, version)), pinned[1])
        pin = _take(store, join_path(folder, f"{version}.read-{uuid.uuid4().hex[:12]}.lease"), "read", relpath, version, _grace(cfg))
        # A publisher marks a version before deleting it and looks for pins after marking it:
        # either it sees this pin, or this check sees its mark (or the version gone).
        manifest = _parse(store.read(join_path(folder, version, MANIFEST)))
        if manifest is None or store.exists(join_path(folder, f"{version}.delete.lease")):
            _release(pin)
            continue
        with _LOCK:
            kept = run.pins.setdefault(key, (pin, manifest))
        if kept[0] is not pin:  # another thread of this run pinned it meanwhile
            _release(pin)
        return Source(relpath, absolute_uri(join_path(folder, version)), kept[1])
    raise PublishError(f"{relpath} under {root}: its versions kept changing while being pinned")


def _unversioned(cfg: Config, relpath: str, needed_by: str) -> Source:
    """An output not published through `_versions/` (an older layout, or another tool): read in place, unpinned."""
    path = output_path(cfg, relpath)
    manifest = read_json(join_path(path, MANIFEST))
    if manifest is None:
        raise prerequisite_error(cfg, relpath, needed_by)
    return Source(relpath, absolute_uri(path), manifest)


def _grace(cfg: Config) -> float:
    return float(cfg.output.abandoned_after_seconds)


def read_output(spark: SparkSession, cfg: Config, relpath: str, schema: StructType | None = None, *, needed_by: str = "") -> DataFrame:
    """The rows of a published output, pinned to its current version (see `source`)."""
    return source(cfg, relpath, needed_by=needed_by).read(spark, schema)


def read_json(path: str) -> dict[str, Any] | None:
    """A small JSON file on any file system, or None when it does not exist."""
    if is_local(path):
        p = local_path(path)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    data = _read_hadoop(_active_spark(path), path)
    return None if data is None else json.loads(data.decode("utf-8"))


def _read_hadoop(spark: SparkSession, path: str) -> bytes | None:
    jvm, fs, hpath = hadoop_fs(spark, path)
    if not fs.exists(hpath):
        return None
    stream = fs.open(hpath)
    try:
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def read_manifest(cfg: Config, relpath: str) -> dict[str, Any] | None:
    return read_json(join_path(cfg.output.root, relpath, MANIFEST))


# --------------------------------------------------------------------------- writing


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def _write_text(spark: SparkSession | None, path: str, text: str) -> None:
    if is_local(path):
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return
    _write_hadoop(spark, path, text)


def _write_hadoop(spark: SparkSession | None, path: str, text: str) -> None:
    _, fs, hpath = hadoop_fs(spark, path) if spark is not None else _active_fs(path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def remove_tree(spark: SparkSession | None, uri: str) -> None:
    """Delete a folder on any file system; a missing one is fine."""
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    _, fs, hpath = hadoop_fs(spark, uri) if spark is not None else _active_fs(uri)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def _input_uris(inputs: Iterable[Source | str]) -> list[str]:
    return [i.uri if isinstance(i, Source) else absolute_uri(i) for i in inputs]


def _manifest(
    cfg: Config,
    relpath: str,
    version: str,
    rows: int | None,
    schema: StructType | None,
    inputs: Iterable[Source | str],
    started: str,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "output": relpath,
        "version": version,
        "rows": rows,
        "schema": json.loads(schema.json()) if schema is not None else None,
        "inputs": _input_uris(inputs),
        "config_hash": cfg.digest(),
        "package_version": __version__,
        "started_at": started,
        "finished_at": _now(),
        **dict(extra),
    }


def _new_version() -> str:
    """`20261125T101010-` + microseconds (5 hex digits) + 3 random hex digits: names sort by creation time,
    which pruning relies on to keep the newest versions."""
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{int(now % 1 * 1_000_000):05x}{uuid.uuid4().hex[:3]}"


def publish(
    spark: SparkSession,
    cfg: Config,
    relpath: str,
    write: Callable[[str], int | None],
    *,
    inputs: Iterable[Source | str] = (),
    schema: StructType | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Published:
    """Run `write(path)` into a fresh version folder, add the manifest, then make it current.

    `write` returns the number of rows it wrote (or None); `schema` is the schema as written,
    so the manifest's nullability is the files' own. The manifest names every input's exact
    version. The output must be free: claimed by this run (`claim`), else it is claimed for this
    call, and a live claim of another run raises `OutputBusy` before anything is written. On any
    failure the half-written version is removed and the previous one stays. Afterwards the
    output's old versions are pruned (see the module docstring).
    """
    started = _now()
    root = cfg.output.root
    store = _store(root, spark)
    run = _run()
    _acquire_pending(run)
    with _LOCK:
        claimed = run.claims.get((root, relpath))
    own = None if claimed is not None else _acquire_claim(store, root, relpath, _grace(cfg))
    held = claimed or own
    assert held is not None
    try:
        version = _new_version()
        folder = join_path(root, VERSIONS, relpath)
        staging = join_path(folder, version)
        writing = _take(store, join_path(folder, f"{version}.write.lease"), "write", relpath, version, _grace(cfg))
        try:
            rows = write(staging)
            manifest = _manifest(cfg, relpath, version, rows, schema, inputs, started, extra or {})
            text = to_json(manifest)
            _write_text(spark, join_path(staging, MANIFEST), text)
            _check_claim(held, relpath, root)
            store.set_current(root, relpath, version, text)
        except BaseException:
            remove_tree(spark, staging)
            raise
        finally:
            _release(writing)
        try:
            _prune(store, cfg, relpath, current=version)
        except Exception as err:  # the output is published; old versions wait for the next publish
            log.warning("%s: could not prune old versions: %s", relpath, err)
    finally:
        if own is not None:
            _release_claim(own, root)
    return Published(path=join_path(root, relpath), rows=rows, version=version, manifest=manifest)


def publish_dataframe(
    df: DataFrame,
    cfg: Config,
    relpath: str,
    *,
    inputs: Iterable[Source | str] = (),
    extra: Mapping[str, Any] | None = None,
    rows: int | None = None,
    measure: Callable[[DataFrame, int], Mapping[str, Any]] | None = None,
) -> Published:
    """Write `df` as Parquet (timestamps as TIMESTAMP_MICROS) and publish it.

    `rows`: the row count when the caller already knows it (saves a Spark job); otherwise
    the written files are counted (from their Parquet footers). `measure(written)`: facts read
    back from the written files and their row count (cheaper there than computed beforehand),
    added to the manifest.
    """
    spark = df.sparkSession
    # INT96 is deprecated in Parquet; every reader understands TIMESTAMP_MICROS.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    manifest_extra = dict(extra or {})  # `publish` builds the manifest after `write` returns

    def write(path: str) -> int:
        df.write.mode("errorifexists").parquet(path)
        if rows is not None and measure is None:
            return rows
        written = spark.read.parquet(path)
        n = rows if rows is not None else written.count()
        if measure is not None:
            manifest_extra.update(measure(written, n))
        return n

    return publish(spark, cfg, relpath, write, inputs=inputs, schema=df.schema, extra=manifest_extra)


def publish_files(
    spark: SparkSession,
    cfg: Config,
    relpath: str,
    files: Mapping[str, str],
    *,
    inputs: Iterable[Source | str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Published:
    """Publish small text files (JSON metrics, an HTML page) as one versioned output folder."""

    def write(path: str) -> None:
        for name, text in files.items():
            _write_text(spark, join_path(path, name), text)
        return None

    return publish(spark, cfg, relpath, write, inputs=inputs, extra={"files": sorted(files), **dict(extra or {})})


def _swap_symlink(version_dir: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_symlink():
        # A plain folder from an older layout or another tool: move it aside, never delete it.
        target.rename(target.with_name(f"{target.name}.replaced-{uuid.uuid4().hex[:8]}"))
    link = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(os.path.relpath(version_dir, target.parent), link)
    os.replace(link, target)


# --------------------------------------------------------------------------- pruning


def _prune(store: _Store, cfg: Config, relpath: str, current: str) -> None:
    """Delete what no live run needs: complete versions beyond keep_versions that no live run has
    pinned, incomplete versions whose writer is gone, and the leases of owners that are gone.

    Only the run holding the output's claim publishes, so only it prunes the output.
    """
    root, keep, grace = cfg.output.root, cfg.output.keep_versions, _grace(cfg)
    folder = join_path(root, VERSIONS, relpath)
    entries = store.list(folder)
    now = time.time()
    leases: dict[str, list[tuple[str, str]]] = {}  # version -> [(kind, lease file name)]
    for name, (is_dir, _) in entries.items():
        match = LEASE_RE.match(name)
        if match and not is_dir and match["kind"] != "claim":
            leases.setdefault(match["subject"], []).append((match["kind"], name))
    alive: dict[str, bool] = {}

    def live(name: str, mtime: float | None = None) -> bool:
        if name not in alive:
            path = join_path(folder, name)
            alive[name] = _alive(_parse(store.read(path)), mtime if mtime is not None else store.mtime(path), grace, now)
        return alive[name]

    versions = sorted(n for n, (is_dir, _) in entries.items() if is_dir and VERSION_RE.match(n) and n != current)
    complete = [v for v in versions if store.exists(join_path(folder, v, MANIFEST))]
    kept = set(complete[max(0, len(complete) - (keep - 1)) :]) if keep > 1 else set()
    for version in versions:
        if version in kept:
            continue
        kinds = leases.get(version, [])
        if version in complete:
            if not any(kind.startswith("read-") and live(name, entries[name][1]) for kind, name in kinds):
                _delete_unpinned(store, folder, version, relpath, grace)
            continue
        writers = [name for kind, name in kinds if kind in ("write", "delete")]
        if any(live(name, entries[name][1]) for name in writers):
            continue  # being written (or deleted) by a live run
        if writers or now - entries[version][1] >= grace:  # its writer is gone, or no lease and old
            store.delete(join_path(folder, version))
            log.info("%s: removed version %s, abandoned by its writer", relpath, version)
    # Leases of owners that are gone (their versions are handled above).
    for kinds in leases.values():
        for _, name in kinds:
            if not live(name, entries[name][1]):
                store.delete(join_path(folder, name))


def _delete_unpinned(store: _Store, folder: str, version: str, relpath: str, grace: float) -> None:
    """Mark the version, look for pins once more (a reader may have pinned it since the listing), then delete it."""
    token = uuid.uuid4().hex
    path = join_path(folder, f"{version}.delete.lease")
    store.write(path, _lease_text("delete", relpath, version, token))  # replaces the mark of a pruner that died
    mark = _hold(_Lease(store, path, token, grace))
    try:
        now = time.time()
        for name, (_, mtime) in store.list(folder).items():
            match = LEASE_RE.match(name)
            pin = match is not None and match["subject"] == version and match["kind"].startswith("read-")
            if pin and _alive(_parse(store.read(join_path(folder, name))), mtime, grace, now):
                return
        store.delete(join_path(folder, version, MANIFEST))  # incomplete at once for every other reader
        store.delete(join_path(folder, version))
    finally:
        _release(mark)
