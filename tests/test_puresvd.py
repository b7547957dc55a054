"""PureSVD Estimator/Model against a numpy SVD of a tiny hand-made matrix."""

from __future__ import annotations

import numpy as np
import pytest

from recospark.models.puresvd import PureSVD, PureSVDModel

# users 1..4 x items 10, 20, 30, 40, 50; item 50 rated by user 4 only
ROWS = [
    (1, 10, 5.0), (1, 20, 3.0), (1, 40, 4.0),
    (2, 10, 4.0), (2, 30, 1.0),
    (3, 20, 2.0), (3, 30, 5.0), (3, 40, 3.0),
    (4, 10, 1.0), (4, 50, 2.0),
]  # fmt: skip
USERS, ITEMS = [1, 2, 3, 4], [10, 20, 30, 40, 50]


def _matrix(binary: bool) -> np.ndarray:
    R = np.zeros((4, 5))
    for u, i, r in ROWS:
        R[USERS.index(u), ITEMS.index(i)] = 1.0 if binary else r
    return R


def _numpy_scores(binary: bool, k: int) -> np.ndarray:
    R = _matrix(binary)
    _, _, vt = np.linalg.svd(R)
    V = vt[:k].T
    return R @ V @ V.T


def _factors(df):
    return {r.id: np.array(r.features, dtype=np.float64) for r in df.collect()}


@pytest.fixture(scope="module")
def ratings(spark):
    return spark.createDataFrame(ROWS, "user_id int, movie_id int, rating double")


@pytest.mark.parametrize("binary", [True, False])
def test_factor_dot_products_equal_the_numpy_puresvd_scores(spark, ratings, binary):
    model = PureSVD(rank=2, binary=binary).fit(ratings)
    users, items = _factors(model.userFactors), _factors(model.itemFactors)
    assert sorted(users) == USERS and sorted(items) == ITEMS
    assert all(len(v) == 2 for v in [*users.values(), *items.values()])
    scores = np.array([[users[u] @ items[i] for i in ITEMS] for u in USERS])
    np.testing.assert_allclose(scores, _numpy_scores(binary, 2), atol=1e-5)
    _, s, vt = np.linalg.svd(_matrix(binary))
    np.testing.assert_allclose(model.singularValues, s[:2], rtol=1e-6)
    # item factors are V's rows (up to the sign of each singular vector)
    V = np.array([items[i] for i in ITEMS])
    np.testing.assert_allclose(np.abs(V), np.abs(vt[:2].T), atol=1e-5)
    assert model.rank == 2


def test_schema_and_types(ratings):
    model = PureSVD(rank=3).fit(ratings)
    for df in (model.userFactors, model.itemFactors):
        assert df.schema.simpleString() == "struct<id:int,features:array<float>>"


def test_transform_scores_rows_like_alsmodel(spark, ratings):
    model = PureSVD(rank=2).fit(ratings)
    rows = spark.createDataFrame([(1, 30), (3, 10), (9, 10), (1, 99)], "user_id int, movie_id int")
    got = {(r.user_id, r.movie_id): r.prediction for r in model.transform(rows).collect()}
    expected = _numpy_scores(True, 2)
    assert got[(1, 30)] == pytest.approx(expected[0, 2], abs=1e-5)
    assert got[(3, 10)] == pytest.approx(expected[2, 0], abs=1e-5)
    assert np.isnan(got[(9, 10)]) and np.isnan(got[(1, 99)])
    dropped = model.setColdStartStrategy("drop").transform(rows)
    assert sorted((r.user_id, r.movie_id) for r in dropped.collect()) == [
        (1, 30),
        (3, 10),
    ]
    assert dict(dropped.dtypes)["prediction"] == "float"


def test_full_rank_reconstructs_r_and_columns_are_configurable(spark):
    df = spark.createDataFrame([(u, i, r) for u, i, r in ROWS], "u long, i long, stars double")
    model = PureSVD(rank=4, binary=False, userCol="u", itemCol="i", ratingCol="stars").fit(df)
    users, items = _factors(model.userFactors), _factors(model.itemFactors)
    scores = np.array([[users[u] @ items[i] for i in ITEMS] for u in USERS])
    np.testing.assert_allclose(scores, _matrix(False), atol=1e-4)  # rank(R) = 4: R V V^T = R
    assert model.getUserCol() == "u" and model.getItemCol() == "i"


def test_save_and_load_round_trip_without_pickle(spark, ratings, tmp_path):
    model = PureSVD(rank=2, binary=False).fit(ratings)
    model.write().overwrite().save(str(tmp_path / "m"))
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["itemFactors", "metadata", "userFactors"]
    loaded = PureSVDModel.load(str(tmp_path / "m"))
    assert loaded.uid == model.uid and loaded.singularValues == pytest.approx(model.singularValues)
    assert _factors(loaded.itemFactors).keys() == _factors(model.itemFactors).keys()
    for a, b in zip(
        sorted(_factors(loaded.userFactors).items()),
        sorted(_factors(model.userFactors).items()),
    ):
        np.testing.assert_array_equal(a[1], b[1])
    est = PureSVD(rank=7, binary=False, userCol="u")
    est.write().overwrite().save(str(tmp_path / "e"))
    back = PureSVD.load(str(tmp_path / "e"))
    assert (back.getRank(), back.getBinary(), back.getUserCol(), back.uid) == (
        7,
        False,
        "u",
        est.uid,
    )
    with pytest.raises(ValueError, match="not a"):
        PureSVD.load(str(tmp_path / "m"))


def test_bad_params_are_refused(ratings):
    with pytest.raises(ValueError, match="rank"):
        PureSVD(rank=0).fit(ratings)
    with pytest.raises(ValueError, match="exceeds"):
        PureSVD(rank=6).fit(ratings)
    with pytest.raises(ValueError, match="coldStartStrategy"):
        PureSVD(coldStartStrategy="skip").fit(ratings)
