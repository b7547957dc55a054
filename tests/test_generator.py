"""The synthetic generator: deterministic whatever the partitioning, MovieLens-shaped, ingestible."""

from __future__ import annotations

import numpy as np
import pandas as pd
from chispa import assert_df_equality

from recospark import io
from recospark.config import GenerateConf
from recospark.datasets import synthetic
from recospark.stages import generate, ingest


def lines_for(users: list[list[int]], conf: GenerateConf) -> list[str]:
    batches = [pd.DataFrame({"id": np.array(b, dtype=np.int64)}) for b in users]
    return [line for out in synthetic.generate_partition(iter(batches), conf) for line in out["value"]]


def test_rows_do_not_depend_on_batching():
    conf = GenerateConf(users=40, items=300, ratings=2000, layout="ml-10m")
    one = lines_for([list(range(1, 41))], conf)
    many = lines_for([list(range(1, 11)), list(range(11, 33)), list(range(33, 41))], conf)
    assert one == many and len(one) > 1000


def test_shape_long_tail_and_scale():
    conf = GenerateConf(users=400, items=1000, ratings=40_000, layout="ml-1m")
    rows = pd.Series(lines_for([list(range(1, 401))], conf)).str.split("::", expand=True).astype(float)
    per_user = rows[0].value_counts()
    per_item = rows[1].value_counts()
    assert not rows.duplicated([0, 1]).any()
    assert set(rows[2].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert per_user.max() > 4 * per_user.median()  # heavy raters
    assert per_item.iloc[:10].sum() > 10 * per_item.iloc[-10:].sum()  # popular head vs tail
    assert 0.6 * conf.ratings < len(rows) < 1.2 * conf.ratings
    assert rows[3].min() >= 946_684_800


def test_generated_folder_ingests_identically_twice(spark, cfg_factory, tmp_path):
    overrides = ["generate.users=60", "generate.items=80", "generate.ratings=1500", "generate.layout=csv"]
    cfg = cfg_factory(*overrides)
    first = generate.run(spark, cfg)
    cfg = cfg_factory(*overrides, f"data.source={first['path']}")
    result = ingest.run(spark, cfg)
    assert result["ratings"]["rows"] == first["ratings"]["rows"]
    assert result["files"]["ratings.csv"]["rejected"] == 0 and result["movies"]["rows"] == 80
    ratings = io.read_output(spark, cfg, "ratings")
    generate.run(spark, cfg)
    ingest.run(spark, cfg)
    again = io.read_output(spark, cfg, "ratings")
    assert_df_equality(ratings, again, ignore_row_order=True)
