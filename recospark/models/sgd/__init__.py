"""recospark's own model: matrix factorization by stratified distributed SGD (DSGD).

params.py     Params of the estimator and the model, and the one source of their defaults
kernel.py     the compiled per-block SGD loop (numba; imports nothing from Spark)
ranking.py    the compiled BPR and WARP block loops
blocks.py     sub-block and factor-block encoding, hashing ids into blocks, the executor-local store
worker.py     what runs in Python workers: the setup pass and the epochs' tasks
dsgd.py       the distributed driver: plan, setup pass, strata, schedule, early stopping
estimator.py  `pyspark.ml` Estimator/Model with ALS's API: `from recospark.models.sgd.estimator
              import SGDMatrixFactorization`

This package imports nothing itself: Python workers import it for the kernels and the block
code, and would otherwise pay for pyspark.ml and pandas (about 0.5 s per fresh worker).
"""
