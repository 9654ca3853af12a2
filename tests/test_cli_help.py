"""Every command of the repository answers --help: exit status 0, its usage on stdout, no traceback.

Each runs in a subprocess from the repository root with TRITON_INTERPRET=1 (as on a machine without a GPU), under
a timeout: a --help that builds a model or touches a GPU before reading its arguments fails here. A new command
(a module with a __main__ block under harness/, or a script under scripts/) must be added to COMMANDS.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# An answer takes ~3 s here (importing torch); the limit leaves room for a loaded CI machine.
HELP_TIMEOUT_S = 60

# argv after the interpreter -> what its help must print. Argparse commands print "usage:"; the commands that take
# Hydra overrides print Hydra's help (run.py) or their docstring, which shows how to call them.
COMMANDS = {
    "run.py --help": "== Configuration groups ==",
    "-m harness.run --help": "== Configuration groups ==",
    "-m harness.timeline --help": "python -m harness.timeline model=",
    "-m harness.resources --help": "python -m harness.resources model=",
    "-m harness.diff --help": "usage:",
    "-m harness.gate --help": "usage: python -m harness.gate",
    "-m harness.figures --help": "usage: python -m harness.figures",
    "-m harness.bench_ops --help": "usage:",
    "-m harness.report --help": "usage: python -m harness.report",
    "-m harness.results --help": "usage:",
    "scripts/gemv_sass.py --help": "usage: gemv_sass.py",
    "scripts/gemv_variants.py --help": "usage: gemv_variants.py",
    "scripts/mega_tune.py --help": "usage: mega_tune.py",
    "scripts/qgemv_bench.py --help": "usage: qgemv_bench.py",
    "scripts/probe_chain.py --help": "usage: probe_chain.py",
    "scripts/probe_stream.py --help": "usage: probe_stream.py",
    "scripts/ncu_loops.py --help": "usage: ncu_loops.py",
    "scripts/gptfast_recipe.py --help": "usage: gptfast_recipe.py",
    "scripts/mutation_check.py --help": "usage: scripts/mutation_check.py",
    # the impl comes first (sys.argv[1]); the rest are Hydra overrides, where --help is understood
    "scripts/profile_impl.py torch-compile --help": "python scripts/profile_impl.py torch-compile",
    "scripts/profile_impl.py --help": "python scripts/profile_impl.py",
}
KNOWN_FAILURES: dict = {}  # "command": (seconds, reason) for a command whose --help is known broken


def _cases():
    for cmd, marker in COMMANDS.items():
        if cmd in KNOWN_FAILURES:
            _, reason = KNOWN_FAILURES[cmd]
            yield pytest.param(cmd, marker, id=cmd, marks=pytest.mark.xfail(reason=reason, strict=True))
        else:
            yield pytest.param(cmd, marker, id=cmd)


@pytest.mark.parametrize("cmd, marker", list(_cases()))
def test_help(cmd, marker):
    timeout = KNOWN_FAILURES.get(cmd, (HELP_TIMEOUT_S,))[0]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    try:
        p = subprocess.run([sys.executable, *cmd.split()], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{cmd}` did not answer within {timeout} s")
    both = p.stdout + p.stderr
    assert "Traceback" not in both, both[-2000:]
    assert p.returncode == 0, both[-2000:]
    assert marker in p.stdout, p.stdout[-2000:]


def test_every_command_is_covered():
    """Modules with a __main__ block and every Python script under scripts/ have a --help case above."""
    mains = {f"-m harness.{p.stem}" for p in (ROOT / "harness").glob("*.py")
             if re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M)}
    scripts = {f"scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py")}
    covered = {" ".join(c.split()[:2]) if c.startswith("-m ") else c.split()[0] for c in COMMANDS}
    assert mains - covered == set() and scripts - covered == set()
    assert "run.py" in covered
