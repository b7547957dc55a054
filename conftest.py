"""Shared fixtures (tests/ and the doctests in recospark/): one SparkSession for the whole suite (local[2,4],
few shuffle partitions, no UI, loopback only), inline MovieLens folders and one published pipeline run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

ML100K = Path(__file__).resolve().parent.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("recospark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.task.maxFailures", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    session.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"real MovieLens 100K not found at {ML100K}")
    return ML100K


@pytest.fixture
def cfg_factory(tmp_path):
    """Config built inline (no files), output under the test's tmp folder."""
    from recospark.config import load_config

    def make(*overrides: str):
        return load_config(None, [f"output.root={tmp_path / 'out'}", *overrides])

    return make


def write_movielens(
    folder: Path, ratings: list[tuple[int, int, float, int]], titles: dict[int, str], extra_lines: tuple[str, ...] = ()
) -> Path:
    """An ml-100k layout folder: u.data (tab separated) and u.item (Latin-1, 19 genre flags)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in ratings] + list(extra_lines)
    (folder / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
    items = [f"{i}|{title}|01-Jan-1995||http://example.invalid/{i}|{flags}" for i, title in sorted(titles.items())]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return folder


@pytest.fixture(scope="session")
def tiny_movielens(tmp_path_factory) -> Path:
    """10 ratings of 4 users on 4 movies plus one malformed line (the doctests' data)."""
    pairs = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 4), (3, 2), (3, 3), (3, 4), (4, 1), (4, 3)]
    ratings = [(u, i, float(1 + (u + i) % 5), 880_000_000 + 1000 * n) for n, (u, i) in enumerate(pairs)]
    titles = {i: f"Movie {i} (199{i})" for i in range(1, 5)}
    return write_movielens(tmp_path_factory.mktemp("tiny") / "ml", ratings, titles, extra_lines=("5\tnot-a-movie\t3\t880000000",))


@pytest.fixture(autouse=True)
def _doctest_globals(request):
    """Doctests in recospark/ see `spark`, `tiny_movielens` and a fresh `tmp_out` output root."""
    if isinstance(request.node, pytest.DoctestItem):
        namespace = request.getfixturevalue("doctest_namespace")
        namespace["spark"] = request.getfixturevalue("spark")
        namespace["tiny_movielens"] = str(request.getfixturevalue("tiny_movielens"))
        namespace["tmp_out"] = str(request.getfixturevalue("tmp_path") / "out")


def small_movielens_ratings(users: int = 40, items: int = 25) -> list[tuple[int, int, float, int]]:
    """A deterministic, structured rating set: two taste groups, long-tailed items."""
    rows = []
    for u in range(1, users + 1):
        for i in range(1, items + 1):
            if (u * 7 + i * 3) % 5 == 0 or (i <= 4 and u % 3 != 0):  # popular head items + a sparse tail
                taste = 5.0 if (u % 2) == (i % 2) else 2.0
                rows.append((u, i, taste - ((u + i) % 2), 880_000_000 + 3600 * (u * items + i)))
    return rows


@pytest.fixture(scope="session")
def published(spark, tmp_path_factory):
    """The real stages run once (ingest -> split -> train -> recommend -> evaluate -> report) on a small
    inline MovieLens folder; tests read what they published. Movie 25 is missing from u.item and a
    title needs HTML escaping."""
    from recospark.config import load_config
    from recospark.stages import pipeline

    base = tmp_path_factory.mktemp("published")
    titles = {i: f"Movie <{i}> & sons (19{70 + i})" for i in range(1, 25)}
    source = write_movielens(base / "ml", small_movielens_ratings(), titles)
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            f"output.root={base / 'out'}",
            "train.models=[als,als_implicit,sgd,global_mean,bias]",
            "als.rank=2",
            "als.max_iter=3",
            "als.num_user_blocks=1",
            "als.num_item_blocks=1",
            "als.curve_iters=[1]",
            "als_implicit.rank=2",
            "als_implicit.max_iter=3",
            "als_implicit.num_user_blocks=1",
            "als_implicit.num_item_blocks=1",
            "sgd.rank=4",
            "sgd.max_iter=4",
            "sgd.num_blocks=2",
            "sgd.early_stopping_rounds=2",
            "report.factor_sample=4",
            "report.sample_users=2",
            "recommend.n=5",
            "evaluate.k=5",
        ],
    )
    result = pipeline.run(spark, cfg)
    return cfg, result


# Doctests that fit models or run whole stages (each a few seconds): `make check` leaves them to `make test`.
_SLOW_DOCTESTS = ("recospark/stages/", "recospark/models/neural/")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, pytest.DoctestItem) and any(part in item.nodeid for part in _SLOW_DOCTESTS):
            item.add_marker(pytest.mark.slow)
