"""Top-N lab on ML-100K under Microsoft Recommenders' benchmark protocol, in one process.

Protocol (the published ML-100K table: ALS 0.044 NDCG@10 ... BiVAE 0.475):

* per-user stratified random split, 75% of every user's ratings to train (`stratified_split`);
  parameters are chosen on a validation split carved from TRAIN the same way (75/25 per user),
  then the chosen setting is refitted on all of train and scored once on test;
* k = 10; every test rating is relevant (no threshold); candidates = items seen in train that the
  user did not rate in train; test items unseen in train stay relevant (a miss for every model);
* metrics averaged over test users: precision@10, recall@10, NDCG@10 (binary gains, ideal DCG
  over min(k, |relevant|); the log base cancels), ``map`` = Recommenders' ``map`` in
  python_evaluation.py, normalised by the user's number of relevant items:
  sum_{hits} (hits@i / i) / |relevant|, and ``map_spark`` = Spark's MAP@k, the same sum over
  min(k, |relevant|) (what Recommenders' current ``map_at_k`` computes).

Models: popularity; DSGD with a ranking loss (`recospark.models.sgd.kernel_ranking`, simulated here
with the engine's blocking: users and items hashed into d blocks, an epoch = d strata, each
sub-block trained by the compiled kernel with negatives from its own item block only);
PureSVD (numpy, and ``puresvd_spark``: recospark's Spark estimator at the chosen rank); EASE
(reference only: needs an items x items inverse); MLlib implicit ALS (Spark local[2]; ``als_issue``
is the issue's untuned setting); ``blend``: per-user z-scores of the distributed models, weights
on validation. Run::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/ranking_protocol.py \
        [--models popularity,puresvd,ease,als,als_issue,bpr,warp,blend,puresvd_spark] [--merge other.json]
    .venv/bin/python bench/ranking_protocol.py --recheck 1,2   # chosen settings on other split seeds

Prints one table (validation rows, then test rows, popularity in both) and writes
bench/results/ranking_protocol.json after each model (merged with that file's earlier models).
Results and the choices made: bench/ranking_protocol.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the kernels' plain references live with the tests

from sgd_reference import reference_draw  # noqa: E402 - after the sys.path insert

from recospark.models.sgd import kernel_ranking as R  # noqa: E402 - after the sys.path insert

DATA = ROOT.parent / "shared" / "data" / "ml-100k"
K = 10
SPLIT_SEED = 42
VAL_SEED = 7


# ---------------------------------------------------------------------------------------------
# data and splits


@dataclass
class Split:
    """Index-coded ratings: users 0..n_users-1, items 0..n_items-1 (ascending original ids)."""

    n_users: int
    n_items: int
    train: pd.DataFrame  # u, i, r
    test: pd.DataFrame
    item_ids: np.ndarray = field(repr=False)


def load(path: Path = DATA) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    df = pd.read_csv(path / "u.data", sep="\t", names=["user", "item", "r", "ts"])
    user_ids = np.sort(df.user.unique())
    item_ids = np.sort(df.item.unique())
    out = pd.DataFrame(
        {
            "u": np.searchsorted(user_ids, df.user).astype(np.int32),
            "i": np.searchsorted(item_ids, df.item).astype(np.int32),
            "r": df.r.astype(np.float32),
        }
    )
    return out, user_ids, item_ids


def stratified_split(df: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every user keeps round(ratio * n_u) of their ratings (at least 1) in the first part, chosen at random."""
    rng = np.random.default_rng(seed)
    key = rng.random(len(df))
    d = df.assign(_k=key).sort_values(["u", "_k"], kind="stable")
    rank = d.groupby("u").cumcount().to_numpy()
    n_u = d.groupby("u")["u"].transform("size").to_numpy()
    keep = rank < np.maximum(1, np.rint(ratio * n_u))
    first = d[keep].drop(columns="_k").sort_values(["u", "i"]).reset_index(drop=True)
    second = d[~keep].drop(columns="_k").sort_values(["u", "i"]).reset_index(drop=True)
    return first, second


def make_splits(split_seed: int = SPLIT_SEED) -> tuple[Split, Split]:
    """(validation split carved from train, the test split)."""
    df, user_ids, item_ids = load()
    train, test = stratified_split(df, 0.75, split_seed)
    fit, val = stratified_split(train, 0.75, VAL_SEED)
    nu, ni = len(user_ids), len(item_ids)
    return Split(nu, ni, fit, val, item_ids), Split(nu, ni, train, test, item_ids)


# ---------------------------------------------------------------------------------------------
# metrics


def top_k(scores: np.ndarray, split: Split, k: int = K) -> np.ndarray:
    """Best k candidates per user (items seen in train, not rated by the user in train); ties -> smaller id."""
    s = np.array(scores, dtype=np.float64, copy=True)
    seen = np.zeros(split.n_items, bool)
    seen[split.train.i.to_numpy()] = True
    s[:, ~seen] = -np.inf
    s[split.train.u.to_numpy(), split.train.i.to_numpy()] = -np.inf
    part = np.argpartition(-s, k, axis=1)[:, : k + 1]  # k+1 so a tie at the border can be settled
    ps = np.take_along_axis(s, part, axis=1)
    kth = np.sort(ps, axis=1)[:, -k]  # k-th best score per user
    out = np.empty((s.shape[0], k), np.int64)
    for u in range(s.shape[0]):
        # all items scoring >= the k-th best (rarely more than k+1), by score desc then id asc
        cand = np.flatnonzero(s[u] >= kth[u])
        order = np.lexsort((cand, -s[u, cand]))[:k]
        out[u] = cand[order]
    return out


def ranking_metrics(lists: np.ndarray, split: Split, k: int = K) -> dict[str, float]:
    test = split.test
    rel_count = np.bincount(test.u.to_numpy(), minlength=split.n_users)
    users = np.flatnonzero(rel_count > 0)
    relevant = np.zeros((split.n_users, split.n_items), bool)
    relevant[test.u.to_numpy(), test.i.to_numpy()] = True
    hit = np.take_along_axis(relevant, lists, axis=1)[users].astype(np.float64)  # users x k
    n_rel = rel_count[users].astype(np.float64)
    pos = np.arange(1, k + 1)
    hits = hit.sum(1)
    disc = 1.0 / np.log2(pos + 1)
    idcg = np.cumsum(disc)[np.minimum(n_rel, k).astype(int) - 1]
    prec_at_i = np.cumsum(hit, 1) / pos
    ap_sum = (prec_at_i * hit).sum(1)
    return {
        "precision@10": float(np.mean(hits / k)),
        "recall@10": float(np.mean(hits / n_rel)),
        "ndcg@10": float(np.mean((hit * disc).sum(1) / idcg)),
        "map": float(np.mean(ap_sum / n_rel)),
        "map_spark@10": float(np.mean(ap_sum / np.minimum(n_rel, k))),
        "n_users": len(users),
    }


def evaluate(scores: np.ndarray, split: Split) -> dict[str, float]:
    return ranking_metrics(top_k(scores, split), split)


# ---------------------------------------------------------------------------------------------
# models (each returns a users x items score matrix)


def popularity(split: Split) -> np.ndarray:
    counts = np.bincount(split.train.i.to_numpy(), minlength=split.n_items).astype(np.float64)
    return np.tile(counts, (split.n_users, 1))


def interactions(split: Split, binary: bool = True) -> np.ndarray:
    X = np.zeros((split.n_users, split.n_items), np.float64)
    X[split.train.u.to_numpy(), split.train.i.to_numpy()] = 1.0 if binary else split.train.r.to_numpy()
    return X


def puresvd(split: Split, rank: int, binary: bool = True) -> np.ndarray:
    """Cremonesi et al. 2010: r_u V_k V_k^T, missing = 0."""
    X = interactions(split, binary)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    V = vt[:rank].T
    return X @ V @ V.T


def ease(split: Split, lam: float) -> np.ndarray:
    """Steck 2019: B = I - P / diag(P), P = (X^T X + lam I)^-1; dense items x items inverse."""
    X = interactions(split)
    G = X.T @ X + lam * np.eye(split.n_items)
    Pm = np.linalg.inv(G)
    B = -Pm / np.diag(Pm)
    np.fill_diagonal(B, 0.0)
    return X @ B


def _hash_blocks(n: int, d: int, seed: int, salt: int) -> np.ndarray:
    """Seeded, data-independent block of each id (the engine uses xxhash64(seed, salt, id) mod d)."""
    return np.array([reference_draw(seed * 1_000_003 + salt, x, 0, d) for x in range(n)], np.int64)


@dataclass(frozen=True)
class RankSGD:
    loss: str = "bpr"  # bpr | warp
    rank: int = 64
    lr: float = 0.05
    reg: float = 0.01  # user and item factors
    reg_bias: float = 0.01
    n_neg: int = 1  # bpr
    epochs: int = 30
    decay: float = 1.0  # lr *= decay per epoch
    d: int = 2  # blocks
    init_std: float = 0.1
    weighted: bool = True  # bpr block weight / warp catalogue-wide rank
    margin: float = 1.0  # warp
    max_trials: int = 100  # warp
    max_norm: float = 0.0  # warp: row norm cap (0 = off)
    biases: bool = True
    pos_threshold: float = -np.inf
    seed: int = 1


def dsgd_ranking(split: Split, cfg: RankSGD, eval_split: Split | None = None, eval_every: int = 0):
    """Stratified DSGD with a ranking loss, in-process: the engine's blocking and kernel calls.

    Returns (scores, curve) where curve lists (epoch, ndcg@10 on eval_split) when eval_every > 0.
    """
    d = cfg.d
    ub = _hash_blocks(split.n_users, d, cfg.seed, 1)
    ib = _hash_blocks(split.n_items, d, cfg.seed, 2)
    u_members = [np.flatnonzero(ub == b) for b in range(d)]  # ascending ids -> local rows
    tr = split.train
    rated_total = np.bincount(tr.u.to_numpy(), minlength=split.n_users)
    # like the engine, only items present in the training ratings are hashed into item blocks
    seen_items = np.bincount(tr.i.to_numpy(), minlength=split.n_items) > 0
    n_cat = int(seen_items.sum())
    i_members = [np.flatnonzero((ib == b) & seen_items) for b in range(d)]
    u_local = np.empty(split.n_users, np.int64)
    i_local = np.empty(split.n_items, np.int64)
    for b in range(d):
        u_local[u_members[b]] = np.arange(len(u_members[b]))
        i_local[i_members[b]] = np.arange(len(i_members[b]))
    rng = np.random.default_rng(cfg.seed)
    P = [(rng.standard_normal((len(m), cfg.rank)) * cfg.init_std).astype(np.float32) for m in u_members]
    Q = [(rng.standard_normal((len(m), cfg.rank)) * cfg.init_std).astype(np.float32) for m in i_members]
    bi = [np.zeros(len(m) if cfg.biases else 0, np.float32) for m in i_members]
    # sub-blocks: local arrays sorted by (user, item)
    sub = {}
    for a in range(d):
        for b in range(d):
            sel = (ub[tr.u.to_numpy()] == a) & (ib[tr.i.to_numpy()] == b)
            uu = u_local[tr.u.to_numpy()[sel]].astype(np.int32)
            ii = i_local[tr.i.to_numpy()[sel]].astype(np.int32)
            rr = tr.r.to_numpy()[sel].astype(np.float32)
            o = np.lexsort((ii, uu))
            uu, ii, rr = uu[o], ii[o], rr[o]
            neg_total = (n_cat - rated_total[u_members[a]]).astype(np.int64) if cfg.weighted else R.NO_WEIGHTS
            sub[a, b] = (uu, ii, rr, R.csr_indptr(uu, len(u_members[a])), neg_total)
    curve = []
    lr = cfg.lr
    for epoch in range(cfg.epochs):
        shifts = np.random.default_rng([cfg.seed, 2, epoch]).permutation(d)
        for s in shifts:
            for a in range(d):  # the d tasks of one stratum (independent: disjoint rows)
                b = (a + s) % d
                uu, ii, rr, ip, neg_total = sub[a, b]
                if len(rr) == 0:
                    continue
                order = np.random.default_rng([cfg.seed, 1, epoch, a, b]).permutation(len(rr)).astype(np.int64)
                kseed = int(np.random.default_rng([cfg.seed, 4, epoch, a, b]).integers(0, 2**62))
                hi = Q[b].shape[0]
                if cfg.loss == "bpr":
                    R.bpr_block(
                        uu,
                        ii,
                        rr,
                        ip,
                        order,
                        P[a],
                        Q[b],
                        bi[b],
                        0,
                        hi,
                        cfg.n_neg,
                        lr,
                        cfg.reg,
                        cfg.reg,
                        cfg.reg_bias,
                        cfg.pos_threshold,
                        neg_total,
                        1.0 / d,
                        kseed,
                        32,
                        R.NO_TRACE,
                    )
                elif cfg.loss == "warp":
                    R.warp_block(
                        uu,
                        ii,
                        rr,
                        ip,
                        order,
                        P[a],
                        Q[b],
                        bi[b],
                        0,
                        hi,
                        lr,
                        cfg.reg,
                        cfg.reg,
                        cfg.reg_bias,
                        cfg.pos_threshold,
                        neg_total,
                        cfg.margin,
                        cfg.max_trials,
                        cfg.max_norm,
                        kseed,
                        32,
                        R.NO_TRACE,
                    )
                else:
                    raise ValueError(cfg.loss)
        lr *= cfg.decay
        if eval_every and eval_split is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == cfg.epochs):
            curve.append(
                (
                    epoch + 1,
                    evaluate(_assemble(split, P, Q, bi, u_members, i_members), eval_split)["ndcg@10"],
                )
            )
    return _assemble(split, P, Q, bi, u_members, i_members), curve


def _assemble(split, P, Q, bi, u_members, i_members) -> np.ndarray:
    Pg = np.zeros((split.n_users, P[0].shape[1]), np.float64)
    Qg = np.zeros((split.n_items, P[0].shape[1] + 1), np.float64)
    for m, p in zip(u_members, P, strict=False):
        Pg[m] = p
    for m, q, b in zip(i_members, Q, bi, strict=False):
        Qg[m, :-1] = q
        if len(b):
            Qg[m, -1] = b
    return np.hstack([Pg, np.ones((split.n_users, 1))]) @ Qg.T


# ---------------------------------------------------------------------------------------------
# tuning on validation (never on test)


def _best_epoch(curve: list[tuple[int, float]]) -> tuple[int, float]:
    return max(curve, key=lambda x: (x[1], -x[0]))


def tune_sgd(val: Split, grid: dict[str, list], base: RankSGD, eval_every: int, log=print) -> list[dict]:
    """Every grid point trained once for base.epochs on the validation split's train part, scored
    on its validation part every `eval_every` epochs; a point's epochs = its best scored epoch."""
    rows = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = RankSGD(**{**asdict(base), **dict(zip(keys, values, strict=False))})
        t0 = time.perf_counter()
        _, curve = dsgd_ranking(val, cfg, val, eval_every)
        epoch, ndcg = _best_epoch(curve)
        row = {
            **dict(zip(keys, values, strict=False)),
            "epochs": epoch,
            "val_ndcg@10": round(ndcg, 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        log(json.dumps(row))
    return sorted(rows, key=lambda r: -r["val_ndcg@10"])


# ---------------------------------------------------------------------------------------------
# MLlib implicit ALS (Spark local[2], loopback only)


def spark_session():
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("ranking-protocol")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(str(ROOT / "out" / "checkpoints-ranking"))
    return spark


def _factors_to_numpy(df, n: int, rank: int) -> np.ndarray:
    out = np.zeros((n, rank), np.float64)
    pdf = df.toPandas()
    if len(pdf):
        out[pdf["id"].to_numpy()] = np.stack(pdf["features"].to_numpy())
    return out


def mllib_als(
    split: Split,
    spark,
    rank: int,
    reg: float,
    alpha: float,
    max_iter: int = 15,
    seed: int = 42,
    cache: dict | None = None,
) -> np.ndarray:
    """MLlib ALS(implicitPrefs=True) on the split's train part; scores = userFactors . itemFactors.

    Ids are the harness's 0-based indices (a bijection of MovieLens ids, so nothing changes).
    """
    from pyspark.ml.recommendation import ALS

    key = id(split)
    if cache is not None and key in cache:
        df = cache[key]
    else:
        df = spark.createDataFrame(
            split.train.assign(
                u=split.train.u.astype(int),
                i=split.train.i.astype(int),
                r=split.train.r.astype(float),
            )
        ).cache()
        df.count()
        if cache is not None:
            cache[key] = df
    als = ALS(
        userCol="u",
        itemCol="i",
        ratingCol="r",
        implicitPrefs=True,
        rank=rank,
        regParam=reg,
        alpha=alpha,
        maxIter=max_iter,
        seed=seed,
        numUserBlocks=2,
        numItemBlocks=2,
        coldStartStrategy="drop",
    )
    model = als.fit(df)
    U = _factors_to_numpy(model.userFactors, split.n_users, rank)
    V = _factors_to_numpy(model.itemFactors, split.n_items, rank)
    return U @ V.T


def spark_puresvd(split: Split, spark, rank: int, binary: bool) -> np.ndarray:
    """recospark's distributed `PureSVD` estimator (RowMatrix.computeSVD) on the split's train part."""
    from recospark.models.puresvd import PureSVD

    df = spark.createDataFrame(
        split.train.assign(u=split.train.u.astype(int), i=split.train.i.astype(int), r=split.train.r.astype(float))
    )
    model = PureSVD(rank=rank, binary=binary, userCol="u", itemCol="i", ratingCol="r").fit(df)
    return (
        _factors_to_numpy(model.userFactors, split.n_users, model.rank)
        @ _factors_to_numpy(model.itemFactors, split.n_items, model.rank).T
    )


# ---------------------------------------------------------------------------------------------
# ensemble: still a factor model


def standardized(scores: np.ndarray, split: Split) -> np.ndarray:
    """Per-user z-scores over the catalogue (items seen in train).

    For a factor model s_ui = p_u . q_i this is (p_u / sigma_u) . q_i minus a per-user constant,
    and sigma_u^2 = p_u^T Cov(Q) p_u needs only the k x k item covariance: a weighted sum of
    standardized factor models ranks like ONE factor model whose factors are the concatenation
    [w_m p_um / sigma_um] . [q_im], so `recommend.top_n` serves it unchanged.
    """
    seen = np.bincount(split.train.i.to_numpy(), minlength=split.n_items) > 0
    s = scores[:, seen]
    mu = s.mean(1, keepdims=True)
    sd = s.std(1, keepdims=True)
    sd[sd == 0] = 1.0
    return (scores - mu) / sd


def blend(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    return sum(w * parts[name] for name, w in weights.items() if w)


def tune_blend(parts: dict[str, np.ndarray], val: Split, step: float = 0.1, log=print) -> tuple[dict, float]:
    """Weights on the simplex (grid `step`) maximising validation NDCG@10 of the blend of standardized scores."""
    names = list(parts)
    n = round(1 / step)
    best, best_w = -1.0, None
    for combo in itertools.product(range(n + 1), repeat=len(names) - 1):
        if sum(combo) > n:
            continue
        w = {
            **dict(zip(names[:-1], (c * step for c in combo), strict=False)),
            names[-1]: (n - sum(combo)) * step,
        }
        ndcg = evaluate(blend(parts, w), val)["ndcg@10"]
        if ndcg > best + 1e-12:
            best, best_w = ndcg, w
    log(
        json.dumps(
            {
                "blend": {k: round(v, 2) for k, v in best_w.items()},
                "val_ndcg@10": round(best, 4),
            }
        )
    )
    return best_w, best


# ---------------------------------------------------------------------------------------------
# the experiments: grids searched on validation, chosen setting refitted on train, scored on test

# SGD searches are staged (coordinate search): each stage's grid varies some fields of the best
# setting so far; a point's epochs is its best validation epoch (scored every 10 epochs).
SGD_STAGES = {
    # stage 1 narrowed by earlier validation-only sweeps (rank 64/128/200, lr 0.02-0.1, reg 0.005-0.1,
    # 1/3 negatives, init 0.01/0.1: rank 128, small lr, reg ~0.02 and 3 negatives were best)
    "bpr": (
        RankSGD(loss="bpr", rank=128, epochs=120),
        [
            {"lr": [0.01, 0.02], "reg": [0.02, 0.03], "n_neg": [3, 5]},
            {"d": [2, 3, 4], "weighted": [True, False]},
        ],
    ),
    # WARP with a constant step and L2 drifts on ML-100K (row norms grow, the loss rises after ~10
    # epochs, NDCG falls to ~0.08-0.19 in validation sweeps); WSABIE's max-norm projection keeps it
    # stable (radius 2: 0.23 flat over 30 epochs; 1: 0.17; 3-4: 0.15-0.19), so it is searched here.
    # A first pass (rank 64/128, lr 0.005/0.02, radius 1.5/2/2.5, 40 epochs) chose rank 128, the
    # smallest lr and radius, best at its last epoch: this grid extends it past those edges.
    "warp": (
        RankSGD(loss="warp", rank=128, epochs=80, reg=0.0, reg_bias=0.0, biases=False),
        [
            {"lr": [0.002, 0.005], "max_norm": [1.0, 1.25, 1.5]},
            {"d": [2, 4], "weighted": [True, False]},
        ],
    ),
}
PURESVD_GRID = {"rank": [5, 8, 10, 15, 20, 30, 50], "binary": [True, False]}
EASE_GRID = {"lam": [100, 200, 300, 500, 800, 1000]}
ALS_GRID = {"rank": [10, 15, 20, 30], "reg": [0.05, 0.1, 0.2], "alpha": [0.1, 0.3, 0.6]}
ALS_ITER = 15
BLEND_OF = ("als", "bpr", "warp", "puresvd")  # distributed models only; a weight may be 0


def _grid(grid: dict[str, list]):
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield dict(zip(keys, values, strict=False))


def _pick(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["val"]["ndcg@10"], r["val"]["precision@10"]))


class Lab:
    def __init__(self, log=print, split_seed: int = SPLIT_SEED):
        self.val, self.test = make_splits(split_seed)
        self.log = log
        self._spark = None
        self._als_cache: dict = {}
        self.results: dict[str, dict] = {}
        self.scores: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}

    @property
    def spark(self):
        if self._spark is None:
            self._spark = spark_session()
        return self._spark

    def fit(self, model: str, params: dict, split: Split) -> np.ndarray:
        if model == "popularity":
            return popularity(split)
        if model == "puresvd":
            return puresvd(split, params["rank"], params["binary"])
        if model == "puresvd_spark":
            return spark_puresvd(split, self.spark, params["rank"], params["binary"])
        if model == "ease":
            return ease(split, params["lam"])
        if model in ("als", "als_issue"):
            return mllib_als(
                split,
                self.spark,
                params["rank"],
                params["reg"],
                params["alpha"],
                ALS_ITER,
                cache=self._als_cache,
            )
        if model in SGD_STAGES:
            return dsgd_ranking(split, RankSGD(**params))[0]
        raise ValueError(model)

    def _record(self, model: str, rows: list[dict], chosen: dict, seconds: float) -> None:
        params = chosen["params"]
        test_scores = self.fit(model, params, self.test)
        self.scores["test"][model] = test_scores
        self.results[model] = {
            "params": params,
            "val": chosen["val"],
            "test": evaluate(test_scores, self.test),
            "grid": rows,
            "tuning_seconds": round(seconds, 1),
        }
        self.log(
            json.dumps(
                {
                    "model": model,
                    "chosen": params,
                    "val_ndcg@10": round(chosen["val"]["ndcg@10"], 4),
                    "test": {k: round(v, 4) for k, v in self.results[model]["test"].items()},
                }
            )
        )

    def run_grid(self, model: str, grid: dict[str, list]) -> None:
        t0 = time.perf_counter()
        rows = []
        for params in _grid(grid):
            scores = self.fit(model, params, self.val)
            rows.append({"params": params, "val": evaluate(scores, self.val)})
            self.log(
                json.dumps(
                    {
                        "model": model,
                        **params,
                        "val_ndcg@10": round(rows[-1]["val"]["ndcg@10"], 4),
                    }
                )
            )
        chosen = _pick(rows)
        self.scores["val"][model] = self.fit(model, chosen["params"], self.val)
        self._record(model, rows, chosen, time.perf_counter() - t0)

    def run_sgd(self, model: str) -> None:
        t0 = time.perf_counter()
        base, stages = SGD_STAGES[model]
        best = asdict(base)
        rows = []
        for stage in stages:
            stage_rows = []
            for change in _grid(stage):
                cfg = RankSGD(**{**best, **change})
                _scores, curve = dsgd_ranking(self.val, cfg, self.val, 10)
                epochs, ndcg = _best_epoch(curve)
                params = {**asdict(cfg), "epochs": epochs}
                stage_rows.append({"params": params, "curve": curve})
                self.log(
                    json.dumps(
                        {
                            "model": model,
                            **change,
                            "epochs": epochs,
                            "val_ndcg@10": round(ndcg, 4),
                        }
                    )
                )
            # a run stopped at epoch e equals the first e epochs of a longer run (constant step, seeded
            # per epoch), so the curve's best point is what refitting with `epochs` = e gives
            top = max(stage_rows, key=lambda r: _best_epoch(r["curve"])[1])
            best = top["params"]
            rows += stage_rows
        self.scores["val"][model] = self.fit(model, best, self.val)
        chosen = {"params": best, "val": evaluate(self.scores["val"][model], self.val)}
        for r in rows:
            r["params"] = {
                k: v
                for k, v in r["params"].items()
                if k in ("rank", "lr", "reg", "n_neg", "init_std", "d", "weighted", "epochs", "max_norm")
            }
        self._record(model, rows, chosen, time.perf_counter() - t0)

    def run_popularity(self) -> None:
        self.scores["val"]["popularity"] = popularity(self.val)
        chosen = {
            "params": {},
            "val": evaluate(self.scores["val"]["popularity"], self.val),
        }
        self._record("popularity", [], chosen, 0.0)

    def run_blend(self, names=BLEND_OF) -> None:
        names = [n for n in names if n in self.scores["val"] or n in self.results]
        if len(names) < 2:
            return
        for n in names:  # components chosen in an earlier run: refit with their chosen params
            if n not in self.scores["val"]:
                params = self.results[n]["params"]
                self.scores["val"][n] = self.fit(n, params, self.val)
                self.scores["test"][n] = self.fit(n, params, self.test)
        t0 = time.perf_counter()
        w, _ = tune_blend(
            {n: standardized(self.scores["val"][n], self.val) for n in names},
            self.val,
            log=self.log,
        )
        val_scores = blend({n: standardized(self.scores["val"][n], self.val) for n in names}, w)
        test_scores = blend({n: standardized(self.scores["test"][n], self.test) for n in names}, w)
        self.results["blend"] = {
            "params": {
                "weights": w,
                "components": {n: self.results[n]["params"] for n in names},
            },
            "val": evaluate(val_scores, self.val),
            "test": evaluate(test_scores, self.test),
            "tuning_seconds": round(time.perf_counter() - t0, 1),
        }
        self.log(json.dumps({"model": "blend", "weights": w, "test": self.results["blend"]["test"]}))


def table(results: dict[str, dict]) -> str:
    cols = ["precision@10", "recall@10", "ndcg@10", "map", "map_spark@10"]
    pop = {s: results["popularity"][s]["ndcg@10"] for s in ("val", "test")} if "popularity" in results else None
    lines = [
        "| split | model | " + " | ".join(cols) + " | NDCG / popularity | chosen on validation |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for split in ("val", "test"):
        for name, res in results.items():
            m = res[split]
            ratio = f"{m['ndcg@10'] / pop[split]:.2f}x" if pop else ""
            shown = res["params"].get("weights", res["params"])  # a blend: its weights (components above)
            params = {
                k: v
                for k, v in shown.items()
                if k
                not in (
                    "loss",
                    "pos_threshold",
                    "seed",
                    "biases",
                    "reg_bias",
                    "margin",
                    "max_trials",
                    "decay",
                )
            }
            lines.append(
                f"| {split} | {name} | "
                + " | ".join(f"{m[c]:.4f}" for c in cols)
                + f" | {ratio} | {json.dumps(params) if params else ''} |"
            )
    return "\n".join(lines)


def recheck(path: Path, seeds: list[int]) -> int:
    results = json.loads(path.read_text())["results"]
    names = [n for n in ("popularity", "puresvd", "als", "bpr", "warp", "ease") if n in results]
    rows = {}
    for seed in seeds:
        lab = Lab(log=lambda s: None, split_seed=seed)
        scores = {}
        for n in names:
            scores[n] = lab.fit(n, results[n]["params"], lab.test)
            rows[seed, n] = evaluate(scores[n], lab.test)
        if "blend" in results:
            w = results["blend"]["params"]["weights"]
            rows[seed, "blend"] = evaluate(
                blend({n: standardized(scores[n], lab.test) for n in w if w[n]}, w), lab.test
            )
        for (sd, n), m in rows.items():
            if sd == seed:
                print(
                    json.dumps({"split_seed": seed, "model": n, **{k: round(v, 4) for k, v in m.items()}}), flush=True
                )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="popularity,puresvd,ease,als,als_issue,bpr,warp,blend,puresvd_spark")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ranking_protocol.json"))
    parser.add_argument("--merge", default="", help="comma list of result JSONs of other runs to fold into --out")
    parser.add_argument(
        "--recheck",
        default="",
        help="comma list of other split seeds: refit every model of --out with its chosen setting on those "
        "splits' train and print their test metrics (no tuning: how much a single split's figures move)",
    )
    args = parser.parse_args(argv)
    if args.recheck:
        return recheck(Path(args.out), [int(x) for x in args.recheck.split(",")])
    models = args.models.split(",")
    lab = Lab(log=lambda s: print(s, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text())["results"] if out.exists() else {}
    for other in filter(None, args.merge.split(",")):
        previous.update(json.loads(Path(other).read_text())["results"])
    lab.results = dict(previous)  # models of earlier runs stay in the table (and can be blended)

    def save() -> None:
        payload = {
            "protocol": {"split_seed": SPLIT_SEED, "val_seed": VAL_SEED, "k": K},
            "results": lab.results,
        }
        out.write_text(json.dumps(payload, indent=1, default=float))

    lab.run_popularity()
    for name in models:
        if name == "puresvd":
            lab.run_grid("puresvd", PURESVD_GRID)
        elif name == "ease":
            lab.run_grid("ease", EASE_GRID)
        elif name == "als":
            lab.run_grid("als", ALS_GRID)
        elif name == "puresvd_spark":  # the Spark estimator at the numpy PureSVD's chosen setting
            lab.run_grid("puresvd_spark", {k: [v] for k, v in lab.results["puresvd"]["params"].items()})
        elif name == "als_issue":  # the untuned setting, for reference
            lab.run_grid("als_issue", {"rank": [10], "reg": [0.1], "alpha": [0.3]})
        elif name in SGD_STAGES:
            lab.run_sgd(name)
    if "blend" in models:
        lab.run_blend()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # models run earlier (another --models list) stay in the table
        lab.results = {**json.loads(out.read_text())["results"], **lab.results}
    out.write_text(
        json.dumps(
            {
                "protocol": {"split_seed": SPLIT_SEED, "val_seed": VAL_SEED, "k": K},
                "results": lab.results,
            },
            indent=1,
            default=float,
        )
    )
    print(table(lab.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
