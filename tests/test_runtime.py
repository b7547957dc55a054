"""recospark.runtime.for_each_model: per-model work on driver threads."""

from __future__ import annotations

import threading
import time

import pytest

from recospark.models import OVERLAP_PROPERTY
from recospark.models.neural import launch
from recospark.runtime import for_each_model


def test_results_come_back_in_model_order_and_work_overlaps():
    names = ["als", "sgd", "bias", "global_mean"]
    seen_threads = set()

    def work(name):
        seen_threads.add(threading.current_thread().name)
        time.sleep(0.05 * (4 - names.index(name)))  # the first model finishes last
        return name.upper()

    assert for_each_model(None, work, names) == ["ALS", "SGD", "BIAS", "GLOBAL_MEAN"]
    assert len(seen_threads) > 1
    assert for_each_model(None, work, ["als"]) == ["ALS"]
    assert for_each_model(None, work, []) == []


def test_an_error_is_raised_after_every_started_model_finished():
    finished = []

    def work(name):
        if name == "bad":
            raise ValueError("bad model")
        time.sleep(0.1)
        finished.append(name)
        return name

    with pytest.raises(ValueError, match="bad model"):
        for_each_model(None, work, ["bad", "a", "b"])
    assert sorted(finished) == ["a", "b"]


def test_threads_see_the_callers_spark_local_properties(spark):
    sc = spark.sparkContext
    sc.setLocalProperty("recospark.test", "caller")
    try:
        seen = for_each_model(spark, lambda _: sc.getLocalProperty("recospark.test"), ["a", "b", "c"])
        counts = for_each_model(spark, lambda n: spark.range(n).count(), [3, 5])
    finally:
        sc.setLocalProperty("recospark.test", None)
    assert seen == ["caller"] * 3
    assert counts == [3, 5]


def test_models_side_by_side_tell_a_neural_fit_that_its_cores_are_shared(spark):
    """A lone local rank spins its OpenMP threads; not when another model may fit beside it."""
    free = lambda _: launch._cores_free(spark)  # noqa: E731
    assert free(None)
    assert for_each_model(spark, free, ["a", "b"]) == [False, False]
    assert for_each_model(spark, free, ["a", "b"], threads=1) == [True, True]
    assert for_each_model(spark, free, ["a"]) == [True]
    assert spark.sparkContext.getLocalProperty(OVERLAP_PROPERTY) is None and free(None)
