"""README.md as a run-book (scripts/run_readme.py): fast, static checks here; the blocks
themselves run in CI (`scripts/run_readme.py --here`, .ci/run) and with `make runbook`."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

spec = importlib.util.spec_from_file_location("run_readme", ROOT / "scripts" / "run_readme.py")
run_readme = importlib.util.module_from_spec(spec)
sys.modules["run_readme"] = run_readme  # dataclasses look their module up
spec.loader.exec_module(run_readme)


def _blocks():
    return run_readme.blocks(README.read_text(encoding="utf-8"))


def test_readme_lists_exactly_the_blocks_not_run_here():
    text = README.read_text(encoding="utf-8")
    assert run_readme.check_readme(_blocks(), text) == []


def test_set_up_section_has_exactly_the_two_commands():
    first = _blocks()[0]
    assert first.section == "Set up and run"
    commands = [re.split(r"\s+#", ln)[0].strip() for ln in first.code.splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]


def test_runnable_blocks_name_existing_targets_and_files():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for block in _blocks():
        if block.skip_reason:
            continue
        for line in block.code.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line.rstrip("\\"))
            if words[0] == "make":
                assert {w for w in words[1:] if "=" not in w} <= targets, line
            for word in words:
                path = word.split("=", 1)[-1].removeprefix("$PWD/")
                if re.match(r"^(scripts|jobs|conf|dags|docker)/", path):
                    assert (ROOT / path).exists(), f"README.md:{block.line}: {path} does not exist"


def test_no_reference_to_missing_files():
    """README.md and the conf files name only files that exist in the repository."""
    pattern = re.compile(
        r"(?<![\w/.$-])((?:docs|conf|scripts|jobs|dags|docker|recospark|bench|tests)/[\w./-]+\.(?:md|yaml|yml|py|sh|properties|json|png))"
    )
    for source in [README, *sorted((ROOT / "conf").glob("*.yaml")), *sorted((ROOT / "docker").glob("*.yaml"))]:
        for ref in pattern.findall(source.read_text(encoding="utf-8")):
            if not ref.startswith("bench/results/"):  # written by `make bench`
                assert (ROOT / ref).exists(), f"{source.relative_to(ROOT)} names {ref}, which does not exist"


def test_blocks_share_one_shell_and_stop_at_the_first_failure(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    blocks = [
        run_readme.Block(1, "a", 1, "export GREETING=hello\ncd sub\n"),
        run_readme.Block(2, "a", 5, 'test "$GREETING" = hello\ntest "$(basename "$PWD")" = sub\ntouch reached\n'),
        run_readme.Block(3, "b", 9, "false\ntouch not-reached\n"),
        run_readme.Block(4, "b", 12, "touch never\n"),
    ]
    code = run_readme.run(blocks, tmp_path, tmp_path / "logs")
    out = capsys.readouterr().out
    assert code == 1
    assert (tmp_path / "sub" / "reached").exists()
    assert not (tmp_path / "sub" / "not-reached").exists() and not (tmp_path / "sub" / "never").exists()
    assert "2 passed, 1 failed" in out and "not reached" in out
