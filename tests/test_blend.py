"""The blend against numpy z-scores: of factor models it is a factor model; with any scorer it ranks
like the weighted per-user z-scores; it saves its components and loads them back."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pyspark import cloudpickle

from recospark.models.baselines import BiasBaseline, GlobalMean
from recospark.models.blend import Blend, BlendModel, standardize_rows, standardized_blend
from recospark.models.puresvd import PureSVD
from recospark.scoring import recommend_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test scorers below run in Spark tasks

SCHEMA = "id int, features array<float>"


def _table(spark, ids, mat):
    return spark.createDataFrame([(int(i), [float(x) for x in row]) for i, row in zip(ids, mat)], SCHEMA)


def _as_dict(df):
    return {r.id: np.array(r.features, dtype=np.float64) for r in df.collect()}


def test_blend_ranks_like_weighted_per_user_z_scores(spark):
    rng = np.random.default_rng(0)
    users, items = [1, 2, 3, 4], [10, 20, 30, 40, 50, 60]
    P1, Q1 = rng.normal(size=(4, 2)), rng.normal(size=(6, 2))
    P2, Q2 = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)) + 1.0
    weights = (0.3, 0.7)
    parts = [
        (_table(spark, users, P1), _table(spark, items, Q1), weights[0]),
        (_table(spark, users, P2), _table(spark, items, Q2), weights[1]),
    ]
    bu, bi = standardized_blend(parts)
    U, V = _as_dict(bu), _as_dict(bi)
    assert sorted(U) == users and sorted(V) == items
    assert all(len(v) == 5 for v in [*U.values(), *V.values()])
    got = np.array([[U[u] @ V[i] for i in items] for u in users])

    def z(S):
        return (S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True)

    S1, S2 = P1.astype(np.float32) @ Q1.astype(np.float32).T, P2.astype(np.float32) @ Q2.astype(np.float32).T
    expected = weights[0] * z(S1) + weights[1] * z(S2)
    # equal up to a per-user constant (the dropped means): compare after centring per user
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), expected, atol=1e-4)
    assert (np.argsort(-got, axis=1, kind="stable") == np.argsort(-expected, axis=1, kind="stable")).all()


def test_zero_weights_are_dropped_and_only_shared_ids_kept(spark):
    a_users = _table(spark, [1, 2], [[1.0], [2.0]])
    a_items = _table(spark, [10, 20, 30], [[1.0], [2.0], [3.0]])
    b_users = _table(spark, [2, 3], [[1.0], [1.0]])
    b_items = _table(spark, [20, 30], [[1.0], [5.0]])
    users, items = standardized_blend([(a_users, a_items, 1.0), (b_users, b_items, 1.0)])
    assert sorted(r.id for r in users.collect()) == [2]
    assert sorted(r.id for r in items.collect()) == [20, 30]
    users, items = standardized_blend([(a_users, a_items, 1.0), (b_users, b_items, 0.0)])
    assert sorted(r.id for r in users.collect()) == [1, 2]
    assert all(len(r.features) == 1 for r in users.collect())
    with pytest.raises(ValueError, match=">= 0"):
        standardized_blend([(a_users, a_items, -1.0)])
    with pytest.raises(ValueError, match="non-zero"):
        standardized_blend([(a_users, a_items, 0.0)])


# --------------------------------------------------------------------------- any scorer: the generic blend

USERS = np.arange(1, 13, dtype=np.int32)
ITEMS = np.array([3, 5, 8, 13, 21, 34, 55, 89, 144], dtype=np.int32)
N = 4


class _FactorModel:
    """A fitted factor model (what `scoring_factors` reads)."""

    def __init__(self, spark, P, Q):
        self._tables = (_table(spark, USERS, P), _table(spark, ITEMS, Q))

    def scoringFactors(self):
        return self._tables


class _DotScorer:
    """The same dot products through the BlockScorer path (pushes the blend off its factor path)."""

    def __init__(self, P, Q):
        self.P, self.Q = P.astype(np.float32), Q.astype(np.float32)

    def item_ids(self):
        return ITEMS

    def score(self, user_ids, hist_items, hist_ratings):
        return self.P[np.searchsorted(USERS, user_ids)] @ self.Q.T


class _HistoryScorer:
    """Not a dot product: item i scores sum over the user's history of rating * S[j, i]; item 144 never."""

    def __init__(self, S):
        self.S = S.astype(np.float32)

    def item_ids(self):
        return ITEMS

    def score(self, user_ids, hist_items, hist_ratings):
        out = np.zeros((len(user_ids), len(ITEMS)), np.float32)
        for r, (items, ratings) in enumerate(zip(hist_items, hist_ratings, strict=True)):
            out[r] = ratings @ self.S[np.searchsorted(ITEMS, items)]
        out[:, -1] = -np.inf
        return out


class _ScorerModel:
    def __init__(self, scorer):
        self._scorer = scorer

    def blockScorer(self):
        return self._scorer


@pytest.fixture(scope="module")
def blend_case(spark):
    rng = np.random.default_rng(11)
    P1, Q1 = rng.normal(size=(12, 2)), rng.normal(size=(9, 2))
    P2, Q2 = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.5
    S = rng.normal(size=(9, 9))
    history = [(int(u), int(i), float(rng.integers(1, 6))) for u in USERS for i in rng.choice(ITEMS[:-1], 3, replace=False)]
    hist = spark.createDataFrame(history, "user_id int, movie_id int, rating double")
    return P1, Q1, P2, Q2, S, history, hist


def _lists(recs):
    out = {}
    for r in sorted(recs.collect(), key=lambda r: (r.user_id, r.rank)):
        out.setdefault(r.user_id, []).append((r.movie_id, r.score))
    return out


def test_standardize_rows_is_a_per_row_z_score_over_finite_cells():
    S = np.array([[1.0, 2.0, 3.0, -np.inf], [2.0, 2.0, 2.0, 2.0]], np.float32)
    z = standardize_rows(S)
    finite = S[0, :3].astype(np.float64)
    np.testing.assert_allclose(z[0, :3], (finite - finite.mean()) / finite.std(), rtol=1e-6)
    assert z[0, 3] == -np.inf and (z[1] == 0).all()


def test_generic_blend_lists_equal_the_factor_blend_lists(spark, blend_case):
    P1, Q1, P2, Q2, _, _, hist = blend_case
    weights = [0.3, 0.7]
    fast = BlendModel([_FactorModel(spark, P1, Q1), _FactorModel(spark, P2, Q2)], weights, ["a", "b"])
    generic = BlendModel([_ScorerModel(_DotScorer(P1, Q1)), _ScorerModel(_DotScorer(P2, Q2))], weights, ["a", "b"])
    assert fast.blockScorer() is None and generic.blockScorer() is not None
    a, b = _lists(recommend_for(fast, hist, N)), _lists(recommend_for(generic, hist, N))
    assert {u: [m for m, _ in v] for u, v in a.items()} == {u: [m for m, _ in v] for u, v in b.items()}
    # the factor path drops each user's constant (the means): scores differ by one number per user
    for u in a:
        gaps = [sa - sb for (_, sa), (_, sb) in zip(a[u], b[u], strict=True)]
        assert max(gaps) - min(gaps) < 1e-4


def test_blend_of_a_scorer_and_a_factor_model_equals_numpy(spark, blend_case):
    P1, Q1, _, _, S, history, hist = blend_case
    weights = [0.4, 0.6]
    model = BlendModel([_ScorerModel(_HistoryScorer(S)), _FactorModel(spark, P1, Q1)], weights, ["history", "factors"])
    got = _lists(recommend_for(model, hist, N))

    R = np.zeros((12, 9))
    for u, i, rating in history:
        R[np.searchsorted(USERS, u), np.searchsorted(ITEMS, i)] = rating
    A = R.astype(np.float32) @ S.astype(np.float32)
    A = A.astype(np.float64)
    za = (A[:, :-1] - A[:, :-1].mean(1, keepdims=True)) / A[:, :-1].std(1, keepdims=True)  # item 144: -inf
    F1 = P1.astype(np.float32).astype(np.float64) @ Q1.astype(np.float32).astype(np.float64).T
    zf = (F1 - F1.mean(1, keepdims=True)) / F1.std(1, keepdims=True)
    blended = weights[0] * np.hstack([za, np.full((12, 1), -np.inf)]) + weights[1] * zf
    rated = {(u, i) for u, i, _ in history}
    for r, u in enumerate(USERS):
        cand = sorted(((-blended[r, c], int(i)) for c, i in enumerate(ITEMS) if (u, i) not in rated and blended[r, c] > -np.inf))
        expected = [(i, -s) for s, i in cand[:N]]
        assert [m for m, _ in got[int(u)]] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in got[int(u)]], [s for _, s in expected], atol=1e-4)


@pytest.mark.slow
def test_blend_saves_components_and_loads_them_back(spark, tmp_path):
    df = spark.createDataFrame(
        [(u, i, float(1 + (u * i) % 5)) for u in range(1, 9) for i in range(1, 8) if (u + i) % 3],
        "user_id int, movie_id int, rating double",
    )
    model = Blend([GlobalMean(), BiasBaseline(), PureSVD(rank=2)], weights=[0.2, 0.3, 0.5], names=["pop", "bias", "svd"]).fit(df)
    path = str(tmp_path / "blend")
    model.write().save(path)
    assert sorted(p.name for p in (tmp_path / "blend" / "components").iterdir()) == ["0_pop", "1_bias", "2_svd"]
    loaded = BlendModel.load(path)
    assert loaded.weights == [0.2, 0.3, 0.5] and loaded.components == ["pop", "bias", "svd"]
    assert [type(m).__name__ for m in loaded.models] == ["GlobalMeanModel", "BiasBaselineModel", "PureSVDModel"]
    assert _lists(recommend_for(loaded, df, 3)) == _lists(recommend_for(model, df, 3))
