"""The compiled SGD kernels, the block layout and the DSGD worker functions, without Spark."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import sgd_reference as ref

from recospark.models.sgd import codec, layout, plan_multi, plan_single, pool, setup_pass, stratum
from recospark.models.sgd import kernel_squared as K
from recospark.models.sgd import store as store_module
from recospark.models.sgd.epochs import EpochCosts, EpochMetrics, EpochRecord, Progress, TaskProgress, advance, total
from recospark.models.sgd.estimator import SGDMatrixFactorization
from recospark.models.sgd.export import blobs_to_factor_rows
from recospark.models.sgd.run import cleanup_task
from recospark.models.sgd.settings import TaskConfig, engine_params
from recospark.models.sgd.source import Source, build_index
from recospark.models.sgd.store import Store, blob_name

ATOL, RTOL = ref.KERNEL_TOLERANCE


def _problem(seed=0, n=3000, nu=60, ni=45, k=8):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, nu, n).astype(np.int32)
    i = rng.integers(0, ni, n).astype(np.int32)
    r = rng.uniform(1, 5, n).astype(np.float32)
    P = rng.normal(0, 0.1, (nu, k)).astype(np.float32)
    Q = rng.normal(0, 0.1, (ni, k)).astype(np.float32)
    bu = rng.normal(0, 0.1, nu).astype(np.float32)
    bi = rng.normal(0, 0.1, ni).astype(np.float32)
    return u, i, r, P, Q, bu, bi


# --- kernels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_order", [False, True])
def test_kernel_equals_float64_reference_within_tolerance(with_order):
    u, i, r, P, Q, bu, bi = _problem()
    order = np.random.default_rng(1).permutation(len(r)).astype(np.int64) if with_order else K.NO_ORDER
    compiled = [a.copy() for a in (P, Q, bu, bi)]
    reference = [a.astype(np.float64) for a in (P, Q, bu, bi)]
    for _ in range(3):  # a few passes so differences would compound
        s1 = K.sgd_block(u, i, r, order, *compiled, 3.5, 0.02, 0.05, 0.01)
        s2 = ref.reference_sgd(u, i, r, order if with_order else None, *reference, 3.5, 0.02, 0.05, 0.01)
        assert s1 == pytest.approx(s2, rel=RTOL)
    for a, b in zip(compiled, reference):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    assert not np.allclose(compiled[0], P)  # it did update


def test_kernel_on_read_only_views_equals_kernel_on_copies():
    """The worker passes memory-mapped (read-only) ratings and row-range views of the factors."""
    u, i, r, P, Q, bu, bi = _problem(n=500)
    ro = [K._readonly(x) for x in (u, i, r)]
    a = [x.copy() for x in (P, Q, bu, bi)]
    big = [np.vstack([np.zeros((3, P.shape[1]), np.float32), P.copy()]), np.vstack([Q.copy(), np.ones((2, Q.shape[1]), np.float32)])]
    bbu, bbi = np.concatenate([np.zeros(3, np.float32), bu]), np.concatenate([bi, np.ones(2, np.float32)])
    s1 = K.sgd_block(u, i, r, K.NO_ORDER, *a, 3.0, 0.03, 0.02, 0.01)
    s2 = K.sgd_block(*ro, K.NO_ORDER, big[0][3:], big[1][:-2], bbu[3:], bbi[:-2], 3.0, 0.03, 0.02, 0.01)
    assert s1 == s2
    np.testing.assert_array_equal(a[0], big[0][3:])
    np.testing.assert_array_equal(a[1], big[1][:-2])
    assert np.all(big[0][:3] == 0) and np.all(big[1][-2:] == 1)  # rows outside the views untouched


def test_order_matters_and_is_respected():
    u, i, r, P, Q, bu, bi = _problem(n=500)
    a = [x.copy() for x in (P, Q, bu, bi)]
    b = [x.copy() for x in (P, Q, bu, bi)]
    rev = np.arange(len(r) - 1, -1, -1, dtype=np.int64)
    K.sgd_block(u, i, r, rev, *a, 3.0, 0.05, 0.0, 0.0)
    K.sgd_block(u[::-1].copy(), i[::-1].copy(), r[::-1].copy(), K.NO_ORDER, *b, 3.0, 0.05, 0.0, 0.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_sse_block_matches_reference_and_does_not_update():
    u, i, r, P, Q, bu, bi = _problem()
    before = [x.copy() for x in (P, Q, bu, bi)]
    s = K.sse_block(u, i, r, P, Q, bu, bi, 3.2)
    assert s == pytest.approx(ref.reference_sse(u, i, r, P, Q, bu, bi, 3.2), rel=1e-5)
    for x, y in zip(before, (P, Q, bu, bi)):
        np.testing.assert_array_equal(x, y)


def test_sgd_reduces_error_on_learnable_data():
    rng = np.random.default_rng(3)
    nu, ni, k = 80, 60, 3
    U, V = rng.normal(0, 1, (nu, k)), rng.normal(0, 1, (ni, k))
    u = rng.integers(0, nu, 4000).astype(np.int32)
    i = rng.integers(0, ni, 4000).astype(np.int32)
    r = (3 + np.sum(U[u] * V[i], axis=1)).astype(np.float32)
    P = rng.normal(0, 0.3, (nu, k)).astype(np.float32)
    Q = rng.normal(0, 0.3, (ni, k)).astype(np.float32)
    bu, bi = np.zeros(nu, np.float32), np.zeros(ni, np.float32)
    first = K.sgd_block(u, i, r, K.NO_ORDER, P, Q, bu, bi, 3.0, 0.02, 0.0, 0.0)
    for _ in range(60):
        last = K.sgd_block(u, i, r, K.NO_ORDER, P, Q, bu, bi, 3.0, 0.02, 0.0, 0.0)
    assert last < 0.1 * first


def test_warm_up_returns_seconds():
    assert K.warm_up() >= 0
    assert pool.ensure_warm() >= 0 and pool.ensure_warm() == 0.0  # once per process


# --- layout, blobs, schedule ------------------------------------------------------------------


def test_sub_block_blob_round_trip_and_csr():
    users = np.array([0, 0, 2, 2, 2, 3], np.int32)
    items = np.array([1, 4, 0, 2, 3, 1], np.int32)
    ratings = np.arange(6, dtype=np.float32)
    sub = codec.decode_sub(codec.encode_sub("R", 1, 2, 0, 1, users, items, ratings))
    assert (sub.G, sub.J, sub.a, sub.b) == (1, 2, 0, 1)
    np.testing.assert_array_equal(sub.users, users)
    np.testing.assert_array_equal(sub.items, items)
    np.testing.assert_array_equal(sub.ratings, ratings)
    indptr = sub.indptr(5)
    assert indptr.tolist() == [0, 2, 2, 5, 6, 6]
    fb = layout.init_factors("I", 3, [np.array([5, 9], np.int32), np.array([], np.int32), np.array([1], np.int32)], 4, 0.1, 7)
    assert fb.lo.tolist() == [0, 2, 2, 3] and fb.ids.tolist() == [5, 9, 1] and fb.factors.shape == (3, 4)
    back = codec.decode_factors(codec.encode_factors(fb))
    for x, y in zip(fb[2:], back[2:]):
        np.testing.assert_array_equal(x, y)
    assert back.kind == "I" and back.group == 3
    again = layout.init_factors("I", 3, [np.array([5, 9], np.int32), np.array([], np.int32), np.array([1], np.int32)], 4, 0.1, 7)
    np.testing.assert_array_equal(fb.factors, again.factors)


def test_schedule_is_seeded_and_each_step_is_row_disjoint():
    assert layout.strata_order(1, 3, 5) == layout.strata_order(1, 3, 5)
    assert sorted(layout.strata_order(1, 3, 5)) == list(range(5))
    assert len({tuple(layout.strata_order(1, e, 5)) for e in range(10)}) > 1
    for first in range(5):  # rotated to start where the item groups already are
        order = layout.strata_order(1, 3, 5, first=first)
        assert order[0] == first and sorted(order) == list(range(5))
    B, Kb = 3, 4
    seen = []
    for shift in layout.strata_order(9, 0, B):
        for step in layout.step_blocks(9, 0, shift, range(B), B, Kb):
            users = [(G, a) for G, J, a, b in step]
            items = [(J, b) for G, J, a, b in step]
            assert len(set(users)) == len(users) and len(set(items)) == len(items)
            seen += step
    # one epoch visits every (G, J, a, b) exactly once
    assert sorted(seen) == sorted((G, J, a, b) for G in range(B) for J in range(B) for a in range(Kb) for b in range(Kb))


def test_progress_matches_the_schedules():
    pr = Progress(lr=0.1)
    pr, best = advance(pr, 1.0, 0.9, early_rounds=2, schedule="decay", step_decay=0.5, last_shift=3)
    assert best and pr.epoch == 1 and pr.lr == pytest.approx(0.05) and pr.offset == 3 and pr.best_epoch == 1
    pr, best = advance(pr, 0.8, 0.95, early_rounds=2, schedule="decay", step_decay=0.5, last_shift=0)
    assert not best and not pr.stopped and pr.best_epoch == 1
    pr, best = advance(pr, 0.7, 0.96, early_rounds=2, schedule="decay", step_decay=0.5, last_shift=0)
    assert pr.stopped and pr.best_epoch == 1
    b = Progress(lr=0.1)
    b, _ = advance(b, 1.0, None, early_rounds=0, schedule="bold_driver", step_decay=1.0, last_shift=0)
    assert b.lr == pytest.approx(0.105)
    b, _ = advance(b, 1.2, None, early_rounds=0, schedule="bold_driver", step_decay=1.0, last_shift=0)
    assert b.lr == pytest.approx(0.0525) and b.best_epoch == 2


def test_a_task_prints_its_first_and_last_epoch_and_one_line_per_interval_between():
    import io

    now = [0.0]
    out = io.StringIO()
    progress = TaskProgress(max_iter=6, every_s=30.0, clock=lambda: now[0], out=out)
    for epoch, at in zip(range(1, 7), (10.0, 20.0, 35.0, 50.0, 66.0, 70.0), strict=True):
        now[0] = at
        metrics = EpochMetrics("bpr", 0.5 / epoch, None, 100 * epoch, 10)
        progress(EpochRecord(epoch, metrics, 0.01, 0, EpochCosts()))
    lines = out.getvalue().splitlines()
    # epoch 1 (first), epoch 4 at 50 s (>= 30 s after 10 s), epoch 6 (last); not 2, 3 or 5
    assert [line.split()[4] for line in lines] == ["1/6", "4/6", "6/6"]
    assert "bpr train_loss=0.1250 updates=400" in lines[1] and lines[2].endswith("(70 s in this task)")
    progress.finish(Progress(epoch=6))  # ran to maxIter: nothing more to say
    progress.finish(Progress(epoch=9, best_epoch=6, stopped=True))
    assert out.getvalue().splitlines()[3:] == ["recospark DSGD task: early stopping after epoch 9, best epoch 6"]


# --- the worker functions on a tiny blocked problem -------------------------------------------


def _pack(users, items, r, v, seed, B, Kb, parts=3):
    """The setup pass on `parts` input partitions of training and of validation ratings, as
    mapInArrow runs it: partial blobs."""
    pa = pytest.importorskip("pyarrow")
    out = []
    for kind, mask in (("R", ~v), ("V", v)):
        idx = np.flatnonzero(mask)
        for part, chunk in enumerate(np.array_split(idx, parts)):
            batch = pa.RecordBatch.from_pydict(
                {"user": users[chunk].astype(np.int32), "item": items[chunk].astype(np.int32), "r": r[chunk].astype(np.float32)}
            )
            for res in setup_pass.pack_partition(iter([batch]), kind=kind, seed=seed, B=B, K=Kb, run_id=None, part=part):
                out.append(res.to_pandas())
    return pd.concat(out, ignore_index=True)


def _blocked(tmp_path, B=2, Kb=2, n=2500, nu=70, ni=50, rank=6, val_share=0.1, seed=0, threads=2, tasks=1, parts=3):
    """A tiny learnable problem cut into blocks by the worker's own setup pass, partials in a store."""
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, nu, n), rng.integers(0, ni, n)], 1), axis=0)
    users, items = pairs[:, 0].astype(np.int64) + 1, pairs[:, 1].astype(np.int64) + 1
    U, V = rng.normal(0, 0.6, (nu + 1, 2)), rng.normal(0, 0.6, (ni + 1, 2))
    r = np.clip(3.5 + np.sum(U[users] * V[items], axis=1) + rng.normal(0, 0.3, len(users)), 1, 5).astype(np.float32)
    v = rng.random(len(users)) < val_share
    # the index as the driver builds it for several tasks (the single task builds the same itself)
    uidx = layout.Index.build(users[~v], seed, B, Kb, layout.USER_SALT)
    iidx = layout.Index.build(items[~v], seed, B, Kb, layout.ITEM_SALT)
    packed = _pack(users, items, r, v, seed, B, Kb, parts)
    run_id = uuid.uuid4().hex
    store = Store(run_id, str(tmp_path))
    for blob in packed.blob:
        store.put(blob_name(blob), blob)
    meta = packed.groupby(["kind", "G", "J", "a", "b"]).agg(n=("n", "sum"), rsum=("rsum", "sum"), parts=("n", "size"))
    sub_counts = {k: int(x) for k, x in meta.n.items()}
    part_counts = {k: int(x) for k, x in meta.parts.items()}
    r_rows = meta.loc["R"]
    n_train = int(r_rows.n.sum())
    params = engine_params(
        SGDMatrixFactorization(rank=rank, regParam=0.02, biasRegParam=0.01, initStd=0.1, seed=seed, numBlocks=B, innerBlocks=Kb)
    )
    cfg = TaskConfig(
        params=params,
        run_id=run_id,
        B=B,
        K=Kb,
        mu=float(r_rows.rsum.sum() / n_train),
        threads=threads,
        tasks=tasks,
        users=uidx,
        items=iidx,
        sub_counts=sub_counts,
        part_counts=part_counts,
        root=str(tmp_path),
    )
    df = pd.DataFrame({"user": users, "item": items, "r": r, "v": v})
    return cfg, packed, df, n_train


def test_index_and_setup_pass_cut_every_rating_into_sorted_sub_blocks(tmp_path):
    cfg, _packed, df, n_train = _blocked(tmp_path)
    train = df[~df.v]
    assert n_train == len(train)  # every training rating lands in exactly one sub-block
    known, _G, _a, _ul = cfg.users.lookup(train.user.to_numpy())
    assert known.all()
    for g in range(cfg.B):  # inner blocks: ids ascending, rows 0..n-1, group = hash block // K
        for inner in range(cfg.K):
            ids = cfg.users.block(g, inner)
            assert np.all(np.diff(ids) > 0)
            assert np.all(layout.hash_blocks(ids, cfg.params.seed, cfg.B * cfg.K, layout.USER_SALT) == g * cfg.K + inner)
    # the single task builds the same index from the training sub-blocks alone
    built = build_index(TaskConfig(**{**cfg.__dict__, "users": None, "items": None}), Source(cfg, cfg.store()))
    for mine, theirs in zip(built, (cfg.users, cfg.items)):
        np.testing.assert_array_equal(mine.ids, theirs.ids)
        np.testing.assert_array_equal(mine.starts, theirs.starts)
    again = codec.decode_index(codec.encode_index(cfg.users))
    np.testing.assert_array_equal(again.ids, cfg.users.ids) and np.testing.assert_array_equal(again.starts, cfg.users.starts)
    source = Source(cfg, cfg.store())
    seen = 0
    for (kind, G_, J_, a_, b_), n in cfg.sub_counts.items():
        if kind != "R":
            continue
        sub = source.sub(kind, G_, J_, a_, b_)  # merged from its partials
        keys = sub.users.astype(np.int64) * 100000 + sub.items
        assert np.all(np.diff(keys) > 0) and len(sub.ratings) == n  # sorted by (user, item), no duplicates
        users = cfg.users.block(G_, a_)[sub.users]
        items = cfg.items.block(J_, b_)[sub.items]
        got = sorted(zip(users.tolist(), items.tolist(), sub.ratings.tolist()))
        want = train[train.user.isin(cfg.users.block(G_, a_)) & train.item.isin(cfg.items.block(J_, b_))]
        assert got == sorted(zip(want.user.tolist(), want.item.tolist(), want.r.astype(np.float32).tolist()))
        seen += n
    assert seen == n_train and not source.missing
    # the merged sub-blocks do not depend on how the input was partitioned
    cfg1, packed1, *_ = _blocked(tmp_path, parts=1)
    one = Source(cfg1, None, {blob_name(b): b for b in packed1.blob})
    for key in cfg.sub_counts:
        x, y = one.sub(*key), source.sub(*key)
        for p_, q_ in zip(x[4:], y[4:]):
            np.testing.assert_array_equal(p_, q_)
    # validation keeps only rows whose user and item have training ratings
    val = df[df.v]
    known_val = val[val.user.isin(train.user) & val.item.isin(train.item)]
    assert sum(n for k, n in cfg.sub_counts.items() if k[0] == "V") == len(known_val) > 0


def _load(cfg):
    source = Source(cfg, cfg.store())
    users = {G: stratum.group_factors(cfg, "U", G) for G in range(cfg.B)}
    items = {J: stratum.group_factors(cfg, "I", J) for J in range(cfg.B)}
    return users, items, source


def test_threaded_inner_strata_visit_every_rating_once_on_disjoint_rows(tmp_path, monkeypatch):
    """Every rating is visited exactly once per epoch, and no two kernel calls running at the
    same time (on different threads) touch the same user or item row."""
    cfg, _packed, _, n_train = _blocked(tmp_path, B=2, Kb=3, threads=4)
    users, items, source = _load(cfg)
    calls, lock = [], threading.Lock()
    real = stratum.sgd_block

    def spy(u, i, r, order, P, Q, bu, bi, *args):
        t0 = time.perf_counter()
        time.sleep(0.002)  # widen the window so concurrent calls overlap
        sse = real(u, i, r, order, P, Q, bu, bi, *args)
        pbase = P.__array_interface__["data"][0]
        qbase = Q.__array_interface__["data"][0]
        with lock:
            calls.append((t0, time.perf_counter(), threading.get_ident(), (pbase, pbase + P.nbytes), (qbase, qbase + Q.nbytes), len(r)))
        return sse

    monkeypatch.setattr(stratum, "sgd_block", spy)
    sums, trace = {}, []
    for shift in layout.strata_order(cfg.params.seed, 0, cfg.B):
        stratum.train_stratum(cfg, shift, list(range(cfg.B)), users, items, source, lr=0.01, epoch=0, sums=sums, trace=trace)
    # visits: each non-empty sub-block once, every training rating once
    assert sum(c[5] for c in calls) == n_train == total(sums)[1]
    assert sorted((G, J, a, b) for _, _, G, J, a, b, *_ in trace) == sorted(k[1:] for k in cfg.sub_counts if k[0] == "R")
    # per inner step, the user row ranges and item row ranges are pairwise disjoint
    by_step = {}
    for shift, t, G, J, _a, _b, urows, irows, _n in trace:
        by_step.setdefault((shift, t), []).append(((G, urows), (J, irows)))
    for entries in by_step.values():
        for x in range(len(entries)):
            for y in range(x + 1, len(entries)):
                (g1, u1), (j1, i1) = entries[x]
                (g2, u2), (j2, i2) = entries[y]
                assert g1 != g2 or u1[1] <= u2[0] or u2[1] <= u1[0]
                assert j1 != j2 or i1[1] <= i2[0] or i2[1] <= i1[0]
    # at run time: calls overlapping in time (several threads did run) never share a byte of P or Q
    assert len({c[2] for c in calls}) > 1
    overlapping = 0
    for x in range(len(calls)):
        for y in range(x + 1, len(calls)):
            a_, b_ = calls[x], calls[y]
            if a_[0] < b_[1] and b_[0] < a_[1]:
                overlapping += 1
                assert a_[3][1] <= b_[3][0] or b_[3][1] <= a_[3][0]
                assert a_[4][1] <= b_[4][0] or b_[4][1] <= a_[4][0]
    assert overlapping > 0


def _plan(cfg, progress=None, max_iter=3, max_epochs=3, early_rounds=0, schedule="decay", step_decay=0.9, validation=True):
    """The single task's plan; the epoch loop's knobs are the settings' (it keeps the best epoch when early_rounds > 0)."""
    params = dataclasses.replace(cfg.params, maxIter=max_iter, earlyStoppingRounds=early_rounds, schedule=schedule, stepDecay=step_decay)
    return plan_single.SinglePlan(
        cfg=dataclasses.replace(cfg, params=params), progress=progress or Progress(lr=0.03), max_epochs=max_epochs, validation=validation
    )


def _run_single(cfg, records=(), **kw):
    cfg = TaskConfig(**{**cfg.__dict__, "users": None, "items": None})  # as in Spark: the task builds its index
    rows = list(plan_single.single_task(0, iter(records), plan=_plan(cfg, **kw)))
    stats = json.loads(rows[0][2])
    return stats, {(k, g): codec.decode_factors(b) for k, g, b in rows[1:]}


def test_single_task_is_deterministic_across_threads_and_jobs(tmp_path):
    cfg, *_ = _blocked(tmp_path, threads=1)
    s1, f1 = _run_single(cfg)
    s4, f4 = _run_single(TaskConfig(**{**cfg.__dict__, "threads": 4}))
    assert s1["missing"] == 0 and s1["finished"] and len(s1["history"]) == 3
    assert [h["train_rmse"] for h in s1["history"]] == [h["train_rmse"] for h in s4["history"]]
    for key in f1:
        np.testing.assert_array_equal(f1[key].factors, f4[key].factors)
        np.testing.assert_array_equal(f1[key].biases, f4[key].biases)
    # the same 3 epochs as three one-epoch jobs (factors kept in the store in between)
    pr, factors = Progress(lr=0.03), None
    for _ in range(3):
        st, factors = _run_single(cfg, max_epochs=1, progress=pr)
        pr = Progress(**st["progress"])
    assert st["finished"]
    for key in f1:
        np.testing.assert_array_equal(f1[key].factors, factors[key].factors)
    assert {n for n in cfg.store().names() if n.startswith("P")} <= {f"P{k}-{g}-v2" for k in "UI" for g in range(cfg.B)}


def test_single_task_reports_missing_blocks_and_accepts_them_streamed(tmp_path):
    cfg, packed, _, n_train = _blocked(tmp_path)
    _resident_stats, resident = _run_single(cfg)
    cfg.store().destroy()
    stats, factors = _run_single(cfg)
    assert stats["missing"] > 0 and not factors  # nothing trained on partial data
    streamed = list(packed.itertuples())  # Rows with .blob, as the driver streams them
    stats, factors = _run_single(cfg, records=streamed)
    assert stats["missing"] == 0
    assert stats["streamed_bytes"] == sum(len(b) for b in packed[packed.kind == "R"].blob) <= n_train * 12 + 64 * len(packed)
    assert stats["merge_seconds"] >= 0
    assert stats["streamed_val_bytes"] == sum(len(b) for b in packed[packed.kind == "V"].blob)
    for key in resident:
        np.testing.assert_array_equal(resident[key].factors, factors[key].factors)
    # the stream was written to the store: the next job needs no input
    stats, _ = _run_single(cfg)
    assert stats["missing"] == 0 and stats["streamed_bytes"] == 0


def test_single_task_early_stopping_keeps_the_best_epoch(tmp_path):
    cfg, *_ = _blocked(tmp_path, val_share=0.3)
    stats, factors = _run_single(cfg, max_iter=30, max_epochs=30, early_rounds=2, progress=Progress(lr=0.1), step_decay=1.0)
    h = stats["history"]
    best = min(h, key=lambda x: x["val_rmse"])
    assert stats["progress"]["stopped"] and len(h) == best["epoch"] + 2
    # the exported factors are the best epoch's: rerun exactly that many epochs without stopping
    _, again = _run_single(cfg, max_iter=best["epoch"], max_epochs=30, progress=Progress(lr=0.1), step_decay=1.0)
    for key in factors:
        np.testing.assert_array_equal(factors[key].factors, again[key].factors)


def test_multi_task_stages_equal_the_single_task(tmp_path):
    """Two tasks, one stage per stratum, item groups moving between them: bit-identical factors."""
    cfg1, _packed, _, n_train = _blocked(tmp_path, B=4, Kb=2, threads=2)
    _, single = _run_single(cfg1, validation=False)
    cfg = TaskConfig(**{**cfg1.__dict__, "tasks": 2, "threads": 1})
    E = cfg.tasks
    state = {t: list(plan_multi.initial_state(t, [], cfg=cfg, shift=0)) for t in range(E)}
    pr = Progress(lr=0.03)
    for epoch in range(3):
        order = layout.strata_order(cfg.params.seed, epoch, cfg.B, first=pr.offset)
        for k, shift in enumerate(order):
            nxt = order[k + 1] if k + 1 < len(order) else shift
            plan = plan_multi.StagePlan(cfg, epoch, shift, next_shift=nxt, lr=pr.lr, first=k == 0)
            out = [rec for t in range(E) for rec in plan_multi.stratum_task(t, state[t], plan=plan)]
            state = {t: [rec for rec in out if rec[0] == t] for t in range(E)}  # the shuffle
        stats = [s for t in range(E) for s in plan_multi.extract_stats(state[t])]
        sse, n = total({k: v for s in stats for k, v in s.sums.items()})
        assert n == n_train and all(s.missing == 0 for s in stats)
        pr, _ = advance(pr, float(np.sqrt(sse / n)), None, early_rounds=0, schedule="decay", step_decay=0.9, last_shift=order[-1])
    blobs = [row for t in range(E) for row in plan_multi.state_blobs(state[t])]
    multi = {(k, g): codec.decode_factors(b) for k, g, b in blobs}
    assert multi.keys() == single.keys()
    for key in single:
        np.testing.assert_array_equal(single[key].factors, multi[key].factors)
        np.testing.assert_array_equal(single[key].biases, multi[key].biases)


def test_blobs_to_factor_rows_gives_biased_factor_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    fb = layout.init_factors("U", 0, [np.array([3, 8], np.int32), np.array([5], np.int32)], 3, 0.1, 1)
    batch = pa.RecordBatch.from_pydict({"blob": [codec.encode_factors(fb)]})
    out = list(blobs_to_factor_rows(iter([batch]), chunk=2))
    table = pa.Table.from_batches(out)
    assert table.column("id").to_pylist() == [3, 8, 5]
    np.testing.assert_array_equal(np.array(table.column("features").to_pylist(), np.float32), fb.factors)
    assert table.schema.field("features").type == pa.list_(pa.float32())


def test_cleanup_task_deletes_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "store_root", lambda: str(tmp_path))
    store = Store("run-x")
    store.put("R-0-0-0-0", b"x")
    assert store.get("R-0-0-0-0") is not None
    [(path, existed)] = list(cleanup_task(0, iter([1, 2]), run_id="run-x"))
    assert existed and path == store.dir and not store.has("R-0-0-0-0")
