"""`recospark <stage>`: the console command and the body of every jobs/<stage>.py.

It parses arguments, validates config, runs every check that needs no Spark (config, paths,
the data source and its layout, output root writability, stage prerequisites), and only then
builds the session (never choosing a master) and calls the stage's `run(spark, cfg)`. Errors
a user can fix (`recospark.errors.UserError`) print one line and exit 2, before Spark starts
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

from recospark import __version__, leases
from recospark.compiled import cache_counts, compile_kernels
from recospark.config import Config, load_config
from recospark.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, ConfigError, Retryable, UserError
from recospark.models.table import MODELS, spec
from recospark.session import build_session
from recospark.stages.pipeline import STAGES, preflight, run, run_stage

__all__ = ["knobs_table", "main", "parse_args", "tasks"]


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
    # commands that start no Spark: what a conf resolves to, for people and for the Airflow DAG
    p = sub.add_parser("tasks", help="the task graph a conf asks for (stages, models, components) as JSON; starts no Spark")
    p.add_argument("--conf", metavar="FILE", help="YAML config (defaults apply without one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key, repeatable")
    p = sub.add_parser("knobs", help="every model's configuration keys: type, default, accepted values, doc; starts no Spark")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models to list (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("compile", help="compile every numba kernel into numba's on-disk cache (once per install); starts no Spark")
    return parser


def tasks(cfg: Config) -> dict[str, Any]:
    """The task graph `cfg` asks for: the stages in order, one training task per model, the models a
    composite model is built from (their tasks run first), and the settings that size the tasks."""
    models = list(cfg.train.models)
    components = {}
    for m in models:
        parts = MODELS[m].components
        if parts is not None:
            components[m] = [c for c in parts(cfg.model_values(m)) if c in models]
    return {
        "stages": list(cfg.pipeline.stages),
        "models": models,
        "components": components,
        "spark": dict(cfg.spark),
        "data_source": cfg.data.source,
    }


def knobs_table(names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per configuration key of each model: what the Params declare."""
    rows = []
    for name in names or list(MODELS):
        for k in spec(name).knobs():
            b = k.bounds
            accepted = (
                " | ".join(map(str, b.choices))
                if b.choices is not None
                else ", ".join(f"{op} {v:g}" for op, v in ((">=", b.ge), (">", b.gt), ("<=", b.le), ("<", b.lt)) if v is not None)
            )
            type_name = k.type.__name__ if isinstance(k.type, type) else str(k.type)
            rows.append(
                {"model": name, "key": k.key, "param": k.param, "type": type_name, "default": k.default, "accepted": accepted, "doc": k.doc}
            )
    return rows


def _knobs_text(rows: list[dict[str, Any]]) -> str:
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        lines.append(f"{name}:")
        for r in (r for r in rows if r["model"] == name):
            accepted = f" [{r['accepted']}]" if r["accepted"] else ""
            lines.append(f"  {r['key']} = {r['default']!r} ({r['type']}{accepted}): {r['doc']}")
    return "\n".join(lines)


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


def _no_spark_command(argv: Sequence[str]) -> str:
    args = _parser().parse_args(list(argv))
    if args.stage == "knobs":
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
        rows = knobs_table(args.models)
        return json.dumps(rows, indent=2, default=str) if args.json else _knobs_text(rows)
    return json.dumps(tasks(load_config(args.conf, args.overrides)), indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    """The `recospark` command: check everything that needs no Spark, claim this run's outputs, then start Spark and run.

    Returns the exit code: 0, 2 for an error the user can fix (one line naming the key or path),
    1 for a retryable one (another run holds an output). `tasks` and `knobs` never start Spark.
    Any other exception is a bug and propagates with its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compile":
        _parser().parse_args(argv)
        seconds = compile_kernels()
        loaded, compiled = cache_counts()
        print(
            "kernels ready: "
            + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
            + f" ({sum(seconds.values()):.1f} s: {compiled} signature{'' if compiled == 1 else 's'} compiled into numba's cache,"
            + f" {loaded} loaded from it)"
        )
        return 0
    if argv and argv[0] in ("tasks", "knobs"):
        try:
            print(_no_spark_command(argv))
        except UserError as err:
            print(f"recospark: error: {' '.join(str(err).split())}", file=sys.stderr)
            return EXIT_USER_ERROR
        return 0
    try:
        stage, cfg, as_json, json_out = parse_args(argv)
        stages: list[str] = list(cfg.pipeline.stages) if stage == "pipeline" else [stage]
        preflight(cfg, stages)
        # This run's outputs, all or none, before Spark starts: a second run on them fails here.
        with leases.claim(cfg, [relpath for name in stages for relpath in STAGES[name].publishes(cfg)]):
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
