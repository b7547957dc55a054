"""recospark's own model: matrix factorization by stratified distributed SGD (DSGD).

params.py     Params of the estimator and the model, and the one source of their defaults
kernel.py     the compiled per-block SGD loop (numba; imports nothing from Spark)
dsgd.py       the distributed driver: blocked ratings/factor RDDs, strata, schedule, early stopping
estimator.py  `pyspark.ml` Estimator/Model with ALS's API (transform, save/load, top-N)
"""

from recospark.models.sgd.estimator import SGDMatrixFactorization, SGDMatrixFactorizationModel

__all__ = ["SGDMatrixFactorization", "SGDMatrixFactorizationModel"]
