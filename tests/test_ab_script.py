"""scripts/ab.sh: `prepare` copies each base commit's tree with its own commit manifest and writes the candidate's;
`run` (AB_DRY=1: the plan only) interleaves the candidate and every base, point by point, round by round. The script
is copied into a temporary git repository of two commits (it works on the checkout it lies in), with the harness
importable from this checkout."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from git_repo import committed_repo, git

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ab.sh"


@pytest.fixture
def repo(tmp_path) -> Path:
    files = {".gitignore": "/scratch/\n/.commit-manifest\n", "run.py": "print('base')\n"}
    repo = committed_repo(tmp_path / "repo", files, (SCRIPT,))
    (repo / "run.py").write_text("print('candidate')\n")
    git(repo, "commit", "-qam", "candidate")
    return repo


def _ab(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("AB_") and k != "OUT"}
    e.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(["bash", str(repo / "scripts" / "ab.sh"), *args], cwd=repo, env=e, capture_output=True,
                          text=True, timeout=300)


def test_prepare_then_the_planned_interleaving(repo):
    base, cand = git(repo, "rev-parse", "HEAD~1"), git(repo, "rev-parse", "HEAD")
    r = _ab(repo, "prepare", "HEAD~1")
    assert r.returncode == 0, r.stderr
    copy = repo / "scratch" / "ab" / base[:12]
    assert (copy / "run.py").read_text() == "print('base')\n"  # the base commit's code, not the checkout's
    assert (copy / ".commit-manifest").read_text().splitlines()[0] == f"commit {base}"
    assert (repo / ".commit-manifest").read_text().splitlines()[0] == f"commit {cand}"
    plan = _ab(repo, "run", "results/tuning/x", "2", "model=a quant=int8", "model=b", AB_DRY="1")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [f"[ab] round {r}/2 {sha[:12]} {point}" for point in ("model=a quant=int8",
                                        "model=b") for r in (1, 2) for sha in (cand, base)]


def test_mistakes_end_in_one_sentence(repo):
    r = _ab(repo, "prepare", "no-such-rev")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: no-such-rev is not a commit here."]
    r = _ab(repo, "run", "results/x", "2", "model=a")
    assert r.returncode == 2 and "prepare first" in r.stderr
    assert _ab(repo, "prepare", "HEAD~1").returncode == 0
    r = _ab(repo, "run", "results/x", "two", "model=a")
    assert r.returncode == 2 and r.stderr.strip() == "error: REPEATS must be a positive integer, not two."
    (repo / "run.py").write_text("# edited\n")
    r = _ab(repo, "prepare", "HEAD~1")  # a dirty candidate would not name the code that runs
    assert r.returncode == 2 and "commit first" in r.stderr
    assert _ab(repo, "nope").returncode == 2
