"""Reading and atomically publishing outputs, each with a `_manifest.json`.

Local output roots: every write goes to a fresh version folder under `<root>/_versions/`, the
manifest is written last inside it, and the reader-facing path (`<root>/ratings`, ...) is a
symlink swapped in one `rename(2)`. A crash at any point leaves the previous output readable.
Other file systems (hdfs://, s3a://): the version is written beside the target and moved in
with Hadoop FileSystem renames (old aside, new in); the window between them is two metadata
operations, and the previous version stays on disk until the new one is in place.

Readers go through `source()`, which pins the exact version folder (a later republish cannot
pull the files from under a running stage) and gives the absolute URI that the reading stage
records in its own manifest's `inputs`: lineage names versions, never the `current` symlink.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from recospark import __version__
from recospark.config import Config
from recospark.errors import OutputError, PrerequisiteError, PublishError
from recospark.paths import absolute_uri, is_local, join_path, local_path

MANIFEST = "_manifest.json"
VERSIONS = "_versions"

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
    "Published",
    "Source",
    "check_writable",
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


def _active_fs(path: str) -> tuple[Any, Any, Any]:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise OutputError(f"{path}: a non-local path needs an active SparkSession")
    return hadoop_fs(spark, path)


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


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Source:
    """One published output, pinned to the version that was current when it was looked up."""

    relpath: str
    uri: str  # absolute URI of the version folder (local) or of the output (other file systems)
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
    """Look up a published output; a missing one names the stage that publishes it.

    Local roots need no Spark, so stages call this before the SparkContext starts.
    """
    path = output_path(cfg, relpath)
    if is_local(path):
        target = local_path(path)
        if not (target / MANIFEST).is_file():
            raise prerequisite_error(cfg, relpath, needed_by)
        resolved = target.resolve()
        manifest = json.loads((resolved / MANIFEST).read_text(encoding="utf-8"))
        return Source(relpath, resolved.as_uri(), manifest)
    manifest = read_json(join_path(path, MANIFEST))
    if manifest is None:
        raise prerequisite_error(cfg, relpath, needed_by)
    return Source(relpath, path, manifest)


def read_output(spark: SparkSession, cfg: Config, relpath: str, schema: StructType | None = None, *, needed_by: str = "") -> DataFrame:
    """The rows of a published output, pinned to its current version (see `source`)."""
    return source(cfg, relpath, needed_by=needed_by).read(spark, schema)


def read_json(path: str) -> dict[str, Any] | None:
    """A small JSON file on any file system, or None when it does not exist."""
    if is_local(path):
        p = local_path(path)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise OutputError(f"{path}: a non-local path needs an active SparkSession")
    data = _read_hadoop(spark, path)
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
    """Run `write(path)` into a fresh version folder, add the manifest, then swap it in.

    `write` returns the number of rows it wrote (or None); `schema` is the schema as written,
    so the manifest's nullability is the files' own. The manifest names every input's exact
    version. On any failure the half-written version is removed and the previous one stays.
    """
    started = _now()
    version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    root = cfg.output.root
    staging = join_path(root, VERSIONS, relpath, version)
    try:
        rows = write(staging)
        manifest = _manifest(cfg, relpath, version, rows, schema, inputs, started, extra or {})
        _write_text(spark, join_path(staging, MANIFEST), to_json(manifest))
    except BaseException:
        remove_tree(spark, staging)
        raise
    target = join_path(root, relpath)
    if is_local(root):
        _swap_symlink(local_path(staging), local_path(target))
        _prune_local(local_path(join_path(root, VERSIONS, relpath)), keep=cfg.output.keep_versions, current=version)
    else:
        _swap_hadoop(spark, staging, target)
    return Published(path=target, rows=rows, version=version, manifest=manifest)


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


def _prune_local(versions: Path, keep: int, current: str) -> None:
    if not versions.is_dir():
        return
    complete = sorted(p for p in versions.iterdir() if (p / MANIFEST).is_file() and p.name != current)
    incomplete = [p for p in versions.iterdir() if not (p / MANIFEST).is_file() and p.name != current]
    for old in complete[: max(0, len(complete) - (keep - 1))] + incomplete:
        shutil.rmtree(old, ignore_errors=True)


def _swap_hadoop(spark: SparkSession, staging: str, target: str) -> None:
    jvm, fs, tpath = hadoop_fs(spark, target)
    aside = jvm.org.apache.hadoop.fs.Path(target + f".previous-{uuid.uuid4().hex[:8]}")
    had_old = fs.exists(tpath)
    if had_old and not fs.rename(tpath, aside):
        raise PublishError(f"could not move {target} aside before publishing")
    fs.mkdirs(tpath.getParent())
    if not fs.rename(jvm.org.apache.hadoop.fs.Path(staging), tpath):
        if had_old:
            fs.rename(aside, tpath)
        raise PublishError(f"could not publish {staging} to {target}")
    if had_old:
        fs.delete(aside, True)
