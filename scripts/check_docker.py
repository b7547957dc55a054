"""Static checks of docker/ that need no Docker engine (`make docker-check`).

* compose.yaml parses (anchors and merge keys resolved) and declares the expected services;
* every build context and Dockerfile exists, every build target is a stage of the Dockerfile,
  every COPY source exists in the context;
* every published port is bound to 127.0.0.1, and the conf the containers use validates;
* every worker deletes finished applications' work dirs (spark.worker.cleanup.*);
* the Spark image version equals the pyspark this project is tested with, and the Airflow
  version is inside pyproject's `airflow` extra.
Prints one line per check; exits 1 when any fails. It cannot build the images or start them.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
EXPECTED_SERVICES = {"spark-master", "spark-worker-1", "spark-worker-2", "spark-history", "airflow"}
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def dockerfile_facts(path: Path) -> tuple[set[str], list[list[str]], dict[str, str]]:
    stages, copies, args = set(), [], {}
    lines = path.read_text().splitlines()
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "FROM" and len(words) >= 4 and words[2].upper() == "AS":
            stages.add(words[3])
        elif op == "COPY" and not any(w.startswith("--from") for w in words):
            copies.append([w for w in words[1:-1] if not w.startswith("--")])
        elif op == "ARG" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value
    return stages, copies, args


def main() -> int:
    compose_path = DOCKER / "compose.yaml"
    compose = yaml.safe_load(compose_path.read_text())
    check(isinstance(compose, dict) and "services" in compose, f"{compose_path.relative_to(ROOT)} parses")
    services = compose["services"]
    check(set(services) >= EXPECTED_SERVICES, f"services {sorted(EXPECTED_SERVICES)} declared (got {sorted(services)})")
    declared_volumes = set((compose.get("volumes") or {}).keys())
    try:
        pyspark_version = md.version("pyspark")
    except md.PackageNotFoundError:
        pyspark_version = None
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (compose_path.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            check(context.is_dir(), f"{name}: build context {context} exists")
            check(dockerfile.is_file(), f"{name}: {dockerfile.relative_to(ROOT)} exists")
            stages, copies, args = dockerfile_facts(dockerfile)
            if build.get("target"):
                check(build["target"] in stages, f"{name}: target {build['target']!r} is a stage of the Dockerfile {sorted(stages)}")
            for sources in copies:
                for src in sources:
                    check(
                        bool(glob.glob(str(context / src))) or any(glob.glob(str(context / s)) for s in sources if s != src and "[" in src),
                        f"{name}: COPY source {src} exists in the context",
                    )
            spark_version = (build.get("args") or {}).get("SPARK_VERSION", args.get("SPARK_VERSION"))
            check(
                spark_version == args.get("SPARK_VERSION"),
                f"{name}: SPARK_VERSION {spark_version} matches the Dockerfile's default {args.get('SPARK_VERSION')}",
            )
            if pyspark_version:
                check(
                    spark_version == pyspark_version, f"{name}: Spark image {spark_version} == pyspark {pyspark_version} of the tested venv"
                )
            airflow_version = (build.get("args") or {}).get("AIRFLOW_VERSION")
            if airflow_version:
                major = int(airflow_version.split(".")[0])
                check(major == 3, f"{name}: Airflow {airflow_version} within pyproject's airflow extra (>=3,<4)")
        for port in svc.get("ports", []):
            check(str(port).startswith("127.0.0.1:"), f"{name}: port {port} bound to 127.0.0.1")
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                check(source in declared_volumes, f"{name}: named volume {source} declared")
        env = svc.get("environment") or {}
        if "deploy.worker.Worker" in " ".join(map(str, svc.get("command") or [])):
            opts = str(env.get("SPARK_WORKER_OPTS", "")) if isinstance(env, dict) else ""
            check(
                "spark.worker.cleanup.enabled=true" in opts and "appDataTtl" in opts,
                f"{name}: cleans up finished applications' work dirs (SPARK_WORKER_OPTS spark.worker.cleanup.*)",
            )
        conf = env.get("RECOSPARK_CONF") if isinstance(env, dict) else None
        if conf:
            local = ROOT / Path(conf).relative_to("/opt/recospark")
            check(local.is_file(), f"{name}: RECOSPARK_CONF {conf} is {local.relative_to(ROOT)} in the image")
    for conf in [DOCKER / "recospark.yaml"]:
        sys.path.insert(0, str(ROOT))
        from recospark.config import load_config

        try:
            cfg = load_config(conf)
            check(
                all(not p or p.startswith("/data") for p in (cfg.output.root, cfg.checkpoint_dir, cfg.data.cache_dir)),
                f"{conf.relative_to(ROOT)} validates; paths on the shared /data volume",
            )
        except Exception as err:
            check(False, f"{conf.relative_to(ROOT)} validates: {err}")
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"^DOCKER_CONF \?= (\S+)", makefile, re.M)
    check(bool(m) and (ROOT / Path(m.group(1)).relative_to("/opt/recospark")).is_file(), "Makefile DOCKER_CONF exists in the image")
    print(
        f"\n{'all checks passed' if not failures else f'{len(failures)} check(s) failed'} "
        "(static only: images not built, containers not started)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
