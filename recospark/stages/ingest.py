"""The `ingest` stage: raw MovieLens files -> typed `ratings/`, `movies/`, `rejected/` (and `canonical/`).

Nothing is dropped silently. For each file: `read = accepted + rejected + duplicates_resolved`
(blank lines and a CSV header are counted apart and are not rows). Rows that do not parse or
are off the layout's rating scale go to `rejected/` with file, line, raw text and reason.
Duplicate (user, movie) pairs keep the latest timestamp (then the later line); ratings whose
movie is missing from the movies file are kept and counted (`ratings_unknown_movie`).

ml-100k's canonical split files (u1.base ... ub.test) are ingested the same way, with their
labels, into `canonical/`, so `split.strategy=canonical` reads ingest's output like every
other strategy and their bad rows are counted like any other.

A run that accepts no rating, or rejects more than `data.max_rejected_fraction` of the rating
lines, fails with a one-line error and publishes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config
from recospark.datasets import movielens as ml
from recospark.datasets.download import resolve_source
from recospark.errors import DataQualityError
from recospark.faults import with_fault_on_first_attempt
from recospark.frames import driver_frame, with_write_order
from recospark.paths import is_local, join_path
from recospark.runtime import stage_run
from recospark.schema import CANONICAL, LINE_NUMBER, MOVIE_ID, MOVIES, REJECTED, SOURCE_FILE, USER_ID

__all__ = ["DataQualityError", "preflight", "run"]

log = logging.getLogger(__name__)


_STATUSES = ("ok", "rejected", "blank", "header")
_KNOWN = "_known_movie"


def rating_counts(
    parsed: DataFrame, catalogue: DataFrame | None = None, by_file: bool = False, pairs: bool = True
) -> dict[Any, dict[str, int]]:
    """What ingest reports about parsed lines, in one Spark job (per source file when `by_file`):
    lines per status and, with `pairs`, `accepted` = distinct (user, movie) pairs among the ok
    lines (duplicates keep one) and with a `catalogue` (movie_id) `unknown` = accepted pairs whose
    movie is not in it. The distinct counts cost a shuffle of every line: for the big ratings
    file ingest reads them back from the published files instead (`pairs=False`)."""
    ok = F.col(ml.STATUS) == "ok"
    pair = F.struct(USER_ID, MOVIE_ID)
    rows = (
        parsed if catalogue is None or not pairs else parsed.join(F.broadcast(catalogue.withColumn(_KNOWN, F.lit(True))), MOVIE_ID, "left")
    )
    aggs = [F.sum(F.when(F.col(ml.STATUS) == s, 1).otherwise(0)).alias(s) for s in _STATUSES]
    if pairs:
        aggs.append(F.count_distinct(F.when(ok, pair)).alias("accepted"))
    if pairs and catalogue is not None:
        aggs.append(F.count_distinct(F.when(ok & F.col(_KNOWN).isNull(), pair)).alias("unknown"))
    grouped = rows.groupBy(SOURCE_FILE).agg(*aggs) if by_file else rows.agg(*aggs)
    out: dict[Any, dict[str, int]] = {}
    for row in grouped.collect():
        values = row.asDict()
        key = values.pop(SOURCE_FILE, None)
        out[key] = {k: int(v or 0) for k, v in values.items()}
    return out


def movies_frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """The parsed catalogue rows as a `schema.MOVIES` frame (the movies file is parsed on the driver: it is small)."""
    return driver_frame(spark, rows, MOVIES)


def rejected_frame(spark: SparkSession, parsed: DataFrame, movie_rejects: list[tuple]) -> DataFrame:
    """Every rejected line, ratings and movies alike, with its file, line number and reason: what `rejected/` publishes."""
    from_ratings = parsed.filter(F.col(ml.STATUS) == "rejected").select(*[f.name for f in REJECTED.fields])
    return from_ratings.unionByName(spark.createDataFrame(movie_rejects, REJECTED))


def check_quality(counts: dict[str, int], ratings_path: str, max_rejected: float) -> None:
    """Fail before publishing when no rating was accepted or too many lines were rejected."""
    read = counts["ok"] + counts["rejected"]
    if read == 0:
        raise DataQualityError(f"ingest: {ratings_path} has no rating rows (only blank or header lines); nothing published")
    if counts["ok"] == 0:
        raise DataQualityError(
            f"ingest: all {read} rating lines of {ratings_path} were rejected (wrong layout or columns? see data.layout); nothing published"
        )
    fraction = counts["rejected"] / read
    if fraction > max_rejected:
        raise DataQualityError(
            f"ingest: {counts['rejected']} of {read} rating lines ({fraction:.1%}) of {ratings_path} were rejected, "
            f"more than data.max_rejected_fraction={max_rejected:g}; nothing published"
        )


def preflight(cfg: Config) -> None:
    """Checks that need no Spark: the source resolves (downloading a named release if allowed),
    its layout is known and its ratings file is not empty. Non-local sources are checked in `run`."""
    folder = resolve_source(cfg.data)
    if is_local(folder):
        _inputs(None, folder, cfg)


def _inputs(spark: SparkSession | None, folder: str, cfg: Config) -> tuple[ml.Layout, list[str]]:
    files = ml.list_files(spark, folder)
    layout = ml.detect_layout(files, cfg.data.layout)
    ratings_path = join_path(folder, layout.ratings_file)
    if ml.file_size(spark, ratings_path) <= 0:
        raise ml.LayoutError(f"ratings file {ratings_path} is empty")
    return layout, files


def canonical_files(cfg: Config, layout: ml.Layout, files: list[str]) -> list[str]:
    """The canonical split files to ingest: ml-100k's, when asked for or when the split needs them."""
    wanted = cfg.data.canonical_splits == "always" or (cfg.data.canonical_splits == "auto" and cfg.split.strategy == "canonical")
    return ml.canonical_files(files) if wanted and layout.name == "ml-100k" else []


def _file_report(c: dict[str, int], accepted: int) -> dict[str, int]:
    return {
        "read": c["ok"] + c["rejected"],
        "accepted": accepted,
        "rejected": c["rejected"],
        "duplicates_resolved": c["ok"] - accepted,
        "blank_lines": c["blank"],
        "header_lines": c["header"],
    }


@stage_run("ingest")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Parse the MovieLens files of `data.source` and publish ratings/, movies/, rejected/ (and canonical/).

    Returns what it wrote (paths, rows) and the per-file accounting.

    Examples
    --------
    >>> from recospark.stages import ingest
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}"])
    >>> result = ingest.run(spark, cfg)
    >>> result["ratings"]["rows"], result["rejected"]["rows"]
    (10, 1)
    """
    folder = resolve_source(cfg.data)
    layout, files = _inputs(spark, folder, cfg)
    ratings_path = join_path(folder, layout.ratings_file)
    movies_path = join_path(folder, layout.movies_file)
    log.info("ingest %s (layout %s, ratings %s)", folder, layout.name, layout.scale)

    if layout.movies_file in files:
        genres = ml.ml100k_genres(spark, folder, files) if layout.name == "ml-100k" else ml.ML100K_GENRES
        movies_parse = ml.parse_movies(ml.read_bytes(spark, movies_path), layout, layout.movies_file, genres)
    else:
        log.warning("no %s in %s: movies/ will be empty and titles missing", layout.movies_file, folder)
        movies_parse = ml.MoviesParse([], [], 0, 0, 0)
    movies = movies_frame(spark, movies_parse.rows)
    catalogue = movies.select(MOVIE_ID) if movies_parse.rows else None

    parsed = (
        ml.read_lines(spark, ratings_path)
        .transform(with_fault_on_first_attempt(cfg.faults.dataframe_partition, "ingest"))
        .transform(ml.with_parsed_ratings(layout))
        .cache()
    )
    split_files = canonical_files(cfg, layout, files)
    canonical = None
    try:
        counts = rating_counts(parsed, pairs=False)[None]
        check_quality(counts, ratings_path, cfg.data.max_rejected_fraction)
        files_report: dict[str, Any] = {
            layout.ratings_file: None,  # filled from the published ratings (see measure_ratings)
            layout.movies_file: {
                "read": movies_parse.read,
                "accepted": len(movies_parse.rows),
                "rejected": len(movies_parse.rejected) - movies_parse.duplicates,
                "duplicates_resolved": movies_parse.duplicates,
                "blank_lines": movies_parse.blank,
            },
        }
        rejected_rows = counts["rejected"] + len(movies_parse.rejected)
        if split_files:
            canonical = ml.read_lines(spark, [join_path(folder, f) for f in split_files]).transform(ml.with_parsed_ratings(layout)).cache()
            per_file = rating_counts(canonical, by_file=True)
            for name in split_files:
                c = per_file.get(name, {**dict.fromkeys(_STATUSES, 0), "accepted": 0})
                files_report[name] = _file_report(c, c["accepted"])
                rejected_rows += c["rejected"]

        quality: dict[str, Any] = {"layout": layout.name, "files": files_report, "ratings_unknown_movie": 0, "rating_scale": layout.scale}

        def measure_ratings(written: DataFrame, accepted: int) -> dict[str, Any]:
            """accepted = the deduplicated rows written, unknown = those whose movie is not catalogued:
            two cheap jobs over the written files instead of distinct counts over every line."""
            files_report[layout.ratings_file] = _file_report(counts, accepted)
            if catalogue is not None:
                quality["ratings_unknown_movie"] = written.join(F.broadcast(catalogue), MOVIE_ID, "left_anti").count()
            return quality

        inputs = [ratings_path, movies_path]
        ratings = parsed.transform(ml.filter_accepted).transform(ml.filter_latest_per_pair).transform(ml.as_ratings)
        published_ratings = io.publish_dataframe(
            ratings.transform(with_write_order(USER_ID, MOVIE_ID)), cfg, "ratings", inputs=inputs, extra=quality, measure=measure_ratings
        )
        unknown = quality["ratings_unknown_movie"]
        published_movies = io.publish_dataframe(
            movies.coalesce(1).sortWithinPartitions(MOVIE_ID),
            cfg,
            "movies",
            inputs=[movies_path],
            extra=quality,
            rows=len(movies_parse.rows),
        )
        rejected = rejected_frame(spark, parsed, movies_parse.rejected)
        if canonical is not None:
            rejected = rejected.unionByName(canonical.filter(F.col(ml.STATUS) == "rejected").select(*[f.name for f in REJECTED.fields]))
        published_rejected = io.publish_dataframe(
            rejected.transform(with_write_order(SOURCE_FILE, LINE_NUMBER, partitions=1)).select(*[f.name for f in REJECTED.fields]),
            cfg,
            "rejected",
            inputs=inputs + [join_path(folder, f) for f in split_files],
            extra=quality,
            rows=rejected_rows,
        )
        result: dict[str, Any] = {
            "source": folder,
            "layout": layout.name,
            "ratings": {"path": published_ratings.path, "rows": published_ratings.rows},
            "movies": {"path": published_movies.path, "rows": published_movies.rows},
            "rejected": {"path": published_rejected.path, "rows": published_rejected.rows},
        }
        if canonical is not None:
            labelled = (
                canonical.transform(ml.filter_accepted)
                .transform(lambda df: ml.filter_latest_per_pair(df, within=[SOURCE_FILE]))
                .transform(ml.with_canonical_labels)
                .select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in CANONICAL.fields])
            )
            published_canonical = io.publish_dataframe(
                labelled.transform(with_write_order("split", "side", USER_ID, MOVIE_ID)),
                cfg,
                "canonical",
                inputs=[join_path(folder, f) for f in split_files],
                extra=quality,
                rows=sum(files_report[f]["accepted"] for f in split_files),
            )
            result["canonical"] = {"path": published_canonical.path, "rows": published_canonical.rows}
    finally:
        parsed.unpersist()
        if canonical is not None:
            canonical.unpersist()

    for name, c in files_report.items():
        log.info(
            "ingest %s: read %d = accepted %d + rejected %d + duplicates %d",
            name,
            c["read"],
            c["accepted"],
            c["rejected"],
            c["duplicates_resolved"],
        )
    if unknown:
        log.warning("ingest: %d ratings refer to movies missing from %s (kept)", unknown, layout.movies_file)
    return {**result, "files": files_report, "ratings_unknown_movie": unknown}
