"""Temporary git repositories for the tests of scripts and commit checks that work on the checkout they lie in:
one home for the git invocation (a throwaway identity, no signing) and for a repository of copied scripts and
files with its first commit."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def git(repo: Path, *args: str) -> str:
    """`git -C repo ARGS` with a throwaway identity and no commit signing; its stdout, stripped."""
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def committed_repo(path: Path, files: dict[str, str], scripts: tuple[Path, ...] = ()) -> Path:
    """A new repository at `path` holding `files` (relative path -> text) and copies of `scripts` under scripts/,
    all in its first commit. Skips the test where git or bash is missing."""
    if shutil.which("git") is None or shutil.which("bash") is None:
        pytest.skip("needs git and bash")
    path.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        (path / "scripts").mkdir(exist_ok=True)
        shutil.copy(script, path / "scripts" / script.name)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "commit", "-qm", "one")
    return path
