"""The `report` stage: one self-contained static page, report/index.html, from the published outputs.

A pure renderer: it reads what earlier stages published (ratings, splits, models' manifests
and factors, recommendations, metrics, tuning) and fits, splits or ranks nothing itself.
Every image is an inline base64 PNG and nothing is fetched, so the file can be mailed or opened
offline. Sections whose inputs are missing (say, no SGD model) say so instead of failing. The
page is published like any output, its manifest naming the exact versions it rendered.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import SparkSession

from recospark import io
from recospark.config import Config
from recospark.paths import join_path
from recospark.report import html
from recospark.report.sections import SECTIONS, Inputs, section
from recospark.runtime import stage_run

__all__ = ["INDEX", "render", "run"]

log = logging.getLogger(__name__)

INDEX = "index.html"


def render(spark: SparkSession, cfg: Config) -> tuple[str, dict[str, str], list[io.Source]]:
    """(page, status per section id, the outputs it read)."""
    inputs = Inputs(spark, cfg)
    built, status = [], {}
    try:
        for ident, title, build in SECTIONS:
            t0 = time.monotonic()
            sec, state = section(ident, title, build, inputs)
            built.append(sec)
            status[ident] = state
            log.info("report %s: %s (%.1f s)", ident, state, time.monotonic() - t0)
    finally:
        inputs.close()
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"data {cfg.data.source} · split {cfg.split.effective_name} ({cfg.split.strategy}) · config {cfg.digest()} · generated {generated}"
    )
    return html.page("recospark report", meta, built), status, list(inputs.sources.values())


@stage_run("report")
def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Render report/index.html from the published outputs.

    Examples
    --------
    >>> from recospark.stages import ingest
    >>> from recospark.config import load_config
    >>> from recospark.stages import report
    >>> cfg = load_config(None, [f"data.source={tiny_movielens}", f"output.root={tmp_out}"])
    >>> _ = ingest.run(spark, cfg)
    >>> result = report.run(spark, cfg)
    >>> result["sections"]["data"], result["sections"]["comparison"].startswith("missing")
    ('ok', True)
    """
    page, status, read = render(spark, cfg)
    published = io.publish_files(
        spark, cfg, "report", {INDEX: page}, inputs=read, extra={"sections": status, "bytes": len(page.encode("utf-8"))}
    )
    path = join_path(published.path, INDEX)
    log.info("report -> %s", path)
    return {"path": path, "sections": status}
