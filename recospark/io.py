"""Reading and atomically publishing outputs, each with a `_manifest.json`.

Local output roots: every write goes to a fresh version folder under `<root>/_versions/`, the
manifest is written last inside it, and the reader-facing path (`<root>/ratings`, ...) is a
symlink swapped in one `rename(2)`. A crash at any point leaves the previous version published.
Other file systems (hdfs://, s3a://): the version is written beside the target and moved in
with Hadoop FileSystem renames (old aside, new in); the window between them is two metadata
operations, and the previous version stays on disk until the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from recospark import __version__
from recospark.config import Config, join_path

MANIFEST = "_manifest.json"
VERSIONS = "_versions"


class OutputError(RuntimeError):
    """An output cannot be read or published; the message names the path."""


@dataclass(frozen=True)
class Published:
    path: str
    rows: int | None
    version: str
    manifest: Mapping[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


def _local(uri: str) -> Path:
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return Path(uri[len(prefix):])
    return Path(uri)


def output_path(cfg: Config, *parts: str) -> str:
    return join_path(cfg.output.root, *parts)


def check_writable(cfg: Config) -> None:
    """Fail before any long work when the output root cannot be written."""
    root = cfg.output.root
    if not is_local(root):
        return
    path = _local(root).expanduser()
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise OutputError(f"output.root {root!r} is not writable (checked {probe_dir}); set output.root to a folder you can write")
    if path.exists() and not path.is_dir():
        raise OutputError(f"output.root {root!r} exists and is not a folder")


def _manifest(
    cfg: Config, relpath: str, rows: int | None, schema: StructType | None, inputs: Iterable[str], started: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "output": relpath,
        "rows": rows,
        "schema": json.loads(schema.json()) if schema is not None else None,
        "inputs": list(inputs),
        "config_hash": cfg.digest(),
        "package_version": __version__,
        "started_at": started,
        "finished_at": _now(),
        **dict(extra),
    }


def write_json_atomic(path: str, obj: Any) -> None:
    """Small JSON files (metrics) are replaced whole: readers see the old file or the new one.

    Local: os.replace. Other file systems: write beside, then delete + rename (two metadata
    operations; a reader in between sees no file rather than half of one).
    """
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if not is_local(path):
        _replace_hadoop(path, text)
        return
    target = _local(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def read_json(path: str) -> dict[str, Any] | None:
    """A small JSON output on any file system, or None when it does not exist."""
    if is_local(path):
        p = _local(path)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    jvm, fs, hpath = _hadoop(path)
    if not fs.exists(hpath):
        return None
    stream = fs.open(hpath)
    try:
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return json.loads(bytes(data).decode("utf-8"))


def _hadoop(path: str):
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise OutputError(f"{path}: a non-local path needs an active SparkSession")
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return jvm, hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _replace_hadoop(path: str, text: str) -> None:
    jvm, fs, target = _hadoop(path)
    tmp = jvm.org.apache.hadoop.fs.Path(f"{path}.{uuid.uuid4().hex[:8]}.tmp")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    if fs.exists(target):
        fs.delete(target, False)
    if not fs.rename(tmp, target):
        raise OutputError(f"could not publish {path}")


def publish(
    spark: SparkSession,
    cfg: Config,
    relpath: str,
    write: Callable[[str], None],
    *,
    inputs: Iterable[str] = (),
    count_rows: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Published:
    """Run `write(path)` into a fresh version folder, add the manifest, then swap it in."""
    started = _now()
    version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    root = cfg.output.root
    staging = join_path(root, VERSIONS, relpath, version)
    write(staging)
    rows = schema = None
    if count_rows:
        written = spark.read.parquet(staging)
        rows, schema = written.count(), written.schema
    manifest = _manifest(cfg, relpath, rows, schema, inputs, started, extra or {})
    _write_text(spark, join_path(staging, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
    target = join_path(root, relpath)
    if is_local(root):
        _swap_symlink(_local(staging), _local(target))
        _prune_local(_local(join_path(root, VERSIONS, relpath)), keep=cfg.output.keep_versions, current=version)
    else:
        _swap_hadoop(spark, staging, target)
    return Published(path=target, rows=rows, version=version, manifest=manifest)


def publish_dataframe(
    df: DataFrame,
    cfg: Config,
    relpath: str,
    *,
    inputs: Iterable[str] = (),
    partition_by: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Published:
    def write(path: str) -> None:
        writer = df.write.mode("errorifexists")
        cols = list(partition_by)
        if cols:
            writer = writer.partitionBy(*cols)
        writer.parquet(path)

    return publish(df.sparkSession, cfg, relpath, write, inputs=inputs, extra=extra)


def read_manifest(cfg: Config, relpath: str) -> dict[str, Any] | None:
    return read_json(join_path(cfg.output.root, relpath, MANIFEST))


def read_output(spark: SparkSession, cfg: Config, relpath: str, schema: StructType | None = None, *, needed_by: str = "") -> DataFrame:
    """Read a published output; a missing one names the stage that writes it."""
    path = join_path(cfg.output.root, relpath)
    if is_local(path) and not _local(path).exists():
        hint = f" (run the stage that writes it first{'; needed by ' + needed_by if needed_by else ''})"
        raise OutputError(f"no published output at {path}{hint}")
    if is_local(path):
        # Pin the version: a DataFrame read through the symlink would break when the output is
        # republished under it; the resolved version folder survives `keep_versions - 1` republishes.
        path = str(_local(path).resolve())
    df = spark.read.parquet(path)
    if schema is not None:
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise OutputError(f"{path} lacks columns {missing}; it was not written by this version of recospark")
        df = df.select(*[f.name for f in schema.fields])
    return df


def _write_text(spark: SparkSession, path: str, text: str) -> None:
    if is_local(path):
        p = _local(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n", encoding="utf-8")
        return
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(hpath, True)
    out.write(bytearray(text.encode("utf-8")))
    out.close()


def _swap_symlink(version_dir: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_symlink():
        # A plain folder from an older layout or another tool: move it aside, never delete it.
        target.rename(target.with_name(f"{target.name}.replaced-{uuid.uuid4().hex[:8]}"))
    link = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(os.path.relpath(version_dir, target.parent), link)
    os.replace(link, target)


def _prune_local(versions: Path, keep: int, current: str) -> None:
    if not versions.is_dir():
        return
    complete = sorted(p for p in versions.iterdir() if (p / MANIFEST).is_file() and p.name != current)
    incomplete = [p for p in versions.iterdir() if not (p / MANIFEST).is_file() and p.name != current]
    for old in complete[: max(0, len(complete) - (keep - 1))] + incomplete:
        shutil.rmtree(old, ignore_errors=True)


def _swap_hadoop(spark: SparkSession, staging: str, target: str) -> None:
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    tpath = jvm.org.apache.hadoop.fs.Path(target)
    fs = tpath.getFileSystem(conf)
    aside = jvm.org.apache.hadoop.fs.Path(target + f".previous-{uuid.uuid4().hex[:8]}")
    had_old = fs.exists(tpath)
    if had_old and not fs.rename(tpath, aside):
        raise OutputError(f"could not move {target} aside before publishing")
    fs.mkdirs(tpath.getParent())
    if not fs.rename(jvm.org.apache.hadoop.fs.Path(staging), tpath):
        if had_old:
            fs.rename(aside, tpath)
        raise OutputError(f"could not publish {staging} to {target}")
    if had_old:
        fs.delete(aside, True)
