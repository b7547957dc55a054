"""How runs that share an output root see each other: claims, write leases, pins, and pruning.

Small lease files beside the versions (`<root>/_versions/<output>/`), written and judged by one
code path for every file system (`recospark.fs.Store`):

- `_output.claim.lease`: the one run that may publish the output. It is created exclusively; a
  second run that wants the output while the first is alive fails with `OutputBusy` (exit code 1,
  retryable) naming the output and the other run. The console command claims every output of
  its stages before Spark starts (`claim`); a library call to `recospark.io.publish` claims the
  output for that call (`publishing`).
- `<version>.write.lease`: the version is being written (created before the folder, removed once
  the version is current or deleted).
- `<version>.read-<token>.lease`: a run has pinned the version (`pin`, through
  `recospark.io.source`); the pin lasts until the run (the `claim` scope, else the process) ends.
- `<version>.delete.lease`: a publisher is deleting the version; `pin` does not pin it.

A lease names its run, host, pid and the pid's start time, and its owner refreshes it (a
heartbeat) while it lives. Its owner is gone when, on the same host, that process no longer runs,
or, elsewhere, the lease missed its heartbeat for `output.abandoned_after_seconds`. Pruning, done
by the publisher after each publish (`prune`), deletes only complete versions beyond
`output.keep_versions` that no live run has pinned, incomplete versions whose writer is gone (or,
with no lease at all, older than the grace period), and leases of owners that are gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recospark import fs
from recospark.config import Config
from recospark.errors import OutputBusy, PublishError
from recospark.fs import MANIFEST, VERSION_RE, VERSIONS, Store, parse_object, to_json, utc_now
from recospark.paths import join_path

CLAIM = "_output.claim.lease"
LEASE_RE = re.compile(r"^(?P<subject>[^/]+?)\.(?P<kind>claim|write|delete|read-[0-9a-f]+)\.lease$")


def run_id(environ: Mapping[str, str]) -> str:
    """RECOSPARK_RUN_ID on one line (a scheduler's name for the run), or a fresh UTC-stamped id
    when it is unset or blank: it goes into one-line error messages of other runs."""
    given = " ".join(environ.get("RECOSPARK_RUN_ID", "").split())
    return given or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


# This process's run: named in every lease it writes and in the other run's error message.
RUN_ID = run_id(os.environ)
_HOST = socket.gethostname()

__all__ = ["CLAIM", "RUN_ID", "Lease", "check_claim", "claim", "pin", "prune", "publishing", "run_id", "writing"]

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A lease file this process holds: its `token` tells it apart from a later lease of the same name."""

    store: Store
    path: str
    token: str
    grace: float


@dataclass
class _Run:
    """What one run holds: its claims (exclusive, per output) and its pins (per version)."""

    claims: dict[tuple[str, str], Lease] = field(default_factory=dict)
    pins: dict[tuple[str, str, str], tuple[Lease, Mapping[str, Any]]] = field(default_factory=dict)
    pending: list[tuple[str, str, float]] = field(default_factory=list)  # claims waiting for a SparkSession


_LOCK = threading.RLock()
_HELD: dict[str, Lease] = {}  # every lease this process holds, by path: the heartbeat refreshes them
_PROCESS_RUN = _Run()  # pins taken outside any `claim` scope, held until the process ends
_SCOPE: _Run | None = None
_HEARTBEAT: threading.Thread | None = None
_STOP = threading.Event()


def _grace(cfg: Config) -> float:
    """Seconds without a heartbeat after which a lease from another host counts as abandoned."""
    return float(cfg.output.abandoned_after_seconds)


def _run() -> _Run:
    return _SCOPE if _SCOPE is not None else _PROCESS_RUN


# --------------------------------------------------------------------------- owners


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
            "created_at": utc_now(),
            "heartbeat_at": time.time(),
        }
    )


# --------------------------------------------------------------------------- holding leases


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


def _hold(lease: Lease) -> Lease:
    global _HEARTBEAT
    with _LOCK:
        _HELD[lease.path] = lease
        if _HEARTBEAT is None:
            _HEARTBEAT = threading.Thread(target=_heartbeat, name="recospark-leases", daemon=True)
            _HEARTBEAT.start()
    return lease


def _take(store: Store, path: str, kind: str, relpath: str, version: str | None, grace: float) -> Lease:
    """A lease with a fresh name (write, read): created at once."""
    token = uuid.uuid4().hex
    if not store.create_new(path, _lease_text(kind, relpath, version, token)):
        raise PublishError(f"lease {path} exists already")
    return _hold(Lease(store, path, token, grace))


def _release(lease: Lease) -> None:
    with _LOCK:
        _HELD.pop(lease.path, None)
    try:
        info = parse_object(lease.store.read(lease.path))
        if info is None or info.get("token") == lease.token:
            lease.store.delete(lease.path)
    except Exception as err:  # the lease stays behind and is judged by its owner (gone) later
        log.warning("could not release lease %s: %s", lease.path, err)


# --------------------------------------------------------------------------- claims


def _busy(relpath: str, root: str, info: dict[str, Any] | None) -> OutputBusy:
    return OutputBusy(f"{relpath} under {root} is being published by another run ({_owner(info)}); retry once that run has ended")


def _acquire_claim(store: Store, root: str, relpath: str, grace: float) -> Lease:
    """Create the output's claim exclusively; break it first when its owner is gone."""
    path = join_path(root, VERSIONS, relpath, CLAIM)
    info: dict[str, Any] | None = None
    for _ in range(5):
        token = uuid.uuid4().hex
        if store.create_new(path, _lease_text("claim", relpath, None, token)):
            return _hold(Lease(store, path, token, grace))
        text, mtime = store.read(path), store.mtime(path)
        if text is None or mtime is None:
            continue  # released meanwhile
        info = parse_object(text)  # None while its owner is still writing it: then its fresh mtime says alive
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
            raise _busy(relpath, root, parse_object(moved))
        log.warning("%s: the claim of %s was abandoned; taking it over", relpath, _owner(info))
    raise _busy(relpath, root, info)


def check_claim(lease: Lease, relpath: str, root: str) -> None:
    """Just before a publish becomes visible: the claim must still be this run's."""
    info = parse_object(lease.store.read(lease.path))
    if info is None or info.get("token") != lease.token:
        raise OutputBusy(
            f"{relpath} under {root} was taken over by another run ({_owner(info)}) while this run wrote it; retry once that run has ended"
        )


def _acquire_pending(run: _Run) -> None:
    """Claims of a non-local root wait for a SparkSession (Hadoop's file systems live in the JVM)."""
    if not run.pending or fs.active_session() is None:
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
                lease = _acquire_claim(fs.store(root), root, relpath, grace)
                taken.append((root, relpath))
                run.claims[(root, relpath)] = lease
    except BaseException:
        for key in taken:
            _release_claim(run.claims.pop(key), key[0])
        raise


def _release_claim(lease: Lease, root: str) -> None:
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
    root, grace = cfg.output.root, _grace(cfg)
    outer, run = _SCOPE, _Run()
    wanted = [(root, relpath, grace) for relpath in relpaths]
    if fs.can_store(root):
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


@contextmanager
def publishing(store: Store, cfg: Config, relpath: str) -> Iterator[Lease]:
    """The output's claim for one publish: the run's own (`claim`), else one taken for this call and
    released after it. A live claim of another run raises `OutputBusy` before anything is written."""
    root = cfg.output.root
    run = _run()
    _acquire_pending(run)
    with _LOCK:
        claimed = run.claims.get((root, relpath))
    own = None if claimed is not None else _acquire_claim(store, root, relpath, _grace(cfg))
    held = claimed or own
    assert held is not None
    try:
        yield held
    finally:
        if own is not None:
            _release_claim(own, root)


@contextmanager
def writing(store: Store, cfg: Config, relpath: str, version: str) -> Iterator[None]:
    """A write lease on `version` while it is being written: pruning leaves a live writer's version alone."""
    path = join_path(cfg.output.root, VERSIONS, relpath, f"{version}.write.lease")
    lease = _take(store, path, "write", relpath, version, _grace(cfg))
    try:
        yield
    finally:
        _release(lease)


# --------------------------------------------------------------------------- pins


def pin(cfg: Config, relpath: str) -> tuple[str, Mapping[str, Any]] | None:
    """Pin the current version of `relpath` for this run: (version, its manifest), or None when the
    output has no current version under `_versions/` (never published, or published in place).

    The pin (a read lease) keeps pruning away from the version until the run ends: the `claim`
    scope around it, else this process. Local roots need no Spark.
    """
    root = cfg.output.root
    store = fs.store(root)
    run = _run()
    _acquire_pending(run)
    folder = join_path(root, VERSIONS, relpath)
    for _ in range(10):
        version = store.current(root, relpath)
        if version is None:
            return None
        key = (root, relpath, version)
        with _LOCK:
            pinned = run.pins.get(key)
        if pinned is not None:
            return version, pinned[1]
        lease = _take(store, join_path(folder, f"{version}.read-{uuid.uuid4().hex[:12]}.lease"), "read", relpath, version, _grace(cfg))
        # A publisher marks a version before deleting it and looks for pins after marking it:
        # either it sees this pin, or this check sees its mark (or the version gone).
        manifest = parse_object(store.read(join_path(folder, version, MANIFEST)))
        if manifest is None or store.exists(join_path(folder, f"{version}.delete.lease")):
            _release(lease)
            continue
        with _LOCK:
            kept = run.pins.setdefault(key, (lease, manifest))
        if kept[0] is not lease:  # another thread of this run pinned it meanwhile
            _release(lease)
        return version, kept[1]
    raise PublishError(f"{relpath} under {root}: its versions kept changing while being pinned")


# --------------------------------------------------------------------------- pruning


def prune(store: Store, cfg: Config, relpath: str, current: str) -> None:
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
            alive[name] = _alive(parse_object(store.read(path)), mtime if mtime is not None else store.mtime(path), grace, now)
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


def _delete_unpinned(store: Store, folder: str, version: str, relpath: str, grace: float) -> None:
    """Mark the version, look for pins once more (a reader may have pinned it since the listing), then delete it."""
    token = uuid.uuid4().hex
    path = join_path(folder, f"{version}.delete.lease")
    store.write(path, _lease_text("delete", relpath, version, token))  # replaces the mark of a pruner that died
    mark = _hold(Lease(store, path, token, grace))
    try:
        now = time.time()
        for name, (_, mtime) in store.list(folder).items():
            match = LEASE_RE.match(name)
            pinned = match is not None and match["subject"] == version and match["kind"].startswith("read-")
            if pinned and _alive(parse_object(store.read(join_path(folder, name))), mtime, grace, now):
                return
        store.delete(join_path(folder, version, MANIFEST))  # incomplete at once for every other reader
        store.delete(join_path(folder, version))
    finally:
        _release(mark)
