"""Every published MovieLens layout: detection, ratings parsing (in Spark) and movies parsing.

Ratings files reach 32 M lines, so they are parsed by Spark SQL expressions with each line's
number kept for `rejected/`. Movies files are at most a few MB and come in Latin-1 or UTF-8 with
quoted CSV titles, so they are read as bytes (any file system) and parsed on the driver, where
`csv` and per-line decoding get them exactly right.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recospark.errors import LayoutError
from recospark.io import hadoop_fs
from recospark.paths import is_local, join_path, local_path
from recospark.schema import (
    LINE_NUMBER,
    MOVIE_ID,
    RATED_AT,
    RATING,
    RATINGS,
    RAW,
    REASON,
    SIDE,
    SOURCE_FILE,
    SPLIT_NAME,
    USER_ID,
)

# Genre flag order of ml-100k's u.item (u.genre lists the same names with their index).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"
CANONICAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

STATUS = "_status"
_FIELDS = "_fields"
_ROW = "_row"


@dataclass(frozen=True)
class Layout:
    name: str
    ratings_file: str
    movies_file: str
    separator: str
    header: bool
    rating_min: float
    rating_max: float
    rating_step: float

    @property
    def scale(self) -> str:
        return f"{self.rating_min:g}..{self.rating_max:g} in steps of {self.rating_step:g}"


LAYOUTS = {
    "ml-100k": Layout("ml-100k", "u.data", "u.item", "\t", False, 1.0, 5.0, 1.0),
    "ml-1m": Layout("ml-1m", "ratings.dat", "movies.dat", "::", False, 1.0, 5.0, 1.0),
    "ml-10m": Layout("ml-10m", "ratings.dat", "movies.dat", "::", False, 0.5, 5.0, 0.5),
    "csv": Layout("csv", "ratings.csv", "movies.csv", ",", True, 0.5, 5.0, 0.5),
}
_SEPARATOR_NAMES = {"\t": "tabs", "::": "'::'", ",": "commas", "|": "'|'"}


def detect_layout(files: Iterable[str], requested: str = "auto") -> Layout:
    """The layout from the file names present; ml-1m and ml-10m differ by ml-1m's users.dat."""
    present = set(files)
    if requested != "auto":
        layout = LAYOUTS[requested]
        if layout.ratings_file not in present:
            raise LayoutError(f"data.layout={requested} expects {layout.ratings_file}, not found among {sorted(present)}")
        return layout
    if "u.data" in present:
        return LAYOUTS["ml-100k"]
    if "ratings.dat" in present:
        return LAYOUTS["ml-1m"] if "users.dat" in present else LAYOUTS["ml-10m"]
    if "ratings.csv" in present:
        return LAYOUTS["csv"]
    raise LayoutError(
        f"unknown MovieLens layout: none of u.data, ratings.dat, ratings.csv among {sorted(present) or 'no files'}; "
        "set data.source to a MovieLens folder (or data.layout explicitly)"
    )


def list_files(spark: SparkSession | None, folder: str) -> list[str]:
    """Entry names in a folder, local (no Spark needed) or on any Hadoop file system.

    A folder of part files (as Spark writes, e.g. the generator's `ratings.csv/`) counts as
    the file of that name.
    """
    if is_local(folder):
        path = local_path(folder)
        if not path.is_dir():
            raise LayoutError(f"data.source folder {folder} does not exist")
        return sorted(p.name for p in path.iterdir() if not p.name.startswith(("_", ".")))
    if spark is None:
        raise LayoutError(f"{folder}: listing a non-local folder needs a SparkSession")
    _, fs, hpath = hadoop_fs(spark, folder)
    if not fs.exists(hpath):
        raise LayoutError(f"data.source folder {folder} does not exist")
    return sorted(s.getPath().getName() for s in fs.listStatus(hpath) if not s.getPath().getName().startswith(("_", ".")))


def file_size(spark: SparkSession | None, path: str) -> int:
    """Bytes in a file or a folder of part files; -1 when it does not exist."""
    if is_local(path):
        p = local_path(path)
        if p.is_file():
            return p.stat().st_size
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.name.startswith(("_", ".")))
        return -1
    if spark is None:
        raise LayoutError(f"{path}: a non-local file needs a SparkSession")
    _, fs, hpath = hadoop_fs(spark, path)
    return int(fs.getContentSummary(hpath).getLength()) if fs.exists(hpath) else -1


def read_lines(spark: SparkSession, path: str | list[str]) -> DataFrame:
    """`source_file, line_number, raw` for every line of a text file, numbered from 1.

    Line numbers come from each split's byte offset (`_metadata.file_block_start`) and the row's
    position inside its split, so the count stays in the JVM and needs no Python pass.
    """
    text = spark.read.text(path).select(
        F.col("value").alias(RAW),
        F.col("_metadata.file_name").alias(SOURCE_FILE),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_id"),
    )
    blocks = text.groupBy(SOURCE_FILE, "_block").agg(F.count(F.lit(1)).alias("_n"), F.min("_id").alias("_first"))
    earlier = Window.partitionBy(SOURCE_FILE).orderBy("_block").rowsBetween(Window.unboundedPreceding, -1)
    offsets = blocks.withColumn("_offset", F.coalesce(F.sum("_n").over(earlier), F.lit(0)))
    return text.join(F.broadcast(offsets), [SOURCE_FILE, "_block"]).select(
        SOURCE_FILE,
        (F.col("_offset") + F.col("_id") - F.col("_first") + F.lit(1)).cast("long").alias(LINE_NUMBER),
        RAW,
    )


_DIGITS = "0123456789"
_BLANKS = " \t\u000b\f"  # what `\s` matches in a line once \r is gone (\n cannot occur)


def _clean(raw: Column, separator: str) -> Column:
    """Drop a BOM and carriage returns, surrounding blanks and trailing separators. Character
    translation and trimming instead of regexes: this runs on every line (a regex pass cost
    several seconds per million lines); only a line that ends with the separator pays one."""
    text = F.translate(raw, "\r\ufeff", "")
    text = F.btrim(text, F.lit(_BLANKS))
    if not separator.strip():
        return text
    trailing = F.regexp_replace(text, f"({re.escape(separator)})+$", "")
    return F.when(text.endswith(separator), trailing).otherwise(text)


def _all_digits(c: Column, max_len: int) -> Column:
    """`c` is 1..max_len ASCII digits (what `^[0-9]{1,max_len}$` matches), without a regex."""
    return (F.length(c) >= 1) & (F.length(c) <= max_len) & (F.translate(c, _DIGITS, "") == "")


def _is_positive_int(c: Column) -> Column:
    n = c.try_cast("long")
    return _all_digits(c, 10) & (n > 0) & (n <= 2147483647)


def _is_decimal(c: Column) -> Column:
    """`c` is digits with at most one inner decimal point (what `^[0-9]+(\\.[0-9]+)?$` matches)."""
    rest = F.translate(c, _DIGITS, "")
    inner_point = (rest == ".") & ~c.startswith(".") & ~c.endswith(".")
    return (F.length(c) >= 1) & ((rest == "") | inner_point)


def with_parsed_ratings(layout: Layout) -> Callable[[DataFrame], DataFrame]:
    """Lines -> typed rating columns plus `_status` (ok, blank, header, rejected) and `reason`.

    Every check is computed once into its own column, then status and reason read those: the
    reason chain is not re-evaluated for each typed column that depends on the status."""
    sep_name = _SEPARATOR_NAMES.get(layout.separator, repr(layout.separator))

    def transform(lines: DataFrame) -> DataFrame:
        clean = _clean(F.col(RAW), layout.separator)
        df = lines.withColumn("_clean", clean).withColumn(_FIELDS, F.split(F.col("_clean"), re.escape(layout.separator), -1))
        f = [F.get(F.col(_FIELDS), i) for i in range(4)]  # NULL past the end (ANSI getItem raises)
        checks = df.select(
            "*",
            F.size(F.col(_FIELDS)).alias("_n"),
            _is_positive_int(f[0]).alias("_user_ok"),
            _is_positive_int(f[1]).alias("_movie_ok"),
            f[2].try_cast("double").alias("_rating"),
            _is_decimal(f[2]).alias("_rating_ok"),
            _all_digits(f[3], 12).alias("_time_ok"),
        )
        rating = F.col("_rating")
        steps = rating / F.lit(layout.rating_step)
        is_header = F.lit(layout.header) & (F.col(LINE_NUMBER) == 1) & F.lower(F.col("_clean")).startswith("userid")
        reason = (
            F.when(F.col("_n") != 4, F.format_string(f"expected 4 fields separated by {sep_name}, got %d", F.col("_n")))
            .when(~F.col("_user_ok"), F.format_string("user_id %s is not a positive integer", f[0]))
            .when(~F.col("_movie_ok"), F.format_string("movie_id %s is not a positive integer", f[1]))
            .when(~F.col("_rating_ok") | rating.isNull(), F.format_string("rating %s is not a number", f[2]))
            .when((rating < layout.rating_min) | (rating > layout.rating_max), F.format_string(f"rating %s outside {layout.scale}", f[2]))
            .when(F.abs(steps - F.round(steps)) > F.lit(1e-9), F.format_string(f"rating %s not on the scale {layout.scale}", f[2]))
            .when(~F.col("_time_ok"), F.format_string("timestamp %s is not a non-negative integer (epoch seconds)", f[3]))
        )
        with_reason = checks.withColumn("_reason", reason)
        status = (
            F.when(F.col("_clean") == "", "blank").when(is_header, "header").when(F.col("_reason").isNotNull(), "rejected").otherwise("ok")
        )
        ok = F.col(STATUS) == "ok"
        return (
            with_reason.withColumn(STATUS, status)
            .withColumn(REASON, F.when(F.col(STATUS) == "rejected", F.col("_reason")))
            .withColumn(USER_ID, F.when(ok, f[0].try_cast("int")))
            .withColumn(MOVIE_ID, F.when(ok, f[1].try_cast("int")))
            .withColumn(RATING, F.when(ok, rating))
            .withColumn(RATED_AT, F.when(ok, F.timestamp_seconds(f[3].try_cast("long"))))
            .drop("_clean", _FIELDS, "_n", "_user_ok", "_movie_ok", "_rating", "_rating_ok", "_time_ok", "_reason")
        )

    return transform


def filter_latest_per_pair(ratings: DataFrame, within: Sequence[str] = ()) -> DataFrame:
    """One row per (user, movie) (per `within` columns, e.g. the source file): the latest
    timestamp wins, then the later line in the file."""
    order = Window.partitionBy(*within, USER_ID, MOVIE_ID).orderBy(F.col(RATED_AT).desc(), F.col(LINE_NUMBER).desc())
    return ratings.withColumn(_ROW, F.row_number().over(order)).filter(F.col(_ROW) == 1).drop(_ROW)


def filter_accepted(parsed: DataFrame) -> DataFrame:
    return parsed.filter(F.col(STATUS) == "ok")


def as_ratings(df: DataFrame) -> DataFrame:
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in RATINGS.fields])


# --- movies -----------------------------------------------------------------------------

_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


@dataclass(frozen=True)
class MoviesParse:
    rows: list[tuple]
    rejected: list[tuple]
    read: int
    duplicates: int
    blank: int


def decode_line(raw: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 (ml-100k and ml-1m are Latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def split_lines(data: bytes) -> list[bytes]:
    """Lines without terminators; \\r\\n, \\n and lone \\r all end a line (as in Spark's text reader)."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def year_of(title: str, release_date: str = "") -> int | None:
    m = _YEAR.search(title) or _DATE_YEAR.search(release_date)
    return int(m.group(1)) if m else None


def _movie_100k(fields: list[str], genres: Sequence[str]) -> tuple:
    while len(fields) > 5 + len(genres) and fields[-1] == "":
        fields = fields[:-1]
    if len(fields) != 5 + len(genres):
        raise ValueError(f"expected {5 + len(genres)} fields separated by '|', got {len(fields)}")
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise ValueError("genre flags must be 0 or 1")
    title = fields[1].strip()
    return title, year_of(title, fields[2]), [g for g, flag in zip(genres, flags, strict=True) if flag == "1"]


def _movie_dat(fields: list[str]) -> tuple:
    if len(fields) == 4 and fields[3] == "":
        fields = fields[:3]
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields separated by '::', got {len(fields)}")
    title = fields[1].strip()
    return title, year_of(title), _genre_list(fields[2])


def _genre_list(text: str) -> list[str]:
    text = text.strip()
    return [] if text in ("", NO_GENRES) else [g.strip() for g in text.split("|") if g.strip()]


def parse_movies(data: bytes, layout: Layout, source_file: str, genres: Sequence[str] = ML100K_GENRES) -> MoviesParse:
    """Movies file bytes -> (movie_id, title, year, genres) rows and rejected rows."""
    rows: dict[int, tuple] = {}
    rejected: list[tuple] = []
    read = duplicates = blank = 0
    for number, raw in enumerate(split_lines(data), 1):
        line = decode_line(raw).lstrip("\ufeff")
        if not line.strip():
            blank += 1
            continue
        if layout.header and number == 1 and line.lower().startswith("movieid"):
            continue
        read += 1
        try:
            if layout.name == "ml-100k":
                fields = line.split("|")
            elif layout.name == "csv":
                fields = next(csv.reader([line]))
            else:
                fields = line.split("::")
            if not fields[0].strip().isdigit() or int(fields[0]) <= 0:
                raise ValueError(f"movie_id {fields[0]!r} is not a positive integer")
            movie_id = int(fields[0])
            if layout.name == "ml-100k":
                title, year, genre_list = _movie_100k(fields, genres)
            elif layout.name == "csv":
                if len(fields) != 3:
                    raise ValueError(f"expected 3 CSV fields (movieId,title,genres), got {len(fields)}")
                title, year, genre_list = fields[1].strip(), year_of(fields[1].strip()), _genre_list(fields[2])
            else:
                title, year, genre_list = _movie_dat(fields)
            if not title:
                raise ValueError("empty title")
        except (ValueError, csv.Error, StopIteration) as err:
            rejected.append((source_file, number, line, str(err)))
            continue
        if movie_id in rows:
            duplicates += 1
            rejected.append((source_file, number, line, f"duplicate movie_id {movie_id}: the first definition is kept"))
            continue
        rows[movie_id] = (movie_id, title, year, genre_list)
    return MoviesParse(sorted(rows.values()), rejected, read, duplicates, blank)


def read_bytes(spark: SparkSession, path: str) -> bytes:
    """A small file's bytes, local (read directly) or from any Hadoop file system."""
    if is_local(path) and local_path(path).is_file():
        return local_path(path).read_bytes()
    pairs = spark.sparkContext.binaryFiles(path).collect()
    parts = sorted((name, data) for name, data in pairs if not name.rsplit("/", 1)[-1].startswith(("_", ".")))
    if not parts:
        raise LayoutError(f"{path} not found")
    return b"".join(bytes(data) for _, data in parts)


def ml100k_genres(spark: SparkSession, folder: str, files: Iterable[str]) -> Sequence[str]:
    """Genre names from u.genre (name|index) when present, else the published order."""
    if "u.genre" not in set(files):
        return ML100K_GENRES
    pairs = []
    for raw in split_lines(read_bytes(spark, join_path(folder, "u.genre"))):
        parts = decode_line(raw).strip().split("|")
        if len(parts) == 2 and parts[1].isdigit():
            pairs.append((int(parts[1]), parts[0]))
    return tuple(name for _, name in sorted(pairs)) or ML100K_GENRES


# --- ml-100k's canonical split files ------------------------------------------------------


def canonical_files(files: Iterable[str]) -> list[str]:
    """The canonical split files present (`u1.base`, `u1.test`, ... `ub.test`), in a fixed order."""
    present = set(files)
    return [f"{name}.{side}" for name in CANONICAL_SPLITS for side in ("base", "test") if f"{name}.{side}" in present]


def with_canonical_labels(rows: DataFrame) -> DataFrame:
    """`split` (u1..ub) and `side` (train for .base, test for .test) from each row's source file."""
    stem = F.regexp_extract(F.col(SOURCE_FILE), r"^(u[1-5]|ua|ub)\.(base|test)$", 1)
    ext = F.regexp_extract(F.col(SOURCE_FILE), r"^(u[1-5]|ua|ub)\.(base|test)$", 2)
    return rows.withColumn(SPLIT_NAME, stem).withColumn(SIDE, F.when(ext == "base", F.lit("train")).otherwise(F.lit("test")))
