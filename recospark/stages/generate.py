"""The `generate` stage: MovieLens-shaped ratings of any size, written in a MovieLens layout.

The data come from `recospark.datasets.synthetic` (long-tailed activity and popularity, a
low-rank truth plus noise, tastes of strength `generate.beta`, deterministic per user); this
stage writes them under `output.root/<generate.folder>` as a MovieLens folder that
`data.source` can point at, with the planted truth in its `truth/` (ingest reads only the
layout's files; `synthetic.oracle_factors` reads the truth).
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.types import StringType, StructField, StructType

from recospark import io
from recospark.config import Config
from recospark.datasets.movielens import LAYOUTS
from recospark.datasets.synthetic import movie_lines, rating_lines, write_truth
from recospark.frames import driver_frame
from recospark.paths import join_path
from recospark.runtime import stage_run

__all__ = ["run"]

log = logging.getLogger(__name__)


@stage_run("generate")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write synthetic ratings and movies files in `generate.layout`, and the planted truth, under output.root/<generate.folder>.

    Examples
    --------
    >>> from recospark.stages import generate
    >>> from recospark.config import load_config
    >>> cfg = load_config(None, [f"output.root={tmp_out}", "generate.users=20", "generate.items=15", "generate.ratings=100"])
    >>> result = generate.run(spark, cfg)
    >>> result["layout"], result["ratings"]["rows"] > 0
    ('csv', True)
    """
    conf = cfg.generate
    layout = LAYOUTS[conf.layout]
    lines = rating_lines(spark, conf)
    movies = driver_frame(spark, [(line,) for line in movie_lines(conf)], StructType([StructField("value", StringType())])).coalesce(1)

    def write(path: str) -> int:
        lines.write.text(join_path(path, layout.ratings_file))
        movies.write.text(join_path(path, layout.movies_file))
        write_truth(spark, conf, path)
        return spark.read.text(join_path(path, layout.ratings_file)).count()

    published = io.publish(spark, cfg, conf.folder, write, extra={"generate": conf.model_dump()})
    n = published.rows or 0
    log.info("generate: %d ratings for %d users x %d items (%s layout) -> %s", n, conf.users, conf.items, conf.layout, published.path)
    return {
        "path": published.path,
        "layout": conf.layout,
        "ratings": {"rows": n, "path": join_path(published.path, layout.ratings_file)},
    }
