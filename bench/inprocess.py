"""DSGD's blocks and epochs in this process, without Spark: the worker's own setup pass
(`pack_partition`) and epoch loop (`run_epochs`) on numpy arrays. Used by the kernel benchmark,
bench_dsgd.py (the kernel alone on the same sub-blocks) and tune_sgd.py."""

from __future__ import annotations

import numpy as np

from recospark.models.sgd import blocks as bk
from recospark.models.sgd import worker as W
from recospark.models.sgd.blocks import Progress


def blocked(u, i, r, v=None, *, B=2, K=2, rank=32, reg=0.05, bias_reg=0.01, init_std=0.02, seed=42, threads=1):
    """(TaskConfig, Source, users, items) for ratings (u, i, r) with validation flags v."""
    import pyarrow as pa

    u, i, r = np.asarray(u, np.int64), np.asarray(i, np.int64), np.asarray(r, np.float32)
    v = np.zeros(len(r), bool) if v is None else np.asarray(v, bool)
    uidx, iidx = bk.Index.build(u[~v], seed, B, K, W.USER_SALT), bk.Index.build(i[~v], seed, B, K, W.ITEM_SALT)
    rows = []
    for kind, m in (("R", ~v), ("V", v)):
        batch = pa.RecordBatch.from_pydict({"user": u[m].astype(np.int32), "item": i[m].astype(np.int32), "r": r[m]})
        rows += [b.to_pydict() for b in W.pack_partition(iter([batch]), kind=kind, seed=seed, B=B, K=K, run_id=None, part=0)]
    sub_counts, part_counts, streamed, rsum = {}, {}, {}, 0.0
    for d in rows:
        for kind, G, J, a, b, n, s, blob in zip(d["kind"], d["G"], d["J"], d["a"], d["b"], d["n"], d["rsum"], d["blob"], strict=False):
            sub_counts[(kind, G, J, a, b)] = n
            part_counts[(kind, G, J, a, b)] = 1
            streamed[W.blob_name(blob)] = blob
            rsum += s if kind == "R" else 0.0
    n_train = sum(n for k, n in sub_counts.items() if k[0] == "R")
    cfg = W.TaskConfig(run_id="inprocess", B=B, K=K, rank=rank, reg=reg, bias_reg=bias_reg, init_std=init_std, seed=seed,
                       mu=rsum / n_train, threads=threads, tasks=1, users=uidx, items=iidx, sub_counts=sub_counts,
                       part_counts=part_counts)
    source = W.Source(cfg, None, streamed)
    source.prefetch(list(sub_counts), threads)
    users = {G: W.group_factors(cfg, "U", G) for G in range(B)}
    items = {J: W.group_factors(cfg, "I", J) for J in range(B)}
    return cfg, source, users, items


def epochs(cfg, source, users, items, *, lr, decay=0.93, epochs=40, schedule="decay", validation=True):
    """The single-task epoch loop (history entries); factors updated in place."""
    plan = W.SinglePlan(cfg=cfg, progress=Progress(lr=lr), max_iter=epochs, max_epochs=epochs, early_rounds=0,
                        schedule=schedule, step_decay=decay, validation=validation, keep_best=False)
    history, _, _ = W.run_epochs(plan, users, items, source)
    return history
