"""`recospark <stage>`: the console command and the body of every jobs/<stage>.py.

It parses arguments, validates config, builds the session (never choosing a master) and calls
`recospark.<stage>.run(spark, cfg)`. Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from recospark.config import Config, ConfigError, load_config
from recospark.pipeline import STAGE_MODULES

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recospark", description="PySpark batch recommender pipeline on MovieLens.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {
        "ingest": "MovieLens files -> ratings/, movies/, rejected/",
        "split": "ratings/ -> splits/<name>/{train,test}",
        "tune": "grid search on a validation split carved from train -> metrics/tuning.json",
        "train": "fit models -> models/<model>/",
        "evaluate": "score models on the test split -> metrics/<model>.json, metrics/summary.json",
        "recommend": "top-N per user, rated items excluded -> recommendations/<model>/",
        "report": "static HTML report -> report/index.html",
        "generate": "synthetic MovieLens-shaped data in a MovieLens layout",
        "pipeline": "every stage of pipeline.stages in one Spark application",
    }
    for stage in [*STAGE_MODULES, "pipeline"]:
        p = sub.add_parser(stage, help=helps.get(stage, ""))
        p.add_argument("--conf", metavar="FILE", help="YAML config, e.g. conf/local.yaml (defaults apply without one)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key, repeatable: --set als.rank=20")
        p.add_argument("--model", help="models to train/evaluate/recommend: als, sgd, bias, global_mean, a comma list, or all")
        p.add_argument("--json", action="store_true", help="print the stage's result as JSON")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[str, Config, bool]:
    args = _parser().parse_args(list(argv))
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"train.models={args.model}")
    return args.stage, load_config(args.conf, overrides), args.json


def _user_errors() -> tuple[type[BaseException], ...]:
    from recospark.io import OutputError

    errors: list[type[BaseException]] = [ConfigError, OutputError]
    try:
        from recospark.datasets.download import SourceError

        errors.append(SourceError)
    except ImportError:
        pass
    try:
        from recospark.datasets.movielens import LayoutError

        errors.append(LayoutError)
    except ImportError:
        pass
    return tuple(errors)


def _print_summary(stage: str, result: dict) -> None:
    print(f"\nrecospark {stage}: done in {result.get('seconds', 0):.1f} s")
    stages = result.get("stages", {stage: result})
    for name, res in stages.items():
        for key in ("ratings", "movies", "rejected", "train", "test"):
            if isinstance(res.get(key), dict) and "rows" in res[key]:
                print(f"  {name:<10} {key:<10} {res[key]['rows']:>10} rows  {res[key].get('path', '')}")
        for model, info in (res.get("models") or {}).items():
            bits = [f"{k}={v}" for k, v in info.items() if k not in ("path",)]
            print(f"  {name:<10} {model:<10} {' '.join(bits)}  {info.get('path', '')}")
        if res.get("path") and "models" not in res:
            print(f"  {name:<10} {'output':<10} {res['path']}")
        if res.get("table"):
            print("\n" + res["table"] + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    user_errors = _user_errors()
    try:
        stage, cfg, as_json = parse_args(argv)
        from recospark.io import check_writable

        check_writable(cfg)
        from recospark.pipeline import run, run_stage
        from recospark.session import build_session

        spark = build_session(cfg, f"recospark-{stage}")
        result = run(spark, cfg) if stage == "pipeline" else run_stage(stage, spark, cfg)
    except user_errors as err:
        print(f"recospark: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_summary(stage, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
