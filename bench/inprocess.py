"""DSGD's blocks and epochs in this process, without Spark: the engine's own setup pass
(`pack_partition`) and epoch loop (`plan_single.train_in_task`) on numpy arrays. Used by the kernel
benchmark, bench_dsgd.py (the kernel alone on the same sub-blocks) and tune_sgd.py."""

from __future__ import annotations

import dataclasses

import numpy as np

from recospark.models.sgd.epochs import Progress
from recospark.models.sgd.estimator import SGDMatrixFactorization
from recospark.models.sgd.layout import ITEM_SALT, USER_SALT, Index
from recospark.models.sgd.plan_single import SinglePlan, train_in_task
from recospark.models.sgd.settings import TaskConfig, engine_params
from recospark.models.sgd.setup_pass import pack_partition
from recospark.models.sgd.source import Source
from recospark.models.sgd.store import blob_name
from recospark.models.sgd.stratum import group_factors


def blocked(u, i, r, v=None, *, B=2, K=2, rank=32, reg=0.05, bias_reg=0.01, init_std=0.02, seed=42, threads=1):
    """(TaskConfig, Source, users, items) for ratings (u, i, r) with validation flags v."""
    import pyarrow as pa

    u, i, r = np.asarray(u, np.int64), np.asarray(i, np.int64), np.asarray(r, np.float32)
    v = np.zeros(len(r), bool) if v is None else np.asarray(v, bool)
    uidx, iidx = Index.build(u[~v], seed, B, K, USER_SALT), Index.build(i[~v], seed, B, K, ITEM_SALT)
    rows = []
    for kind, m in (("R", ~v), ("V", v)):
        batch = pa.RecordBatch.from_pydict({"user": u[m].astype(np.int32), "item": i[m].astype(np.int32), "r": r[m]})
        rows += [b.to_pydict() for b in pack_partition(iter([batch]), kind=kind, seed=seed, B=B, K=K, run_id=None, part=0)]
    sub_counts, part_counts, streamed, rsum = {}, {}, {}, 0.0
    for d in rows:
        for kind, G, J, a, b, n, s, blob in zip(d["kind"], d["G"], d["J"], d["a"], d["b"], d["n"], d["rsum"], d["blob"], strict=False):
            sub_counts[(kind, G, J, a, b)] = n
            part_counts[(kind, G, J, a, b)] = 1
            streamed[blob_name(blob)] = blob
            rsum += s if kind == "R" else 0.0
    n_train = sum(n for k, n in sub_counts.items() if k[0] == "R")
    params = engine_params(SGDMatrixFactorization(rank=rank, regParam=reg, biasRegParam=bias_reg, initStd=init_std, seed=seed,
                                                  numBlocks=B, innerBlocks=K, earlyStoppingRounds=0))
    cfg = TaskConfig(params=params, run_id="inprocess", B=B, K=K, mu=rsum / n_train, threads=threads, tasks=1, users=uidx,
                     items=iidx, sub_counts=sub_counts, part_counts=part_counts)
    source = Source(cfg, None, streamed)
    source.prefetch(list(sub_counts), threads)
    users = {G: group_factors(cfg, "U", G) for G in range(B)}
    items = {J: group_factors(cfg, "I", J) for J in range(B)}
    return cfg, source, users, items


def epochs(cfg, source, users, items, *, lr, decay=0.93, epochs=40, schedule="decay", validation=True):
    """The engine's epoch loop as the single task runs it (history entries); factors updated in place."""
    params = dataclasses.replace(cfg.params, maxIter=epochs, stepDecay=decay, schedule=schedule, earlyStoppingRounds=0)
    plan = SinglePlan(cfg=dataclasses.replace(cfg, params=params), progress=Progress(lr=lr), max_epochs=epochs, validation=validation)
    return [h.to_dict() for h in train_in_task(plan, users, items, source).history]
