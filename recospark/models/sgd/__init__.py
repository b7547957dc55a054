"""recospark's own model: matrix factorization by stratified distributed SGD (DSGD).

The picture
-----------
Users and items are hashed into B outer groups of K inner blocks; the ratings of user inner
block (G, a) on item inner block (J, b) form sub-block (G, J, a, b). An epoch is B strata:
stratum S pairs every user group G with item group (G + S) mod B, so no two pairs share a row,
and inside a stratum K inner steps do the same for the inner blocks, one thread per sub-block.
The schedule depends on (seed, B, K, epoch) only, so every plan and thread count gives
bit-identical factors.

Ratings are packed once (the setup pass) and stay where they were packed, in an executor-local
store; only factor blocks move. Two execution plans run the same epochs:

* single task (local mode): one fat task runs every epoch on its threads, factors in memory;
* multi task (a cluster): one task per executor, one Spark stage per stratum; user groups stay
  in their task and item groups move to the next stratum's task.

The driver sees scalars only: counts, loss sums per block and timings, never factors or ratings.

Which module does what
----------------------
params.py          the estimator's Params and their defaults (the one schema of every knob)
estimator.py       `pyspark.ml` Estimator/Model with ALS's API: `from recospark.models.sgd.estimator
                   import SGDMatrixFactorization`
settings.py        `DSGDParams` (the Params by name, built by `engine_params`) and `TaskConfig`
dsgd.py            `fit_dsgd`: setup pass, then the plan; `DSGDResult`
run.py             one run's driver state, execution plan (tasks x threads) and cleanup
setup_pass.py      the one pass that cuts ratings into partial sub-blocks (task and driver halves)
plan_single.py     the single-task plan: the driver's job loop and the fat task
plan_multi.py      the multi-task plan: the driver's stage chain per epoch and the stage tasks
epochs.py          the one epoch loop: step schedule, early stopping, best epoch, typed history
stratum.py         one stratum in a task: inner steps on threads, the kernels' calls, validation
source.py          where a task's sub-blocks come from: streamed, or the store (merged once)
pool.py            per Python worker: kernels loaded once, the thread pool
layout.py          hashing ids into blocks, the index, the strata schedule and ownership
codec.py           blobs: sub-blocks, factor blocks and indexes as self-describing bytes
store.py           the executor-local store: files per run, read through shared memory maps
kernel_squared.py  the compiled squared-loss SGD loop (numba; imports nothing from Spark)
kernel_ranking.py  the compiled BPR and WARP loops over one sub-block
export.py          factor blocks -> BIASED_FACTORS rows
records.py         the run's typed records: execution plan, job stats, run info

This package imports nothing itself: Python workers import the kernels and the block code
without paying for pyspark.ml and pandas. No module under it imports `params.py` or
`estimator.py` except the estimator itself.
"""
