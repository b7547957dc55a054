"""The neural recipes without Spark or the engine: forward passes and losses against hand-computed
cases (tiny networks whose weights the tests set), `score` against the forward pass, and the
batches' coverage and seeding.

Every expected number below is worked out in the comments from the weights set by hand; none is
produced by the recipe under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from recospark.models.neural import weights  # noqa: E402
from recospark.models.neural.estimator import SHARED_DOCS  # noqa: E402
from recospark.models.neural.recipe import TrainShard  # noqa: E402
from recospark.models.neural.recipes.autoencoders import AUTOREC, MULT_DAE, MULT_VAE, user_batches  # noqa: E402
from recospark.models.neural.recipes.deep import DNN, RESIDUAL_MF  # noqa: E402
from recospark.models.neural.recipes.ncf import NEUMF  # noqa: E402
from recospark.models.neural.recipes.rbm import RBM  # noqa: E402

ALL = [DNN, RESIDUAL_MF, AUTOREC, MULT_VAE, MULT_DAE, RBM, NEUMF]
BY_USER = [AUTOREC, MULT_VAE, MULT_DAE, RBM]


def _set(param: torch.Tensor, values: list) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=torch.float32).reshape(param.shape))


def _hp(recipe, **overrides):
    hp = {**recipe.defaults, "ratingMean": 3.0, "seed": 7}
    hp.update(overrides)
    return hp


def _t(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _log_loss(logit: float, label: float) -> float:
    """-[y log s(z) + (1 - y) log(1 - s(z))]."""
    return -(label * math.log(_sigmoid(logit)) + (1 - label) * math.log(1 - _sigmoid(logit)))


@pytest.fixture(scope="module")
def shard() -> TrainShard:
    """60 users x 50 items, about 600 ratings 1..5, sorted by (user, item) as shard_by="users" gives."""
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 60 * 50, 700))
    users, items = keys // 50, keys % 50
    return TrainShard(users.astype(np.int64), items.astype(np.int64), rng.integers(1, 6, len(keys)).astype(np.float32), 60, 50)


# --- forward passes and losses, by hand -------------------------------------------------------


def test_dnn_forward_loss_and_score_by_hand():
    hp = _hp(DNN, embeddingDim=1, hiddenLayers=[1], dropout=0.0, regParam=0.1)
    net = DNN.build(hp, 2, 2)
    _set(net.user.weight, [1.0, 2.0])
    _set(net.item.weight, [0.5, -1.0])
    _set(net.first.weight, [1.0, 1.0])
    _set(net.first.bias, [0.0])
    _set(net.head.weight, [2.0])
    _set(net.head.bias, [0.5])
    net.eval()
    # (user 1, item 0): relu(2 + 0.5) = 2.5 -> 2 * 2.5 + 0.5 = 5.5 -> + mu 3 = 8.5
    # (user 0, item 1): relu(1 - 1) = 0 -> 0.5 -> 3.5
    batch = {"users": _t([1, 0]), "items": _t([0, 1]), "ratings": _t([4.0, 3.0], torch.float32)}
    prediction, _ = net(batch["users"], batch["items"])
    assert prediction.tolist() == pytest.approx([8.5, 3.5])
    # MSE ((8.5-4)^2 + (3.5-3)^2) / 2 = 10.25; penalty mean((2^2 + 0.5^2), (1^2 + 1^2)) = 3.125, times 0.1
    assert DNN.loss(net, batch, hp, 0).item() == pytest.approx(10.25 + 0.3125)
    # user -1 takes the mean user embedding 1.5: item 0 relu(2) -> 4.5 -> 7.5; item 1 relu(0.5) -> 1.5 -> 4.5
    scores = DNN.score(net, np.array([1, -1]), [np.zeros(0, np.int64)] * 2, [np.zeros(0, np.float32)] * 2)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [[8.5, 5.5], [7.5, 4.5]], rtol=1e-5, atol=1e-6)


def test_residual_mf_forward_and_loss_by_hand():
    hp = _hp(RESIDUAL_MF, embeddingDim=1, hiddenLayers=[1], dropout=0.0, regParam=0.5)
    net = RESIDUAL_MF.build(hp, 2, 2)
    assert net.head.weight.detach().abs().sum().item() + net.head.bias.detach().abs().sum().item() == 0.0  # starts as plain biased MF
    _set(net.user.weight, [1.0, -2.0])
    _set(net.item.weight, [0.5, 1.0])
    _set(net.user_bias.weight, [0.25, 0.0])
    _set(net.item_bias.weight, [0.0, -0.5])
    _set(net.first.weight, [1.0, 1.0])
    _set(net.first.bias, [0.0])
    _set(net.head.weight, [-1.0])
    _set(net.head.bias, [0.1])
    net.eval()
    # (0, 0): 3 + 0.25 + 0 + 1*0.5 + (-relu(1.5) + 0.1 = -1.4) = 2.35
    # (1, 1): 3 + 0 - 0.5 + (-2*1) + (-relu(-1) + 0.1 = 0.1) = 0.6
    batch = {"users": _t([0, 1]), "items": _t([0, 1]), "ratings": _t([3.0, 1.0], torch.float32)}
    prediction, _ = net(batch["users"], batch["items"])
    assert prediction.tolist() == pytest.approx([2.35, 0.6])
    # MSE ((2.35-3)^2 + (0.6-1)^2)/2 = (0.4225 + 0.16)/2 = 0.29125
    # penalty (1 + 0.25 + 0.0625 + 0) and (4 + 1 + 0 + 0.25): mean 3.28125, times 0.5
    assert RESIDUAL_MF.loss(net, batch, hp, 0).item() == pytest.approx(0.29125 + 0.5 * 3.28125)


def _tiny_autorec(centering: bool):
    hp = _hp(AUTOREC, hiddenUnits=1, regParam=0.2, userCentering=centering)
    net = AUTOREC.build(hp, 2, 2)
    _set(net.encoder.item_weight, [1.0, -1.0])
    _set(net.encoder.bias, [0.0])
    _set(net.decoder.weight, [2.0, 1.0])
    _set(net.decoder.bias, [0.5, 0.0])
    return hp, net


def test_autorec_forward_masked_loss_and_score_by_hand():
    hp, net = _tiny_autorec(centering=False)  # the paper's raw ratings
    # user 0 rated both items 3: V r = 0, h = 0.5, output [1.5, 0.5]
    # user 1 rated item 0 only, 3: h = s(3), output [2 s(3) + 0.5, s(3)]; item 1 is no target
    batch = {"rows": _t([0, 0, 1]), "items": _t([0, 1, 0]), "ratings": _t([3.0, 3.0, 3.0], torch.float32), "n_rows": _t(2)}
    s3 = _sigmoid(3.0)
    squared = (1.5 - 3) ** 2 + (0.5 - 3) ** 2 + (2 * s3 + 0.5 - 3) ** 2
    # penalty 0.5 * 0.2 * (||V||^2 + ||W||^2 = 2 + 5) over the 3 observed ratings
    assert AUTOREC.loss(net, batch, hp, 0).item() == pytest.approx(squared / 3 + 0.5 * 0.2 * 7 / 3)
    scores = AUTOREC.score(
        net, np.array([5, -1]), [np.array([0, 1]), np.array([0])], [np.array([3.0, 3.0], np.float32), np.array([3.0], np.float32)]
    )
    np.testing.assert_allclose(scores, [[1.5, 0.5], [2 * s3 + 0.5, s3]], rtol=1e-5, atol=1e-6)


def test_autorec_user_centering_by_hand():
    hp, net = _tiny_autorec(centering=True)
    # user 0 rated 4 and 2 (mean 3): input and targets [1, -1], V x = 2, h = s(2), output [2 s(2) + 0.5, s(2)]
    # user 1 rated item 0 with 5 (mean 5): input and target [0], h = 0.5, output [1.5, 0.5]
    batch = {"rows": _t([0, 0, 1]), "items": _t([0, 1, 0]), "ratings": _t([4.0, 2.0, 5.0], torch.float32), "n_rows": _t(2)}
    s2 = _sigmoid(2.0)
    squared = (2 * s2 + 0.5 - 1) ** 2 + (s2 + 1) ** 2 + 1.5**2
    assert AUTOREC.loss(net, batch, hp, 0).item() == pytest.approx(squared / 3 + 0.5 * 0.2 * 7 / 3)
    # scores add the user's mean back; a user without history gets the mean training rating (3)
    scores = AUTOREC.score(
        net, np.array([0, -1]), [np.array([0, 1]), np.zeros(0, np.int64)], [np.array([4.0, 2.0], np.float32), np.zeros(0, np.float32)]
    )
    np.testing.assert_allclose(scores, [[2 * s2 + 0.5 + 3, s2 + 3], [1.5 + 3, 0.5 + 3]], rtol=1e-5, atol=1e-6)


def _tiny_vae_like(recipe, **overrides):
    hp = _hp(recipe, hiddenLayers=[], latentDim=1, dropout=0.0, **overrides)
    return hp, recipe.build(hp, 3, 2)


def test_mult_vae_forward_and_loss_by_hand():
    hp, net = _tiny_vae_like(MULT_VAE, betaMax=0.4, annealEpochs=4)
    encoder, decoder = net.encoder[0], net.decoder[0]
    _set(encoder.item_weight, [[2.0, 0.0], [0.0, 0.0]])  # mu = 2 x0 / ||x||, logvar = 0
    _set(encoder.bias, [0.0, 0.0])
    _set(decoder.weight, [[1.0], [-1.0]])  # logits [z, -z]
    _set(decoder.bias, [0.0, 0.0])
    net.eval()  # z = mu, no dropout
    # one user who clicked item 0 only: x = [1, 0], mu = 2, logits [2, -2]
    batch = {"rows": _t([0]), "items": _t([0]), "ratings": _t([4.0], torch.float32), "n_rows": _t(1), "progress": _t(1.0, torch.float64)}
    log_p0 = 2 - math.log(math.exp(2) + math.exp(-2))
    kl = 0.5 * (1 + 4 - 1 - 0)  # 0.5 (exp(logvar) + mu^2 - 1 - logvar)
    beta = 0.4 * 1.0 / 4
    assert MULT_VAE.loss(net, batch, hp, 0).item() == pytest.approx(-log_p0 + beta * kl)
    # a user who clicked both: x / ||x|| = [0.7071, 0.7071], mu = sqrt(2); scores are the logits at z = mu
    scores = MULT_VAE.score(net, np.array([0, 1]), [np.array([0]), np.array([0, 1])], [np.ones(1, np.float32), np.ones(2, np.float32)])
    np.testing.assert_allclose(scores, [[2.0, -2.0], [math.sqrt(2), -math.sqrt(2)]], rtol=1e-5, atol=1e-6)


def test_mult_vae_samples_z_while_training():
    _, net = _tiny_vae_like(MULT_VAE)
    x = (_t([0]), _t([0]), _t([1.0], torch.float32), 1)  # one user who clicked item 0
    net.eval()
    _, mu, logvar = net(*x)
    net.train()
    torch.manual_seed(0)
    logits, _, _ = net(*x)
    torch.manual_seed(0)
    eps = torch.randn(1, 1)
    z = mu + eps * torch.exp(0.5 * logvar)  # the reparameterisation, with the same noise
    assert logits.detach().numpy() == pytest.approx(net.decoder(z).detach().numpy())


def test_mult_dae_forward_and_loss_by_hand():
    hp, net = _tiny_vae_like(MULT_DAE, regParam=0.01)
    encoder, decoder = net.encoder[0], net.decoder[0]
    _set(encoder.item_weight, [1.0, 0.0])  # code tanh(x0 / ||x||)
    _set(encoder.bias, [0.0])
    _set(decoder.weight, [[1.0], [-1.0]])
    _set(decoder.bias, [0.0, 0.0])
    net.eval()
    t = math.tanh(1.0)  # x = [1, 0]: code tanh(1), logits [t, -t]
    batch = {"rows": _t([0]), "items": _t([0]), "ratings": _t([2.0], torch.float32), "n_rows": _t(1)}
    log_p0 = t - math.log(math.exp(t) + math.exp(-t))
    assert MULT_DAE.loss(net, batch, hp, 0).item() == pytest.approx(-log_p0 + 0.01 * 3)  # weights 1 + 1 + 1
    scores = MULT_DAE.score(net, np.array([-1]), [np.array([0])], [np.ones(1, np.float32)])
    np.testing.assert_allclose(scores, [[t, -t]], rtol=1e-5, atol=1e-6)


def _tiny_rbm():
    """2 items, rating values [1, 2], 1 hidden unit with a huge bias (so h = 1 when sampled)."""
    hp = _hp(RBM, hiddenUnits=1, ratingValues=[1.0, 2.0], cdSteps=1, regParam=0.1)
    net = RBM.build(hp, 1, 2)
    _set(net.weight, [0.5, -0.5, 0.25, 1.0])  # W[(item, level)]: (0,0) (0,1) (1,0) (1,1)
    _set(net.visible_bias, [[0.0, 1.0], [0.5, 0.0]])
    _set(net.hidden_bias, [30.0])
    return hp, net


def test_rbm_free_energy_cd_loss_and_gradient_by_hand():
    hp, net = _tiny_rbm()
    # one user who rated item 0 with 2 (level 1); item 1 is not a visible unit of this user
    batch = {"rows": _t([0]), "items": _t([0]), "levels": _t([1]), "n_rows": _t(1)}
    # F(v0) = -b[0,1] - softplus(c + W[0,1]) = -1 - softplus(29.5)
    f0 = -1.0 - math.log1p(math.exp(29.5))
    # h = 1 surely; v1 over item 0 = softmax(b[0] + W[0]) = softmax([0.5, 0.5]) = [0.5, 0.5], item 1 masked out
    # F(v1) = -(0.5 * 0 + 0.5 * 1) - softplus(30 + 0.5 * 0.5 + 0.5 * -0.5) = -0.5 - softplus(30)
    f1 = -0.5 - math.log1p(math.exp(30.0))
    penalty = 0.1 * (0.25 + 0.25 + 0.0625 + 1.0)
    loss = RBM.loss(net, batch, hp, 0)
    assert loss.item() == pytest.approx(f0 - f1 + penalty, abs=1e-5)  # float32 near 30
    loss.backward()
    # the visible biases' gradient is -(v0 - v1): the negated CD-1 update
    np.testing.assert_allclose(net.visible_bias.grad.numpy(), [[0.5, -0.5], [0.0, 0.0]], atol=1e-6)


def test_rbm_mean_field_prediction_by_hand():
    _, net = _tiny_rbm()
    with torch.no_grad():
        _set(net.hidden_bias, [0.0])
    # rated item 0 with 2: p = s(0 + W[0,1]) = s(-0.5); item 1 logits [0.5 + 0.25 p, 0 + 1.0 p]
    p = _sigmoid(-0.5)
    l0, l1 = 0.5 + 0.25 * p, 1.0 * p
    expected_item1 = (1.0 * math.exp(l0) + 2.0 * math.exp(l1)) / (math.exp(l0) + math.exp(l1))
    i0, i1 = 0.0 + 0.5 * p, 1.0 - 0.5 * p
    expected_item0 = (1.0 * math.exp(i0) + 2.0 * math.exp(i1)) / (math.exp(i0) + math.exp(i1))
    scores = RBM.score(net, np.array([0]), [np.array([0])], [np.array([2.0], np.float32)])
    np.testing.assert_allclose(scores, [[expected_item0, expected_item1]], rtol=1e-5, atol=1e-6)


def _tiny_neumf(**overrides):
    hp = _hp(NEUMF, embeddingDim=1, mlpLayers=[2, 1], alpha=0.25, regParam=0.0, **overrides)
    net = NEUMF.build(hp, 2, 2)
    _set(net.gmf_user.weight, [1.0, 2.0])
    _set(net.gmf_item.weight, [3.0, -1.0])
    _set(net.gmf_out.weight, [0.5])
    _set(net.gmf_out.bias, [-1.0])
    _set(net.mlp_user.weight, [1.0, -1.0])
    _set(net.mlp_item.weight, [0.5, 2.0])
    _set(net.mlp[0].weight, [1.0, 1.0])
    _set(net.mlp[0].bias, [0.0])
    _set(net.mlp_out.weight, [2.0])
    _set(net.mlp_out.bias, [0.0])
    return hp, net


def test_neumf_forward_losses_and_score_by_hand():
    hp, net = _tiny_neumf(pretrainIter=1)
    # (0, 0): gmf 0.5 * 3 - 1 = 0.5; mlp 2 * relu(1 + 0.5) = 3
    # (1, 1): gmf 0.5 * -2 - 1 = -2; mlp 2 * relu(-1 + 2) = 2
    batch = {"users": _t([0, 1]), "items": _t([0, 1]), "labels": _t([1.0, 0.0], torch.float32)}
    gmf, mlp, _ = net(batch["users"], batch["items"])
    assert gmf.tolist() == pytest.approx([0.5, -2.0])
    assert mlp.tolist() == pytest.approx([3.0, 2.0])
    # epoch 0 < pretrainIter: each tower's own log loss, summed
    pretrain = (_log_loss(0.5, 1) + _log_loss(-2, 0)) / 2 + (_log_loss(3, 1) + _log_loss(2, 0)) / 2
    assert NEUMF.loss(net, batch, hp, 0).item() == pytest.approx(pretrain)
    # afterwards the fused logit 0.25 gmf + 0.75 mlp: 2.375 and 1.0
    assert NEUMF.loss(net, batch, hp, 1).item() == pytest.approx((_log_loss(2.375, 1) + _log_loss(1.0, 0)) / 2)
    # scores: (0, 1) gmf 0.5 * -1 - 1 = -1.5, mlp 2 * relu(1 + 2) = 6 -> 4.125; (1, 0): gmf 2, mlp 0 -> 0.5
    scores = NEUMF.score(net, np.array([0, 1]), [], [])
    np.testing.assert_allclose(scores, [[2.375, 4.125], [0.5, 1.0]], rtol=1e-5, atol=1e-6)


# --- score agrees with the forward pass on random networks ------------------------------------


def _histories(shard: TrainShard, users: np.ndarray):
    start, stop = np.searchsorted(shard.users, users, "left"), np.searchsorted(shard.users, users, "right")
    return [shard.items[a:b] for a, b in zip(start, stop)], [shard.ratings[a:b] for a, b in zip(start, stop)]


@pytest.mark.parametrize("recipe", [DNN, RESIDUAL_MF, NEUMF], ids=lambda r: r.name)
def test_pair_models_score_every_item_as_the_forward_pass(recipe, shard, monkeypatch):
    from recospark.models.neural.recipes import deep_nets

    # one user per chunk of scored pairs: the chunks are stitched in order
    monkeypatch.setattr(deep_nets, "_PAIRS_PER_CHUNK", shard.n_items)
    torch.manual_seed(0)
    net = recipe.build(_hp(recipe), shard.n_users, shard.n_items).eval()
    users = np.array([0, 7, 59])
    scores = recipe.score(net, users, *_histories(shard, users))
    pairs_u, pairs_i = np.repeat(users, shard.n_items), np.tile(np.arange(shard.n_items), len(users))
    with torch.no_grad():
        out = net(torch.from_numpy(pairs_u), torch.from_numpy(pairs_i))
    forward = out[0] if recipe is not NEUMF else 0.5 * out[0] + 0.5 * out[1]
    assert scores.shape == (3, shard.n_items) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.ravel(), forward.numpy(), rtol=1e-5, atol=1e-5)
    if recipe is not NEUMF:
        np.testing.assert_allclose(recipe.predict(net, pairs_u, pairs_i, [], []), forward.numpy(), rtol=1e-5, atol=1e-5)


def _dense_forward(recipe, net, x: torch.Tensor) -> torch.Tensor:
    """The plain reference: each network's eval-mode output from the dense [users, items] input, as the papers write it."""
    from torch.nn import functional as F

    if recipe is RBM:
        return net(x)[0] @ torch.arange(1.0, 6.0)  # the expected rating over levels 1..5
    if recipe is AUTOREC:
        return net.decoder(torch.sigmoid(x @ net.encoder.item_weight + net.encoder.bias))
    first = net.encoder[0]
    code = net.encoder[1:](F.normalize(x, dim=1) @ first.item_weight + first.bias)
    return net.decoder(code[:, : net.latent] if recipe is MULT_VAE else code)  # mult_vae scores at z = mu


@pytest.mark.parametrize("recipe", BY_USER, ids=lambda r: r.name)
def test_user_models_score_from_the_history_as_the_dense_forward_pass(recipe, shard):
    torch.manual_seed(0)
    net = recipe.build(_hp(recipe, hiddenLayers=[8], latentDim=4, hiddenUnits=6), shard.n_users, shard.n_items).eval()
    users = np.array([3, 10])
    hist_items, hist_ratings = _histories(shard, users)
    scores = recipe.score(net, users, hist_items, hist_ratings)
    x = torch.zeros(2, shard.n_items) if recipe is not RBM else torch.zeros(2, shard.n_items, 5)
    for row, (items, ratings) in enumerate(zip(hist_items, hist_ratings)):
        if recipe is RBM:
            x[row, items, ratings.astype(int) - 1] = 1.0  # ratings 1..5 are levels 0..4
        else:
            x[row, items] = torch.from_numpy(ratings - ratings.mean()) if recipe is AUTOREC else 1.0  # autorec: centred
    with torch.no_grad():
        expected = _dense_forward(recipe, net, x)
    if recipe is AUTOREC:  # the user's mean added back
        expected = expected + torch.tensor([float(r.mean()) for r in hist_ratings])[:, None]
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-5)
    # the user rows are not used: an unknown user (-1) with the same history scores the same
    np.testing.assert_array_equal(recipe.score(net, np.array([-1, -1]), hist_items, hist_ratings), scores)


def test_item_input_is_the_dense_layer_forward_and_backward():
    from recospark.models.neural.recipes.autoencoders_nets import ItemInput

    torch.manual_seed(0)
    linear = torch.nn.Linear(7, 3)
    layer = ItemInput.from_linear(linear)
    rows, items = _t([0, 0, 2, 2, 2]), _t([6, 1, 0, 1, 5])  # row 1 is empty
    values = torch.tensor([0.5, -2.0, 1.0, 3.0, 0.25])
    x = torch.zeros(3, 7)
    x[rows, items] = values
    weight = torch.randn(3, 3)  # a fixed linear function of the output, for the gradients
    (linear(x) * weight).sum().backward()
    out = layer(rows, items, values, 3)
    (out * weight).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), linear(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.item_weight.grad.numpy(), linear.weight.grad.t().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad.numpy(), linear.bias.grad.numpy(), rtol=1e-6, atol=1e-6)
    # rows out of order would sum other rows' entries (offsets come from a sorted search): refused
    with pytest.raises(ValueError, match="rows must be ascending"):
        layer(_t([2, 0, 0]), _t([0, 6, 1]), values[:3], 3)


@pytest.mark.parametrize("recipe", [AUTOREC, MULT_VAE, MULT_DAE], ids=lambda r: r.name)
def test_autoencoder_weights_saved_with_the_dense_input_layer_still_load(recipe, shard):
    torch.manual_seed(0)
    hp = _hp(recipe, hiddenLayers=[8], latentDim=4, hiddenUnits=6)
    net = recipe.build(hp, shard.n_users, shard.n_items).eval()
    # the layout before the item-major input: "<prefix>weight", [width, n_items]
    old = {k.replace("item_weight", "weight"): v.t() if k.endswith("item_weight") else v for k, v in net.state_dict().items()}
    first = "encoder.weight" if recipe is AUTOREC else "encoder.0.weight"
    assert tuple(old[first].shape) == (6 if recipe is AUTOREC else 8, shard.n_items)
    torch.manual_seed(1)
    fresh = recipe.build(hp, shard.n_users, shard.n_items).eval()
    saved = weights.from_bytes(weights.to_bytes({k: v.contiguous().numpy() for k, v in old.items()}))
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()}, strict=True)
    users = np.array([3, 10])
    np.testing.assert_array_equal(
        recipe.score(fresh, users, *_histories(shard, users)), recipe.score(net, users, *_histories(shard, users))
    )


@pytest.mark.parametrize("recipe", ALL, ids=lambda r: r.name)
def test_score_is_deterministic_and_validation_is_finite(recipe, shard):
    torch.manual_seed(0)
    net = recipe.build(_hp(recipe, hiddenLayers=[8], latentDim=4, hiddenUnits=6), shard.n_users, shard.n_items).eval()
    users = np.arange(5)
    first = recipe.score(net, users, *_histories(shard, users))
    assert np.array_equal(first, recipe.score(net, users, *_histories(shard, users)))
    val = TrainShard(shard.users[::7], shard.items[::7], shard.ratings[::7], shard.n_users, shard.n_items)
    keep = np.ones(len(shard.users), bool)
    keep[::7] = False
    train = TrainShard(shard.users[keep], shard.items[keep], shard.ratings[keep], shard.n_users, shard.n_items)
    num, den = recipe.validation(net, train, val, _hp(recipe))
    assert math.isfinite(num) and den > 0
    if recipe.objective == "rating":
        assert den == len(val.users)
    else:
        assert den == len(np.unique(val.users)) and 0.0 <= num <= den


# --- batches: coverage and seeding -------------------------------------------------------------


def _drain(recipe, shard, hp, epoch, seed):
    return list(recipe.batches(shard, hp, epoch, np.random.default_rng(seed)))


@pytest.mark.parametrize("recipe", [DNN, RESIDUAL_MF], ids=lambda r: r.name)
def test_row_batches_cover_the_shard_once(recipe, shard):
    hp = _hp(recipe, batchSize=64)
    batches = _drain(recipe, shard, hp, 0, 1)
    assert all(len(b["users"]) <= 64 for b in batches)
    seen = sorted(zip(*(np.concatenate([b[k].numpy() for b in batches]).tolist() for k in ("users", "items", "ratings"))))
    assert seen == sorted(zip(shard.users.tolist(), shard.items.tolist(), shard.ratings.tolist()))


def test_user_batches_hold_whole_users_and_cover_the_shard_once(shard):
    batches = list(user_batches(shard, 16, np.random.default_rng(1)))
    positions = np.concatenate([p for p, _ in batches])
    assert np.array_equal(np.sort(positions), np.arange(len(shard.users)))  # every row exactly once
    for p, local in batches:
        users = shard.users[p]
        assert local.max() < 16 and np.array_equal(np.unique(local), np.arange(local.max() + 1))
        for r in np.unique(local):  # a batch user is one shard user with all of its rows
            (user,) = np.unique(users[local == r])
            assert np.array_equal(np.sort(p[local == r]), np.flatnonzero(shard.users == user))


@pytest.mark.parametrize("recipe", BY_USER, ids=lambda r: r.name)
def test_user_recipes_batch_every_row_once(recipe, shard):
    batches = _drain(recipe, shard, _hp(recipe, batchSize=16), 0, 1)
    values = "levels" if recipe is RBM else "ratings"
    got = sorted(
        zip(np.concatenate([b["items"].numpy() for b in batches]).tolist(), np.concatenate([b[values].numpy() for b in batches]).tolist())
    )
    expected_values = shard.ratings if recipe is not RBM else shard.ratings.astype(int) - 1  # ratings 1..5 are levels 0..4
    assert got == sorted(zip(shard.items.tolist(), expected_values.tolist()))
    assert sum(int(b["n_rows"]) for b in batches) == len(np.unique(shard.users))


def test_user_batches_positions_by_hand():
    # users 0 (rows 0, 1), 2 (row 2), 5 (rows 3, 4, 5); one batch of all three in the rng's order
    shard = TrainShard(np.array([0, 0, 2, 5, 5, 5]), np.arange(6), np.ones(6, np.float32), 6, 6)
    order = np.random.default_rng(4).permutation(3)
    blocks = {0: [0, 1], 1: [2], 2: [3, 4, 5]}
    ((positions, local),) = list(user_batches(shard, 10, np.random.default_rng(4)))
    assert positions.tolist() == [p for u in order for p in blocks[u]]
    assert local.tolist() == [i for i, u in enumerate(order) for _ in blocks[u]]


def test_neumf_batches_positives_once_and_fresh_negatives(shard):
    hp = _hp(NEUMF, numNegatives=3, batchSize=128)
    batches = _drain(NEUMF, shard, hp, 0, 1)
    users = np.concatenate([b["users"].numpy() for b in batches])
    items = np.concatenate([b["items"].numpy() for b in batches])
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    positives = sorted(zip(users[labels == 1].tolist(), items[labels == 1].tolist()))
    assert positives == sorted(zip(shard.users.tolist(), shard.items.tolist()))
    assert (labels == 0).sum() == 3 * len(shard.users)
    rated = set(zip(shard.users.tolist(), shard.items.tolist()))
    assert not rated & set(zip(users[labels == 0].tolist(), items[labels == 0].tolist()))
    # each user gets numNegatives negatives per rated item
    assert np.array_equal(np.bincount(users[labels == 0], minlength=60), 3 * np.bincount(shard.users, minlength=60))


@pytest.mark.parametrize("recipe", ALL, ids=lambda r: r.name)
def test_batches_are_reproducible_from_the_rng(recipe, shard):
    hp = _hp(recipe, batchSize=32)
    one, again, other = (_drain(recipe, shard, hp, 2, s) for s in (5, 5, 6))
    assert len(one) == len(again)
    for a, b in zip(one, again):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(one, other) for k in a)


def test_mult_vae_anneals_beta_over_epochs(shard):
    hp = _hp(MULT_VAE, batchSize=20, betaMax=0.2, annealEpochs=2)
    assert len(np.unique(shard.users)) == 60
    progress = [float(b["progress"]) for b in _drain(MULT_VAE, shard, hp, 1, 0)]
    assert progress == pytest.approx([1 + (i + 1) / 3 for i in range(3)])  # 60 users in 3 batches
    assert [MULT_VAE.beta(hp, p) for p in (0.5, 1.0, 2.0, 9.0)] == pytest.approx([0.05, 0.1, 0.2, 0.2])


# --- knobs: defaults accepted, bad values refused before any fit ---------------------------------


@pytest.mark.parametrize("recipe", ALL, ids=lambda r: r.name)
def test_defaults_pass_their_bounds_and_checks(recipe):
    assert set(recipe.docs) == set(recipe.defaults) - set(SHARED_DOCS)  # the engine documents the shared knobs a recipe sets
    assert set(recipe.bounds) <= set(recipe.defaults)
    assert all(recipe.bounds[k].problem(recipe.defaults[k]) is None for k in recipe.bounds)
    assert list(getattr(recipe, "check", lambda hp: [])(dict(recipe.defaults))) == []


@pytest.mark.parametrize(
    ("recipe", "knob", "value", "words"),
    [
        (DNN, "hiddenLayers", [], "at least one width"),
        (NEUMF, "mlpLayers", [15, 8], "even width"),
        (NEUMF, "mlpLayers", [16], "at least one layer"),
        (RBM, "ratingValues", [2.0, 1.0], "ascending"),
    ],
)
def test_checks_refuse_what_the_bounds_cannot_say(recipe, knob, value, words):
    (problem,) = recipe.check({**recipe.defaults, knob: value})
    assert knob in problem and words in problem


def test_bounds_refuse_out_of_range_values():
    assert DNN.bounds["embeddingDropout"].problem(1.0) == "< 1"
    assert MULT_VAE.bounds["hiddenLayers"].problem([600, 0]) == ">= 1"
    assert NEUMF.bounds["alpha"].problem(1.5) == "<= 1"


def test_safetensors_whose_header_length_starts_like_a_pickle_load():
    """A header length whose first byte is 0x80 (pickle's first byte) is still safetensors: accepted."""
    from safetensors.numpy import save

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    data = next(d for n in range(200) if (d := save(tensors, metadata={"pad": "x" * n}))[0] == 0x80)
    weights.check_safetensors(data)
    np.testing.assert_array_equal(weights.from_bytes(data)["w"], tensors["w"])
    with pytest.raises(weights.WeightsFormatError, match="it looks like a Python pickle"):
        weights.check_safetensors(b"\x80\x04\x95" + b"\x00" * 20)


def test_training_heap_applies_on_glibc_and_restores():
    import platform

    from recospark.models.neural.distributed import heap_for_large_tensors

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    with heap_for_large_tensors() as applied:
        x = torch.ones(4096, 4096)  # 64 MB: above glibc's largest mmap threshold, from the heap here
        assert float(x.sum()) == 4096 * 4096
        del x
    assert applied
    with heap_for_large_tensors() as again:  # the defaults were restored, so it applies again
        pass
    assert again
