#!/usr/bin/env python3
"""Run README.md as a run-book: every fenced ```bash block, in order, as a person would paste
them into one terminal, on a fresh clone.

    scripts/run_readme.py --list          which blocks run here and why the others cannot
    scripts/run_readme.py                 clone this commit into a temp folder and run them there
    scripts/run_readme.py --here          run them in this checkout (CI: a fresh clone already)
    scripts/run_readme.py --check         README's "not run here" list matches NOT_RUN (fast)

One terminal: the blocks share one shell state (the working directory and every exported
variable carry over from block to block, as they would for a person), each block runs under
`set -euo pipefail` and the run stops at the first failing block. Only the environment a person
on this machine would have is added: SPARK_LOCAL_IP=127.0.0.1 (loopback only) and
SPARK_MASTER_PORT (a free port, so README's standalone cluster does not collide with another on
7077; the blocks read it with a 7077 default).

Blocks that cannot run here are listed in NOT_RUN with the reason; README's section "Run-book:
what CI runs" must list the same blocks (`--check`, run by tests/test_runbook.py). A block that
is not listed runs: a new README block is tested by default.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# First command line of the block (a regex, searched) -> why it is not run here.
NOT_RUN: list[tuple[str, str]] = [
    (r"^make bench\b", "about 20 minutes (ML-1M and ML-10M shapes); its measured results are in README"),
    (
        r"^\.venv/bin/python bench/pipeline_scale\.py --sizes 10m,25m",
        "about 4.4 hours (rating models at ML-10M and ML-25M shapes, ranking and neural models at ML-1M, ML-10M and ML-25M); its measured results are in README",
    ),
    (
        r"^\.venv/bin/python bench/bench_dsgd\.py --size 10m",
        "about 4 minutes (ML-10M shape, plus generating and ingesting it once); its measured results are in README",
    ),
    (r"^hdfs dfs ", "needs HDFS"),
    (
        r"--master spark://master-host",
        "needs a real standalone master (master-host); the 'Try it on one machine' block runs the same submission against 127.0.0.1",
    ),
    (r"--master yarn", "needs a YARN cluster"),
    (r"--master k8s://", "needs a Kubernetes cluster and an image registry"),
    (
        r"^airflow connections add spark_default --conn-type spark \\$",
        "a template for a real master (master-host, YARN); the 'Try it on one machine' block below runs the DAG against 127.0.0.1",
    ),
    (
        r"^airflow dags test recospark 2024-05-01$",
        "the commands for a deployed Airflow; the 'Try it on one machine' block runs the same `airflow dags test`",
    ),
    (r"^make docker-up", "no Docker engine on this machine (`make docker-check` runs instead)"),
]
TIMEOUT_SECONDS = 60 * 60  # per block


@dataclass
class Block:
    number: int
    section: str
    line: int
    code: str

    @property
    def first(self) -> str:
        """The first command line, without an inline comment."""
        line = next((ln.strip() for ln in self.code.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
        return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()

    @property
    def skip(self) -> tuple[str, str] | None:
        """(NOT_RUN pattern, reason) when the block is not run here."""
        for pattern, reason in NOT_RUN:
            if any(re.search(pattern, ln.strip()) for ln in self.code.splitlines() if ln.strip()):
                return pattern, reason
        return None

    @property
    def skip_reason(self) -> str | None:
        return self.skip[1] if self.skip else None


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    section, fence, start, lines = "", None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("#") and not line.startswith(" "):
                section = stripped.lstrip("#").strip()
            m = re.match(r"^(\s*)(```+)\s*(bash|sh|shell)\s*$", line)
            if m:
                fence, indent, start, lines = m.group(2), len(m.group(1)), i, []
        elif stripped == fence:
            out.append(Block(len(out) + 1, section, start, "\n".join(lines) + "\n"))
            fence = None
        else:
            lines.append(line[indent:] if line[:indent].strip() == "" else line)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(items: list[Block]) -> str:
    rows = []
    for b in items:
        status = f"not run: {b.skip_reason}" if b.skip_reason else "runs"
        rows.append(f"{b.number:>2}  README.md:{b.line:<4} [{b.section}]  {b.first[:70]}\n      {status}")
    return "\n".join(rows)


def check_readme(items: list[Block], text: str) -> list[str]:
    """Every block not run here is named in README's run-book section (a `code` span there
    matches the block's NOT_RUN pattern), and every NOT_RUN pattern still matches a block."""
    problems = []
    m = re.search(r"^### Run-book: what CI runs\n(.*?)(?=^#{2,3} |\Z)", text, re.S | re.M)
    if not m:
        return ["README.md has no '### Run-book: what CI runs' section"]
    spans = re.findall(r"^- `([^`]+)`", m.group(1), re.M)
    for b in items:
        if b.skip and not any(re.search(b.skip[0], span.strip()) for span in spans):
            problems.append(f"README's run-book section does not list the block not run here: {b.first[:60]!r} ({b.skip_reason})")
    if len(spans) != sum(1 for b in items if b.skip):
        problems.append(f"README's run-book section lists {len(spans)} blocks, {sum(1 for b in items if b.skip)} are not run")
    for pattern, _ in NOT_RUN:
        if not any(re.search(pattern, ln.strip()) for b in items for ln in b.code.splitlines()):
            problems.append(f"NOT_RUN pattern {pattern!r} matches no README block (stale)")
    return problems


def fresh_clone(dest: Path) -> Path:
    """This commit, cloned next to a link to ../shared (README's data path is ../shared/data)."""
    clone = dest / "recospark"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)
    return clone


WRAPPER = """source {state}
cd "$RUNBOOK_PWD"
set -euo pipefail
{code}
RUNBOOK_PWD="$(pwd)"
export -p > {state}.new && echo "export RUNBOOK_PWD=$(printf %q "$RUNBOOK_PWD")" >> {state}.new && mv {state}.new {state}
"""


def run(items: list[Block], where: Path, logs: Path, keep_going: bool = False, quiet: bool = False) -> int:
    logs.mkdir(parents=True, exist_ok=True)
    state = logs / "shell.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYSPARK_", "SPARK_", "AIRFLOW", "RECOSPARK_"))}
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_MASTER_PORT=str(free_port()))
    state.write_text("export RUNBOOK_PWD=" + shlex.quote(str(where)) + "\n")
    results, failed = [], 0
    print(f"run-book: {len(items)} README blocks in {where} (logs in {logs}); SPARK_MASTER_PORT={env['SPARK_MASTER_PORT']}", flush=True)
    for b in items:
        if b.skip_reason:
            results.append((b, "not run", 0.0))
            print(f"--- block {b.number} (README.md:{b.line}, {b.section}): not run here: {b.skip_reason}", flush=True)
            continue
        if failed and not keep_going:
            results.append((b, "not reached", 0.0))
            continue
        log = logs / f"block-{b.number:02d}.log"
        print(f"--- block {b.number} (README.md:{b.line}, {b.section}):\n{b.code.rstrip()}", flush=True)
        started = time.monotonic()
        with open(log, "w", buffering=1) as out:  # line-buffered: follow it with tail -f
            proc = subprocess.Popen(
                ["bash", "-c", WRAPPER.format(state=shlex.quote(str(state)), code=b.code)],
                cwd=where,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
            deadline = started + TIMEOUT_SECONDS
            for line in proc.stdout:  # to the console (CI's log) and to the block's log file
                out.write(line)
                if not quiet:
                    sys.stdout.write("    " + line)
                    sys.stdout.flush()
                if time.monotonic() > deadline:
                    proc.kill()
            code = proc.wait()
            if time.monotonic() > deadline:
                code = "timeout"
        seconds = time.monotonic() - started
        ok = code == 0
        results.append((b, "ok" if ok else f"FAILED (exit {code})", seconds))
        tail = "" if ok or not quiet else "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        print(f"=== block {b.number}: {'ok' if ok else f'FAILED (exit {code})'} in {seconds:.0f} s{tail}", flush=True)
        failed += not ok
    print("\nrun-book summary:")
    for b, status, seconds in results:
        print(f"  {b.number:>2} README.md:{b.line:<4} {status:<12} {seconds:>6.0f} s  {b.first[:70]}")
    ran = sum(1 for _, s, _ in results if s == "ok")
    # Skipped = not run here (NOT_RUN) or not reached after a failure.
    print(f"run-book: {ran} passed, {failed} failed, {len(results) - ran - failed} skipped")
    return 1 if failed else 0


def stop_leftover_cluster(where: Path) -> None:
    """A failed block may leave README's standalone cluster running: stop it (its own pid files)."""
    if not any((where / "out" / "standalone" / "pids").glob("*.pid")):
        return
    python = where / ".venv" / "bin" / "python"
    subprocess.run(
        [str(where / "scripts" / "cluster.sh"), "stop"],
        cwd=where,
        capture_output=True,
        timeout=180,
        env={**os.environ, "PYTHON": str(python)},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the blocks and whether each runs here")
    ap.add_argument("--check", action="store_true", help="check README's run-book section against NOT_RUN")
    ap.add_argument("--here", action="store_true", help="run in this checkout instead of a fresh clone")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--only", help="comma list of block numbers to run (the others are skipped)")
    ap.add_argument("--quiet", action="store_true", help="blocks' output only in their log files (tail shown on failure)")
    args = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    items = blocks(text)
    if args.list:
        print(listing(items))
        return 0
    if args.check:
        problems = check_readme(items, text)
        print("\n".join(problems) or f"README run-book section lists all {sum(bool(b.skip_reason) for b in items)} blocks not run here")
        return 1 if problems else 0
    if args.only:
        wanted = {int(n) for n in args.only.split(",")}
        items = [b for b in items if b.number in wanted]
    if args.here:
        try:
            return run(items, ROOT, ROOT / "out" / "runbook", quiet=args.quiet)
        finally:
            stop_leftover_cluster(ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="recospark-runbook-"))
    try:
        clone = fresh_clone(tmp)
        code = run(items, clone, tmp / "logs", quiet=args.quiet)
    finally:
        stop_leftover_cluster(tmp / "recospark")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return code


if __name__ == "__main__":
    sys.exit(main())
