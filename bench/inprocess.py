"""DSGD's sub-blocks in this process, without Spark, for the kernel micro-benchmarks: the engine's
own setup pass (`pack_partition`) and layout on numpy arrays, so bench_sgd_kernel.py and
bench_dsgd.py (the kernel alone on the same sub-blocks) time the kernels on what a task holds.
Training a model is the estimator's job (`recospark.models.table.MODELS`), never this module's."""

from __future__ import annotations

import numpy as np

from recospark.models.sgd.layout import ITEM_SALT, USER_SALT, Index
from recospark.models.sgd.settings import DSGDParams, TaskConfig
from recospark.models.sgd.setup_pass import pack_partition
from recospark.models.sgd.source import Source
from recospark.models.sgd.store import blob_name
from recospark.models.sgd.stratum import group_factors


def blocked(u, i, r, v=None, *, params: DSGDParams, threads: int = 1):
    """(TaskConfig, Source, users, items) for ratings (u, i, r) with validation flags v, cut as the
    engine cuts them for `params` (the model table's settings: `engine_params(MODELS[...].build(cfg))`)."""
    import pyarrow as pa

    B, K, seed = params.numBlocks, params.innerBlocks, params.seed
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
    cfg = TaskConfig(
        params=params,
        run_id="inprocess",
        B=B,
        K=K,
        mu=rsum / n_train,
        threads=threads,
        tasks=1,
        users=uidx,
        items=iidx,
        sub_counts=sub_counts,
        part_counts=part_counts,
    )
    source = Source(cfg, None, streamed)
    source.prefetch(list(sub_counts), threads)
    users = {G: group_factors(cfg, "U", G) for G in range(B)}
    items = {J: group_factors(cfg, "I", J) for J in range(B)}
    return cfg, source, users, items
