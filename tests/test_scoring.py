"""Both ranking paths (factor dot products and BlockScorer) against a plain per-user reference.

Scores are small integers (exact in float32), so ties are everywhere: at the cut, inside the
lists and among excluded items. The reference sorts each user's candidates by (-score, movie_id).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pyspark import cloudpickle

from recospark.schema import MOVIE_ID, RATING, USER_ID
from recospark.scoring import BlockScorer, rank_block, recommend_for, top_n, top_n_scored

# the test scorers below are pickled into Spark tasks: ship them by value, workers cannot import tests/
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_USERS, N_ITEMS, RANK_ = 23, 41, 3
N = 7


def reference_lists(scores: np.ndarray, user_ids, item_ids, excluded: dict[int, set[int]], n: int) -> dict[int, list[tuple[int, float]]]:
    """Per user: candidates (not excluded, score > -inf) sorted by score desc then movie_id asc, first n."""
    out = {}
    for r, u in enumerate(user_ids):
        cand = [(float(scores[r, c]), int(i)) for c, i in enumerate(item_ids) if int(i) not in excluded.get(int(u), set())]
        cand = [(s, i) for s, i in cand if s != -np.inf]
        out[int(u)] = [(i, s) for s, i in sorted(cand, key=lambda t: (-t[0], t[1]))[:n]]
    return out


def as_lists(recs) -> dict[int, list[tuple[int, float]]]:
    rows = sorted((r.user_id, r.rank, r.movie_id, r.score) for r in recs.collect())
    out: dict[int, list[tuple[int, float]]] = {}
    for u, rank, m, s in rows:
        out.setdefault(u, []).append((m, s))
        assert rank == len(out[u])
    return out


@pytest.fixture(scope="module")
def case():
    """Random ids, integer factors in {-1, 0, 1, 2} (dot products tie a lot), random history."""
    rng = np.random.default_rng(18)
    user_ids = np.sort(rng.choice(np.arange(1, 200), N_USERS, replace=False)).astype(np.int32)
    item_ids = np.sort(rng.choice(np.arange(1, 500), N_ITEMS, replace=False)).astype(np.int32)
    P = rng.integers(-1, 3, size=(N_USERS, RANK_)).astype(np.float32)
    Q = rng.integers(-1, 3, size=(N_ITEMS, RANK_)).astype(np.float32)
    history = []
    for r, u in enumerate(user_ids):
        k = [0, 1, 5, 20, N_ITEMS - 3][r % 5]  # nobody, one, some, many, nearly all rated
        for i in rng.choice(item_ids, k, replace=False):
            history.append((int(u), int(i), float(rng.integers(1, 6))))
    history.append((int(user_ids[2]), 999, 5.0))  # an item no model knows
    return user_ids, item_ids, P, Q, history


def _history_df(spark, history):
    return spark.createDataFrame(history, f"{USER_ID} int, {MOVIE_ID} int, {RATING} double")


def _excluded(history) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i, _ in history:
        out.setdefault(u, set()).add(i)
    return out


def test_rank_block_equals_reference_with_ties_everywhere():
    rng = np.random.default_rng(3)
    item_ids = np.sort(rng.choice(np.arange(1000), 60, replace=False)).astype(np.int32)
    user_ids = np.arange(1, 31, dtype=np.int32)
    scores = rng.integers(0, 3, size=(30, 60)).astype(np.float32)
    scores[rng.random((30, 60)) < 0.1] = -np.inf
    excluded = {int(u): set(rng.choice(item_ids, int(rng.integers(0, 50)), replace=False).tolist()) for u in user_ids}
    expected = reference_lists(scores, user_ids, item_ids, excluded, 9)
    u, rk, m, s = rank_block(user_ids, scores.copy(), [np.array(sorted(excluded[int(x)])) for x in user_ids], item_ids, 9)
    got: dict[int, list[tuple[int, float]]] = {int(x): [] for x in user_ids}
    for uu, rr, mm, ss in zip(u, rk, m, s, strict=True):
        got[int(uu)].append((int(mm), float(ss)))
        assert rr == len(got[int(uu)])
    assert got == expected


def test_factor_path_equals_reference(spark, case):
    user_ids, item_ids, P, Q, history = case
    users = spark.createDataFrame([(int(u), p.tolist()) for u, p in zip(user_ids, P)], "id int, features array<float>")
    perm = np.random.default_rng(1).permutation(N_ITEMS)  # the item table in no particular order
    items = spark.createDataFrame([(int(item_ids[j]), Q[j].tolist()) for j in perm], "id int, features array<float>")
    rated = _history_df(spark, history).select(USER_ID, MOVIE_ID)
    expected = reference_lists(P @ Q.T, user_ids, item_ids, _excluded(history), N)
    assert as_lists(top_n(users.repartition(3), items, rated, N, user_block_size=4)) == {u: v for u, v in expected.items() if v}


class HistoryScorer:
    """score(u, i) = base[u, i] + sum over u's history of rating * sim[item, i]; -inf where base says so."""

    def __init__(self, user_ids, item_ids, base, sim_ids, sim):
        self._users = {int(u): r for r, u in enumerate(user_ids)}
        self._items, self.base, self.sim_ids, self.sim = item_ids, base, sim_ids, sim
        self.calls = 0

    def item_ids(self):
        return self._items

    def score(self, user_ids, hist_items, hist_ratings):
        out = np.zeros((len(user_ids), len(self._items)), np.float32)
        for r, (u, hi, hr) in enumerate(zip(user_ids, hist_items, hist_ratings, strict=True)):
            assert hi.dtype == np.int32 and hr.dtype == np.float32 and len(hi) == len(hr)
            out[r] = self.base[self._users.get(int(u), 0)]
            for i, rating in zip(hi, hr, strict=True):
                pos = np.searchsorted(self.sim_ids, i)
                if pos < len(self.sim_ids) and self.sim_ids[pos] == i:
                    out[r] += rating * self.sim[pos]
        return out


@pytest.fixture(scope="module")
def scorer(case):
    user_ids, item_ids, _, _, _ = case
    rng = np.random.default_rng(7)
    base = rng.integers(0, 3, size=(N_USERS, N_ITEMS)).astype(np.float32)
    base[rng.random(base.shape) < 0.05] = -np.inf
    sim = rng.integers(0, 2, size=(N_ITEMS, N_ITEMS)).astype(np.float32)
    return HistoryScorer(user_ids, item_ids, base, item_ids, sim)


def _dense_scores(scorer, user_ids, history):
    """The scorer's scores computed without it: base + R @ sim, R the users' dense rating rows."""
    R = np.zeros((len(user_ids), len(scorer.sim_ids)), np.float32)
    row = {int(u): r for r, u in enumerate(user_ids)}
    for u, i, rating in history:
        pos = np.searchsorted(scorer.sim_ids, i)
        if u in row and pos < len(scorer.sim_ids) and scorer.sim_ids[pos] == i:
            R[row[u], pos] = rating
    base = np.stack([scorer.base[scorer._users.get(int(u), 0)] for u in user_ids])
    return base + R @ scorer.sim


def test_block_scorer_path_equals_reference(spark, case, scorer):
    _, item_ids, _, _, history = case
    assert isinstance(scorer, BlockScorer)
    hist = _history_df(spark, history).repartition(3)
    with_hist = sorted({u for u, _, _ in history})
    expected = reference_lists(_dense_scores(scorer, with_hist, history), with_hist, item_ids, _excluded(history), N)
    got = as_lists(top_n_scored(None, hist, scorer, N, user_block_size=5))
    assert got == {u: v for u, v in expected.items() if v}


def test_block_scorer_users_exclude_and_items(spark, case, scorer):
    """Explicit users (one without history), an explicit exclude set, and a catalogue restriction."""
    user_ids, item_ids, _, _, history = case
    hist = _history_df(spark, history)
    chosen = [int(user_ids[0]), int(user_ids[3]), int(user_ids[4])]  # user_ids[0] has no history
    exclude = [(chosen[1], int(item_ids[j])) for j in range(0, N_ITEMS, 2)]
    catalogue = item_ids[item_ids % 3 != 0]
    got = as_lists(
        top_n_scored(
            spark.createDataFrame([(u,) for u in chosen], f"{USER_ID} int"),
            hist,
            scorer,
            N,
            user_block_size=2,
            exclude=spark.createDataFrame(exclude, f"{USER_ID} int, {MOVIE_ID} int"),
            items=spark.createDataFrame([(int(i),) for i in catalogue], f"{MOVIE_ID} int"),
        )
    )
    excluded = _excluded([(u, i, 0.0) for u, i in exclude])
    for u in chosen:
        excluded.setdefault(u, set()).update(int(i) for i in item_ids if i % 3 == 0)
    expected = reference_lists(_dense_scores(scorer, chosen, history), chosen, item_ids, excluded, N)
    assert got == {u: v for u, v in expected.items() if v}
    assert set(got) == set(chosen)


class _ScorerModel:
    """A fitted model that ranks through a BlockScorer (the dispatch must not look for factors)."""

    def __init__(self, scorer):
        self._scorer = scorer

    def blockScorer(self):
        return self._scorer


class _FactorModel:
    def __init__(self, users, items):
        self._tables = (users, items)

    def scoringFactors(self):
        return self._tables


def test_recommend_for_dispatches_both_paths(spark, case, scorer):
    user_ids, item_ids, P, Q, history = case
    hist = _history_df(spark, history)
    exp_scored = reference_lists(_dense_scores(scorer, user_ids, history), user_ids, item_ids, _excluded(history), N)
    got_scored = as_lists(recommend_for(_ScorerModel(scorer), hist, N, 8))
    assert got_scored == {u: v for u, v in exp_scored.items() if v and u in {h[0] for h in history}}

    users = spark.createDataFrame([(int(u), p.tolist()) for u, p in zip(user_ids, P)], "id int, features array<float>")
    items = spark.createDataFrame([(int(i), q.tolist()) for i, q in zip(item_ids, Q)], "id int, features array<float>")
    chosen = [int(u) for u in user_ids[::2]]
    catalogue = item_ids[item_ids % 2 == 0]
    got = as_lists(
        recommend_for(
            _FactorModel(users, items),
            hist,
            N,
            8,
            users=spark.createDataFrame([(u,) for u in chosen], f"{USER_ID} int"),
            items=spark.createDataFrame([(int(i),) for i in catalogue], f"{MOVIE_ID} int"),
        )
    )
    excluded = _excluded(history)
    for u in chosen:
        excluded.setdefault(u, set()).update(int(i) for i in item_ids if i % 2)
    rows = np.searchsorted(user_ids, chosen)
    expected = reference_lists(P[rows] @ Q.T, chosen, item_ids, excluded, N)
    assert got == {u: v for u, v in expected.items() if v}
