"""`recospark <stage>`: the console command and the body of every jobs/<stage>.py.

It parses arguments, validates config, runs every check that needs no Spark (config, paths,
the data source and its layout, output root writability, stage prerequisites), and only then
builds the session (never choosing a master) and calls the stage's `run(spark, cfg)`. Errors
a user can fix (`recospark.config.UserError`) print one line and exit 2, before Spark starts
wherever possible.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recospark import __version__
from recospark.config import Config, load_config
from recospark.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, Retryable, UserError
from recospark.session import build_session
from recospark.stages.pipeline import STAGES, preflight, run, run_stage

__all__ = ["EXIT_USER_ERROR", "main", "parse_args"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recospark", description="PySpark batch recommender pipeline on MovieLens.")
    parser.add_argument("--version", action="version", version=f"recospark {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {name: stage.help for name, stage in STAGES.items()}
    helps["pipeline"] = "every stage of pipeline.stages in one Spark application"
    for stage in [*STAGES, "pipeline"]:
        p = sub.add_parser(stage, help=helps[stage])
        p.add_argument("--conf", metavar="FILE", help="YAML config, e.g. conf/local.yaml (defaults apply without one)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one key, repeatable: --set als.rank=20",
        )
        p.add_argument("--model", help="models to train/recommend/evaluate: a name, a comma list, or all")
        p.add_argument("--json", action="store_true", help="print the stage's result as JSON")
        p.add_argument("--json-out", metavar="FILE", help="also write the stage's result as JSON to FILE (stdout may carry logs)")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[str, Config, bool, str | None]:
    """(stage, config, print JSON, JSON output file)."""
    args = _parser().parse_args(list(argv))
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"train.models={args.model}")
    return args.stage, load_config(args.conf, overrides), args.json, args.json_out


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if key.endswith("seconds") else f"{value:.4f}"
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def summary(stage: str, result: dict[str, Any]) -> str:
    """What a stage (or the pipeline) wrote and measured, aligned for a terminal or a log."""
    lines = [f"recospark {stage}: done in {result.get('seconds', 0):.1f} s"]
    stages = result.get("stages", {stage: result})
    rows: list[tuple[str, str, str, str]] = []
    tables = []
    for name, res in stages.items():
        for key in ("ratings", "movies", "rejected", "canonical", "train", "test"):
            if isinstance(res.get(key), dict) and "rows" in res[key]:
                rows.append((name, key, f"{res[key]['rows']:,} rows", res[key].get("path", "")))
        for model, info in (res.get("models") or {}).items():
            bits = " ".join(f"{k}={_fmt(k, v)}" for k, v in info.items() if k != "path" and v is not None)
            rows.append((name, model, bits, info.get("path", "")))
        if res.get("path") and not res.get("models"):
            rows.append((name, "output", "", res["path"]))
        if res.get("table"):
            tables.append(res["table"])
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    for table in tables:
        lines += ["", table]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    try:
        stage, cfg, as_json, json_out = parse_args(argv)
        preflight(cfg, list(cfg.pipeline.stages) if stage == "pipeline" else [stage])
        spark = build_session(cfg, f"recospark-{stage}")
        result = run(spark, cfg) if stage == "pipeline" else run_stage(stage, spark, cfg)
    except UserError as err:
        print(f"recospark: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Retryable as err:
        print(f"recospark: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_RETRYABLE
    text = json.dumps(result, indent=2, default=str)
    if json_out:
        Path(json_out).write_text(text + "\n", encoding="utf-8")
    print(text if as_json else summary(stage, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
