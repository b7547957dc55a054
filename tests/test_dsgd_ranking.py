"""Ranking losses (BPR, WARP) in the DSGD engine: planted preferences learned through the
estimator, negatives drawn inside the stratum's item block only, |N_u| from the blocks, clear
errors for the combinations that have no meaning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from recospark.models.sgd import layout as bk
from recospark.models.sgd import stratum as W
from recospark.models.sgd.dsgd import fit_dsgd
from recospark.models.sgd.epochs import total
from recospark.models.sgd.estimator import SGDMatrixFactorization, SGDMatrixFactorizationModel
from recospark.models.sgd.kernel_ranking import NO_TRACE, bpr_block
from recospark.models.sgd.layout import ITEM_SALT, USER_SALT
from recospark.models.sgd.settings import TaskConfig, engine_params
from recospark.models.sgd.setup_pass import pack_partition
from recospark.models.sgd.source import Source
from recospark.models.sgd.store import blob_name
from recospark.scoring import scoring_factors

N_USERS, N_ITEMS = 80, 40  # items 1..20: group A, 21..40: group B; odd users like A, even users B


def _planted(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user rates 10 random items of their group (ratings 1..5 at random, so only *which*
    items were rated carries the preference) and 1 of the other group; 2 of their group's items
    are held out."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for u in range(1, N_USERS + 1):
        own = np.arange(1, 21) if u % 2 else np.arange(21, 41)
        other = np.arange(21, 41) if u % 2 else np.arange(1, 21)
        picked = rng.choice(own, 12, replace=False)
        for i in picked[:10]:
            train.append((u, int(i), float(rng.integers(1, 6))))
        train.append((u, int(rng.choice(other)), float(rng.integers(1, 6))))
        held.extend((u, int(i)) for i in picked[10:])
    return pd.DataFrame(train, columns=["user_id", "movie_id", "rating"]), pd.DataFrame(held, columns=["user_id", "movie_id"])


@pytest.fixture(scope="module")
def planted(spark):
    train, held = _planted()
    df = spark.createDataFrame(train.astype({"user_id": "int32", "movie_id": "int32", "rating": "float32"})).cache()
    return df, train, held


def _auc(model: SGDMatrixFactorizationModel, train: pd.DataFrame, held: pd.DataFrame) -> float:
    """Held-out positives against every item of the other group the user did not rate."""
    users, items = (f.toPandas().set_index("id") for f in scoring_factors(model))
    U = {i: np.asarray(v, np.float64) for i, v in users.features.items()}
    V = {i: np.asarray(v, np.float64) for i, v in items.features.items()}
    rated = train.groupby("user_id").movie_id.apply(set)
    wins = pairs = 0
    for u, grp in held.groupby("user_id"):
        other = range(21, 41) if u % 2 else range(1, 21)
        negs = [i for i in other if i not in rated[u]]
        neg_scores = np.array([U[u] @ V[i] for i in negs])
        for p in grp.movie_id:
            wins += int(np.sum(U[u] @ V[p] > neg_scores))
            pairs += len(negs)
    return wins / pairs


RANK_PARAMS = {
    "bpr": {"rank": 8, "maxIter": 30, "stepSize": 0.05, "stepDecay": 1.0, "regParam": 0.1, "numNegatives": 3, "initStd": 0.1},
    "warp": {"rank": 2, "maxIter": 30, "stepSize": 0.05, "stepDecay": 1.0, "regParam": 0.0, "maxNorm": 1.0, "initStd": 0.1},
}


@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_planted_preferences_are_learned_through_the_estimator(spark, planted, loss, tmp_path):
    df, train, held = planted
    est = SGDMatrixFactorization(loss=loss, numBlocks=2, innerBlocks=2, seed=5, **RANK_PARAMS[loss])
    model = est.fit(df)
    assert _auc(model, train, held) >= 0.9
    # every train user and item has factors; no user bias, no global mean (score = b_i + p . q)
    u = model.userBiasedFactors.toPandas()
    i = model.itemBiasedFactors.toPandas()
    assert set(u.id) == set(train.user_id) and set(i.id) == set(train.movie_id)
    assert model.globalMean == 0.0 and (u.bias == 0).all()
    assert (i.bias != 0).any() if loss == "bpr" else (i.bias == 0).all()  # warp trains no item biases
    if loss == "warp":
        norms = np.linalg.norm(np.stack(i.features), axis=1)
        assert norms.max() <= 1.0 + 1e-5  # the max-norm projection
    # a meaningful history: the ranking objective falls, no validation metric
    h = model.history
    assert len(h) == 30 and all(x["objective"] == loss and x["val_loss"] is None and x["updates"] > 0 for x in h)
    assert np.mean([x["train_loss"] for x in h[-5:]]) < np.mean([x["train_loss"] for x in h[:5]])
    assert all(x["kernel_seconds"] >= 0 for x in h)
    # transform and the recommendations rank by b_i + p . q; both survive save/load
    recs = model.recommendForAllUsers(3).filter(F.col("user_id") == 1).first()
    scores = model.transform(spark.createDataFrame([(1, int(m)) for m in i.id], ["user_id", "movie_id"])).toPandas()
    best = scores.sort_values(["prediction", "movie_id"], ascending=[False, True]).movie_id.head(3).tolist()
    assert [r.movie_id for r in recs.recommendations] == best
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = SGDMatrixFactorizationModel.load(str(tmp_path / "m"))
    assert loaded.loss == loss and loaded.globalMean == 0.0 and loaded.history == h
    pd.testing.assert_frame_equal(loaded.itemBiasedFactors.orderBy("id").toPandas(), i.sort_values("id").reset_index(drop=True))


def _task_setup(loss: str, B: int = 2, K: int = 2, seed: int = 1):
    """A tiny problem cut by the worker's own setup pass, for the worker functions without Spark."""
    train, _ = _planted(seed=7)
    batch = pa.RecordBatch.from_pydict(
        {"user": train.user_id.to_numpy(np.int32), "item": train.movie_id.to_numpy(np.int32), "r": train.rating.to_numpy(np.float32)}
    )
    rows = []
    for out in pack_partition(iter([batch]), kind="R", seed=seed, B=B, K=K, run_id=None, part=0):
        rows.extend(out.to_pylist())
    blobs = {blob_name(r["blob"]): r["blob"] for r in rows}
    params = SGDMatrixFactorization(
        loss=loss, rank=4, regParam=0.01, biasRegParam=0.01, initStd=0.1, seed=seed, numNegatives=3, maxNorm=1.5
    )
    cfg = TaskConfig(
        params=engine_params(params),
        run_id="t",
        B=B,
        K=K,
        mu=0.0,
        threads=2,
        tasks=1,
        users=bk.Index.build(train.user_id.to_numpy(), seed, B, K, USER_SALT),
        items=bk.Index.build(train.movie_id.to_numpy(), seed, B, K, ITEM_SALT),
        sub_counts={(r["kind"], r["G"], r["J"], r["a"], r["b"]): r["n"] for r in rows},
        part_counts={(r["kind"], r["G"], r["J"], r["a"], r["b"]): 1 for r in rows},
    )
    return cfg, Source(cfg, None, blobs), train


@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_negatives_stay_in_the_strata_item_block_and_neg_totals_count_the_catalogue(loss):
    cfg, source, train = _task_setup(loss)
    totals = W.user_neg_totals(cfg, source)
    n_items = train.movie_id.nunique()
    rated = train.groupby("user_id").movie_id.nunique()
    users = {G: W.group_factors(cfg, "U", G) for G in range(cfg.B)}
    items = {J: W.group_factors(cfg, "I", J) for J in range(cfg.B)}
    for G, fb in users.items():  # |N_u| = catalogue minus the user's rated items, row by row
        np.testing.assert_array_equal(totals[G], n_items - rated.loc[fb.ids].to_numpy())
    # the driver's version (multi-task plan) from per-user counts agrees
    from_counts = W.neg_totals_from_counts(cfg.users, n_items, cfg.B, cfg.K, rated.index.to_numpy(), rated.to_numpy())
    for G in range(cfg.B):
        np.testing.assert_array_equal(from_counts[G], totals[G])
    cfg = TaskConfig(**{**cfg.__dict__, "n_items": n_items, "neg_total": totals})
    source.cfg = cfg
    neg_trace: dict = {}
    sums: dict = {}
    for epoch in range(2):
        for shift in bk.strata_order(cfg.params.seed, epoch, cfg.B):
            W.train_stratum(cfg, shift, list(range(cfg.B)), users, items, source, lr=0.05, epoch=epoch, sums=sums, neg_trace=neg_trace)
    assert not source.missing and len(neg_trace) == 2 * sum(1 for k in cfg.sub_counts if k[0] == "R")
    rated_sets = train.groupby("movie_id").user_id.apply(set)
    drawn = 0
    for (_epoch, G, J, a, b), trace in neg_trace.items():
        rows = trace[trace >= 0]
        lo, hi = int(items[J].lo[b]), int(items[J].lo[b + 1])
        assert len(rows) and rows.max() < hi - lo  # rows of the inner item block's view only
        ids = items[J].ids[lo + rows]
        np.testing.assert_array_equal(bk.hash_blocks(ids, cfg.params.seed, cfg.B * cfg.K, ITEM_SALT), J * cfg.K + b)
        block_users = set(users[G].ids[int(users[G].lo[a]) : int(users[G].lo[a + 1])].tolist())
        assert all(not (rated_sets[i] >= block_users) for i in ids)  # never an item every user of the block rated
        drawn += len(rows)
    assert drawn > 0
    _, n = total(sums)
    assert n == 2 * len(train)  # every rating visited once per epoch


def test_invalid_ranking_combinations_fail_clearly_before_any_job(spark, planted):
    df, _, _ = planted
    with pytest.raises(ValueError, match="loss must be one of"):
        SGDMatrixFactorization(loss="logistic").fit(df)
    flagged = df.withColumn("v", F.col("user_id") % 5 == 0)
    with pytest.raises(ValueError, match=r"earlyStoppingRounds must be 0 with loss='bpr'"):
        SGDMatrixFactorization(loss="bpr", earlyStoppingRounds=3, validationIndicatorCol="v").fit(flagged)
    train = df.select(F.col("user_id").alias("user"), F.col("movie_id").alias("item"), F.col("rating").alias("r"))
    with pytest.raises(ValueError, match="early_stopping_rounds must be 0"):
        fit_dsgd(spark, train, train, engine_params(SGDMatrixFactorization(loss="warp", earlyStoppingRounds=2)))
    with pytest.raises(ValueError, match="loss must be"):
        fit_dsgd(spark, train, None, engine_params(SGDMatrixFactorization(loss="hinge")))
    # without a validation column the default earlyStoppingRounds is inert: no error
    assert SGDMatrixFactorization(loss="bpr", maxIter=1, rank=2).fit(df).numEpochs == 1


def test_one_block_engine_equals_the_kernel_called_directly():
    """B = K = 1: the worker's epoch is one bpr_block call over the whole matrix with the
    sub-block's seed, a seeded permutation, |N_u| and share 1: the data path adds nothing else."""
    cfg, source, train = _task_setup("bpr", B=1, K=1)
    totals = W.user_neg_totals(cfg, source)
    n_items = train.movie_id.nunique()
    cfg = TaskConfig(**{**cfg.__dict__, "n_items": n_items, "neg_total": totals})
    source.cfg = cfg
    users, items = {0: W.group_factors(cfg, "U", 0)}, {0: W.group_factors(cfg, "I", 0)}
    P, Q, bi = users[0].factors.copy(), items[0].factors.copy(), items[0].biases.copy()
    sub = source.sub("R", 0, 0, 0, 0)
    u, i, r, indptr = source.ranking_sub(sub, len(P))
    for epoch in range(3):
        W.train_stratum(cfg, 0, [0], users, items, source, lr=0.05, epoch=epoch, sums={})
        seed, ss = W.sub_seed(cfg.params.seed, epoch, 0, 0, 0, 0)
        order = np.random.default_rng(ss).permutation(len(r)).astype(np.int64)
        bpr_block(u, i, r, indptr, order, P, Q, bi, 0, len(Q), 3, 0.05, cfg.params.regParam, cfg.params.regParam, cfg.params.biasRegParam, -np.inf, totals[0], 1.0,
                  seed, W.MAX_TRIES, NO_TRACE)  # fmt: skip
    np.testing.assert_array_equal(users[0].factors, P)
    np.testing.assert_array_equal(items[0].factors, Q)
    np.testing.assert_array_equal(items[0].biases, bi)
    assert not users[0].biases.any()
