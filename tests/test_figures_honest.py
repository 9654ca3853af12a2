"""Honest figures and the figures that are not one experiment's grid (harness.figures, harness.figure_data):
- a value of a sweep that was not measured is a gap in the line, never bridged;
- throttling is marked only on rows measured with telemetry, and the notes say for how many rows it ran;
- the batch figure's latency axis is logarithmic, so torch-eager does not squash the other impls;
- the roofline, the two-GPU comparison, the per-stage step breakdown and the per-op kernel figure draw exactly the
  rows of their tables;
- `make figures-gpu` refuses to run without a GPU in one sentence, and on a GPU runs every experiment's sweep, then
  the figures; its device-time estimate comes from the committed sessions.
All on the CPU, from synthetic rows or the committed tables."""
from __future__ import annotations

import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

from harness import figure_data as D
from harness import figures as F
from harness.results import ResultsStore, load_results
from kernels import gpu_slug
from tests.synthetic_results import GPU, H200, full_sweeps, run_rows, stamp, stored_and_loaded

ROOT = Path(__file__).resolve().parent.parent
_loaded = stored_and_loaded


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " " + \
        " ".join(t.get_text() for t in fig.texts) + " " + (fig._suptitle.get_text() if fig._suptitle else "")


def _legend(fig) -> list[str]:
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def _lines(fig) -> dict[str, dict[str, list[tuple[list, list, str]]]]:
    """Panel title -> series -> every error-bar line drawn for it: (x, y, gid), NaN included (one line per run)."""
    out: dict = {}
    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer) and not c.get_label().startswith("_"):
                ln = c.lines[0]
                out.setdefault(ax.get_title().split(" (")[0], {}).setdefault(c.get_label(), []).append(
                    ([float(v) for v in ln.get_xdata()], [float(v) for v in ln.get_ydata()], ln.get_gid() or ""))
    return out


def _joined(x: list, y: list) -> list[tuple]:
    """Segments of a drawn line: two consecutive vertices, neither NaN."""
    pts = list(zip(map(float, x), map(float, y)))
    return [(p, q) for p, q in zip(pts, pts[1:]) if not (math.isnan(p[1]) or math.isnan(q[1]))]


def _bridged(x: list, y: list, grid: list) -> list[tuple]:
    """Segments of a drawn line (two consecutive vertices, neither NaN) with a grid value between their ends: a line
    drawn across a value that was not measured."""
    pts = list(zip(map(float, x), map(float, y)))
    return [(p, q) for p, q in zip(pts, pts[1:])
            if not (math.isnan(p[1]) or math.isnan(q[1])) and any(p[0] < g < q[0] for g in grid)]


# ---------------------------------------------------------------- gaps, not bridges

def _one_run(rows: list) -> list:
    """The rows of several run_rows calls as ONE run (one run_id, as if one process had measured every point)."""
    for r in rows:
        r["run_id"] = "one-run"
    return rows


def test_a_model_not_measured_is_a_gap_in_the_line(tmp_path):
    """speedup_vs_model with llama1b and llama8b measured in one run and llama3b not: no line joins 1B to 8B."""
    rows = _loaded(tmp_path, _one_run(run_rows(model="llama1b", baseline="torch-compile", when=stamp(0))
                                      + run_rows(model="llama8b", baseline="torch-compile", when=stamp(0))))
    lines = _lines(F.make_figure("speedup_vs_model", rows, GPU))
    assert set(lines["bf16"]) == {"torch-eager", "torch-graph", "flash-attn", "layerwise", "megakernel/model"}
    for series, [(x, y, _)] in lines["bf16"].items():
        assert x == [0.0, 1.0, 2.0, 3.0] and math.isnan(y[1]) and math.isnan(y[3]), series  # 70B not measured
        assert not math.isnan(y[0]) and not math.isnan(y[2]), series
        assert _bridged(x, y, [0, 1, 2, 3]) == [], series
    # 1B, 3B and 8B measured in one run: one unbroken line up to 8B (70B unmeasured: the line ends there)
    rows3 = _loaded(tmp_path / "all", _one_run([r for m in ("llama1b", "llama3b", "llama8b")
                                                for r in run_rows(model=m, baseline="torch-compile", when=stamp(0))]))
    for [(x, y, _)] in _lines(F.make_figure("speedup_vs_model", rows3, GPU))["bf16"].values():
        assert not any(math.isnan(v) for v in y[:3]) and math.isnan(y[3])


def test_a_context_not_measured_is_a_gap_in_the_line(tmp_path):
    """ctx 128, 1024 and 8192 measured in one run, 4096 and 32768 not: 1024 and 8192 are not joined."""
    rows = _loaded(tmp_path, _one_run([r for c in (128, 1024, 8192)
                                       for r in run_rows(ctx=c, baseline="torch-compile", when=stamp(0))]))
    grid = F.experiment_grid("speedup_vs_context")["ctx"]
    lines = _lines(F.make_figure("speedup_vs_context", rows, GPU))["llama1b bf16"]
    assert lines
    for series, [(x, y, _)] in lines.items():
        drawn = [a for a, b in zip(x, y) if not math.isnan(b)]
        assert drawn == [128.0, 1024.0, 8192.0], series
        assert _bridged(x, y, grid) == [], series
        assert _bridged([128.0, 1024.0, 8192.0], [1, 1, 1], grid) != []  # the check sees a bridge when there is one


def test_a_line_joins_only_points_of_one_sweep(tmp_path):
    """llama1b and llama3b at one commit 5 minutes apart (one sweep: joined), llama8b a day later at another commit
    (alone). The legend and caption count sweeps per commit and date."""
    rows = _loaded(tmp_path, run_rows(model="llama1b", baseline="torch-compile", when=stamp(0)),
                   run_rows(model="llama3b", baseline="torch-compile", when=stamp(5)),
                   run_rows(model="llama8b", baseline="torch-compile", when=stamp(24 * 60), git_sha="def4567-dirty"))
    fig = F.make_figure("speedup_vs_model", rows, GPU)
    df = F._with_series(F.figure_rows("speedup_vs_model", rows, GPU))
    df = df.assign(sweep=F.sweeps(df))
    assert sorted(df.groupby("sweep")["model"].nunique()) == [1, 2]
    for series, drawn in _lines(fig)["bf16"].items():
        assert len(drawn) == 2, series  # one line per sweep
        for x, y, gid in drawn:
            sweep = df[(df["series"] == series) & (df["sweep"] == gid.removeprefix("sweep|"))]
            assert [v for v in y if not math.isnan(v)] == pytest.approx(list(sweep.sort_values("model")[F.SPEEDUP]))
            assert len(_joined(x, y)) == len(sweep) - 1, (series, x, y)  # 1B-3B joined; 8B alone
    legend = _legend(fig)
    assert "commit abc123, 2026-11-22 (1 sweep)" in legend and "commit def4567-dirty, 2026-11-23 (1 sweep)" in legend
    assert "1 of the 2 sweeps drawn measured more than one model value" in _texts(fig)


def test_a_sweep_is_one_gpu_one_commit_one_session(tmp_path):
    """Rows of one commit 5 minutes apart are one sweep; 65 minutes later, or at another commit, another."""
    rows = _loaded(tmp_path, run_rows(model="llama1b", when=stamp(0)), run_rows(model="llama3b", when=stamp(5)),
                   run_rows(model="llama8b", when=stamp(70)),
                   run_rows(model="llama8b", quant="int8", when=stamp(72), git_sha="def4567"))
    sw = F.sweeps(rows)
    by = {(m, q): set(sw[(rows["model"] == m) & (rows["quant"] == q)]) for m, q in
          [("llama1b", "bf16"), ("llama3b", "bf16"), ("llama8b", "bf16"), ("llama8b", "int8")]}
    assert all(len(v) == 1 for v in by.values()), by
    assert by[("llama1b", "bf16")] == by[("llama3b", "bf16")]
    assert len({next(iter(v)) for v in by.values()}) == 3


def test_committed_line_figures_join_only_points_of_one_sweep():
    """On the committed rows: no line bridges an unmeasured value, and every line holds the points of one sweep."""
    rows = load_results(ROOT / "results")
    for experiment in ("speedup_vs_context", "speedup_vs_model", "batch_sweep"):
        grid = F.experiment_grid(experiment)
        x_col = {"speedup_vs_model": "model", "speedup_vs_context": "ctx", "batch_sweep": "batch"}[experiment]
        for g in F.gpus_in(rows):
            df = F._with_series(F.figure_rows(experiment, rows, g))
            df = df.assign(sweep=F.sweeps(df))
            fig = F.make_figure(experiment, rows, g)
            for panel in _lines(fig).values():
                for series, drawn in panel.items():
                    xs = list(range(len(grid["model"]))) if experiment == "speedup_vs_model" else grid[x_col]
                    for x, y, gid in drawn:
                        assert _bridged(x, y, xs) == [], (experiment, g, series)
                        sweep = df[(df["series"] == series) & (df["sweep"] == gid.removeprefix("sweep|"))]
                        assert len(sweep) >= len([v for v in y if not math.isnan(v)]) >= 1, (experiment, g, series)
            text = _texts(fig)
            for p in set(F.provenance(df)):
                assert any(t.startswith(p) for t in _legend(fig)), (experiment, g, p)
            assert "A line joins only points of one sweep" in text


# ---------------------------------------------------------------- throttling only where telemetry ran

def _with_telemetry(rows: list, mode: str, throttled_impl: str | None = None, samples: int = 12) -> list:
    for r in rows:
        r["telemetry"] = mode
        r["tel_n_samples"] = samples if mode != "off" else float("nan")
        r["tel_throttled"] = r["impl"] == throttled_impl
    return rows


def _hatched_bars(fig) -> list:
    return [p for ax in fig.axes[:2] for c in ax.containers if isinstance(c, BarContainer) for p in c.patches
            if p.get_hatch()]


def test_no_throttle_mark_or_note_without_telemetry(tmp_path):
    """Rows measured with telemetry off say nothing about throttling, whatever tel_throttled holds."""
    rows = _loaded(tmp_path, _with_telemetry(run_rows(baseline="torch-compile"), "off", throttled_impl="megakernel"))
    df = F.figure_rows("bandwidth_by_impl", rows, GPU)
    assert not df["telemetry_ran"].any() and not df["throttled"].any()
    fig = F.make_figure("bandwidth_by_impl", rows, GPU)
    assert _hatched_bars(fig) == []
    text = _texts(fig)
    assert "No telemetry ran for these 6 rows, so whether the GPU throttled is unknown" in text
    assert "throttled while measured" not in text and not any("throttled" in t for t in _legend(fig))


def test_throttle_marks_exactly_the_throttled_rows_measured_with_telemetry(tmp_path):
    rows = _loaded(tmp_path, _with_telemetry(run_rows(baseline="torch-compile"), "nvml", throttled_impl="layerwise"))
    df = F.figure_rows("bandwidth_by_impl", rows, GPU)
    assert df["telemetry_ran"].all() and df.loc[df["throttled"], "impl"].tolist() == ["layerwise"]
    fig = F.make_figure("bandwidth_by_impl", rows, GPU)
    hatched = _hatched_bars(fig)
    assert len(hatched) == 2 and {to_hex(p.get_edgecolor()) for p in hatched} == {F.COLORS["layerwise"]}
    assert "Telemetry ran for 6 of 6 rows: hatched = GPU throttled while measured (1 of 6)" in _texts(fig)
    assert any(t.startswith("GPU throttled while measured") for t in _legend(fig))
    # a row that says nvml but took no sample is no telemetry either
    none = _loaded(tmp_path / "zero", _with_telemetry(run_rows(baseline="torch-compile"), "nvml", "layerwise", 0))
    assert _hatched_bars(F.make_figure("bandwidth_by_impl", none, GPU)) == []


def test_mixed_telemetry_says_for_how_many_rows_it_ran(tmp_path):
    rows = _loaded(tmp_path,
                   _with_telemetry(run_rows(model="llama1b", baseline="torch-compile", when=stamp(0)), "nvml"),
                   _with_telemetry(run_rows(model="llama8b", baseline="torch-compile", when=stamp(5)), "off"))
    text = _texts(F.make_figure("bandwidth_by_impl", rows, GPU))
    assert ("Telemetry ran for 6 of 12 rows: hatched = GPU throttled while measured (0 of 6); for the other 6 rows, "
            "measured without telemetry, it is unknown") in text


def test_committed_figures_mark_throttling_only_where_telemetry_ran():
    rows = load_results(ROOT / "results")
    for g in F.gpus_in(rows):
        df = F.figure_rows("bandwidth_by_impl", rows, g)
        text = _texts(F.make_figure("bandwidth_by_impl", rows, g))
        ran = int(df["telemetry_ran"].sum())
        if ran == 0:  # the H200 rows: telemetry was off
            assert "hatched =" not in text and "No telemetry ran" in text
        else:
            assert f"Telemetry ran for {ran} of {len(df)} rows" in text


# ---------------------------------------------------------------- every impl readable

def test_batch_latency_axis_is_logarithmic_and_holds_every_point():
    rows = load_results(ROOT / "results")
    for g in F.gpus_in(rows):
        fig = F.make_figure("batch_sweep", rows, g)
        df = F.figure_rows("batch_sweep", rows, g)
        for ax in fig.axes:
            if not ax.containers:
                continue
            assert ax.get_yscale() == "log", ax.get_title()
            lo, hi = ax.get_ylim()
            d = df[[ax.get_title().startswith(f"{m} ") for m in df["model"]]]
            for c in ax.containers:
                ys = [v for v in c.lines[0].get_ydata() if not math.isnan(v)]
                assert all(lo < v < hi for v in ys)
            # the spread of the non-eager impls takes a visible share of the axis (log decades)
            others = d[d["impl"] != "torch-eager"]["latency_us_median"]
            assert len(d) == 0 or np.log10(hi / lo) < 8 * max(np.log10(others.max() / others.min()), 0.05)


# ---------------------------------------------------------------- the roofline

@pytest.fixture(scope="module")
def synthetic_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    full_sweeps(ResultsStore(root))
    return load_results(root)


def _points(fig, gid: str = "point") -> list[tuple[float, float]]:
    return sorted((float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ax in fig.axes for ln in ax.lines
                  if ln.get_gid() == gid)


def test_roofline_draws_every_point_of_every_impl(synthetic_rows):
    df = F.roofline_rows(synthetic_rows, GPU)
    assert set(df["impl"]) == set(synthetic_rows["impl"]) and set(df["fusion"]) <= {"none", "model"}
    assert not df.duplicated(["model", "quant", "batch", "ctx", "impl", "fusion"]).any()
    assert set(df["batch"]) == {1, 2, 4, 8, 16}
    fig = F.roofline(df, GPU)
    assert _points(fig) == pytest.approx(sorted(zip(df["bytes_per_step"] / 1e9, df["pct_of_copy_bw"])))
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 5
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == [f"batch {b}" for b in (1, 2, 4, 8, 16)]


def test_roofline_marks_throttled_points_only_where_telemetry_ran(tmp_path):
    rows = _loaded(tmp_path, _with_telemetry(run_rows(model="llama1b", baseline="torch-compile", when=stamp(0)), "nvml",
                                             throttled_impl="megakernel"),
                   _with_telemetry(run_rows(model="llama8b", baseline="torch-compile", when=stamp(5)), "off",
                                   throttled_impl="megakernel"))
    df = F.roofline_rows(rows, GPU)
    fig = F.roofline(df, GPU)
    want = df[(df["model"] == "llama1b") & (df["impl"] == "megakernel")]
    assert _points(fig, "throttled") == pytest.approx(list(zip(want["bytes_per_step"] / 1e9, want["pct_of_copy_bw"])))
    assert "Telemetry ran for 6 of 12 rows: x = GPU throttled while measured (1 of 6)" in _texts(fig)


def test_committed_rooflines_draw_their_rows(tmp_path):
    rows = load_results(ROOT / "results")
    for g in F.gpus_in(rows):
        df = F.roofline_rows(rows, g)
        assert len(df) and _points(F.roofline(df, g)) == pytest.approx(
            sorted(zip(df["bytes_per_step"] / 1e9, df["pct_of_copy_bw"])))
    paths = F.render_roofline(rows, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"roofline-{g}.png" for g in F.gpus_in(rows))


# ---------------------------------------------------------------- H100 vs H200

def test_each_megakernel_backend_is_its_own_impl_in_figures(tmp_path):
    """A newer Gluon-backend run at a point does not replace the Triton backend's row as "megakernel": figures see
    it as "megakernel-gluon", and rows without the column (from before it existed) stay "megakernel"."""
    impls = ("torch-compile", "megakernel")
    rows = _loaded(tmp_path,
                   run_rows(impls=impls, latency={"torch-compile": 1000.0, "megakernel": 900.0}, when=stamp(0),
                            baseline="torch-compile"),
                   run_rows(impls=impls, latency={"torch-compile": 1000.0, "megakernel": 800.0}, when=stamp(1),
                            baseline="torch-compile", mega_backend="triton"),
                   run_rows(impls=impls, latency={"torch-compile": 1000.0, "megakernel": 700.0}, when=stamp(2),
                            baseline="torch-compile", mega_backend="gluon"))
    newest = D._newest_rows(rows, GPU)
    lat = dict(zip(newest["impl"], newest["latency_us_median"]))
    assert lat == {"torch-compile": 1000.0, "megakernel": 800.0, "megakernel-gluon": 700.0}
    old_only = D._newest_rows(_loaded(tmp_path / "old", run_rows(impls=impls, baseline="torch-compile")), GPU)
    assert sorted(old_only["impl"]) == ["megakernel", "torch-compile"]


def test_gpu_pairs_hold_the_points_both_gpus_measured(tmp_path):
    lat_a = {"torch-compile": 1000.0, "megakernel": 900.0, "layerwise": 950.0}
    lat_b = {"torch-compile": 800.0, "megakernel": 630.0, "layerwise": 760.0}
    impls = tuple(lat_a)
    rows = _loaded(tmp_path,
                   run_rows(gpu=GPU, impls=impls, latency=lat_a, copy_tbps=3.0, baseline="torch-compile",
                            when=stamp(0)),
                   run_rows(gpu=GPU, model="llama8b", impls=impls, baseline="torch-compile", when=stamp(1)),
                   run_rows(gpu=H200, impls=impls, latency=lat_b, copy_tbps=4.2, baseline="torch-compile",
                            when=stamp(2)))
    assert F.gpu_compare_pairs(rows) == [(gpu_slug(GPU), gpu_slug(H200))]
    p = F.gpu_pairs(rows, GPU, H200)
    assert set(p["model"]) == {"llama1b"}  # llama8b: H100 only
    assert dict(zip(p["impl"], p["latency_ratio"])) == pytest.approx({i: lat_b[i] / lat_a[i] for i in impls})
    assert p["copy_ratio"].tolist() == pytest.approx([3.0 / 4.2] * 3)
    fig = F.gpu_compare(p, GPU, H200)
    heights = sorted(b.get_height() for c in fig.axes[0].containers if isinstance(c, BarContainer) for b in c.patches)
    assert heights == pytest.approx(sorted(p["latency_ratio"]))
    assert _points(fig) == pytest.approx(sorted(zip(p["pct_of_copy_bw_a"], p["pct_of_copy_bw_b"])))
    [path] = F.render_gpu_compare(rows, tmp_path / "fig")
    assert path.name == f"gpu_compare-{gpu_slug(GPU)}-vs-{gpu_slug(H200)}.png"


def test_no_common_point_is_a_placeholder(tmp_path):
    rows = _loaded(tmp_path, run_rows(gpu=GPU, baseline="torch-compile"))
    [path] = F.render_gpu_compare(rows, tmp_path / "fig")
    assert path.name == "gpu_compare-none.png"


# ---------------------------------------------------------------- the per-stage breakdown of a step

def _timeline() -> pd.DataFrame:
    """Two programs, one launch. Program 0: RmsQkvRope 0..10 (waits 0), DownResidual waits 10..15, runs 15..20.
    Program 1: starts at 2, RmsQkvRope 2..8, then LmHead waits 8..9 and runs 9..16, idle 16..20."""
    recs = [(0, 0, "RmsQkvRope", 0, 0, 10, 1000.0), (0, 1, "DownResidual", 10, 15, 20, 2000.0),
            (1, 0, "RmsQkvRope", 2, 2, 8, 1000.0), (1, 1, "LmHead", 8, 9, 16, 4000.0)]
    df = pd.DataFrame([{"launch": 0, "program": p, "pos": i, "instr": i, "op": op, "layer": 0, "t_start": t0,
                        "t_ready": t1, "t_end": t2, "sm": p, "bytes": b, "gpu": GPU, "point": "toy", "tiles": ""}
                       for p, i, op, t0, t1, t2, b in recs])
    df["wait_us"] = df["t_ready"] - df["t_start"]
    df["run_us"] = df["t_end"] - df["t_ready"]
    return df


def test_step_breakdown_adds_up_to_the_span():
    # 1 GB/s: 1000 bytes take 1 µs; the stages' bytes are given, the timeline's own (cost model) `bytes` are not used
    b = F.step_breakdown(_timeline(), copy_tbps=1e-3,
                         stage_bytes={"RmsQkvRope": 2000, "DownResidual": 2000, "LmHead": 4000})
    us = dict(zip(b["segment"], b["us"]))
    assert us == pytest.approx({"RmsQkvRope": (10 + 6) / 2, "DownResidual": 5 / 2, "LmHead": 7 / 2,
                                F.WAIT: (5 + 1) / 2, F.IDLE: (0 + 4) / 2, F.OTHER: (0 + 2) / 2,
                                F.BETWEEN: 0.0})
    assert b["us"].sum() == pytest.approx(20.0) and set(b["span_us"]) == {20.0}
    assert dict(zip(b["segment"], b["copy_us"])) == pytest.approx(
        {"RmsQkvRope": 2.0, "DownResidual": 2.0, "LmHead": 4.0, F.WAIT: np.nan, F.IDLE: np.nan, F.OTHER: np.nan,
         F.BETWEEN: np.nan}, nan_ok=True)
    assert list(b["segment"][:3]) == ["RmsQkvRope", "DownResidual", "LmHead"]  # the order of a step


def _measured_widths(fig) -> dict[str, float]:
    out: dict = {}
    for ax in fig.axes:
        for p in ax.patches:
            gid = p.get_gid() or ""
            if gid.startswith("measured|"):
                point = gid.split("|")[1]
                out[point] = out.get(point, 0.0) + p.get_width()
    return out


def test_committed_step_breakdowns_draw_each_step_whole(tmp_path):
    rows = load_results(ROOT / "results")
    b = F.step_breakdowns(ROOT / "results" / "timelines", rows)
    files = sorted((ROOT / "results" / "timelines").glob("*/*.parquet"))
    assert files and b.groupby(["gpu_slug", "point"]).ngroups == len(files)
    for slug, d in b.groupby("gpu_slug"):
        spans = d.groupby("point")["span_us"].first()
        assert d.groupby("point")["us"].sum().to_dict() == pytest.approx(spans.to_dict())
        fig = F.step_breakdown_figure(d, slug)
        assert _measured_widths(fig) == pytest.approx(spans.to_dict())
        assert set(d["copy_tbps"]) == {D.copy_tbps_by_gpu(rows)[slug]}
    paths = F.render_step_breakdown(ROOT / "results" / "timelines", tmp_path, rows)
    assert sorted(p.name for p in paths) == sorted({f"step_breakdown-{f.parent.name}.png" for f in files})


@pytest.mark.parametrize("model", ["llama1b", "llama3b", "llama8b"])
@pytest.mark.parametrize("quant", ["bf16", "int8", "int4"])
def test_stage_bytes_sum_to_bytes_per_step(model, quant):
    from harness.metrics import bytes_per_step
    from harness.models import named_spec

    for batch, ctx in ((1, 1024), (16, 4096)):
        stages = D.stage_bytes(named_spec(model), quant, 128, batch, ctx)
        assert set(stages) <= set(D.STAGE_ORDER)
        assert sum(stages.values()) == bytes_per_step(named_spec(model), quant, 128, batch, ctx)["total"]


def test_committed_step_breakdowns_put_the_rows_bytes_per_step_at_copy_speed():
    """The lighter bars: the bytes_per_step the result rows record at the timeline's point (the bytes % of copy uses),
    at the copy bandwidth; not the schedule's cost-model bytes in the timeline table."""
    rows = load_results(ROOT / "results")
    b = F.step_breakdowns(ROOT / "results" / "timelines", rows)
    checked = 0
    for (slug, point), d in b.groupby(["gpu_slug", "point"]):
        model, quant, batch, ctx = re.match(D.TIMELINE_POINT, point).group("model", "quant", "batch", "ctx")
        r = rows[(rows["model"] == model) & (rows["quant"] == quant) & (rows["batch"] == int(batch))
                 & (rows["ctx"] == int(ctx))]
        st = d[d["stage"]]
        assert st["bytes"].sum() == pytest.approx(d["step_bytes"].iloc[0])
        assert st["copy_us"].sum() == pytest.approx(d["step_bytes"].iloc[0] / (d["copy_tbps"].iloc[0] * 1e6))
        if len(r):
            assert set(r["bytes_per_step"]) == {d["step_bytes"].iloc[0]}, point
            checked += 1
        fig = F.step_breakdown_figure(b[b["gpu_slug"] == slug], slug)
        copy = sum(p.get_width() for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith(f"copy|{point}|"))
        assert copy == pytest.approx(st["copy_us"].sum())
    assert checked >= 4


# ---------------------------------------------------------------- the per-op kernel tables

def test_op_tables_read_both_layouts_and_put_ours_next_to_the_libraries():
    ops = F.op_tables(ROOT / "results" / "ops")
    raw = {f.name: pd.read_csv(f) for f in (ROOT / "results" / "ops").glob("*.csv")}
    for name, d in raw.items():
        got = ops[ops["source"] == name]
        if "layer" in d.columns:  # qgemv tables: the row/warp variants are left out
            assert len(got) == int((~d["impl"].str.match(r"^qgemv-r\d+w\d+$")).sum())
        else:
            assert len(got) == len(d)
    assert set(ops.loc[ops["ours"], "impl"]) <= set(F.OURS) and set(ops.loc[~ops["ours"], "impl"]) <= set(F.LIBRARY)
    for _, g in ops.groupby(list(F.OP_PANEL) + ["op"], dropna=False):
        assert g["ours"].any() and (~g["ours"]).any()  # every op: ours and a library kernel


def test_op_figure_draws_one_bar_per_row(tmp_path):
    ops = F.op_tables(ROOT / "results" / "ops")
    for slug, d in ops.groupby("gpu_slug"):
        d = d.reset_index(drop=True)
        fig = F.op_bandwidth(d, slug)
        bars = {p.get_gid(): p.get_width() for ax in fig.axes for p in ax.patches if p.get_gid()}
        metric = np.where(d["kind"] == "qgemv", d["op_pct_of_copy"], d["op_gbps"])
        want = {F.op_bar_id(r): m for r, m in zip(d.to_dict("records"), metric)}
        assert len(bars) == len(d) and bars == pytest.approx(want)
    # a CSV in another layout is not drawn, and the note names it
    (tmp_path / "ops").mkdir()
    for f in (ROOT / "results" / "ops").glob("bench_ops-h100-b16.csv"):
        (tmp_path / "ops" / f.name).write_text(f.read_text())
    (tmp_path / "ops" / "other.csv").write_text("a,b\n1,2\n")
    assert F.op_files_unread(tmp_path / "ops") == ["other.csv"]
    [path] = F.render_op_bandwidth(tmp_path / "ops", tmp_path / "fig")
    assert path.name == "op_bandwidth-nvidia-h100-80gb-hbm3.png"


def test_op_figure_divides_every_kernel_of_an_op_by_the_same_weight_bytes(tmp_path):
    """One denominator per op: its weights in the table's format. cuBLAS on a dequantised bf16 weight (4x the bytes
    of int4) is not drawn at 4x the bandwidth; within an op the bars rank as the latencies do."""
    from kernels.quant import quant_mode

    ops = F.op_tables(ROOT / "results" / "ops")
    for _, g in ops.groupby(list(F.OP_PANEL) + ["op"], dropna=False):
        assert g["op_bytes"].nunique() == 1
        lat, bw = g["latency_us"].to_numpy(), g["op_gbps"].to_numpy()
        assert (np.argsort(lat, kind="stable") == np.argsort(-bw, kind="stable")).all() or len(set(lat)) < len(lat)
    q = ops[(ops["kind"] == "qgemv") & (ops["op"] == "qkv") & (ops["quant"] == "int4") & (ops["batch"] == 1)]
    assert set(q["op_bytes"]) == {quant_mode("int4").linear_nbytes(6144, 4096, 128)}
    cublas, ours = (q[q["impl"] == i].iloc[0] for i in ("cublas-bf16", "qgemv"))
    assert cublas["bytes"] > 3 * ours["bytes"] and cublas["pct_of_copy_bw"] > ours["pct_of_copy_bw"]  # its own count
    assert cublas["op_pct_of_copy"] == pytest.approx(ours["op_pct_of_copy"] * ours["latency_us"] / cublas["latency_us"])
    b = ops[(ops["source"] == "bench_ops-h100-9.csv") & (ops["model"] == "llama1b") & (ops["op"] == "down(+residual)")
            & (ops["quant"] == "int4") & (ops["batch"] == 1)]
    assert set(b["op_bytes"]) == {quant_mode("int4").linear_nbytes(2048, 8192, 128)} and set(b["op_bytes_are"]) == \
        {"weights"}
    fig = F.op_bandwidth(ops[ops["gpu_slug"] == "nvidia-h200"].reset_index(drop=True), "NVIDIA H200")
    assert all("at the op's weight bytes in" in ax.get_xlabel() for ax in fig.axes if ax.get_visible())


# ---------------------------------------------------------------- commit and date of the timeline figures

def test_timeline_title_says_gpu_commit_and_date(tmp_path):
    from harness import timeline as T

    df = _timeline().assign(gpu="NVIDIA H200", point="llama8b-int8-b1-ctx1024-model", tiles="warps=4",
                            git_sha="0123456789abcdef-dirty", timestamp_utc="2026-11-30T05:12:00+00:00")
    title = T.timeline_title(df)
    assert "NVIDIA H200" in title and "commit 01234567-dirty (not a clean commit), measured 2026-11-30" in title
    assert "commit 01234567, measured 2026-11-30" in T.timeline_title(df.assign(git_sha="0123456789abcdef"))
    # a table written before the commit was recorded says so, and names the commit that added it
    old = ROOT / "results" / "timelines" / "nvidia-h200" / "llama8b-int8-b1-ctx1024-model.parquet"
    frame = pd.read_parquet(old)
    line = T.source_line(frame, old)
    assert "git_sha" in frame.columns or re.fullmatch(
        r"commit and date not recorded \(table added in [0-9a-f]{8} on \d{4}-\d{2}-\d{2}\)", line), line
    # the re-plot writes the PNG next to the table, with that title
    (tmp_path / "t").mkdir()
    df.to_parquet(tmp_path / "t" / "x.parquet")
    assert [p.name for p in T.replot([str(tmp_path / "t")])] == ["x.png"] and (tmp_path / "t" / "x.png").is_file()


def test_step_breakdown_names_each_timelines_commit_and_date():
    rows = load_results(ROOT / "results")
    b = F.step_breakdowns(ROOT / "results" / "timelines", rows)
    for slug, d in b.groupby("gpu_slug"):
        text = " ".join(t.get_text() for ax in F.step_breakdown_figure(d, slug).axes for t in ax.get_yticklabels())
        for src in set(d["source"]):
            assert src.startswith("commit") and src in text


# ---------------------------------------------------------------- make figures-gpu

def _fake_python(tmp_path: Path, log: Path, real: bool) -> Path:
    """A `python` that logs its arguments, then runs the real interpreter (real) or pretends every step succeeds and
    a GPU is there (not real)."""
    f = tmp_path / "python"
    body = f'exec {sys.executable} "$@"' if real else "exit 0"
    f.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{body}\n')
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return f


def _make(tmp_path: Path, real: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    py = _fake_python(tmp_path, log, real)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    p = subprocess.run(["make", "-s", "-o", "env", "figures-gpu", f"PY={py}"], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=300)
    calls = [c for c in (log.read_text().splitlines() if log.exists() else []) if not c.startswith("-c ")]
    return p, calls


def test_make_figures_gpu_without_a_gpu_stops_in_one_sentence(tmp_path):
    if F.has_cuda():
        pytest.skip("this machine has a GPU")
    p, calls = _make(tmp_path, real=True)
    assert p.returncode != 0
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] == [F.NO_GPU_SENTENCE]
    assert calls == ["-m harness.figures --require-gpu"]  # nothing measured, nothing else run


def test_make_figures_gpu_runs_every_experiment_then_the_figures(tmp_path):
    p, calls = _make(tmp_path, real=False)
    assert p.returncode == 0, p.stderr
    order = list(F.gpu_plan(load_results(ROOT / "results"))["experiment"])
    assert sorted(order) == sorted(f.stem for f in (ROOT / "experiments").glob("*.yaml"))
    assert calls == (["-m harness.figures --require-gpu", "-m harness.results --require-clean",
                      "-m harness.figures --gpu-plan"]
                     + [f"run.py +experiment={e} results.tag=figures -m" for e in order]
                     + ["-m harness.figures"])


def test_require_gpu_answers_in_one_sentence(capsys, monkeypatch):
    monkeypatch.setattr(F, "has_cuda", lambda: False)
    assert F.main(["--require-gpu"]) == 2
    assert capsys.readouterr().err.strip() == F.NO_GPU_SENTENCE
    monkeypatch.setattr(F, "has_cuda", lambda: True)
    assert F.main(["--require-gpu"]) == 0


# ---------------------------------------------------------------- its device-time estimate

def test_gpu_plan_counts_new_points_and_prices_them_from_the_sessions(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "bandwidth_by_impl.yaml").write_text(
        "bench: {batch: 1, ctx: 1024}\nhydra: {sweeper: {params: {model: 'llama1b,llama8b', quant: bf16}}}\n")
    (exp / "a_batch.yaml").write_text(
        "bench: {ctx: 1024}\nhydra: {sweeper: {params: {model: llama1b, quant: bf16, bench.batch: '1,4'}}}\n")
    (exp / "b_fusion.yaml").write_text(
        "impl: {names: [megakernel, layerwise, torch-compile]}\nmegakernel: {fusions: [op, model]}\n"
        "bench: {batch: 1, ctx: 1024}\nhydra: {sweeper: {params: {model: llama1b, quant: bf16}}}\n")
    # one session: runs of 6 rows, 120 s apart (20 s per row); a run 3 hours later starts another session
    rows = _loaded(tmp_path / "r", *(run_rows(when=stamp(2 * i), seed=i) for i in range(4)),
                   run_rows(when=stamp(180), seed=9))
    spr = D.seconds_per_row(rows)
    assert spr["s_per_row"].tolist() == pytest.approx([20.0]) and spr["runs"].tolist() == [3]
    plan = F.gpu_plan(rows, exp)
    assert plan["experiment"].tolist() == ["bandwidth_by_impl", "a_batch", "b_fusion"]
    assert plan["new_points"].tolist() == [2, 1, 0]
    # 2 points x every impl; 1 new point x every impl; a measured point: the op fusion and the baseline again
    from harness.impls import REGISTRY
    n = len(REGISTRY)  # impl: all measures every registered impl
    assert set(F.IMPL_ORDER) == set(REGISTRY)
    assert plan["rows"].tolist() == [2 * n, n, 2]
    assert plan["est_minutes"].tolist() == pytest.approx([2 * n * 20 / 60, n * 20 / 60, 2 * 20 / 60])
    assert ("Estimate, not a measurement: about 0.1 h of device time (nvidia-h100-80gb-hbm3: 20.0 s per impl row over 3 "
            "runs") in F.gpu_plan_text(rows, exp)


# ---------------------------------------------------------------- findings quote their tables

@pytest.fixture(scope="module")
def two_gpu_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    store = ResultsStore(root)
    full_sweeps(store)
    full_sweeps(store, gpu=H200)
    rows = load_results(root)
    h200 = rows["gpu_name"] == H200
    for c in ("latency_us_median", "latency_us_p10", "latency_us_p90"):
        rows.loc[h200, c] = rows.loc[h200, c] * 0.8  # the H200 20 % faster, every impl of a run alike
    return rows


def test_findings_quote_the_numbers_of_their_tables(two_gpu_rows, tmp_path):
    rows = two_gpu_rows
    text = F.findings("roofline", tmp_path, rows=rows)
    for g in (GPU, H200):
        df = F._with_series(F.roofline_rows(rows, g))
        for name, s in df.groupby("series"):
            p = s["pct_of_copy_bw"]
            assert f"{name}: {len(s)} points, median {p.median():.1f} % of copy, highest {p.max():.1f} %" in text
    text = F.findings("gpu_compare", tmp_path, rows=rows)
    p = F.gpu_pairs(rows, GPU, H200)
    for name, s in p.groupby("series"):
        assert f"{name}: latency on {H200} / on {GPU} median {s['latency_ratio'].median():.2f}" in text
    assert "median 0.80" in text
    text = F.findings("batch_sweep", tmp_path, rows=rows)
    d = F._with_series(F.figure_rows("batch_sweep", rows, H200))
    s = d[(d["model"] == "llama8b") & (d["quant"] == "int4") & (d["series"] == F.REF)].sort_values("batch")
    assert (f"{F.REF} {s['latency_us_median'].iloc[0]:.0f} µs at batch 1 -> {s['latency_us_median'].iloc[-1]:.0f} µs "
            f"at batch 16") in text
    text = F.findings("headline", tmp_path, rows=rows)
    t = F.headline_table(rows)
    assert f"from {t['mega_speedup'].min():.2f}x" in text and f"to {t['mega_speedup'].max():.2f}x" in text


def test_findings_of_the_file_figures_quote_their_tables(tmp_path):
    rows = load_results(ROOT / "results")
    text = F.findings("step_breakdown", ROOT / "results", rows=rows)
    b = F.step_breakdowns(ROOT / "results" / "timelines", rows)
    for (g, p), d in b.groupby(["gpu_name", "point"]):
        span = d["span_us"].iloc[0]
        assert f"{g} {p}: span {span:.0f} µs; programs run {100 * d.loc[d['stage'], 'us'].sum() / span:.0f} %" in text
    text = F.findings("op_bandwidth", ROOT / "results", rows=rows)
    ops = F.op_tables(ROOT / "results" / "ops")
    d = ops[(ops["source"] == "qgemv-llama8b-h200.csv") & (ops["quant"] == "int4") & (ops["batch"] == 1)]
    per_op = d.groupby("op").apply(
        lambda g: g.loc[g["ours"], "latency_us"].min() < g.loc[~g["ours"], "latency_us"].min())
    assert (f"llama8b int4 batch 1 [qgemv-llama8b-h200.csv]: ours faster than the fastest library kernel for "
            f"{int(per_op.sum())} of {len(per_op)} ops") in text


def test_fusion_ablation_panel_comes_from_one_run(tmp_path):
    """An ablation run measured four fusions and the references; a later run re-measured only fusion=model and
    torch-compile (8% faster). The panel keeps every bar of the ablation run, so its bars stay comparable, instead of
    taking the later run's model bar and torch-compile next to the earlier run's op / block / layer bars."""
    refs = ("layerwise", "torch-compile")
    ablation = []
    for f in ("op", "block", "layer", "model"):
        ablation += run_rows(model="llama1b", impls=("megakernel",) + (refs if f == "model" else ()), fusion=f,
                             baseline="torch-compile", when=stamp(0), latency={"torch-compile": 1170.0})
    for r in ablation:  # one run: one configuration, one timestamp
        r["config_json"] = ablation[-1]["config_json"]
    for r in ablation:
        if r["impl"] != "torch-compile":
            r["speedup"] = 1170.0 / r["latency_us_median"]
    later = run_rows(model="llama1b", impls=("megakernel", "torch-compile"), fusion="model", baseline="torch-compile",
                     when=stamp(60), latency={"torch-compile": 1082.0, "megakernel": 1153.0})
    rows = stored_and_loaded(tmp_path, ablation, later)
    df = D.figure_rows("fusion_ablation", rows, GPU)
    panel = df[(df["model"] == "llama1b") & (df["quant"] == "bf16")]
    assert set(panel["timestamp_utc"]) == {stamp(0)}, panel[["impl", "fusion", "timestamp_utc"]]
    assert sorted(panel.loc[panel["impl"] == "megakernel", "fusion"]) == ["block", "layer", "model", "op"]
    assert panel.loc[panel["impl"] == "torch-compile", "latency_us_median"].tolist() == [1170.0]
    # elsewhere the newest row per series still wins: the bandwidth figure takes the later run's megakernel
    bw = D.figure_rows("bandwidth_by_impl", rows, GPU)
    assert stamp(60) in set(bw.loc[bw["impl"] == "megakernel", "timestamp_utc"])
