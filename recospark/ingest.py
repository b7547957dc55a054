"""The `ingest` stage: raw MovieLens files -> typed `ratings/`, `movies/` and `rejected/`.

Nothing is dropped silently. For each file: `read = accepted + rejected + duplicates_resolved`
(blank lines and a CSV header are counted apart and are not rows). Rows that do not parse or
are off the layout's rating scale go to `rejected/` with file, line, raw text and reason.
Duplicate (user, movie) pairs keep the latest timestamp (then the later line); ratings whose
movie is missing from the movies file are kept and counted (`ratings_unknown_movie`).
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recospark import io
from recospark.config import Config, join_path
from recospark.datasets import movielens as ml
from recospark.datasets.download import resolve_source
from recospark.faults import with_fault_on_first_attempt
from recospark.schema import LINE_NUMBER, MOVIE_ID, MOVIES, RAW, REASON, REJECTED, SOURCE_FILE, USER_ID

log = logging.getLogger(__name__)


def rating_counts(parsed: DataFrame) -> dict[str, int]:
    """Lines per status in one pass: ok, rejected, blank, header."""
    counts = {row[ml.STATUS]: int(row["n"]) for row in parsed.groupBy(ml.STATUS).agg(F.count(F.lit(1)).alias("n")).collect()}
    return {status: counts.get(status, 0) for status in ("ok", "rejected", "blank", "header")}


def movies_frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, MOVIES)


def rejected_frame(spark: SparkSession, parsed: DataFrame, movie_rejects: list[tuple]) -> DataFrame:
    from_ratings = parsed.filter(F.col(ml.STATUS) == "rejected").select(*[f.name for f in REJECTED.fields])
    return from_ratings.unionByName(spark.createDataFrame(movie_rejects, REJECTED))


def _check_inputs(spark: SparkSession, folder: str, cfg: Config) -> tuple[ml.Layout, list[str]]:
    files = ml.list_files(spark, folder)
    layout = ml.detect_layout(files, cfg.data.layout)
    ratings_path = join_path(folder, layout.ratings_file)
    if ml.file_size(spark, ratings_path) <= 0:
        raise ml.LayoutError(f"ratings file {ratings_path} is empty")
    return layout, files


def run(spark: SparkSession, cfg: Config) -> dict:
    started = time.monotonic()
    folder = resolve_source(cfg.data)
    layout, files = _check_inputs(spark, folder, cfg)
    ratings_path = join_path(folder, layout.ratings_file)
    movies_path = join_path(folder, layout.movies_file)
    log.info("ingest %s (layout %s, ratings %s)", folder, layout.name, layout.scale)

    parsed = (
        ml.read_lines(spark, ratings_path)
        .transform(with_fault_on_first_attempt(cfg.faults.dataframe_partition, "ingest"))
        .transform(ml.with_parsed_ratings(layout))
        .cache()
    )
    try:
        counts = rating_counts(parsed)
        read = counts["ok"] + counts["rejected"]
        if read == 0:
            raise ml.LayoutError(f"ratings file {ratings_path} has no rating rows")
        ratings = parsed.transform(ml.filter_accepted).transform(ml.filter_latest_per_pair).transform(ml.as_ratings).cache()
        accepted = ratings.count()

        if layout.movies_file in files:
            genres = ml.ml100k_genres(spark, folder, files) if layout.name == "ml-100k" else ml.ML100K_GENRES
            movies_parse = ml.parse_movies(ml.read_bytes(spark, movies_path), layout, layout.movies_file, genres)
        else:
            log.warning("no %s in %s: movies/ will be empty and titles missing", layout.movies_file, folder)
            movies_parse = ml.MoviesParse([], [], 0, 0, 0)
        movies = movies_frame(spark, movies_parse.rows)
        unknown = ratings.join(movies.select(MOVIE_ID), MOVIE_ID, "left_anti").count() if movies_parse.rows else 0

        files_report = {
            layout.ratings_file: {
                "read": read,
                "accepted": accepted,
                "rejected": counts["rejected"],
                "duplicates_resolved": counts["ok"] - accepted,
                "blank_lines": counts["blank"],
                "header_lines": counts["header"],
            },
            layout.movies_file: {
                "read": movies_parse.read,
                "accepted": len(movies_parse.rows),
                "rejected": len(movies_parse.rejected) - movies_parse.duplicates,
                "duplicates_resolved": movies_parse.duplicates,
                "blank_lines": movies_parse.blank,
            },
        }
        quality = {"layout": layout.name, "files": files_report, "ratings_unknown_movie": unknown, "rating_scale": layout.scale}
        inputs = [ratings_path, movies_path]
        published_ratings = io.publish_dataframe(ratings.orderBy(USER_ID, MOVIE_ID), cfg, "ratings", inputs=inputs, extra=quality)
        published_movies = io.publish_dataframe(movies.orderBy(MOVIE_ID), cfg, "movies", inputs=[movies_path], extra=quality)
        rejected = rejected_frame(spark, parsed, movies_parse.rejected)
        published_rejected = io.publish_dataframe(
            rejected.orderBy(SOURCE_FILE, LINE_NUMBER).select(SOURCE_FILE, LINE_NUMBER, RAW, REASON),
            cfg,
            "rejected",
            inputs=inputs,
            extra=quality,
        )
        ratings.unpersist()
    finally:
        parsed.unpersist()

    for name, c in files_report.items():
        log.info("ingest %s: read %d = accepted %d + rejected %d + duplicates %d", name, c["read"], c["accepted"], c["rejected"], c["duplicates_resolved"])
    if unknown:
        log.warning("ingest: %d ratings refer to movies missing from %s (kept)", unknown, layout.movies_file)
    return {
        "stage": "ingest",
        "source": folder,
        "layout": layout.name,
        "ratings": {"path": published_ratings.path, "rows": published_ratings.rows},
        "movies": {"path": published_movies.path, "rows": published_movies.rows},
        "rejected": {"path": published_rejected.path, "rows": published_rejected.rows},
        "files": files_report,
        "ratings_unknown_movie": unknown,
        "seconds": round(time.monotonic() - started, 2),
    }
