"""run.py end to end on the CPU: a table printed, verified rows appended, a resumed sweep skips points already
measured, and a multirun goes on past a bad point, prints its summary and exits non-zero."""
import subprocess
import sys
from pathlib import Path

import pytest

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


def _summary(stdout: str) -> list[str]:
    """The sweep summary: its head line and one line per point."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sweep: "))
    return [lines[start]] + [line for line in lines[start + 1:] if line.startswith("  #")]


def test_multirun_goes_on_past_a_bad_point_and_exits_non_zero(tmp_path):
    """bench.batch=0 is refused at its point; the points before and after it are measured, the summary lists all
    three, and the exit status says the sweep had a failure. Run again, the measured points are skipped: exit 0."""
    results, sweep = tmp_path / "results", tmp_path / "sweep"
    common = ["model=tiny", "bench=quick", "bench.ctx=8", "impl.names=[torch-eager]", f"results.dir={results}",
              f"hydra.sweep.dir={sweep}"]
    r = _run("-m", *common, "bench.batch=1,0,2")
    assert r.returncode == 1, r.stderr[-3000:]
    assert sorted(load_results(results)["batch"]) == [1, 2]
    summary = _summary(r.stdout)
    assert summary[0] == f"sweep: 3 points: 2 ok, 1 failed, 0 skipped ({sweep / 'sweep_summary.jsonl'})"
    assert summary[1:] == ["  #0 ok           bench.batch=1: 1 ok",
                           "  #1 config-error bench.batch=0: bench.batch=0 is out of range; use a batch from 1 to 16",
                           "  #2 ok           bench.batch=2: 1 ok"]
    assert "error: 1 of 3 sweep points failed" in r.stderr and "Traceback" not in r.stderr
    again = _run("-m", *common, "bench.batch=1,2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _summary(again.stdout)[0].startswith("sweep: 2 points: 0 ok, 0 failed, 2 skipped")
    assert len(load_results(results)) == 2


def test_multirun_under_joblib_records_a_bad_impl_name(tmp_path):
    """The same contract with jobs in joblib's worker processes: the bad point is in the summary that the
    launching process prints, and the exit status is 1."""
    import importlib.util

    try:
        if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
            pytest.skip("hydra-joblib-launcher not installed")
    except ModuleNotFoundError:
        pytest.skip("hydra-joblib-launcher not installed")
    results = tmp_path / "results"
    r = _run("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=tiny", "bench=quick", "bench.ctx=8",
             "impl.names=[torch-eager]", "baseline=torch-eager,nope", f"results.dir={results}",
             f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 1, r.stderr[-3000:]
    summary = _summary(r.stdout)
    assert summary[0].startswith("sweep: 2 points: 1 ok, 1 failed, 0 skipped")
    assert summary[2].startswith("  #1 config-error baseline=nope: impl 'nope' is not registered; choose from")
    assert list(load_results(results)["impl"]) == ["torch-eager"]


def test_sweep_job_records_any_exception_and_the_summary_sets_the_exit_status(tmp_path, monkeypatch):
    """In process: an exception that is not a ConfigError is a failed point, not the end of the sweep; the callback
    exits 1 when a point failed and returns quietly when none did."""
    from omegaconf import OmegaConf

    import harness.launch as launch
    import harness.run as run

    path = tmp_path / launch.SWEEP_SUMMARY
    monkeypatch.setattr(launch, "sweep_summary_path", lambda: path)

    def boom(cfg):
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(run, "_run", boom)
    assert run.run_sweep_job(None) == ("failed", "RuntimeError: the GPU fell off the bus")
    monkeypatch.setattr(run, "_run", lambda cfg: [{"impl": "torch-eager", "status": "ok"}])
    assert run.run_sweep_job(None) == ("ok", "1 ok")
    assert [e["status"] for e in launch.read_summary(path)] == ["failed", "ok"]
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exit_:
        launch.SweepSummary().on_multirun_end(cfg)
    assert exit_.value.code == 1
    launch.SweepSummary().on_multirun_start(cfg)  # a new sweep in the same directory starts a new summary
    assert not path.exists()
    launch.record_job("ok", "2 ok", path)
    launch.SweepSummary().on_multirun_end(cfg)  # no failure: no exit
