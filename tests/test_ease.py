"""EASE Estimator/Model against the closed form computed here in numpy on a tiny matrix."""

from __future__ import annotations

import numpy as np
import pytest

import recospark.models.ease as ease_module
from recospark.models.ease import EASE, EASEModel, assemble_gram, ease_scores, gram_tiles, gramian, keep_most_rated
from recospark.scoring import recommend_for

# users 1..5 x items 10..60. Ratings per item: 10:4, 20:3, 30:3, 40:2, 50:1, 60:1 (ties 20/30 and 50/60).
ROWS = [
    (1, 10, 5.0), (1, 20, 3.0), (1, 40, 4.0),
    (2, 10, 4.0), (2, 30, 1.0), (2, 60, 2.0),
    (3, 20, 2.0), (3, 30, 5.0), (3, 40, 3.0),
    (4, 10, 1.0), (4, 50, 2.0),
    (5, 10, 3.0), (5, 20, 4.0), (5, 30, 2.0),
]  # fmt: skip
USERS, ITEMS = [1, 2, 3, 4, 5], [10, 20, 30, 40, 50, 60]


def _matrix(binary: bool, items=ITEMS) -> np.ndarray:
    X = np.zeros((len(USERS), len(items)))
    for u, i, r in ROWS:
        if i in items:
            X[USERS.index(u), items.index(i)] = 1.0 if binary else r
    return X


def _closed_form(X: np.ndarray, reg: float) -> np.ndarray:
    P = np.linalg.inv(X.T @ X + reg * np.eye(X.shape[1]))
    return np.eye(X.shape[1]) - P / np.diag(P)[None, :]


def _histories(items=None):
    """Each user's (items, ratings), in an order other than ascending id."""
    hist = {u: ([i for uu, i, _ in ROWS if uu == u][::-1], [r for uu, _, r in ROWS if uu == u][::-1]) for u in USERS}
    return [np.array(hist[u][0], np.int32) for u in USERS], [np.array(hist[u][1], np.float32) for u in USERS]


@pytest.fixture(scope="module")
def ratings(spark):
    return spark.createDataFrame(ROWS, "user_id int, movie_id int, rating double")


@pytest.fixture(scope="module")
def binary_model(ratings):
    return EASE(regParam=2.0).fit(ratings)


@pytest.mark.parametrize("binary", [True, False])
def test_weights_equal_the_numpy_closed_form_with_a_zero_diagonal(ratings, binary_model, binary):
    model = binary_model if binary else EASE(regParam=2.0, binary=False).fit(ratings)
    assert model.itemIds.tolist() == ITEMS and model.itemIds.dtype == np.int32
    np.testing.assert_allclose(model.weights, _closed_form(_matrix(binary), 2.0), rtol=0, atol=1e-9)
    assert np.all(np.diag(model.weights) == 0.0)
    assert model.summary == {
        "items": 6, "itemsKept": 6, "itemsDropped": 0, "ratingsKept": 14, "ratingsDropped": 0, "usersWithoutKeptItems": 0,
    }  # fmt: skip


def test_gram_tiles_sum_to_x_transpose_x_across_partitions_and_tiles():
    X = _matrix(False)
    users = [(np.flatnonzero(row)[::-1], row[np.flatnonzero(row)[::-1]]) for row in X]  # unsorted indices
    # two "partitions", tiles of 4 on n=6: keys (0,0), (0,1), (1,1); partial tiles summed by key like reduceByKey
    summed: dict = {}
    for part in (users[:2], users[2:]):
        for key, block in gram_tiles(iter(part), n=6, tile=4):
            assert key[0] <= key[1]
            summed[key] = summed[key] + block if key in summed else block
    assert sorted(summed) == [(0, 0), (0, 1), (1, 1)]
    np.testing.assert_array_equal(assemble_gram(summed.items(), 6, tile=4), X.T @ X)
    assert list(gram_tiles(iter([]), n=6, tile=4)) == []


def test_gramian_on_spark_sums_tiles_across_partitions(spark):
    X = _matrix(False)
    rows = [([int(j) for j in np.flatnonzero(row)], [float(v) for v in row[np.flatnonzero(row)]]) for row in X]
    df = spark.createDataFrame([*rows, ([], [])], "_idxs array<int>, _vals array<double>").repartition(3)
    np.testing.assert_array_equal(gramian(df, 6, tile=4), X.T @ X)  # 3 tile keys, partials from 3 partitions


def test_the_cap_keeps_the_most_rated_items_and_counts_what_it_drops(ratings):
    counts = np.array([4, 3, 3, 2, 1, 1])
    assert np.array(ITEMS)[keep_most_rated(np.array(ITEMS), counts, 2)].tolist() == [10, 20]  # 20 beats 30 on id
    model = EASE(regParam=1.0, maxItems=5).fit(ratings)
    assert model.itemIds.tolist() == [10, 20, 30, 40, 50]  # 50 beats 60 on id
    assert model.summary == {
        "items": 6, "itemsKept": 5, "itemsDropped": 1, "ratingsKept": 13, "ratingsDropped": 1, "usersWithoutKeptItems": 0,
    }  # fmt: skip
    np.testing.assert_allclose(model.weights, _closed_form(_matrix(True, ITEMS[:5]), 1.0), rtol=0, atol=1e-9)
    small = EASE(regParam=1.0, maxItems=1).fit(ratings)  # only item 10: user 3 has no kept item
    assert small.itemIds.tolist() == [10] and small.weights.tolist() == [[0.0]]
    assert (small.summary["itemsDropped"], small.summary["ratingsDropped"], small.summary["usersWithoutKeptItems"]) == (5, 10, 1)
    items, stars = _histories()
    scores = model.blockScorer().score(np.array(USERS, np.int32), items, stars)
    assert scores.shape == (5, 5)  # item 60 is no column: never recommended


@pytest.mark.parametrize("binary", [True, False])
def test_block_scorer_scores_equal_x_times_b(ratings, binary_model, binary):
    model = binary_model if binary else EASE(regParam=2.0, binary=False).fit(ratings)
    scorer = model.blockScorer()
    assert scorer.item_ids().tolist() == ITEMS
    items, stars = _histories()
    # an unknown item (99) is ignored; a user with no history scores 0 everywhere
    items[0] = np.append(items[0], np.int32(99))
    stars[0] = np.append(stars[0], np.float32(5.0))
    got = scorer.score(np.array([*USERS, 7], np.int32), [*items, np.zeros(0, np.int32)], [*stars, np.zeros(0, np.float32)])
    assert got.dtype == np.float32 and got.shape == (6, 6)
    expected = _matrix(binary) @ _closed_form(_matrix(binary), 2.0)
    np.testing.assert_allclose(got[:5], expected, rtol=1e-5, atol=1e-6)
    assert np.all(got[5] == 0.0)


def test_ease_scores_on_a_wider_random_block_match_numpy():
    rng = np.random.default_rng(3)
    item_ids = np.sort(rng.choice(5000, size=300, replace=False)).astype(np.int32)
    weights = rng.normal(size=(300, 300)).astype(np.float32)
    hist = [rng.choice(item_ids, size=k, replace=False) for k in (0, 1, 7, 40)]
    stars = [rng.integers(1, 6, size=len(h)).astype(np.float32) for h in hist]
    for binary in (True, False):
        X = np.zeros((4, 300), np.float32)
        for r, (h, s) in enumerate(zip(hist, stars, strict=True)):
            X[r, np.searchsorted(item_ids, h)] = 1.0 if binary else s
        np.testing.assert_allclose(ease_scores(item_ids, weights, hist, stars, binary), X @ weights, rtol=1e-4, atol=1e-4)


def test_save_and_load_round_trip_gives_identical_scores_without_pickle(spark, ratings, tmp_path):
    model = EASE(regParam=3.0, maxItems=5, binary=False).fit(ratings)
    model.write().save(str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["itemWeights", "metadata"]
    loaded = EASEModel.load(str(tmp_path / "m"))
    assert loaded.uid == model.uid and loaded.summary == model.summary and loaded.getBinary() is False
    np.testing.assert_array_equal(loaded.itemIds, model.itemIds)
    np.testing.assert_array_equal(loaded.weights, model.weights)
    items, stars = _histories()
    users = np.array(USERS, np.int32)
    np.testing.assert_array_equal(loaded.blockScorer().score(users, items, stars), model.blockScorer().score(users, items, stars))
    # rows stored in another order (e.g. written by another Spark) load sorted by id
    table = spark.read.parquet(str(tmp_path / "m" / "itemWeights")).orderBy("id", ascending=False).coalesce(1)
    table.write.parquet(str(tmp_path / "reversed"))
    (tmp_path / "m" / "itemWeights").rename(tmp_path / "sorted")
    (tmp_path / "reversed").rename(tmp_path / "m" / "itemWeights")
    reordered = EASEModel.load(str(tmp_path / "m"))
    np.testing.assert_array_equal(reordered.itemIds, model.itemIds)
    np.testing.assert_array_equal(reordered.weights, model.weights)
    est = EASE(regParam=7.0, maxItems=3, binary=False, userCol="u")
    est.write().save(str(tmp_path / "e"))
    back = EASE.load(str(tmp_path / "e"))
    assert (back.getRegParam(), back.getMaxItems(), back.getBinary(), back.getUserCol(), back.uid) == (7.0, 3, False, "u", est.uid)
    with pytest.raises(ValueError, match="not a"):
        EASE.load(str(tmp_path / "m"))


def test_params_defaults_columns_and_refusals(spark, ratings):
    est = EASE(maxItems=4)
    assert est.isSet(est.maxItems) and not est.isSet(est.regParam) and not est.isSet(est.binary)
    assert est.getBinary() is True and est.getRegParam() > 0 and est.getMaxItems() == 4
    est.setParams(regParam=5.0)
    assert (est.getRegParam(), est.getMaxItems()) == (5.0, 4)  # setParams sets only what it is given
    df = spark.createDataFrame(ROWS, "u long, i long, stars double")
    model = EASE(regParam=2.0, binary=False, userCol="u", itemCol="i", ratingCol="stars").fit(df)
    np.testing.assert_allclose(model.weights, _closed_form(_matrix(False), 2.0), rtol=0, atol=1e-9)
    with pytest.raises(NotImplementedError, match="blockScorer"):
        model.transform(df)
    with pytest.raises(ValueError, match="regParam"):
        EASE(regParam=0.0).fit(ratings)
    with pytest.raises(ValueError, match="maxItems"):
        EASE(maxItems=0).fit(ratings)
    with pytest.raises(ValueError, match="empty"):
        EASE().fit(ratings.limit(0))


def test_recommend_lists_exclude_rated_items_and_match_a_numpy_reference(spark, ratings):
    """Through recospark.scoring.recommend_for (the BlockScorer path); user 9 knows only an unseen item,
    so every score ties at 0 and the list is the smallest ids."""
    model = EASE(regParam=2.0, maxItems=5).fit(ratings)
    history = ratings.union(spark.createDataFrame([(9, 99, 4.0)], ratings.schema))
    got: dict[int, list[tuple[int, float]]] = {}
    for r in recommend_for(model, history, 4).orderBy("user_id", "rank").collect():
        got.setdefault(r.user_id, []).append((r.movie_id, r.score))
    kept = ITEMS[:5]  # item 60 is beyond the cap
    B = _closed_form(_matrix(True, kept), 2.0)
    rated = {u: {i for uu, i, _ in ROWS if uu == u} for u in USERS} | {9: {99}}
    assert sorted(got) == [*USERS, 9]
    for u, recs in got.items():
        x = np.array([1.0 if i in rated[u] else 0.0 for i in kept])
        scores = x @ B
        expected = sorted((i for i in kept if i not in rated[u]), key=lambda i: (-scores[kept.index(i)], i))[:4]
        assert [m for m, _ in recs] == expected, u
        assert not {m for m, _ in recs} & rated[u]
        np.testing.assert_allclose([s for _, s in recs], [scores[kept.index(i)] for i in expected], atol=1e-5)
    assert [m for m, _ in got[9]] == [10, 20, 30, 40]


def test_fit_multiple_builds_one_gram_per_cap_and_one_inverse_per_lambda(ratings, monkeypatch):
    calls = []
    real = ease_module.gramian
    monkeypatch.setattr(ease_module, "gramian", lambda rows, n, *a: calls.append(n) or real(rows, n, *a))
    est = EASE()
    maps = [{est.regParam: 1.0}, {est.regParam: 4.0}, {est.regParam: 1.0, est.maxItems: 5}]
    models = dict(est.fitMultiple(ratings, maps))
    assert calls == [6, 5]  # the two lambdas on the full catalogue share a Gram
    np.testing.assert_allclose(models[0].weights, _closed_form(_matrix(True), 1.0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(models[1].weights, _closed_form(_matrix(True), 4.0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(models[2].weights, _closed_form(_matrix(True, ITEMS[:5]), 1.0), rtol=0, atol=1e-9)
    assert (models[1].getOrDefault("binary"), models[2].summary["itemsDropped"]) == (True, 1)
