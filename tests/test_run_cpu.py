"""run.py end to end on the CPU: a table printed, verified rows appended, a resumed sweep skips points already
measured, and a multirun goes on past a bad point, prints its summary and exits non-zero."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import load_results

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_run_py_end_to_end_and_resume(tmp_path):
    args = ["model=tiny", "bench=quick", "bench.ctx=24", "bench.batch=2",
            "impl.names=[torch-eager,layerwise,megakernel]", f"results.dir={tmp_path}"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NOT meaningful" in r.stdout and "layerwise" in r.stdout
    rows = load_results(tmp_path)
    assert sorted(rows["impl"]) == ["layerwise", "megakernel", "torch-eager"]
    # megakernel.backend=auto (the default) ran the Triton backend here (the CPU interpreter): the row, its
    # configuration and the table say which backend ran, never "auto"
    mega = rows[rows["impl"] == "megakernel"].iloc[0]
    assert mega["mega_backend"] == "triton" and json.loads(mega["config_json"])["megakernel"]["backend"] == "triton"
    assert rows.loc[rows["impl"] != "megakernel", "mega_backend"].isna().all()
    assert "megakernel[triton]" in r.stdout and "auto" not in str(mega["mega_config"])
    assert (rows["status"] == "ok").all() and rows["correct"].all() and (rows["top1_agree"] == 1.0).all()
    assert (rows["bytes_per_step"] > 0).all() and rows["latency_us_median"].notna().all()
    # build time is measured on any device; peak memory only on CUDA (NaN on the CPU, never a made-up 0)
    assert rows["build_s"].map(lambda v: isinstance(v, float) and math.isfinite(v) and v > 0).all(), rows["build_s"]
    assert rows["peak_mem_gb"].isna().all()
    # the backend auto picked and the same backend named share a point: nothing is measured again
    again = _run(*args, "megakernel.backend=triton")
    assert again.returncode == 0 and "skipped: every impl of this point is already in" in again.stdout
    assert len(load_results(tmp_path)) == 3


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


# ---------------------------------------------------------------------------------------------- build_s, peak_mem_gb

class _Clock:
    """A fake runner._clock: time moves only when the fake impl says so."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _fake_impl(events: list, clock: _Clock, build_s: float = 2.0, step_s: float = 0.25):
    from harness.impls import DecodeImpl

    class Fake(DecodeImpl):
        name = "fake"

        def __init__(self, ctx):
            super().__init__(ctx)
            events.append("build")
            clock.t += build_s
            self.vocab = ctx.spec.vocab_size

        def decode(self, tokens, positions):
            events.append("step")
            clock.t += step_s
            import torch
            return torch.zeros(tokens.shape[0], self.vocab)

        def check(self):
            events.append("check")
    return Fake


@pytest.fixture
def tiny_point():
    """A tiny model's configuration, weights and inputs on the CPU, as run_point prepares them."""
    import torch
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs, validate
    from harness.impls import REGISTRY
    from harness.runner import prepare_point

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny", "bench=quick", "bench.ctx=8",
                                                       "bench.device=cpu", "telemetry=off"])
    spec = validate(cfg, list(REGISTRY))
    return cfg, spec, prepare_point(cfg, spec, torch.device("cpu"))


def _measure_fake(monkeypatch, tiny_point, events, clock) -> dict:
    import torch

    import harness.runner as runner
    from harness.impls import REGISTRY

    cfg, spec, pt = tiny_point
    monkeypatch.setitem(REGISTRY, "fake", _fake_impl(events, clock))
    monkeypatch.setattr(runner, "_clock", clock)
    return runner._measure("fake", cfg, spec, pt.weights, pt.cache, pt.tokens, pt.positions, None,
                           torch.device("cpu"))


def test_build_s_is_the_constructor_and_the_first_checked_step(monkeypatch, tiny_point):
    """On a fake clock: 2 s in the constructor + 0.25 s in the first step; the timed steps after it do not count."""
    events: list = []
    out = _measure_fake(monkeypatch, tiny_point, events, _Clock())
    assert out["build_s"] == 2.25
    assert events[:3] == ["build", "step", "check"] and events.count("step") > 3  # warm-up and timed steps followed
    assert math.isnan(out["peak_mem_gb"])  # the CPU has no allocator statistics


def test_peak_memory_is_reset_before_the_build_and_read_after_the_measurement(monkeypatch, tiny_point):
    import harness.runner as runner

    events: list = []
    monkeypatch.setattr(runner, "_reset_peak_memory", lambda device: events.append("reset"))
    monkeypatch.setattr(runner, "_peak_memory_gb", lambda device: events.append("read") or 3.5)
    out = _measure_fake(monkeypatch, tiny_point, events, _Clock())
    assert events[:2] == ["reset", "build"] and events[-1] == "read" and events.count("read") == 1
    assert out["peak_mem_gb"] == 3.5


def test_peak_memory_reads_the_cuda_allocator_in_gb(monkeypatch):
    """The CUDA branch against a stand-in allocator (this runs on the CPU too): bytes / 1e9; NaN and no call on CPU."""
    import torch

    import harness.runner as runner

    calls: list = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda device=None: calls.append(("max", device)) or 12_345_000_000)
    cuda = torch.device("cuda")
    runner._reset_peak_memory(cuda)
    assert runner._peak_memory_gb(cuda) == pytest.approx(12.345)
    assert calls == [("reset", cuda), ("max", cuda)]
    calls.clear()
    runner._reset_peak_memory(torch.device("cpu"))
    assert math.isnan(runner._peak_memory_gb(torch.device("cpu"))) and calls == []
