"""Every command that README.md shows in a fenced code block runs as shown, or, where it cannot run on a CPU in CI,
is checked for what can be checked without running it. No command is left out: one that no rule below classifies
fails the test.

Which blocks hold commands (the rule, by the block's language):
- ``bash``, ``sh``, ``shell``: each non-blank line that is not a ``#`` comment is one command (a line ending in ``\\``
  goes on to the next); a trailing ``# ...`` is the command's note, read by the GPU rule below.
- ``console``: lines starting with ``$ `` are commands; the other lines are their output and are not commands.
- no language: a block of commands when every non-blank line starts with a command word (COMMAND_WORDS); when none
  does, a directory map or an output example (README's Layout tree), not commands; a block that mixes both fails.
- ``python``: the whole block is one snippet, run by the interpreter from the repository root.
- TEXT_LANGS (yaml, text, ...): examples, not commands. Any other language fails until it is given a rule here.
Commands written inline in the prose are not covered; only fenced blocks are.

Each command falls into one category (the first rule of `classify` that matches it):
- gpu: its note names a GPU and neither a CPU nor "any machine" (e.g. ``# GPU``), or GPU_ONLY lists it;
- long: too long for CI on a CPU: a Hydra multirun (``-m``: a sweep), a decode of a model other than ``tiny``
  (billions of parameters through the Triton interpreter), or LONG lists it with its reason;
- run: ``make run`` (the tiny model, bench=quick, on a CPU), the report / gate / figures commands (they read the
  committed tables), ``harness.diff`` on the tiny model, the sm_90 compiles that need no GPU (``harness.resources``,
  ``scripts/gemv_sass.py``), a ``run.py`` / ``harness.timeline`` point on the tiny model, and python snippets.

Every command's input files must exist (the script or module it runs, the paths given to INPUT_OPTIONS,
``model.path``; PLACEHOLDER_PATHS names the user's own paths, with a stand-in). A run command runs as a subprocess
from the repository root, in a shell without TRITON_INTERPRET (as a user's), with its outputs sent under tmp_path
(``results.dir``, ``hydra.run.dir``, ``--out``; `redirect`): exit status 0, no traceback, its output where it was
sent, and nothing written where it writes by default (`_repo_snapshot`). A gpu or long command is checked instead:
its Hydra overrides composed (harness.cli.compose) and validated (harness.config.validate, as run.py does before any
weight is built) at every point of its sweep; an argparse command's arguments parsed by its own parser (stopped right
after parsing); a make target dry-run (``make -n``).

KNOWN_BROKEN lists a command found not to run as shown, with the reason and the fix; it is an xfail (strict: once
fixed, it passes and the entry must go). README_UNDER_TEST=PATH runs all this on another copy of the README.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = Path(os.environ.get("README_UNDER_TEST") or ROOT / "README.md")

SHELL_LANGS = {"bash", "sh", "shell"}
TEXT_LANGS = {"text", "txt", "yaml", "yml", "json", "toml", "ini", "csv", "markdown", "md", "diff", "output"}
COMMAND_WORDS = ("make ", ".venv/bin/python ", "python ", "python3 ", "bash ", "pip ", "$ ")
PY = ".venv/bin/python"
HYDRA_MODULES = {"harness.run", "harness.timeline", "harness.resources"}  # modules that take Hydra overrides
INPUT_OPTIONS = {"--results", "--baselines", "--cache-from"}  # options whose value is a path that must exist
OUTPUT_OPTIONS = {"--out"}  # options whose value is written: sent under tmp_path
RUN_TIMEOUT_S = 600  # make run takes ~80 s and the figures ~45 s on a loaded 2-core machine

# The user's own paths in a command, with what the check uses instead.
PLACEHOLDER_PATHS = {
    "/models/Llama-3.2-1B": "a local checkpoint of the user's; checked with a tiny one (tests/hf_tiny.py)",
}
# Commands that need a CUDA device although their note does not say so: command -> reason.
GPU_ONLY: dict[str, str] = {}
# Commands too long for CI that no rule catches: command -> reason.
LONG = {
    "make test": "the test suite itself (~17 min on 2 cores; .ci/run runs it): checked with make -n",
}
# Commands that do not run as shown: command -> reason and fix. An xfail, strict.
KNOWN_BROKEN: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------------ parsing

@dataclass(frozen=True)
class Command:
    text: str  # as shown, without its note, whitespace normalised; a python snippet: its code
    note: str  # the trailing "# ..." of a shell line
    lang: str  # "shell" or "python"
    line: int  # line in README.md

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # line of the opening fence
    body: list[str]


def code_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, start = m.group(2), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(m.group(3).lower(), start + 1, body))
        i += 1
    return blocks


def _split_note(line: str) -> tuple[str, str]:
    """("command", "note") of a shell line: the note starts at the first `#` that begins a word outside quotes."""
    quote = None
    for j, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (j == 0 or line[j - 1].isspace()):
            return line[:j].strip(), line[j + 1:].strip()
    return line.strip(), ""


def _shell_commands(block: Block, lines: list[tuple[int, str]]) -> list[Command]:
    out, pending, first = [], "", 0
    for n, raw in lines:
        if not pending:
            first = n
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        cmd, note = _split_note(pending + raw)
        pending = ""
        if cmd:
            out.append(Command(" ".join(shlex.split(cmd)), note, "shell", first))
    return out


def block_commands(block: Block) -> tuple[list[Command], Optional[str]]:
    """(commands, None), or ([], why the block holds none). Raises ValueError for a block no rule covers."""
    numbered = [(block.line + 1 + k, s) for k, s in enumerate(block.body)]
    nonblank = [(n, s) for n, s in numbered if s.strip()]
    if block.lang == "python":
        return [Command("\n".join(block.body).strip(), "", "python", block.line)], None
    if block.lang in TEXT_LANGS:
        return [], f"a {block.lang} example"
    if block.lang == "console":
        return _shell_commands(block, [(n, s.strip()[2:]) for n, s in nonblank if s.strip().startswith("$ ")]), None
    if block.lang in SHELL_LANGS:
        return _shell_commands(block, [(n, s) for n, s in nonblank if not s.strip().startswith("#")]), None
    if block.lang == "":
        is_cmd = [s.strip().startswith(COMMAND_WORDS) for _, s in nonblank]
        if is_cmd and all(is_cmd):
            lines = [(n, s.strip()[2:] if s.strip().startswith("$ ") else s) for n, s in nonblank]
            return _shell_commands(block, lines), None
        if not any(is_cmd):
            return [], "a directory map or output (no line starts with a command)"
        raise ValueError(f"README.md:{block.line}: a plain block mixing commands and other lines; give it a language "
                         f"(console with `$ ` prompts, or bash)")
    raise ValueError(f"README.md:{block.line}: code block language {block.lang!r} has no rule in tests/test_readme.py")


def readme_commands(path: Path = README) -> list[Command]:
    out = []
    for b in code_blocks(path.read_text()):
        out += block_commands(b)[0]
    return out


# ------------------------------------------------------------------------------------------------------ forms

def _python_target(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """("-m module" or "script.py", its arguments) of a python command; (None, []) for anything else."""
    if not argv or not (argv[0] in (PY, "python", "python3")):
        return None, []
    if len(argv) >= 3 and argv[1] == "-m":
        return f"-m {argv[2]}", argv[3:]
    if len(argv) >= 2 and argv[1].endswith(".py"):
        return argv[1], argv[2:]
    return None, []


def _is_hydra(target: Optional[str]) -> bool:
    return target == "run.py" or (target or "").removeprefix("-m ") in HYDRA_MODULES


def _override(args: list[str], key: str) -> Optional[str]:
    vals = [a.split("=", 1)[1] for a in args if a.lstrip("+~").split("=", 1)[0] == key and "=" in a]
    return vals[-1] if vals else None


def _option(args: list[str], name: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class Case:
    category: str  # run, gpu or long
    reason: str


def classify(cmd: Command) -> Optional[Case]:
    """The command's category and why; None when no rule covers it (the test fails)."""
    if cmd.lang == "python":
        return Case("run", "a python snippet: run from the repository root")
    argv = cmd.argv
    target, args = _python_target(argv)
    if cmd.text in GPU_ONLY:
        return Case("gpu", GPU_ONLY[cmd.text])
    if re.search(r"\bGPU\b", cmd.note) and not re.search(r"\bCPU\b|any machine", cmd.note, re.I):
        return Case("gpu", f"needs CUDA: its note says '{cmd.note}'")
    if cmd.text in LONG:
        return Case("long", LONG[cmd.text])
    if argv[:2] == ["make", "run"]:
        return Case("run", "the tiny model with bench=quick on a CPU (Makefile RUN_ARGS)")
    if _is_hydra(target) and ("-m" in args or "--multirun" in args):
        return Case("long", "a Hydra multirun: a sweep of real-size points")
    if target == "-m harness.resources":
        return Case("run", "compiles the megakernel for sm_90 with Triton's ptxas; no GPU, no weights")
    if _is_hydra(target):
        model = _override(args, "model") or "llama1b"
        if model != "tiny":
            return Case("long", f"decodes model={model}, not the tiny model, through the Triton interpreter on a "
                                f"CPU: hours")
        return Case("run", "one point of the tiny model")
    if target == "-m harness.diff":
        model = _option(args, "--model") or "tiny"
        if model != "tiny":
            return Case("long", f"runs model={model} through the megakernel VM and the Triton interpreter")
        return Case("run", "the tiny model through the VM and the Triton interpreter")
    if target in ("-m harness.report", "-m harness.figures") or (target == "-m harness.gate"
                                                                  and "--refresh" not in args):
        return Case("run", "reads the committed tables only")
    if target == "scripts/gemv_sass.py":
        return Case("run", "compiles one GEMV tile for sm_90 with Triton's ptxas; no GPU")
    return None


def referenced_paths(cmd: Command) -> list[str]:
    """The files a command reads, relative to the repository root (or absolute)."""
    if cmd.lang == "python":
        return []
    argv = cmd.argv
    target, args = _python_target(argv)
    out = []
    if argv[0] == PY:
        out.append(PY)
    if argv[0] == "bash" and len(argv) > 1:
        out.append(argv[1])
    if target and target.startswith("-m "):
        mod = target[3:].replace(".", "/")
        out.append(mod + ".py" if not (ROOT / mod).is_dir() else mod + "/__main__.py")
    elif target:
        out.append(target)
    for i, a in enumerate(args):
        if a in INPUT_OPTIONS and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.endswith(".ipynb"):
            out.append(a)
    if _is_hydra(target):
        path = _override(args, "model.path")
        if path:
            out.append(path)
        exp = _override(args, "experiment")
        if exp:
            out.append(f"conf/experiment/{exp}.yaml")
    return out


def _id(cmd: Command) -> str:
    return cmd.text.splitlines()[0][:100] if cmd.lang == "python" else cmd.text


def _cases():
    for cmd in readme_commands():
        marks = [pytest.mark.xfail(reason=KNOWN_BROKEN[cmd.text], strict=True)] if cmd.text in KNOWN_BROKEN else []
        yield pytest.param(cmd, id=_id(cmd), marks=marks)


# ------------------------------------------------------------------------------------------------------ running

def _env() -> dict:
    """A user's shell: no TRITON_INTERPRET (the entry points choose the interpreter themselves), no pytest state and
    no make state (under `make test`, MAKEFLAGS would carry its variables into `make run`)."""
    drop = {"TRITON_INTERPRET", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}


def _python() -> str:
    return str(ROOT / PY) if (ROOT / PY).exists() else sys.executable


def redirect(cmd: Command, tmp: Path) -> tuple[list[str], list[Path]]:
    """(argv to run, paths it must have written): the command with its outputs sent under `tmp`."""
    if cmd.lang == "python":
        return [_python(), "-c", cmd.text], []
    argv = list(cmd.argv)
    if argv[0] == PY:
        argv[0] = _python()
    target, args = _python_target(cmd.argv)
    expect: list[Path] = []
    hydra_out = [f"results.dir={tmp / 'results'}", f"hydra.run.dir={tmp / 'hydra'}"]
    if argv[:2] == ["make", "run"]:
        i = next((k for k, a in enumerate(argv) if a.startswith("ARGS=")), None)
        if i is None:
            argv.append("ARGS=" + " ".join(hydra_out))
        else:
            argv[i] += " " + " ".join(hydra_out)
        expect += [tmp / "results", tmp / "hydra" / ".hydra"]
    elif _is_hydra(target) and target != "-m harness.resources":
        argv += hydra_out
        expect += [tmp / "hydra" / ".hydra"]
    for k, a in enumerate(argv):
        if a in OUTPUT_OPTIONS and k + 1 < len(argv):
            argv[k + 1] = str(tmp / argv[k + 1])
            expect.append(Path(argv[k + 1]))
    if target == "-m harness.figures" and "--out" not in args:
        argv += ["--out", str(tmp / "figures")]
        if not [a for a in args if a.startswith("-") and a != "--results"]:  # a mode such as --gpu-plan draws nothing
            expect.append(tmp / "figures")
    return argv, expect


def _repo_snapshot(cmd: Command) -> dict:
    """Size and mtime of the repository files a command writes when not redirected: rows go under results/<gpu>/;
    harness.figures writes results/figures/ and the README's headline table. (Only the figures command watches those
    two, which the figures' own authors regenerate, so that a working tree being edited does not fail the others.)"""
    figures = ROOT / "results" / "figures"
    files = [p for p in (ROOT / "results").rglob("*") if p.is_file() and figures not in p.parents]
    if cmd.lang == "shell" and _python_target(cmd.argv)[0] == "-m harness.figures":
        files += [p for p in figures.rglob("*") if p.is_file()] + [ROOT / "README.md"]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def run_command(cmd: Command, tmp: Path) -> None:
    argv, expect = redirect(cmd, tmp)
    written = [ROOT / a for a in cmd.argv[1:] if cmd.lang == "shell" and a.endswith((".csv", ".json", ".md"))]
    before, existed = _repo_snapshot(cmd), {p for p in written if p.exists()}
    try:
        p = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{cmd.text}` did not end within {RUN_TIMEOUT_S} s")
    both = p.stdout + p.stderr
    assert p.returncode == 0 and "Traceback" not in both, \
        f"`{cmd.text}` (README.md:{cmd.line}), run as {argv}, exit {p.returncode}:\n{both[-3000:]}"
    assert p.stdout.strip() or expect or cmd.lang == "python", f"`{cmd.text}` printed nothing"
    for path in expect:
        assert path.exists() and (path.is_file() or any(path.iterdir())), f"`{cmd.text}` did not write {path}"
    after = _repo_snapshot(cmd)
    changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    assert not changed, f"`{cmd.text}` wrote into the repository: {changed[:5]} (its outputs must go to {tmp})"
    for path in written:
        assert path.exists() == (path in existed), f"`{cmd.text}` wrote {path} into the repository"


# ------------------------------------------------------------------------------------------------------ checking

def _tiny_checkpoint(tmp: Path) -> Path:
    from tests.hf_tiny import write_tiny_checkpoint

    path = tmp / "hf-checkpoint"
    if not path.exists():
        write_tiny_checkpoint(path, max_position_embeddings=1 << 15)
    return path


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Each point of a Hydra sweep as its list of overrides (basic sweeper: the cartesian product of the command's
    comma lists and of an experiment's hydra.sweeper.params, the command's own value winning)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.config import register_configs
    from harness.models import CONF_DIR

    parser = OverridesParser.create()
    axes: dict[str, list[str]] = {}
    fixed = []
    for o in parser.parse_overrides(overrides):
        key = o.get_key_element()
        axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        fixed += [] if o.is_sweep_override() else [o.input_line]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    params = hydra_cfg.hydra.sweeper.get("params") or {}
    for key, value in params.items():
        if key in {k.lstrip("+~") for k in axes}:
            continue
        o = parser.parse_overrides([f"{key}={value}"])[0]
        axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
    return [list(p) for p in itertools.product(*axes.values())]


def check_hydra(cmd: Command, tmp: Path) -> None:
    """Every point of the command composes (harness.cli.compose) and passes harness.config.validate with the
    registered impls, and a checkpoint path passes harness.weights.check_hf_checkpoint: what run.py refuses before
    any weight is built."""
    from harness.cli import compose
    from harness.config import validate
    from harness.impls import REGISTRY
    from harness.weights import check_hf_checkpoint

    _, args = _python_target(cmd.argv)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    for k, a in enumerate(overrides):
        key, _, value = a.partition("=")
        if key == "model.path" and value in PLACEHOLDER_PATHS:
            overrides[k] = f"model.path={_tiny_checkpoint(tmp)}"
    points = sweep_points(overrides)
    assert points
    for point in points:
        try:
            cfg = compose(point, usage="")
            spec = validate(cfg, list(REGISTRY))
            if cfg.model.path:
                check_hf_checkpoint(cfg.model.path, spec)
        except SystemExit as e:
            pytest.fail(f"`{cmd.text}` (README.md:{cmd.line}) at {point}: {e}")
        except Exception as e:  # noqa: BLE001 - ConfigError and whatever else refuses the point
            pytest.fail(f"`{cmd.text}` (README.md:{cmd.line}) at {point}: {type(e).__name__}: {e}")


# Parses the arguments with the command's own argparse parser, prints them as JSON and stops before any work.
PARSE_ONLY = r"""
import argparse, json, os, runpy, sys
_parse = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    ns = _parse(self, args, namespace)
    print("PARSED " + json.dumps(vars(ns), default=str))
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_args
argv = sys.argv[1:]
if argv[0] == "-m":
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
print("NOT PARSED")
"""


def _check_mega_tune(parsed: dict) -> None:
    from harness.models import named_spec
    from kernels import MAX_BATCH
    from kernels.mega.tuned import parse_variant
    from kernels.quant import QUANT_MODES

    for point in parsed["points"]:
        model, quant, batch = point.split(":")
        named_spec(model)
        assert quant in QUANT_MODES and 1 <= int(batch) <= MAX_BATCH, point
    for v in parsed["variants"]:
        parse_variant(v)


# What a script checks after parsing its arguments, before doing any work: script -> check of the parsed values.
AFTER_PARSE = {"scripts/mega_tune.py": _check_mega_tune}


def check_argparse(cmd: Command) -> None:
    target, args = _python_target(cmd.argv)
    p = subprocess.run([_python(), "-c", PARSE_ONLY, *target.split(), *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    both = p.stdout + p.stderr
    assert p.returncode == 0 and "PARSED " in p.stdout, f"`{cmd.text}` (README.md:{cmd.line}):\n{both[-3000:]}"
    parsed = json.loads(p.stdout.split("PARSED ", 1)[1].splitlines()[0])
    if target in AFTER_PARSE:
        AFTER_PARSE[target](parsed)


def check_make(cmd: Command) -> None:
    p = subprocess.run(["make", "-n", *cmd.argv[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stdout.strip(), f"`make -n {' '.join(cmd.argv[1:])}`:\n{p.stdout}{p.stderr}"


def check_command(cmd: Command, tmp: Path) -> None:
    """What can be checked of a command that is not run here."""
    target, _ = _python_target(cmd.argv)
    if cmd.argv[0] == "make":
        check_make(cmd)
    elif _is_hydra(target):
        check_hydra(cmd, tmp)
    elif target:
        check_argparse(cmd)
    else:
        pytest.fail(f"`{cmd.text}`: no check for this kind of command; add one to tests/test_readme.py")


# ------------------------------------------------------------------------------------------------------ tests

def test_readme_blocks_all_have_a_rule():
    """Every fenced block is commands or a kind of non-command the docstring's rule names; the README shows some
    commands of each category (a parser that found nothing would pass everything)."""
    kinds = []
    for b in code_blocks(README.read_text()):
        cmds, why = block_commands(b)  # raises for a block no rule covers
        kinds.append(why or f"{len(cmds)} commands")
    assert kinds, "no code blocks found in README.md"
    cats = {c.category for c in map(classify, readme_commands()) if c}
    assert {"run"} <= cats, cats


def test_every_command_is_in_a_category():
    missing = [f"README.md:{c.line}: {c.text}" for c in readme_commands() if classify(c) is None]
    assert not missing, ("README commands in no category (add a rule, or list them in GPU_ONLY / LONG of "
                         "tests/test_readme.py):\n" + "\n".join(missing))


def test_tables_name_only_readme_commands():
    shown = {c.text for c in readme_commands()}
    stale = [c for c in [*GPU_ONLY, *LONG, *KNOWN_BROKEN] if c not in shown]
    assert not stale, f"tests/test_readme.py lists commands the README no longer shows: {stale}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", list(_cases()))
def test_readme_command(cmd: Command, tmp_path):
    missing = [p for p in referenced_paths(cmd) if p not in PLACEHOLDER_PATHS and not (ROOT / p).exists()]
    assert not missing, f"`{cmd.text}` (README.md:{cmd.line}) names files that do not exist: {missing}"
    case = classify(cmd)
    assert case is not None, f"`{cmd.text}` (README.md:{cmd.line}) is in no category (see the module docstring)"
    if case.category == "run":
        run_command(cmd, tmp_path)
    else:
        check_command(cmd, tmp_path)
