"""The neural engine: recipes' forward passes and losses by hand, factor export, rank sharding, the
executor scorer against a per-user reference, safetensors-only loading, deterministic 2-process fits,
one clear error from a failed rank, and the missing-extra preflight.

Fits go through the real TorchDistributor (torchrun on the driver under the suite's local master);
each one starts fresh interpreters that import torch, so the module shares one fitted model per
recipe and fits only four times in all.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark import cloudpickle

# torch-free by design (the recipes' Params exist without the extra)
from recospark.models.neural import data, torch_available, weights
from recospark.models.neural.estimator import GMF, GMFModel, NeuralMF, NeuralMFModel, neural_pair
from recospark.models.neural.recipes.mf import GMF as GMF_RECIPE
from recospark.models.neural.recipes.mf import NEURAL_MF, NeuralMFRecipe
from recospark.models.neural.scorer import NeuralBlockScorer, predict_pairs
from recospark.scoring import top_n_scored

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch_available(), reason="the neural extra (torch, safetensors) is not installed")]

if torch_available():
    import torch

    from recospark.models.neural.recipes.mf_nets import BiasedDot, GMFNet

ROOT = Path(__file__).resolve().parents[1]


def _ratings(users: int = 30, items: int = 20) -> list[tuple[int, int, float, bool]]:
    """A deterministic small rating set with two taste groups; ~1 row in 8 flagged for validation."""
    rows = []
    for u in range(1, users + 1):
        for i in range(1, items + 1):
            if (u * 7 + i * 3) % 4 == 0 or i <= 3:
                rating = 5.0 if (u % 2) == (i % 2) else 2.0
                rows.append((u, 100 + i, rating, (u * 31 + i * 17) % 8 == 0))
    return rows


@pytest.fixture(scope="module")
def ratings(spark):
    return spark.createDataFrame(_ratings(), "user_id int, movie_id int, rating double, is_val boolean")


def _mf_estimator():
    return NeuralMF(embeddingDim=4, maxIter=3, batchSize=16, stepSize=0.02, numProcesses=2, seed=7, validationIndicatorCol="is_val")


@pytest.fixture(scope="module")
def mf_model(ratings):
    return _mf_estimator().fit(ratings)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def gmf_fit(ratings):
    """A fitted GMF and the lines the launcher logged at INFO while it trained."""
    logger, handler = logging.getLogger("recospark.models.neural.launch"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        model = GMF(embeddingDim=4, maxIter=2, batchSize=32, seed=3, validationIndicatorCol="is_val").fit(ratings)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return model, handler.lines


@pytest.fixture(scope="module")
def gmf_model(gmf_fit):
    return gmf_fit[0]


def _network(model):
    """The model's network rebuilt from its saved weights (the engine's own loading path)."""
    net = model._recipe.build(model.hyperParameters, len(model.userIds), len(model.itemIds))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.weights().items()})
    return net.eval()


# --------------------------------------------------------------------------- forward passes by hand


def test_neural_mf_forward_and_loss_by_hand():
    net = BiasedDot(n_users=2, n_items=2, dim=2, init_std=0.1, mean=3.0)
    with torch.no_grad():
        net.user.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net.item.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        net.user_bias.weight.copy_(torch.tensor([[0.5], [-0.5]]))
        net.item_bias.weight.copy_(torch.tensor([[0.1], [0.2]]))
    batch = {"users": torch.tensor([0, 1]), "items": torch.tensor([1, 0]), "ratings": torch.tensor([4.0, 3.0])}
    # user 0 x item 1: 3 + 0.5 + 0.2 + (1*2 + 2*1) = 7.7; user 1 x item 0: 3 - 0.5 + 0.1 + 0 = 2.6
    prediction, _ = net(batch["users"], batch["items"])
    assert prediction.tolist() == pytest.approx([7.7, 2.6])
    # MSE (3.7^2 + 0.4^2) / 2 plus 0.1 x mean penalty: (5 + 5 + 0.25 + 0.04 + 1 + 1 + 0.25 + 0.01) / 2
    expected = (3.7**2 + 0.4**2) / 2 + 0.1 * (10.29 + 2.26) / 2
    loss = NEURAL_MF.loss(net, batch, {"regParam": 0.1}, 0)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_gmf_forward_and_loss_by_hand():
    net = GMFNet(n_users=2, n_items=2, dim=2, init_std=0.1)
    with torch.no_grad():
        net.user.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net.item.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        net.out.weight.copy_(torch.tensor([[1.0, 0.5]]))
        net.out.bias.copy_(torch.tensor([-0.5]))
    batch = {"users": torch.tensor([0, 1]), "items": torch.tensor([1, 0]), "labels": torch.tensor([1.0, 0.0])}
    # p0 * q1 = [2, 2] -> 2 + 1 - 0.5 = 2.5 (a positive); p1 * q0 = [0, 0] -> -0.5 (a negative)
    logits, _ = net(batch["users"], batch["items"])
    assert logits.tolist() == pytest.approx([2.5, -0.5])
    expected = (math.log1p(math.exp(-2.5)) + math.log1p(math.exp(-0.5))) / 2  # -log sigmoid(2.5), -log(1 - sigmoid(-0.5))
    assert float(GMF_RECIPE.loss(net, batch, {"regParam": 0.0}, 0).detach()) == pytest.approx(expected, rel=1e-6)


def test_gmf_with_item_bias_exports_factors_equal_to_its_logits():
    torch.manual_seed(0)
    net = GMFNet(n_users=3, n_items=4, dim=2, init_std=0.5, item_bias=True)
    with torch.no_grad():
        net.item_bias.weight.copy_(torch.tensor([[0.5], [-1.0], [0.0], [2.0]]))
        users, items = net.factors()
        u, i = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
        logits, _ = net(u.reshape(-1), i.reshape(-1))
    np.testing.assert_allclose((users @ items.T).reshape(-1).numpy(), logits.numpy(), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- sharding (pure functions)


def _raw_rows(n_users: int = 50, n_items: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(1, n_users + 1, 900), rng.integers(1000, 1000 + n_items, 900)], 1), axis=0)
    return {
        data.USER: pairs[:, 0].astype(np.int64),
        data.ITEM: pairs[:, 1].astype(np.int64),
        data.RATING: rng.integers(1, 6, len(pairs)).astype(np.float32),
        data.VALIDATION: np.zeros(len(pairs), bool),
    }


@pytest.mark.parametrize("recipe_name", ["neural_mf", "gmf"])
def test_rank_sharding_covers_every_training_row_exactly_once_per_epoch(recipe_name):
    recipe = {"neural_mf": NEURAL_MF, "gmf": GMF_RECIPE}[recipe_name]
    rows = _raw_rows()
    user_ids, item_ids = np.unique(rows[data.USER]), np.unique(rows[data.ITEM])
    hp = {**recipe.defaults, "batchSize": 37}
    seen, owners = [], {}
    for rank in range(2):
        mine = data.shard_of(rows[data.USER], rows[data.ITEM], recipe.shard_by, 2) == rank
        shard, _ = data.split_shard({k: v[mine] for k, v in rows.items()}, user_ids, item_ids)
        for batch in recipe.batches(shard, hp, epoch=0, rng=np.random.default_rng([1, 0, rank])):
            keep = batch["labels"].numpy() == 1 if "labels" in batch else slice(None)  # gmf: the positives
            seen += list(zip(batch["users"].numpy()[keep], batch["items"].numpy()[keep], strict=True))
        for u in np.unique(shard.users):
            owners.setdefault(int(u), set()).add(rank)
    expected = sorted(zip(np.searchsorted(user_ids, rows[data.USER]), np.searchsorted(item_ids, rows[data.ITEM]), strict=True))
    assert sorted((int(u), int(i)) for u, i in seen) == [(int(u), int(i)) for u, i in expected]
    if recipe.shard_by == "users":  # every user's rows on one rank
        assert all(len(r) == 1 for r in owners.values())


def test_shards_read_from_parquet_split_the_rows_and_drop_unknown_validation_ids(tmp_path):
    rows = _raw_rows()
    rows[data.VALIDATION] = np.arange(len(rows[data.USER])) % 5 == 0
    table = pa.table({k: pa.array(v) for k, v in rows.items()})
    folder = tmp_path / "rows"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    train = ~rows[data.VALIDATION]
    user_ids, item_ids = np.unique(rows[data.USER][train]), np.unique(rows[data.ITEM][train])
    shards = [data.load_shards(str(folder), user_ids, item_ids, "rows", r, 2) for r in range(2)]
    assert sum(len(t.users) for t, _ in shards) == int(train.sum())
    val_known = rows[data.VALIDATION] & np.isin(rows[data.USER], user_ids) & np.isin(rows[data.ITEM], item_ids)
    assert sum(len(v.users) for _, v in shards) == int(val_known.sum())
    for t, v in shards:
        for s in (t, v):
            assert np.all(np.diff(s.users) >= 0)  # sorted by user
            assert s.users.min(initial=0) >= 0 and s.items.max(initial=0) < len(item_ids)


def test_an_unpickled_job_hands_its_import_path_to_the_processes_it_starts(monkeypatch):
    """torchrun's ranks are fresh interpreters: they find the --py-files code through PYTHONPATH."""
    import pickle

    from recospark.models.neural.job import TrainJob

    monkeypatch.setenv("PYTHONPATH", "/already/there")
    monkeypatch.setattr(sys, "path", [*sys.path, str(ROOT / "tests")])
    job = TrainJob(NEURAL_MF, {"seed": 1}, "rows", np.arange(3), np.arange(2), 1, False)
    copy = pickle.loads(pickle.dumps(job))
    assert copy.hp == {"seed": 1} and copy.recipe.name == "neural_mf"
    exported = os.environ["PYTHONPATH"].split(os.pathsep)
    assert exported[0] == "/already/there" and str(ROOT / "tests") in exported


# --------------------------------------------------------------------------- fitted models


def test_fit_records_history_with_the_validation_metric(mf_model, gmf_model):
    assert [h["epoch"] for h in mf_model.history] == list(range(1, len(mf_model.history) + 1))
    assert 1 <= mf_model.bestEpoch <= len(mf_model.history)
    assert all(h["metric"] == "rmse" and h["val_rmse"] > 0 and h["loss"] > 0 for h in mf_model.history)
    assert all(h["metric"] == "ndcg" and 0 <= h["val_ndcg"] <= 1 for h in gmf_model.history)
    assert len(mf_model.userIds) == 30 and len(mf_model.itemIds) == 20


@pytest.mark.skipif(bool({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ)), reason="the user's OpenMP wait setting is kept")
def test_only_a_lone_local_rank_spins_its_openmp_threads(mf_model, gmf_model):
    """One local rank has the cores to itself (OpenMP's default wait); two ranks may share them (PASSIVE)."""
    assert [r["omp_wait_policy"] for r in gmf_model.trainingRanks] == [None]
    assert [r["omp_wait_policy"] for r in mf_model.trainingRanks] == ["PASSIVE", "PASSIVE"]


def test_a_fit_logs_its_first_and_last_epoch_as_they_come(gmf_fit):
    """Rank 0's epoch lines reach the driver's log at INFO, with the validation metric of the history."""
    model, lines = gmf_fit
    epochs = [line for line in lines if ": epoch " in line]
    assert [line.split(" loss=")[0] for line in epochs] == ["gmf: epoch 1/2", "gmf: epoch 2/2"]
    assert f"val_ndcg={model.history[-1]['val_ndcg']:.4f}" in epochs[-1]


@pytest.mark.parametrize("which", ["mf", "gmf"])
def test_factor_export_scores_equal_the_networks_outputs(which, mf_model, gmf_model):
    model = mf_model if which == "mf" else gmf_model
    users = {r.id: np.array(r.features) for r in model.userFactors.collect()}
    items = {r.id: np.array(r.features) for r in model.itemFactors.collect()}
    assert sorted(users) == model.userIds.tolist() and sorted(items) == model.itemIds.tolist()
    u_rows, i_rows = np.meshgrid(np.arange(len(model.userIds)), np.arange(len(model.itemIds)), indexing="ij")
    with torch.no_grad():
        out, _ = _network(model)(torch.from_numpy(u_rows.ravel()), torch.from_numpy(i_rows.ravel()))
    exported = [users[model.userIds[u]] @ items[model.itemIds[i]] for u, i in zip(u_rows.ravel(), i_rows.ravel(), strict=True)]
    np.testing.assert_allclose(exported, out.numpy(), rtol=1e-5, atol=1e-5)


def test_transform_predicts_with_the_network_and_nan_for_unknown_ids(spark, mf_model):
    pairs = spark.createDataFrame([(1, 101), (2, 105), (999, 101), (1, 9999)], "user_id int, movie_id int")
    got = {(r.user_id, r.movie_id): r.prediction for r in mf_model.transform(pairs).collect()}
    net = _network(mf_model)
    rows = data.rows_of(mf_model.userIds, np.array([1, 2])), data.rows_of(mf_model.itemIds, np.array([101, 105]))
    with torch.no_grad():
        expected, _ = net(torch.from_numpy(rows[0]), torch.from_numpy(rows[1]))
    assert [got[(1, 101)], got[(2, 105)]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert math.isnan(got[(999, 101)]) and math.isnan(got[(1, 9999)])


def test_two_process_fit_is_deterministic(ratings, mf_model):
    tmp = Path(tempfile.gettempdir())
    before, tmpdir = set(tmp.iterdir()), os.environ.get("TMPDIR")
    again = _mf_estimator().fit(ratings)
    # torchrun's log folder went to the launch's own scratch folder, which is gone, and TMPDIR is back
    assert not [p.name for p in set(tmp.iterdir()) - before if p.name.startswith(("torchelastic_", "recospark-torchrun-"))]
    assert os.environ.get("TMPDIR") == tmpdir
    assert again.weightsBytes == mf_model.weightsBytes
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(again.history) == drop(mf_model.history)


def test_save_load_round_trip_and_non_safetensors_weights_are_refused(spark, mf_model, tmp_path):
    path = str(tmp_path / "model")
    mf_model.write().save(path)
    loaded = NeuralMFModel.load(path)
    assert loaded.weightsBytes == mf_model.weightsBytes and loaded.history == mf_model.history
    assert loaded.userIds.tolist() == mf_model.userIds.tolist()
    pairs = spark.createDataFrame([(3, 104)], "user_id int, movie_id int")
    assert loaded.transform(pairs).first().prediction == pytest.approx(mf_model.transform(pairs).first().prediction)
    torch.save({k: torch.from_numpy(v) for k, v in mf_model.weights().items()}, Path(path) / weights.FILE_NAME)
    with pytest.raises(weights.WeightsFormatError, match=r"weights.safetensors: not a safetensors file \(it looks like a zip archive"):
        NeuralMFModel.load(path)
    with pytest.raises(ValueError, match=r"holds a recospark\.models\.neural\.estimator\.NeuralMFModel, not a"):
        GMFModel.load(path)


# --------------------------------------------------------------------------- the executor scorer


def _tied_scorer(spark):
    """A neural_mf network set by hand with exactly representable weights: items 101, 102 and 104
    score the same for every user (same embedding, same bias), so ties decide the lists."""
    user_ids, item_ids = np.array([1, 2, 3], np.int32), np.array([101, 102, 103, 104, 105], np.int32)
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]], np.float32)
    q = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.0, 2.0]], np.float32)
    bu, bi, mu = np.array([0.5, 0.0, -0.5], np.float32), np.array([0.0, 0.0, -1.0, 0.0, -0.5], np.float32), 3.0
    tensors = {
        "user.weight": p,
        "item.weight": q,
        "user_bias.weight": bu[:, None],
        "item_bias.weight": bi[:, None],
        "mean": np.array(mu, np.float32),
    }
    hp = {**NEURAL_MF.defaults, "embeddingDim": 2, "ratingMean": mu}
    sc = spark.sparkContext
    scorer = NeuralBlockScorer(NEURAL_MF, hp, sc.broadcast(weights.to_bytes(tensors)), sc.broadcast(user_ids), item_ids)

    def reference(user: int, item: int) -> float:  # the formula, in plain Python
        u, i = int(np.searchsorted(user_ids, user)), int(np.searchsorted(item_ids, item))
        return mu + float(bu[u]) + float(bi[i]) + float(p[u] @ q[i])

    return scorer, reference, item_ids


def test_block_scorer_lists_equal_a_plain_per_user_reference_ties_included(spark):
    scorer, reference, item_ids = _tied_scorer(spark)
    history_rows = [(1, 103, 4.0), (2, 105, 5.0), (2, 101, 1.0), (3, 104, 2.0), (4, 101, 3.0)]  # user 4: unknown to the model
    history = spark.createDataFrame(history_rows, "user_id int, movie_id int, rating double")
    got: dict[int, list] = {}
    for r in top_n_scored(None, history, scorer, 3).orderBy("user_id", "rank").collect():
        got.setdefault(r.user_id, []).append((r.movie_id, round(r.score, 6)))
    expected = {}
    for user in (1, 2, 3):
        rated = {i for u, i, _ in history_rows if u == user}
        candidates = [(-reference(user, int(i)), int(i)) for i in item_ids if int(i) not in rated]
        expected[user] = [(i, round(-s, 6)) for s, i in sorted(candidates)[:3]]
    assert {u: got[u] for u in (1, 2, 3)} == expected
    assert [m for m, _ in got[1]] == [101, 102, 104]  # a three-way tie at 5.5: ascending movie_id
    assert [m for m, _ in got[4]] == [102, 104, 105]  # unknown user: mu + b_i, ties by movie_id


class _Held:
    """A broadcast as a Python worker holds it: an object with `.value`."""

    def __init__(self, value):
        self.value = value


def _mf_tensors(n_users: int, n_items: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user.weight": rng.normal(size=(n_users, 2)).astype(np.float32),
        "item.weight": rng.normal(size=(n_items, 2)).astype(np.float32),
        "user_bias.weight": np.zeros((n_users, 1), np.float32),
        "item_bias.weight": np.zeros((n_items, 1), np.float32),
        "mean": np.array(3.0, np.float32),
    }


def test_a_worker_never_scores_with_the_network_of_other_weights_of_the_same_recipe():
    """Two fits of one recipe in one application (the validation fit, then the final fit on more items).
    A worker frees a broadcast when the driver unpersists it, and the next one may sit at the same
    address: one holder whose value changes is that case made certain. Each fit's scores must come
    from its own weights (a CI run once scored the final fit with the validation fit's network)."""
    hp = {**NEURAL_MF.defaults, "embeddingDim": 2, "ratingMean": 3.0}
    users = np.array([1, 2], np.int32)
    history = ([np.array([], np.int32)] * 2, [np.array([], np.float32)] * 2)
    held, user_ids = _Held(b""), _Held(users)
    for n_items, seed in ((4, 1), (6, 2), (6, 3)):
        tensors = _mf_tensors(2, n_items, seed)
        held.value = weights.to_bytes(tensors)
        got = NeuralBlockScorer(NEURAL_MF, hp, held, user_ids, np.arange(1, n_items + 1, dtype=np.int32)).score(users, *history)
        assert got.shape == (2, n_items)
        np.testing.assert_allclose(got, 3.0 + tensors["user.weight"] @ tensors["item.weight"].T, rtol=1e-5)


class _ScoredMF(NeuralMFRecipe):
    """neural_mf's network as if it were not a dot product: its model ranks through blockScorer()."""

    name = "scored_mf"
    dot_product = False


def test_a_scorer_model_ranks_through_its_block_scorer_and_survives_save_load(spark, tmp_path):
    from recospark.scoring import recommend_for

    scorer, reference, item_ids = _tied_scorer(spark)
    _, model_cls = neural_pair(_ScoredMF(), "ScoredMF")
    history = spark.createDataFrame([(1, 103, 4.0), (2, 105, 5.0), (3, 104, 2.0)], "user_id int, movie_id int, rating float")
    hp = scorer.hp
    model = model_cls(hp, scorer.user_ids_bc.value, item_ids, scorer.weights_bc.value, [{"epoch": 1}], 1, {"trainRows": history}, [])
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Python workers cannot import this test module
    try:
        assert not hasattr(model, "scoringFactors") and hasattr(model, "blockScorer")
        recs = {(r.user_id, r.rank): r.movie_id for r in recommend_for(model, history, 2).collect()}
        assert recs == {(1, 1): 101, (1, 2): 102, (2, 1): 101, (2, 2): 102, (3, 1): 101, (3, 2): 102}
        model.write().save(str(tmp_path / "m"))
        loaded = model_cls.load(str(tmp_path / "m"))
        assert sorted(tuple(r) for r in loaded.trainRows.collect()) == sorted(tuple(r) for r in history.collect())
        pairs = spark.createDataFrame([(2, 103), (7, 103)], "user_id int, movie_id int")
        got = {r.user_id: r.prediction for r in loaded.transform(pairs).collect()}
        assert got[2] == pytest.approx(reference(2, 103)) and math.isnan(got[7])
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_pair_predictions_run_the_network_and_give_nan_for_unknown_ids(spark):
    scorer, reference, _ = _tied_scorer(spark)
    pairs = spark.createDataFrame([(1, 103), (3, 105), (9, 101), (1, 999)], "user_id int, movie_id int")
    history = spark.createDataFrame([(1, 101, 4.0)], "user_id int, movie_id int, rating double")
    got = {(r.user_id, r.movie_id): r.prediction for r in predict_pairs(pairs, history, scorer).collect()}
    assert got[(1, 103)] == pytest.approx(reference(1, 103)) and got[(3, 105)] == pytest.approx(reference(3, 105))
    assert math.isnan(got[(9, 101)]) and math.isnan(got[(1, 999)])


# --------------------------------------------------------------------------- failures and the preflight


class _FailingRecipe(NeuralMFRecipe):
    name = "failing_mf"

    def build(self, hp, n_users, n_items):
        if os.environ.get("RANK") == "1":
            raise ValueError("planted failure in build")
        return super().build(hp, n_users, n_items)


def test_a_failed_rank_fails_the_fit_with_one_clear_error(ratings):
    estimator_cls, _ = neural_pair(_FailingRecipe(), "FailingMF")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the ranks cannot import this test module
    try:
        with pytest.raises(RuntimeError) as caught:
            estimator_cls(maxIter=1, numProcesses=2).fit(ratings)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert str(caught.value) == "failing_mf: training failed on rank 1 of 2: ValueError: planted failure in build"


def test_without_torch_the_preflight_names_the_extra_and_the_params_still_load():
    """torch and safetensors blocked (as if not installed): the estimators, their Params and the
    recipes import, and require_torch raises the one-line UserError the console maps to exit code 2."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["safetensors"] = None
        from recospark.errors import UserError
        from recospark.models.neural import require_torch
        from recospark.models.neural.estimator import GMF, NeuralMF
        assert NeuralMF().getOrDefault("embeddingDim") == NeuralMF().getEmbeddingDim()
        assert GMF().getNumNegatives() == 4
        try:
            require_torch("neural_mf")
        except UserError as err:
            print(err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "train.models includes neural_mf, which needs PyTorch (torch, safetensors not installed): pip install 'recospark[neural]'"
    )
