"""The README's code, run as written: every python block, and every shell command cheap enough.

The blocks run in the README's order, each python block in a fresh interpreter,
all in one temporary folder (the restore block reads what the commands before it
trained). Commands in ``SKIPPED`` are not run, for the reason given there.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import user_env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)

# What a command holds -> why it is not run here.
SKIPPED = {
    "pip install": "installs into the environment the suite runs in (and trains d2l's 100 epochs: "
                   "test_timemachine.py's end-to-end test runs that recipe)",
    "pytest": "the test suite itself",
    "experiments.benchmark": "needs PyTorch and minutes (tests/test_benchmark.py runs its logic)",
}


def commands() -> list[str]:
    """The command lines of the bash blocks, in order."""
    return [line for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def skipped(command: str) -> str | None:
    return next((why for what, why in SKIPPED.items() if what in command), None)


def test_every_block_is_python_or_bash_and_parses():
    assert {lang for lang, _ in BLOCKS} <= {"python", "bash", ""}
    for lang, code in BLOCKS:
        if lang == "python":
            compile(code, "README.md", "exec")
    from experiments import cli
    lines = [c for c in commands() if "experiments.timemachine" in c and not skipped(c)]
    assert len(lines) >= 4
    for command in lines:          # the flags as written are the CLI's (checked without running it)
        words = shlex.split(command.split("#")[0])
        cli.parse_args(words[words.index("experiments.timemachine") + 1:])


def test_the_layout_names_every_module():
    layout = README.split("## Layout", 1)[1]
    for folder in ("rnnjax", "experiments"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.stem != "__init__":
                assert re.search(rf"\b{path.stem}\b", layout), f"the Layout leaves out {folder}/{path.name}"


def test_each_module_has_its_test_file():
    """The Layout's "one file per module" (the benchmark package: test_benchmark*.py)."""
    for folder in ("rnnjax", "experiments"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.stem != "__init__":
                assert (ROOT / "tests" / f"test_{path.stem}.py").is_file(), f"no tests/test_{path.stem}.py"


@pytest.mark.slow
def test_the_readme_runs_as_written(real_text_path, tmp_path):
    bin_dir = tmp_path / "bin"              # `python` and `python3` are this interpreter
    bin_dir.mkdir()
    for name in ("python", "python3"):      # a script, not a link: a venv's python finds its venv by its path
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = user_env(PYTHONPATH=str(ROOT), RNNJAX_TIMEMACHINE=real_text_path,
                   PATH=f"{bin_dir}:{user_env().get('PATH', '')}")
    work = tmp_path / "work"
    work.mkdir()
    # "Your own text": any UTF-8 file, here one of another alphabet than the Time Machine's.
    (work / "input.txt").write_text("The Quick brown Fox, 1894: ¿jumps?\n" * 400, encoding="utf-8")
    ran = 0
    for lang, code in BLOCKS:
        if lang == "python":
            steps = [[sys.executable, "-c", code]]
        elif lang == "bash":
            steps = [["bash", "-c", line] for line in code.splitlines()
                     if line.strip() and not skipped(line)]
        else:
            continue
        for argv in steps:
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{argv[-1]}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            ran += 1
    assert ran >= 7 and (work / "runs" / "tm" / "metrics.jsonl").exists()
