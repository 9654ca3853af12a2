"""Regression gate (harness.gate) and the analysis it rests on (harness.analysis), on synthetic tables;
plus the gate over the committed tables, as CI runs it."""
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import analysis as A
from harness import gate as G
from harness.results import ResultsStore, load_results
from tests.synthetic_results import GPU, H200, run_rows, stamp

ROOT = Path(__file__).resolve().parent.parent
SLUG = "nvidia-h100-80gb-hbm3"
LAT = {"torch-eager": 9000.0, "torch-compile": 3000.0, "layerwise": 2700.0, "megakernel": 2100.0}


def _store(root, *runs):
    s = ResultsStore(root)
    for rows in runs:
        s.append(rows)
    return s


def _run(when=0, latency=None, **kw):
    return run_rows(impls=tuple(LAT), latency={**LAT, **(latency or {})}, when=stamp(when), seed=when, **kw)


def _gate(tmp_path, *extra):
    lines = []
    code = G.gate(tmp_path / "results", tmp_path / "baselines", say=lines.append, **dict(extra))
    return code, "\n".join(lines)


def _baseline(tmp_path, *runs):
    _store(tmp_path / "base-results", *runs)
    assert G.refresh(tmp_path / "base-results", tmp_path / "baselines", say=lambda s: None)


def _line(report, label):
    return next(l for l in report.splitlines() if label in l)


# ---------------------------------------------------------------------------------------------- analysis

def test_same_run_ratio_uses_the_reference_of_the_same_run(tmp_path):
    # run 1 measures everything; run 2 (later) re-measures torch-compile alone, 20 % faster
    _store(tmp_path, _run(0), run_rows(impls=("torch-compile",), latency={"torch-compile": 2400.0}, when=stamp(5),
                                        baseline="torch-compile"))
    df = A.add_same_run_ratios(load_results(tmp_path))
    mk = df[df["impl"] == "megakernel"].iloc[0]
    assert mk[A.speedup_column("torch-compile")] == pytest.approx(3000.0 / 2100.0)  # not 2400 / 2100
    eager = A.add_same_run_ratios(load_results(tmp_path), refs=("torch-eager",))
    assert eager[A.speedup_column("torch-eager")].notna().sum() == 4  # run 2 has no torch-eager: NaN
    latest = A.latest(df)
    assert len(latest) == 4
    assert latest[latest["impl"] == "torch-compile"]["latency_us_median"].item() == 2400.0
    assert latest[latest["impl"] == "megakernel"][A.speedup_column("torch-compile")].item() == \
        pytest.approx(3000.0 / 2100.0)


def test_reference_that_failed_gives_no_ratio(tmp_path):
    _store(tmp_path, _run(0, status={"torch-compile": "failed"}))
    df = A.add_same_run_ratios(load_results(tmp_path))
    assert df[A.speedup_column("torch-compile")].isna().all()
    assert len(A.measured(df)) == 3


def test_spread_and_tidy(tmp_path):
    _store(tmp_path, _run(0, spread=0.01))
    df = A.add_same_run_ratios(load_results(tmp_path))
    assert df["latency_rel_spread"].tolist() == pytest.approx([0.01] * 4)
    assert df[A.spread_column(A.speedup_column("torch-compile"))].tolist() == pytest.approx([math.sqrt(2) * 0.01] * 4)
    long = A.tidy(df, ["pct_of_copy_bw", A.speedup_column("torch-compile"), "no_such_metric"])
    assert len(long) == 8 and set(long["metric"]) == {"pct_of_copy_bw", "speedup_over_torch_compile"}
    assert {"model", "impl", "value", "rel_spread", "run_id"} <= set(long.columns)


def test_threshold_formula():
    assert G.threshold_for(0.001, 0.001) == G.MIN_THRESHOLD  # quiet rows: the floor
    assert G.threshold_for(0.03, 0.04) == pytest.approx(2 * 0.05)  # K * sqrt(a^2 + b^2)
    assert G.threshold_for(0.001, 0.001, run_to_run=0.04) == pytest.approx(0.08)  # repeated runs disagree more
    assert G.threshold_for(math.nan, math.nan) == G.MIN_THRESHOLD


# ---------------------------------------------------------------------------------------------- gate cases

def test_unchanged_passes(tmp_path):
    _baseline(tmp_path, _run(0))
    _store(tmp_path / "results", _run(10, latency={"megakernel": 2115.0}))  # 0.7 %: noise
    code, report = _gate(tmp_path)
    assert code == 0, report
    assert "4 ok -> pass" in report


def test_regression_fails(tmp_path):
    _baseline(tmp_path, _run(0))
    _store(tmp_path / "results", _run(10, latency={"megakernel": 2400.0}))  # 14 % slower than before
    code, report = _gate(tmp_path)
    assert code == 1
    line = _line(report, "megakernel/model")
    assert "REGRESSION" in line and "-12.5%" in line  # %copy: 2100/2400 - 1
    assert "x compile   1.429 ->   1.250" in line
    assert "1 REGRESSION" in report and "FAIL" in report


def test_improvement_passes_and_is_reported(tmp_path):
    _baseline(tmp_path, _run(0))
    _store(tmp_path / "results", _run(10, latency={"layerwise": 2400.0}))
    code, report = _gate(tmp_path)
    assert code == 0
    assert "improved" in _line(report, "layerwise") and "1 improved" in report


def test_noisy_rows_widen_the_threshold(tmp_path):
    _baseline(tmp_path, _run(0, spread=0.05))
    _store(tmp_path / "results", _run(10, latency={"megakernel": 2280.0}, spread=0.05))  # -8 % but noise ~14 %
    code, report = _gate(tmp_path)
    assert code == 0 and "REGRESSION" not in report
    code, report = _gate(tmp_path, ("threshold", 0.05))  # a fixed threshold says otherwise
    assert code == 1 and "fixed ±5.0%" in report


def test_status_going_bad_fails(tmp_path):
    _baseline(tmp_path, _run(0))
    _store(tmp_path / "results", _run(10, status={"layerwise": "wrong"}))
    code, report = _gate(tmp_path)
    assert code == 1 and "BROKEN" in _line(report, "layerwise") and "ok -> wrong" in report


def test_missing_point_is_reported_not_failed_unless_strict(tmp_path):
    _baseline(tmp_path, _run(0), _run(1, ctx=4096))
    _store(tmp_path / "results", _run(10), _run(11, model="llama8b"))
    code, report = _gate(tmp_path)
    assert code == 0
    assert "missing" in _line(report, "llama1b bf16 b1 ctx4096 megakernel")
    assert "new" in _line(report, "llama8b bf16 b1 ctx1024 megakernel")
    assert "4 missing" in report and "4 new" in report and "only with --strict" in report
    code, report = _gate(tmp_path, ("strict", True))
    assert code == 1


def test_other_gpu_baseline_is_ignored(tmp_path):
    _baseline(tmp_path, _run(0, gpu=H200))  # a baseline for an H200 only
    _store(tmp_path / "results", _run(10, latency={"megakernel": 6000.0}))  # H100 rows, much slower
    code, report = _gate(tmp_path)
    assert code == 0
    assert "nvidia-h200.parquet ignored" in report
    assert f"GPU {SLUG}: no baseline" in report
    # and the H100's own baseline is what counts once there is one
    _baseline(tmp_path, _run(0))
    code, report = _gate(tmp_path, ("gpu", GPU))
    assert code == 1 and "nvidia-h200.parquet ignored" in report


def test_rows_of_another_gpu_inside_a_baseline_file_are_ignored(tmp_path):
    _baseline(tmp_path, _run(0))
    path = tmp_path / "baselines" / f"{SLUG}.parquet"
    df = pd.read_parquet(path)
    other = df.assign(gpu_name=H200, point_key=[k + "x" for k in df["point_key"]])
    pd.concat([df, other]).to_parquet(path)
    _store(tmp_path / "results", _run(10))
    code, report = _gate(tmp_path)
    assert code == 0 and "rows of other GPUs (nvidia-h200) ignored" in report and "4 ok" in report


def test_no_baseline_at_all(tmp_path):
    _store(tmp_path / "results", _run(0))
    code, report = _gate(tmp_path)
    assert code == 0 and "no baseline" in report and "--refresh" in report


def test_no_results_at_all(tmp_path):
    code, report = _gate(tmp_path)
    assert code == 0 and "no result rows" in report


def test_run_to_run_spread_from_repeated_runs(tmp_path):
    runs = [_run(i, latency={"megakernel": v}) for i, v in enumerate((2100.0, 2280.0, 1920.0, 2100.0))]
    _store(tmp_path, *runs)
    rel = A.run_to_run_spread(A.add_same_run_ratios(load_results(tmp_path)), "pct_of_copy_bw")
    assert len(rel) == 4  # every point has >= 3 runs
    assert rel.max() == pytest.approx(0.07, abs=0.01)  # the megakernel's point


def test_refresh_writes_the_latest_rows(tmp_path):
    _store(tmp_path / "results", _run(0, latency={"megakernel": 2400.0}), _run(5))
    written = G.refresh(tmp_path / "results", tmp_path / "baselines", say=lambda s: None)
    assert written == [tmp_path / "baselines" / f"{SLUG}.parquet"]
    base = pd.read_parquet(written[0])
    assert len(base) == 4 and base[base["impl"] == "megakernel"]["latency_us_median"].item() == 2100.0
    assert A.speedup_column("torch-compile") in base.columns
    assert _gate(tmp_path)[0] == 0


def test_cli(tmp_path):
    _baseline(tmp_path, _run(0))
    _store(tmp_path / "results", _run(10, latency={"megakernel": 2400.0}))
    args = ["--results", str(tmp_path / "results"), "--baselines", str(tmp_path / "baselines")]
    assert G.main(args) == 1
    assert G.main(args + ["--gpu", "nvidia-h200"]) == 0
    with pytest.raises(SystemExit):
        G.main(args + ["--threshold", "lots"])


def test_gate_passes_on_the_committed_tables():
    """What CI runs: the committed H100 rows against the committed baseline."""
    r = subprocess.run([sys.executable, "-m", "harness.gate", "--results", "results", "--baselines",
                        "results/baselines"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"GPU {SLUG}:" in r.stdout and "-> pass" in r.stdout
