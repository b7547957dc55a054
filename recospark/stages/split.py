"""The `split` stage: publish splits/<name>/{train,test} from ingest's ratings/ (or canonical/).

The strategies themselves are pure transforms in `recospark.splitting`.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession

from recospark import io
from recospark.config import Config
from recospark.errors import SplitError
from recospark.frames import with_write_order
from recospark.runtime import stage_run
from recospark.schema import CANONICAL, MOVIE_ID, RATINGS, USER_ID
from recospark.splitting import canonical_split, split_ratings

log = logging.getLogger(__name__)


def required(cfg: Config) -> list[str]:
    """What this stage reads: ingest's `canonical/` for canonical splits, `ratings/` otherwise."""
    return ["canonical"] if cfg.split.strategy == "canonical" else ["ratings"]


@stage_run("split")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Split the published ratings and publish splits/<name>/{train,test}.

    Examples
    --------
    >>> from recospark.stages import ingest, split
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}", "split.test_fraction=0.5"])
    >>> _ = ingest.run(spark, cfg)
    >>> result = split.run(spark, cfg)
    >>> result["train"]["rows"] + result["test"]["rows"]
    10
    """
    name = cfg.split.effective_name
    if cfg.split.strategy == "canonical":
        src = io.source(cfg, "canonical", needed_by="split (strategy canonical)")
        train, test = canonical_split(src.read(spark, CANONICAL), cfg.split.canonical)
    else:
        src = io.source(cfg, "ratings", needed_by="split")
        train, test = split_ratings(src.read(spark, RATINGS), cfg.split)
    sides = {"train": train.cache(), "test": test.cache()}
    try:
        counts = {side: df.count() for side, df in sides.items()}
        if counts["train"] == 0:
            raise SplitError(f"split {name}: the train side would be empty (strategy {cfg.split.strategy}); check the split.* settings")
        extra = {"strategy": cfg.split.strategy, "seed": cfg.split.seed}
        out: dict[str, Any] = {}
        for side, df in sides.items():
            published = io.publish_dataframe(
                df.transform(with_write_order(USER_ID, MOVIE_ID)),
                cfg,
                f"splits/{name}/{side}",
                inputs=[src],
                extra=extra,
                rows=counts[side],
            )
            out[side] = {"path": published.path, "rows": published.rows}
            log.info("split %s/%s: %d rows -> %s", name, side, published.rows, published.path)
    finally:
        for df in sides.values():
            df.unpersist()
    return {"name": name, "strategy": cfg.split.strategy, **out}
