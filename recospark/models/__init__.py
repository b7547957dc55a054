"""The models (`table.py` lists them) and the one signal the stages give them about each other.

`OVERLAP_PROPERTY` is the Spark local property `recospark.runtime.for_each_model` sets to "true"
on its threads while it runs models side by side (`train.concurrent_fits` > 1): a fit that would
claim every core for itself (a neural rank spinning its OpenMP threads) must not then.
"""

OVERLAP_PROPERTY = "recospark.modelsOverlap"
