"""scripts/gpu_session.sh refuses to start from a tree whose rows would not record a clean commit: the script itself,
copied into a temporary git repository (it works on the checkout it lies in) whose run.py only says that it ran."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from git_repo import committed_repo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


@pytest.fixture
def repo(tmp_path) -> Path:
    return committed_repo(tmp_path / "repo", {"run.py": "import sys\nprint('ran', *sys.argv[1:])\n"}, (SCRIPT,))


def _session(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script with this Python first on PATH (python3) and the harness importable from this checkout."""
    e = {k: v for k, v in os.environ.items() if k not in ("OUT", "ALLOW_DIRTY")}
    e.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(["bash", str(repo / "scripts" / "gpu_session.sh"), *args], cwd=repo, env=e,
                          capture_output=True, text=True, timeout=300)


def test_a_clean_commit_runs(repo):
    (repo / "notes.txt").write_text("an untracked file does not change the code that runs")
    r = _session(repo, "sweep", "model=tiny")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ran model=tiny"]


def test_a_dirty_tree_is_refused_with_one_sentence(repo):
    (repo / "run.py").write_text((repo / "run.py").read_text() + "# edited\n")
    r = _session(repo, "sweep", "model=tiny")
    assert r.returncode == 2
    assert "ran" not in r.stdout
    [line] = r.stderr.splitlines()
    assert line.startswith(f"error: the tracked files in {repo} differ from commit ") and "commit first" in line
    allowed = _session(repo, "sweep", "model=tiny", ALLOW_DIRTY="1")  # told to: it runs, its rows say -dirty
    assert allowed.returncode == 0 and allowed.stdout.splitlines() == ["ran model=tiny"], allowed.stderr


def test_an_unknown_step_is_refused_before_the_tree_is_looked_at(repo):
    (repo / "run.py").write_text("# edited\n")
    r = _session(repo, "nope")
    assert r.returncode == 2 and r.stdout.startswith("unknown step nope") and "error:" not in r.stderr
