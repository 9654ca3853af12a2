"""run.py end to end on the CPU: a table printed, verified rows appended, and a resumed sweep
skips points already measured."""
import subprocess
import sys
from pathlib import Path

from harness.results import load_results

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_run_py_end_to_end_and_resume(tmp_path):
    args = ["model=tiny", "bench=quick", "bench.ctx=24", "bench.batch=2", "impl.names=[torch-eager,layerwise]",
            f"results.dir={tmp_path}"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NOT meaningful" in r.stdout and "layerwise" in r.stdout
    rows = load_results(tmp_path)
    assert sorted(rows["impl"]) == ["layerwise", "torch-eager"]
    assert (rows["status"] == "ok").all() and rows["correct"].all() and (rows["top1_agree"] == 1.0).all()
    assert (rows["bytes_per_step"] > 0).all() and rows["latency_us_median"].notna().all()
    again = _run(*args)
    assert again.returncode == 0 and "skipped: every impl of this point is already in" in again.stdout
    assert len(load_results(tmp_path)) == 2
