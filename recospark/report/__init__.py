"""The `report` stage: one self-contained static page, report/index.html, from the published outputs.

Every image is an inline base64 PNG and nothing is fetched, so the file can be mailed or opened
offline. Sections whose inputs are missing (say, no SGD model) say so instead of failing.
The page is published like any output: written into a fresh version folder, then swapped in.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from recospark import io
from recospark.config import Config, join_path

log = logging.getLogger(__name__)

INDEX = "index.html"


def render(spark: SparkSession, cfg: Config) -> tuple[str, dict[str, str]]:
    """(page, status per section id)."""
    from recospark.report import html
    from recospark.report.sections import SECTIONS, Inputs, section

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
    meta = f"data {cfg.data.source} · split {cfg.split.effective_name} ({cfg.split.strategy}) · config {cfg.digest()} · generated {generated}"
    return html.page("recospark report", meta, built), status


def run(spark: SparkSession, cfg: Config) -> dict:
    started = time.monotonic()
    page, status = render(spark, cfg)

    def write(path: str) -> None:
        io._write_text(spark, join_path(path, INDEX), page)

    published = io.publish(
        spark,
        cfg,
        "report",
        write,
        inputs=[io.output_path(cfg, p) for p in ("ratings", "movies", "splits", "metrics", "models", "recommendations")],
        count_rows=False,
        extra={"sections": status, "bytes": len(page.encode("utf-8"))},
    )
    path = join_path(published.path, INDEX)
    log.info("report -> %s", path)
    return {"stage": "report", "path": path, "sections": status, "seconds": round(time.monotonic() - started, 2)}
