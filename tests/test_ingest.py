"""Each MovieLens layout's parser on inline files with the malformations seen in the wild."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from chispa import assert_df_equality

from recospark import io
from recospark.cli import main as cli_main
from recospark.datasets import movielens as ml
from recospark.errors import DataQualityError, LayoutError, SourceError, SplitError
from recospark.schema import MOVIES, RATINGS, REJECTED
from recospark.stages import ingest, split


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None)


def write(folder: Path, name: str, data: str | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in ml.ML100K_GENRES)


def run_ingest(spark, cfg_factory, folder: Path):
    # these files are mostly malformations on purpose: accept any share of rejects
    cfg = cfg_factory(f"data.source={folder}", "data.max_rejected_fraction=1.0")
    result = ingest.run(spark, cfg)
    root = Path(cfg.output.root)
    read = lambda name, schema: spark.read.parquet(str(root / name)).select(*[f.name for f in schema.fields])  # noqa: E731
    return result, read("ratings", RATINGS), read("movies", MOVIES), read("rejected", REJECTED), root


def test_ml100k_layout(spark, cfg_factory, tmp_path):
    folder = tmp_path / "ml-100k"
    write(
        folder,
        "u.data",
        "1\t10\t5\t881250949\r\n"
        "1\t20\t3\t881250950\r\n"
        "1\t10\t2\t881250000\r\n"  # duplicate pair, older: the line above wins
        "\r\n"  # blank line
        "2\t10\t4\t881250951\t\r\n"  # trailing separator
        "2\t30\t6\t881250952\r\n"  # off the 1..5 scale
        "x\t30\t4\t881250953\r\n"  # bad user id
        "3\t99\t4\t881250954\r\n",  # movie missing from u.item: kept, counted
    )
    items = (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags('Animation', 'Comedy')}\n"
        f"20|Misérables, Les (1995)|01-Jan-1995||http://x|{flags('Drama')}\n"
        f"30|unknown|||http://x|{flags('unknown')}\n"
        "40|Too Few Fields|01-Jan-1995\n"
    ).encode("latin-1")
    write(folder, "u.item", items)
    result, ratings, movies, rejected, root = run_ingest(spark, cfg_factory, folder)

    expected = spark.createDataFrame(
        [(1, 10, 5.0, ts(881250949)), (1, 20, 3.0, ts(881250950)), (2, 10, 4.0, ts(881250951)), (3, 99, 4.0, ts(881250954))], RATINGS
    )
    assert_df_equality(ratings, expected, ignore_row_order=True, ignore_nullable=True)
    expected_movies = spark.createDataFrame(
        [
            (10, "Toy Story (1995)", 1995, ["Animation", "Comedy"]),
            (20, "Misérables, Les (1995)", 1995, ["Drama"]),
            (30, "unknown", None, ["unknown"]),
        ],
        MOVIES,
    )
    assert_df_equality(movies, expected_movies, ignore_row_order=True, ignore_nullable=True)
    expected_rejected = spark.createDataFrame(
        [
            ("u.data", 6, "2\t30\t6\t881250952", "rating 6 outside 1..5 in steps of 1"),
            ("u.data", 7, "x\t30\t4\t881250953", "user_id x is not a positive integer"),
            ("u.item", 4, "40|Too Few Fields|01-Jan-1995", "expected 24 fields separated by '|', got 3"),
        ],
        REJECTED,
    )
    assert_df_equality(rejected, expected_rejected, ignore_row_order=True, ignore_nullable=True)
    counts = result["files"]["u.data"]
    assert counts == {"read": 7, "accepted": 4, "rejected": 2, "duplicates_resolved": 1, "blank_lines": 1, "header_lines": 0}
    assert counts["read"] == counts["accepted"] + counts["rejected"] + counts["duplicates_resolved"]
    assert result["files"]["u.item"] == {"read": 4, "accepted": 3, "rejected": 1, "duplicates_resolved": 0, "blank_lines": 0}
    assert result["ratings_unknown_movie"] == 1
    manifest = json.loads((root / "ratings" / "_manifest.json").read_text())
    assert manifest["rows"] == 4 and manifest["files"]["u.data"]["duplicates_resolved"] == 1
    assert manifest["ratings_unknown_movie"] == 1 and manifest["config_hash"]


@pytest.mark.slow
def test_ml1m_layout_integer_scale_and_latin1(spark, cfg_factory, tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder, "ratings.dat", "1::1::5::978300760\n1::2::3.5::978300761\n2::1::1::978300762\n2::2::4::978300763::\n")
    write(folder, "users.dat", "1::F::1::10::48067\n")
    write(folder, "movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Café au lait (1993)::Comedy\n".encode("latin-1"))
    result, ratings, movies, rejected, _ = run_ingest(spark, cfg_factory, folder)
    assert result["layout"] == "ml-1m"
    expected = spark.createDataFrame([(1, 1, 5.0, ts(978300760)), (2, 1, 1.0, ts(978300762)), (2, 2, 4.0, ts(978300763))], RATINGS)
    assert_df_equality(ratings, expected, ignore_row_order=True, ignore_nullable=True)
    expected_movies = spark.createDataFrame(
        [(1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]), (2, "Café au lait (1993)", 1993, ["Comedy"])], MOVIES
    )
    assert_df_equality(movies, expected_movies, ignore_row_order=True, ignore_nullable=True)
    expected_rejected = spark.createDataFrame(
        [("ratings.dat", 2, "1::2::3.5::978300761", "rating 3.5 not on the scale 1..5 in steps of 1")], REJECTED
    )
    assert_df_equality(rejected, expected_rejected, ignore_nullable=True)


@pytest.mark.slow
def test_ml10m_layout_half_stars_and_utf8(spark, cfg_factory, tmp_path):
    folder = tmp_path / "ml-10M100K"
    write(folder, "ratings.dat", "1::122::3.5::838985046\n1::185::0::838983525\n1::231::0.5::838983392\n")
    write(
        folder,
        "movies.dat",
        "122::Boomerang (1992)::Comedy|Romance\n231::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::(no genres listed)\n",
    )
    result, ratings, movies, rejected, _ = run_ingest(spark, cfg_factory, folder)
    assert result["layout"] == "ml-10m"
    expected = spark.createDataFrame([(1, 122, 3.5, ts(838985046)), (1, 231, 0.5, ts(838983392))], RATINGS)
    assert_df_equality(ratings, expected, ignore_row_order=True, ignore_nullable=True)
    expected_movies = spark.createDataFrame(
        [(122, "Boomerang (1992)", 1992, ["Comedy", "Romance"]), (231, "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", 2001, [])],
        MOVIES,
    )
    assert_df_equality(movies, expected_movies, ignore_row_order=True, ignore_nullable=True)
    assert rejected.collect()[0]["reason"] == "rating 0 outside 0.5..5 in steps of 0.5"


@pytest.mark.slow
def test_csv_layout_header_quotes_and_bom(spark, cfg_factory, tmp_path):
    folder = tmp_path / "ml-latest-small"
    write(
        folder,
        "ratings.csv",
        "\ufeffuserId,movieId,rating,timestamp\n1,11,4.0,964982703\n1,11,4.5,964982999\n2,11,4.25,964982704\n2,12,1.5,964982705,\n3,12,5\n",
    )
    write(
        folder,
        "movies.csv",
        'movieId,title,genres\n11,"American President, The (1995)",Comedy|Drama|Romance\n12,"Story of ""Quotes"" (2010)",(no genres listed)\n11,Duplicate (1999),Drama\n',
    )
    result, ratings, movies, rejected, _ = run_ingest(spark, cfg_factory, folder)
    assert result["layout"] == "csv"
    expected = spark.createDataFrame([(1, 11, 4.5, ts(964982999)), (2, 12, 1.5, ts(964982705))], RATINGS)
    assert_df_equality(ratings, expected, ignore_row_order=True, ignore_nullable=True)
    expected_movies = spark.createDataFrame(
        [(11, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]), (12, 'Story of "Quotes" (2010)', 2010, [])], MOVIES
    )
    assert_df_equality(movies, expected_movies, ignore_row_order=True, ignore_nullable=True)
    expected_rejected = spark.createDataFrame(
        [
            ("movies.csv", 4, "11,Duplicate (1999),Drama", "duplicate movie_id 11: the first definition is kept"),
            ("ratings.csv", 4, "2,11,4.25,964982704", "rating 4.25 not on the scale 0.5..5 in steps of 0.5"),
            ("ratings.csv", 6, "3,12,5", "expected 4 fields separated by commas, got 3"),
        ],
        REJECTED,
    )
    assert_df_equality(rejected, expected_rejected, ignore_row_order=True, ignore_nullable=True)
    assert result["files"]["ratings.csv"] == {
        "read": 5,
        "accepted": 2,
        "rejected": 2,
        "duplicates_resolved": 1,
        "blank_lines": 0,
        "header_lines": 1,
    }
    assert result["files"]["movies.csv"]["duplicates_resolved"] == 1


def test_line_numbers_survive_many_splits(spark, tmp_path):
    """Numbering stays exact when Spark reads one file in several splits."""
    lines = [f"{u}\t{m}\t{1 + (u + m) % 5}\t{880000000 + u}" for u in range(1, 201) for m in range(1, 51)]
    lines[5432] = "broken line"
    write(tmp_path, "u.data", "\n".join(lines) + "\n")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "20000")
    try:
        numbered = ml.read_lines(spark, str(tmp_path / "u.data"))
        assert numbered.rdd.getNumPartitions() > 5
        bad = numbered.filter("raw = 'broken line'").collect()
        assert [r["line_number"] for r in bad] == [5433]
        assert numbered.count() == 10000 and numbered.agg({"line_number": "max"}).first()[0] == 10000
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


@pytest.mark.slow
def test_canonical_split_files_are_ingested_with_labels_and_split_reads_them(spark, cfg_factory, tmp_path):
    write(tmp_path, "u.data", "1\t1\t5\t874965758\n1\t2\t3\t876893171\n1\t3\t4\t878542960\n")
    write(tmp_path, "u1.base", "1\t1\t5\t874965758\n1\t2\t3\t876893171\nbad line\n")
    write(tmp_path, "u1.test", "1\t3\t4\t878542960\n")
    cfg = cfg_factory(f"data.source={tmp_path}", "split.strategy=canonical", "split.canonical=u1", "data.max_rejected_fraction=0.5")
    assert "canonical" not in ingest.run(spark, cfg.with_overrides({"data.canonical_splits": "never"}))
    result = ingest.run(spark, cfg)
    assert result["files"]["u1.base"] == {
        "read": 3,
        "accepted": 2,
        "rejected": 1,
        "duplicates_resolved": 0,
        "blank_lines": 0,
        "header_lines": 0,
    }
    assert result["canonical"]["rows"] == 3
    rejected = io.read_output(spark, cfg, "rejected", REJECTED).filter("source_file = 'u1.base'").collect()
    assert [(r.line_number, r.raw) for r in rejected] == [(3, "bad line")]
    split.run(spark, cfg)
    test = io.read_output(spark, cfg, "splits/u1/test", RATINGS)
    assert_df_equality(test, spark.createDataFrame([(1, 3, 4.0, ts(878542960))], RATINGS), ignore_nullable=True)
    assert io.read_output(spark, cfg, "splits/u1/train", RATINGS).count() == 2
    manifest = io.read_manifest(cfg, "splits/u1/train")
    assert manifest["inputs"] == [io.source(cfg, "canonical").uri]  # the ingested version, not the raw files
    with pytest.raises(SplitError, match="train side would be empty"):
        split.run(spark, cfg.with_overrides({"split.canonical": "u2"}))


def test_ingest_that_rejects_too_much_fails_and_publishes_nothing(spark, cfg_factory, tmp_path):
    """A ratings.csv with foreign columns (its header too) is 100% rejected: one-line error, nothing published; a
    moderate share of rejects passes only under data.max_rejected_fraction."""
    write(tmp_path / "foreign", "ratings.csv", "customer,product,score,when\nalice,bread,5,yesterday\nbob,milk,3,today\n")
    cfg = cfg_factory(f"data.source={tmp_path / 'foreign'}")
    with pytest.raises(DataQualityError, match=r"all 3 rating lines .* were rejected"):
        ingest.run(spark, cfg)
    assert not (Path(cfg.output.root) / "ratings").exists() and not (Path(cfg.output.root) / "_versions").exists()
    good = "\n".join(f"{u}\t{m}\t3\t88000000{m}" for u in (1, 2) for m in range(1, 5))
    write(tmp_path / "some", "u.data", good + "\nbroken\n")  # 1 of 9 lines rejected: 11%
    with pytest.raises(DataQualityError, match=r"more than data\.max_rejected_fraction=0\.1"):
        ingest.run(spark, cfg_factory(f"data.source={tmp_path / 'some'}"))
    result = ingest.run(spark, cfg_factory(f"data.source={tmp_path / 'some'}", "data.max_rejected_fraction=0.2"))
    assert (result["ratings"]["rows"], result["rejected"]["rows"]) == (8, 1)


def test_unknown_layout_and_empty_file(spark, cfg_factory, tmp_path):
    write(tmp_path / "odd", "notes.txt", "hello\n")
    with pytest.raises(LayoutError, match="unknown MovieLens layout"):
        ingest.run(spark, cfg_factory(f"data.source={tmp_path / 'odd'}"))
    write(tmp_path / "empty", "u.data", "")
    with pytest.raises(LayoutError, match="is empty"):
        ingest.run(spark, cfg_factory(f"data.source={tmp_path / 'empty'}"))


def test_cli_one_line_errors(tmp_path, capsys):
    """Bad folder, unknown key, wrong type, unwritable root: one line and exit 2, before Spark starts."""
    cases = [
        (["ingest", "--set", f"data.source={tmp_path / 'missing'}", "--set", f"output.root={tmp_path}/o"], "data.source"),
        (["ingest", "--set", "als.rnk=3"], "als.rnk"),
        (["ingest", "--set", "als.rank=many"], "als.rank"),
    ]
    for argv, needle in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["ingest", "--set", f"output.root={blocker}/out"]) == 2
    assert "output.root" in capsys.readouterr().err


def test_detect_layout():
    assert ml.detect_layout(["u.data", "u.item"]).name == "ml-100k"
    assert ml.detect_layout(["ratings.dat", "users.dat", "movies.dat"]).name == "ml-1m"
    assert ml.detect_layout(["ratings.dat", "movies.dat", "tags.dat"]).name == "ml-10m"
    assert ml.detect_layout(["ratings.csv", "movies.csv"]).name == "csv"
    with pytest.raises(LayoutError, match=r"expects ratings\.csv"):
        ml.detect_layout(["u.data"], "csv")


def test_missing_source_is_a_source_error(cfg_factory, tmp_path):
    from recospark.datasets.download import resolve_source

    with pytest.raises(SourceError, match="does not exist"):
        resolve_source(cfg_factory(f"data.source={tmp_path / 'nope'}").data)
    with pytest.raises(SourceError, match=r"data\.download is false"):
        resolve_source(cfg_factory("data.source=ml-1m", "data.download=false", f"data.cache_dir={tmp_path}/cache").data)
