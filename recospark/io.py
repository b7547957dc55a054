"""Reading and atomically publishing outputs, each with a `_manifest.json`, safely under concurrent runs.

Every write goes to a fresh, immutable version folder `<root>/_versions/<output>/<version>`, the
manifest is written last inside it, and only then does the reader-facing path change: on local
roots `<root>/<output>` is a symlink swapped in one `rename(2)`; on other file systems (hdfs://,
s3a://, which have no usable symlinks) `<root>/<output>/_manifest.json` is a pointer, a copy of the
current version's manifest replaced by one atomic rename (`recospark.fs`). A crash at any point
leaves the previous output readable, and a version folder never moves, so a reader can pin it.

Runs that share an output root see each other through lease files beside the versions
(`recospark.leases`): a publish needs the output's claim (another live run holding it raises
`OutputBusy`, exit code 1, retryable), the version being written carries a write lease, and
pruning after each publish deletes only what no live run writes or reads.

Readers go through `source()`, which pins the exact version folder (a later republish and its
pruning cannot pull the files from under a running stage) and gives the absolute URI that the
reading stage records in its own manifest's `inputs`: lineage names versions, never the pointer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from recospark import __version__, fs, leases
from recospark.config import Config
from recospark.errors import OutputError, PrerequisiteError
from recospark.fs import MANIFEST, VERSIONS
from recospark.paths import absolute_uri, is_local, join_path, local_path

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
    "Published",
    "Source",
    "check_writable",
    "output_path",
    "prerequisite_error",
    "publish",
    "publish_dataframe",
    "publish_files",
    "published",
    "read_json",
    "read_manifest",
    "read_output",
    "source",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """What `publish` made current: the reader-facing path (stable across versions), the row count, the version and its manifest."""

    path: str
    rows: int | None
    version: str
    manifest: Mapping[str, Any] = field(default_factory=dict)


def output_path(cfg: Config, *parts: str) -> str:
    """`<output.root>/<parts...>`: the reader-facing path of an output (a URI on non-local roots)."""
    return join_path(cfg.output.root, *parts)


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
    uri: str  # absolute URI of the version folder
    manifest: Mapping[str, Any]

    @property
    def version(self) -> str | None:
        """The pinned version's name (None for an output read in place, from before versioned publishing)."""
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
        """The URI of file `name` inside the pinned version (e.g. a stage's JSON), never the moving reader-facing path."""
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

    The pin (a read lease, `leases.pin`) keeps pruning away from the version until the run ends:
    the `leases.claim` scope around it, else this process. Local roots need no Spark, so stages
    may call this before the SparkContext starts.
    """
    pinned = leases.pin(cfg, relpath)
    if pinned is None:
        return _unversioned(cfg, relpath, needed_by)
    version, manifest = pinned
    return Source(relpath, absolute_uri(output_path(cfg, VERSIONS, relpath, version)), manifest)


def _unversioned(cfg: Config, relpath: str, needed_by: str) -> Source:
    """An output not published through `_versions/` (an older layout, or another tool): read in place, unpinned."""
    path = output_path(cfg, relpath)
    manifest = read_json(join_path(path, MANIFEST))
    if manifest is None:
        raise prerequisite_error(cfg, relpath, needed_by)
    return Source(relpath, absolute_uri(path), manifest)


def read_output(spark: SparkSession, cfg: Config, relpath: str, schema: StructType | None = None, *, needed_by: str = "") -> DataFrame:
    """The rows of a published output, pinned to its current version (see `source`)."""
    return source(cfg, relpath, needed_by=needed_by).read(spark, schema)


def read_json(path: str) -> dict[str, Any] | None:
    """A small JSON file on any file system, or None when it does not exist."""
    text = fs.read_text(path)
    return None if text is None else json.loads(text)


def read_manifest(cfg: Config, relpath: str) -> dict[str, Any] | None:
    """The manifest of `relpath`'s current version as its reader-facing path shows it (None: unpublished)."""
    return read_json(join_path(cfg.output.root, relpath, MANIFEST))


# --------------------------------------------------------------------------- writing


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
        "finished_at": fs.utc_now(),
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
    """Run `write(path)` into a fresh version folder, add the manifest, then make it current.

    `write` returns the number of rows it wrote (or None); `schema` is the schema as written,
    so the manifest's nullability is the files' own. The manifest names every input's exact
    version. The output must be free: claimed by this run (`leases.claim`), else it is claimed for
    this call, and a live claim of another run raises `OutputBusy` before anything is written. On any
    failure the half-written version is removed and the previous one stays. Afterwards the
    output's old versions are pruned (`leases.prune`).
    """
    started = fs.utc_now()
    root = cfg.output.root
    store = fs.store(root, spark)
    with leases.publishing(store, cfg, relpath) as held:
        version = fs.new_version()
        staging = join_path(root, VERSIONS, relpath, version)
        with leases.writing(store, cfg, relpath, version):
            try:
                rows = write(staging)
                manifest = _manifest(cfg, relpath, version, rows, schema, inputs, started, extra or {})
                text = fs.to_json(manifest)
                fs.write_text(spark, join_path(staging, MANIFEST), text)
                leases.check_claim(held, relpath, root)
                store.set_current(root, relpath, version, text)
            except BaseException:
                fs.remove_tree(spark, staging)
                raise
        try:
            leases.prune(store, cfg, relpath, current=version)
        except Exception as err:  # the output is published; old versions wait for the next publish
            log.warning("%s: could not prune old versions: %s", relpath, err)
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
    """Publish small text files (JSON metrics, an HTML page) as one versioned output folder.

    Examples
    --------
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"output.root={tmp_out}"])
    >>> publish_files(spark, cfg, "metrics", {"m.json": '{"rmse": 0.9}'}).manifest["files"]
    ['m.json']
    >>> with leases.claim(cfg, []):  # the run's pins last as long as its scope
    ...     read_json(source(cfg, "metrics").file("m.json"))
    {'rmse': 0.9}
    """

    def write(path: str) -> None:
        for name, text in files.items():
            fs.write_text(spark, join_path(path, name), text)
        return None

    return publish(spark, cfg, relpath, write, inputs=inputs, extra={"files": sorted(files), **dict(extra or {})})
