"""Figures from result tables only (no GPU needed): one function per experiment in experiments/.

Each figure draws the rows of one GPU that fall in its experiment's grid (the values its YAML fixes
or sweeps: experiments/<name>.yaml), after same-run ratios were derived and only the newest row of
each point kept (harness.analysis; rows chosen in harness.figure_data). A figure with no such rows
is still written, saying plainly "no rows yet for <experiment> on <gpu>": nothing is ever invented. A figure
asked for a results.tag that no row carries is an error (ValueError), not a placeholder.

Markers and bars are hollow (white face) for rows that were not measured at a clean commit (harness.results
.is_clean_sha: a git sha ending in "-dirty", or none) and for rows whose output was wrong (the `hollow` column of
harness.figure_data.with_markers); the note under each figure says how many points are hollow and why, and the
legend has an entry for hollow points whenever a figure draws any.

A line joins only points of one sweep (figure_data.sweeps: one GPU, one commit, one session), and of those only
neighbouring values of the grid (a gap, never a bridge); marker shape and legend say which commit and date each
sweep comes from;
throttling is marked only on rows measured with telemetry, and each note says for how many rows it ran; the batch
figure's latency axis is logarithmic so that torch-eager does not squash the other impls.

Figures that are not one experiment's grid (tables in harness.figure_data): the bandwidth roofline (every point,
% of copy against bytes per step), two GPUs at the points both measured, the per-stage breakdown of a megakernel step
(results/timelines/), the per-op kernel tables (results/ops/), and the README's headline (figure, table and the
README block between its markers). FIGURES names every figure with a notebook; `findings` gives the sentences each
notebook ends with.

    figures.render("speedup_vs_context", load_results("results"), "results/figures")
    figures.render_named("roofline", "results", "results/figures")
    python -m harness.figures      # executes every notebook in notebooks/ headless (nbclient), syncs the README
    python -m harness.figures --gpu-plan       # what make figures-gpu measures, with its estimated device time

PNG files: <out_dir>/<figure>-<gpu-slug>.png (gpu_compare-<a>-vs-<b>.png, headline.png). Plots are drawn on
matplotlib Figure objects (no pyplot state), so this module works the same in a notebook, a test or a script.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness import analysis as A
from harness.figure_data import (  # noqa: F401 - re-exported: notebooks and tests use figures.figure_table etc.
    BETWEEN, DEFAULT_FUSION, EXPERIMENTS_DIR, FUSION_ORDER, HEADLINE_GPU, HEADLINE_POINT, IDLE, IMPL_ORDER, LIBRARY,
    OP_IMPL_ORDER, OP_PANEL, OTHER, OURS, REF, REQUIRES, SPEEDUP, WAIT, _model_order, _series_order, _with_series,
    experiment_grid, figure_rows, figure_table, findings_experiment, findings_gpu_compare, findings_headline,
    findings_op_bandwidth, findings_roofline, findings_step_breakdown, gpu_compare_pairs, gpu_pairs, gpu_plan,
    gpu_plan_text, gpus_in, headline_markdown, headline_table, in_grid, op_files_unread, op_panels, op_tables,
    provenance, roofline_rows, series_name, step_breakdown, step_breakdowns, sweeps, telemetry_ran, with_tag,
)
from harness.figure_data import SESSION_GAP_S
from harness.results import REPO_ROOT
from kernels import gpu_slug

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NO_GPU = "any-gpu"  # slug of the placeholder written when results/ holds no GPU rows at all

COLORS = {"torch-eager": "#9e9e9e", "torch-graph": "#8c6d31", "torch-compile": "#252525", "gemlite": "#6a51a3", "flash-attn": "#3182bd",
          "layerwise": "#fd8d3c", "megakernel": "#cb181d", "megakernel/op": "#fcae91", "megakernel/block": "#fb6a4a",
          "megakernel/layer": "#de2d26", "megakernel/model": "#a50f15"}
DPI = 120
CEILING = "copy ceiling (= 100 %):\ndevice-to-device copy\nmeasured in the same process"


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------

def _color(name: str) -> str:
    return COLORS.get(name) or COLORS.get(name.split("/")[0], "#756bb1")


def _model_tick(m: str) -> str:
    from harness.models import named_spec
    try:
        return f"{m}\n{named_spec(m).n_params() / 1e9:.1f} B params"
    except Exception:  # noqa: BLE001
        return m


def _title(fig: Figure, what: str, df: pd.DataFrame, gpu_name: str, note: str) -> None:
    fig.suptitle(f"{what}\n{gpu_name}, measured {A.measurement_dates(df) or '?'}", fontsize=12)
    fig.text(0.01, 0.005, note, fontsize=8, color="#555555", ha="left", va="bottom", wrap=True)


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout figure leaving a strip at the bottom for the note."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    bottom = 0.45 / height  # 0.45 in kept free for the note; rect = (left, bottom, width, height), figure fractions
    fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
    return fig


def _panels(n_rows: int, n_cols: int, w: float = 4.4, h: float = 3.4, legend_w: float = 1.8) -> tuple[Figure, np.ndarray]:
    fig = _figure(max(9.0, w * n_cols + legend_w), h * n_rows + 1.3)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(fig: Figure, axes: np.ndarray, extra: Sequence = ()) -> Figure:
    """One legend for all panels, outside them on the right; `extra`: handles of artists drawn in no panel."""
    handles, labels = {}, []
    pairs = [pair for ax in axes.flat for pair in zip(*ax.get_legend_handles_labels())]
    given = {h.get_label(): h for h in extra}  # an extra handle stands for a label the panels also have
    for h, l in pairs + [(h, h.get_label()) for h in extra]:
        if l not in handles:
            handles[l] = given.get(l, h)
            labels.append(l)
    if labels:
        fig.legend([handles[l] for l in labels], labels, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def _face(r, color: str) -> str:
    """A marker's or bar's face colour: white (hollow) for a row not from a clean commit or with wrong output."""
    return "white" if bool(r["hollow"]) else color


HOLLOW = "hollow: not from a clean commit"  # legend label of hollow points (figure_data.NOT_CLEAN)


def _hollow_note(df: pd.DataFrame) -> str:
    """The caption's sentence on hollow markers, with the counts of this figure's rows."""
    n = len(df)
    dirty = int((~df["clean"]).sum())
    wrong = int(df["status"].eq("wrong").sum())
    return (f"Hollow: measured from a tree that was not a clean commit (git sha -dirty or unknown: {dirty} of the "
            f"figure's {n} rows) or output wrong vs the fp32 reference ({wrong} of {n}). ")


def _hollow_handles(df: pd.DataFrame, bars: bool = False) -> list:
    """A legend entry for hollow points when the figure draws any row not from a clean commit."""
    if bool(df["clean"].all()):
        return []
    n, dirty = len(df), int((~df["clean"]).sum())
    label = f"{HOLLOW}\n({dirty} of {n} rows; git sha -dirty or unknown)"
    if bars:
        from matplotlib.patches import Patch
        return [Patch(facecolor="white", edgecolor="#555555", label=label)]
    from matplotlib.lines import Line2D
    return [Line2D([], [], ls="none", marker="o", ms=6, mfc="white", mec="#555555", label=label)]


THROTTLE_HATCH = "//"


def _telemetry_note(df: pd.DataFrame, mark: str) -> str:
    """The caption's sentence on throttling: marks exist only for rows measured with telemetry, and the sentence says
    for how many rows it ran (a row without telemetry is "unknown", never "not throttled")."""
    n, ran, thr = len(df), int(df["telemetry_ran"].sum()), int(df["throttled"].sum())
    if ran == 0:
        return (f"No telemetry ran for these {n} rows, so whether the GPU throttled is unknown (nothing is marked). ")
    rest = f"; for the other {n - ran} rows, measured without telemetry, it is unknown" if ran < n else ""
    return f"Telemetry ran for {ran} of {n} rows: {mark} = GPU throttled while measured ({thr} of {ran}){rest}. "


def _throttle_handles(df: pd.DataFrame, bars: bool = False) -> list:
    """A legend entry for the throttle mark, only when telemetry ran for at least one row of the figure."""
    ran = int(df["telemetry_ran"].sum())
    if ran == 0:
        return []
    label = f"GPU throttled while measured\n(telemetry ran for {ran} of {len(df)} rows)"
    if bars:
        from matplotlib.patches import Patch
        return [Patch(facecolor="white", edgecolor="#555555", hatch=THROTTLE_HATCH, label=label)]
    from matplotlib.lines import Line2D
    return [Line2D([], [], ls="none", marker="x", ms=7, mew=1.6, color="#000000", label=label)]


COMMON_NOTE = "Same-run ratios; error bars: p10..p90 of the step latency. Newest row per point. "


def no_rows_figure(experiment: str, gpu_name: str, detail: str = "") -> Figure:
    """A figure that says plainly that there is nothing to draw yet."""
    fig = Figure(figsize=(8, 3.2), dpi=DPI)
    ax = fig.add_subplot(111)
    ax.axis("off")
    on = "any GPU" if gpu_name == NO_GPU else gpu_name
    ax.text(0.5, 0.62, f"no rows yet for {experiment} on {on}", ha="center", va="center", fontsize=15,
            weight="bold")
    ax.text(0.5, 0.32, (detail + "\n" if detail else "") + f"measure them with: python run.py +experiment={experiment} -m",
            ha="center", va="center", fontsize=10, color="#555555")
    return fig


# ----------------------------------------------------------------------------------------------
# One function per experiment: rows of ONE GPU (figure_rows) -> Figure
# ----------------------------------------------------------------------------------------------

def _with_gaps(xv, yv, yerr, xs: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A series on every x of `xs`, NaN where it was not measured, so that its line breaks there: a line joins two
    measured points only when no x value of the grid lies between them unmeasured. yerr: (n,) or (2, n)."""
    xv = np.asarray(pd.to_numeric(pd.Series(xv)), dtype=float)
    pos = {float(v): i for i, v in enumerate(xs)}
    gy = np.full(len(xs), np.nan)
    err = np.atleast_2d(np.asarray(yerr, dtype=float))
    gerr = np.zeros((err.shape[0], len(xs)))
    for j, (xi, yi) in enumerate(zip(xv, np.asarray(yv, dtype=float))):
        gy[pos[xi]] = yi
        gerr[:, pos[xi]] = err[:, j]
    return np.asarray(xs, dtype=float), gy, (gerr[0] if gerr.shape[0] == 1 else gerr)


def _log_axis(axis, set_scale, subs: Sequence[float] = (1.0, 2.0, 3.0, 5.0, 7.0)) -> None:
    """A log axis labelled in plain numbers at `subs` of each decade (no 3x10^0 labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=tuple(subs)))
    axis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_y(ax, values: pd.Series) -> None:
    """A log y axis labelled in plain numbers, a little room above and below the data (and its error bars)."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[v > 0]
    _log_axis(ax.yaxis, ax.set_yscale)
    if len(v):
        ax.set_ylim(float(v.min()) / 1.2, float(v.max()) * 1.2)


SWEEP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def _sweep_markers(df: pd.DataFrame) -> dict[str, str]:
    """Provenance (figure_data.provenance: commit and date) -> marker shape, oldest first."""
    order = df.assign(_p=provenance(df), _t=A.timestamps(df)).sort_values("_t", kind="stable")["_p"]
    return {p: SWEEP_MARKERS[i % len(SWEEP_MARKERS)] for i, p in enumerate(dict.fromkeys(order))}


def _draw_sweeps(ax, s: pd.DataFrame, x: str, y: str, yerr, xs: Sequence, name: str, markers: dict) -> None:
    """One series of a line panel, one line per sweep (`sweep`, figure_data.sweeps: one GPU, one commit, one
    session): a line joins only points measured by the same code in the same session, and within it only
    neighbouring values of `xs` (_with_gaps); points of other sweeps stand apart. Marker shape = the sweep's commit
    and date; hollow = not from a clean commit or output wrong."""
    c = _color(name)
    err = np.atleast_2d(np.asarray(yerr, dtype=float))
    for sweep in dict.fromkeys(s["sweep"]):
        m = (s["sweep"] == sweep).to_numpy()
        r = s[m]
        mk = markers[provenance(r).iloc[0]]
        gx, gy, gerr = _with_gaps(r[x], r[y], err[:, m], xs)
        ax.errorbar(gx, gy, yerr=gerr, color=c, lw=1.6, capsize=3, label=name, marker=mk, ms=6, zorder=3,
                    gid=f"sweep|{sweep}")
        for _, h in r[r["hollow"]].iterrows():
            ax.plot([h[x]], [h[y]], mk, ms=6, mfc="white", mec=c, zorder=4)


def _sweep_legend(drawn: pd.DataFrame, markers: dict) -> list:
    """Legend entries of a line figure: each series as a plain line of its colour, then each commit and date with
    its marker shape and how many sweeps it holds."""
    from matplotlib.lines import Line2D
    hs = [Line2D([], [], color=_color(n), lw=1.6, label=n) for n in _series_order(drawn["series"])]
    prov = provenance(drawn)
    for p, mk in markers.items():
        n = drawn.loc[prov == p, "sweep"].nunique()
        if n:
            hs.append(Line2D([], [], ls="none", marker=mk, ms=6, color="#555555",
                             label=f"{p} ({n} sweep{'s' if n > 1 else ''})"))
    return hs


def _sweep_note(drawn: pd.DataFrame, x: str) -> str:
    """The caption's sentence on what a line joins, with the counts of this figure's rows."""
    per = drawn.groupby("sweep")[x].nunique()
    return (f"A line joins only points of one sweep (one commit, one session: rows of this GPU less than "
            f"{SESSION_GAP_S // 60} min apart) and only neighbouring values it measured; {int((per > 1).sum())} of "
            f"the {len(per)} sweeps drawn measured more than one {x} value (the points of any other sweep stand "
            f"alone). Marker shape: the commit and date of the sweep (legend). ")


def _line_panels(df: pd.DataFrame, grid: dict, x: str, y: str, xlabel: str, ylabel: str, log2x: bool,
                 ref_line: bool, spread: str, markers: dict, logy: bool = False) -> tuple[Figure, np.ndarray]:
    models = _model_order(grid.get("model") or df["model"].unique())
    quants = list(grid.get("quant") or df["quant"].unique())
    fig, axes = _panels(len(models), len(quants), legend_w=3.0)
    xs_all = sorted(grid.get(x) or pd.to_numeric(df[x]).unique())
    for i, m in enumerate(models):
        for j, q in enumerate(quants):
            ax = axes[i, j]
            d = df[(df["model"] == m) & (df["quant"] == q)]
            d = d[d[y].notna()] if y in d.columns else d.iloc[0:0]
            if d.empty:
                _empty_panel(ax, f"no rows yet for {m} {q}")
                ax.set_title(f"{m} {q}", fontsize=10)
                continue
            xs = sorted(set(xs_all) | set(pd.to_numeric(d[x])))
            for name in _series_order(d["series"]):
                if ref_line and name == REF:
                    continue
                s = d[d["series"] == name].sort_values(x)
                if y == "latency_us_median":  # the measured p10..p90, asymmetric
                    yerr = np.vstack([(s[y] - s["latency_us_p10"]).clip(lower=0).fillna(0),
                                      (s["latency_us_p90"] - s[y]).clip(lower=0).fillna(0)])
                else:
                    yerr = (s[y] * s[spread]).fillna(0).to_numpy() if spread in s.columns else np.zeros(len(s))
                _draw_sweeps(ax, s, x, y, yerr, xs, name, markers)
            if ref_line:
                ax.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, label=f"{REF} (reference = 1)", zorder=2)
            if log2x:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs_all)
                ax.set_xticklabels([f"{v:g}" for v in xs_all], fontsize=8)
                ax.set_xlim(min(xs_all) / 1.4, max(xs_all) * 1.4)
            if logy:
                _log_y(ax, pd.concat([d[c] for c in (y, "latency_us_p10", "latency_us_p90") if c in d.columns]))
            else:
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"{m} {A.quant_label(q, d['group_size'].iloc[0])} "
                         f"({d[x].nunique()} of {len(xs_all)} {x} values measured)", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    return fig, axes


def _drawn(df: pd.DataFrame, y: str, ref_line: bool) -> pd.DataFrame:
    """The rows a line figure draws as points (the reference is the dashed line at 1 where `ref_line`)."""
    d = df[df[y].notna()]
    return d[d["series"] != REF] if ref_line else d


def speedup_vs_context(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    df = df.assign(sweep=sweeps(df))
    markers = _sweep_markers(df)
    fig, axes = _line_panels(df, grid, "ctx", SPEEDUP, "context length (tokens in the KV cache)",
                             f"speedup over {REF} (x, same run)", True, True, A.spread_column(SPEEDUP), markers)
    drawn = _drawn(df, SPEEDUP, True)
    _title(fig, f"Decode-step speedup over {REF} vs context length (batch {grid.get('batch', ['?'])[0]})", df,
           gpu_name, COMMON_NOTE + _sweep_note(drawn, "ctx") + _hollow_note(df) + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _sweep_legend(drawn, markers) + _hollow_handles(df))


def batch_sweep(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    df = df.assign(sweep=sweeps(df))
    markers = _sweep_markers(df)
    fig, axes = _line_panels(df, grid, "batch", "latency_us_median", "batch (sequences decoded together)",
                             "decode-step latency (µs, median, log scale)", True, False, "latency_rel_spread", markers,
                             logy=True)
    drawn = _drawn(df, "latency_us_median", False)
    _title(fig, f"Decode-step latency vs batch (context {grid.get('ctx', ['?'])[0]})", df, gpu_name,
           "Median step latency on a log scale (torch-eager is several times slower than the rest); error bars: "
           "p10..p90 of the step latency. Newest row per point. " + _sweep_note(drawn, "batch") + _hollow_note(df)
           + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _sweep_legend(drawn, markers) + _hollow_handles(df))


def speedup_vs_model(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    df = df.assign(sweep=sweeps(df))
    models = _model_order(grid.get("model") or df["model"].unique())
    quants = list(grid.get("quant") or df["quant"].unique())
    fig, axes = _panels(1, len(quants), legend_w=3.0)
    xpos = {m: i for i, m in enumerate(models)}
    markers = _sweep_markers(df)
    for j, q in enumerate(quants):
        ax = axes[0, j]
        d = df[(df["quant"] == q) & df[SPEEDUP].notna()]
        ax.set_title(f"{q} ({d['model'].nunique()} of {len(models)} models measured)", fontsize=10)
        if d.empty:
            _empty_panel(ax, f"no rows yet for {q}")
            continue
        for name in _series_order(d["series"]):
            if name == REF:
                continue
            s = d[d["series"] == name]
            s = s.assign(_x=s["model"].map(xpos)).sort_values("_x")
            _draw_sweeps(ax, s, "_x", SPEEDUP, (s[SPEEDUP] * s[A.spread_column(SPEEDUP)]).fillna(0).to_numpy(),
                       range(len(models)), name, markers)
        ax.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, label=f"{REF} (reference = 1)", zorder=2)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([_model_tick(m) for m in models], fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_xlabel("model (parameters)")
        ax.set_ylabel(f"speedup over {REF} (x, same run)")
    b, c = grid.get("batch", ["?"])[0], grid.get("ctx", ["?"])[0]
    drawn = _drawn(df, SPEEDUP, True)
    _title(fig, f"Decode-step speedup over {REF} vs model size (batch {b}, context {c})", df, gpu_name,
           COMMON_NOTE + _sweep_note(drawn, "model") + _hollow_note(df) + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _sweep_legend(drawn, markers) + _hollow_handles(df))


def fusion_ablation(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    fusions = [f for f in FUSION_ORDER if f in grid.get("fusion", FUSION_ORDER)]
    bars = [f"megakernel/{f}" for f in fusions] + ["layerwise", REF]
    combos = sorted({(m, q) for m, q in zip(df["model"], df["quant"])},
                    key=lambda t: (_model_order(df["model"]).index(t[0]), t[1]))
    n_cols = min(2, len(combos))
    extra = _hollow_handles(df, bars=True)
    fig, axes = _panels(math.ceil(len(combos) / n_cols), n_cols, w=5.2, legend_w=2.6 if extra else 0)
    for ax in axes.flat[len(combos):]:
        ax.set_visible(False)
    for j, (m, q) in enumerate(combos):
        ax = axes.flat[j]
        d = df[(df["model"] == m) & (df["quant"] == q)]
        for i, name in enumerate(bars):
            s = d[d["series"] == name]
            if s.empty or pd.isna(s[SPEEDUP].iloc[0]):
                ax.text(i, 0.02, "not\nmeasured", ha="center", va="bottom", fontsize=7, color="#777777",
                        transform=ax.get_xaxis_transform())
                continue
            r = s.iloc[0]
            c = _color(name)
            ax.bar(i, r[SPEEDUP], color=_face(r, c), edgecolor=c, lw=1.5, zorder=3)
            ax.errorbar(i, r[SPEEDUP], yerr=r[SPEEDUP] * (r.get(A.spread_column(SPEEDUP)) or 0), color="#333333",
                        capsize=3, lw=1, zorder=4)
            ax.text(i, r[SPEEDUP], f"{r['latency_us_median']:.0f} µs", ha="center", va="bottom", fontsize=7,
                    zorder=5)
        ax.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, zorder=2)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b.replace("megakernel/", "mega\n") for b in bars], fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{m} {A.quant_label(q, d['group_size'].iloc[0])}", fontsize=10)
        ax.set_xlabel("launch granularity (megakernel) / reference")
        ax.set_ylabel(f"speedup over {REF} (x, same run)")
    b, c = grid.get("batch", ["?"])[0], grid.get("ctx", ["?"])[0]
    _title(fig, f"Fusion ablation: megakernel launch granularity (batch {b}, context {c})", df, gpu_name,
           COMMON_NOTE.replace("Newest row per point.", "Each panel from one run (the newest with several fusions).")
           + _hollow_note(df) + "Labels: median step latency. op/block/layer/model = one launch per "
           "instruction type / attention-or-MLP block / layer / whole step.")
    if extra:
        fig.legend(extra, [h.get_label() for h in extra], loc="outside right center", fontsize=8, frameon=False)
    return fig


def bandwidth_by_impl(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    models = _model_order(df["model"].unique())
    quants = [q for q in (grid.get("quant") or sorted(df["quant"].unique())) if q in set(df["quant"])]
    groups = [(m, q) for m in models for q in quants if ((df["model"] == m) & (df["quant"] == q)).any()]
    impls = _series_order(df["series"])
    fig = _figure(max(8.0, len(groups) * (max(1, len(impls)) * 0.3 + 0.4) + 3.5), 8.0)
    ax_pct, ax_tb = fig.subplots(2, 1)
    width = 0.8 / max(1, len(impls))
    throttled = df["throttled"]  # True only where telemetry ran (figure_data.with_markers)
    for gi, (m, q) in enumerate(groups):
        g = df[(df["model"] == m) & (df["quant"] == q)]
        for ii, name in enumerate(impls):
            s = g[g["series"] == name]
            if s.empty:
                continue
            r = s.iloc[0]
            x = gi + (ii - (len(impls) - 1) / 2) * width
            c = _color(name)
            hatch = THROTTLE_HATCH if bool(throttled.loc[s.index[0]]) else None
            face = _face(r, c)
            ax_pct.bar(x, r["pct_of_copy_bw"], width, color=face, edgecolor=c, hatch=hatch, zorder=3)
            ax_pct.text(x, r["pct_of_copy_bw"], f"{r['pct_of_copy_bw']:.0f}", ha="center", va="bottom", fontsize=7)
            ax_tb.bar(x, r["gbps"] / 1e3, width, color=face, edgecolor=c, hatch=hatch, zorder=3)
            ax_tb.text(x, r["gbps"] / 1e3, f"{r['gbps'] / 1e3:.2f}", ha="center", va="bottom", fontsize=7)
        ceiling = float(pd.to_numeric(g["copy_tbps"], errors="coerce").median())
        ax_tb.hlines(ceiling, gi - 0.45, gi + 0.45, colors="#000000", linestyles="--", lw=1.3, zorder=4,
                     label=CEILING if gi == 0 else None)
        ax_tb.text(gi, ceiling, f"copy {ceiling:.2f} TB/s", va="bottom", ha="center", fontsize=8)
    ax_pct.axhline(100.0, color="#000000", ls="--", lw=1.3, zorder=4, label=CEILING)
    ax_pct.set_ylim(0, 110)
    for ax in (ax_pct, ax_tb):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m} {A.quant_label(q, df[(df['model'] == m) & (df['quant'] == q)]['group_size'].iloc[0])}"
                            for m, q in groups])
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("model and weight format")
    ax_pct.set_ylabel("% of copy bandwidth (same process)")
    ax_tb.set_ylabel("achieved bandwidth (TB/s)")
    ax_tb.set_ylim(0, max([1e-9] + list(pd.to_numeric(df["copy_tbps"], errors="coerce").dropna())) * 1.12)
    from matplotlib.patches import Patch

    # each impl by a solid patch of its colour (its first bar may be hollow or hatched), then what hollow means
    handles, _ = ax_pct.get_legend_handles_labels()
    handles += [Patch(facecolor=_color(n), edgecolor=_color(n), label=n) for n in impls]
    handles += _hollow_handles(df, bars=True) + _throttle_handles(df, bars=True)
    fig.legend(handles, [h.get_label() for h in handles], loc="outside right center", fontsize=8, frameon=False)
    b, c = grid.get("batch", ["?"])[0], grid.get("ctx", ["?"])[0]
    missing = [f"{m} {q}" for m in _model_order(grid.get("model", [])) for q in grid.get("quant", [])
               if (m, q) not in groups]
    _title(fig, f"Achieved bandwidth by impl (batch {b}, context {c})", df, gpu_name,
           "bytes_per_step / latency; ceiling: device-to-device copy measured in the same process. "
           + _telemetry_note(df, "hatched") + _hollow_note(df) +
           (f"Not measured yet: {', '.join(missing)}." if missing else ""))
    return fig


PLOTTERS: dict[str, Callable[[pd.DataFrame, str, dict], Figure]] = {
    "speedup_vs_context": speedup_vs_context,
    "speedup_vs_model": speedup_vs_model,
    "fusion_ablation": fusion_ablation,
    "batch_sweep": batch_sweep,
    "bandwidth_by_impl": bandwidth_by_impl,
}


def make_figure(experiment: str, rows: pd.DataFrame, gpu: str, tag: Optional[str] = None) -> Figure:
    """The figure of one experiment for one GPU (name or slug) from all rows; a placeholder if none fit (but
    ValueError if `tag` matches no row at all)."""
    if experiment not in PLOTTERS:
        raise ValueError(f"no figure for experiment {experiment!r}; choose one of {sorted(PLOTTERS)}")
    grid = experiment_grid(experiment)
    slug = gpu_slug(gpu)
    names = rows.loc[[gpu_slug(g) == slug for g in rows["gpu_name"]], "gpu_name"] \
        if not rows.empty and "gpu_name" in rows.columns else pd.Series(dtype=str)
    gpu_name = str(names.iloc[0]) if len(names) else (NO_GPU if slug == NO_GPU else gpu)
    df = figure_rows(experiment, rows, slug, tag) if slug != NO_GPU else with_tag(rows, tag).iloc[0:0]
    if df.empty:
        return no_rows_figure(experiment, gpu_name)
    ok, why = REQUIRES[experiment]
    if not ok(df):
        present = ", ".join(_series_order(_with_series(df)["series"]))
        return no_rows_figure(experiment, gpu_name, f"({why}; rows present for: {present})")
    return PLOTTERS[experiment](_with_series(df), gpu_name, grid)


def save(fig: Figure, experiment: str, gpu: str, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{experiment}-{gpu_slug(gpu) if gpu != NO_GPU else NO_GPU}.png"
    fig.savefig(path, dpi=DPI)
    return path


def render(experiment: str, rows: pd.DataFrame, out_dir: str | Path, gpus: Optional[Sequence[str]] = None,
           tag: Optional[str] = None) -> list[Path]:
    """Writes <out_dir>/<experiment>-<gpu-slug>.png for each GPU (default: every GPU with rows, of `tag` when
    given). Raises ValueError when `tag` matches no row."""
    gpus = list(gpus) if gpus else (gpus_in(with_tag(rows, tag)) or [NO_GPU])
    return [save(make_figure(experiment, rows, g, tag), experiment, g, out_dir) for g in gpus]


def show(paths: Sequence[Path]) -> None:
    """Displays PNG files in a notebook (prints their paths elsewhere)."""
    try:
        from IPython.display import Image, display
    except ImportError:
        display = None
    for p in paths:
        print(p)
        if display is not None:
            display(Image(filename=str(p)))


# ----------------------------------------------------------------------------------------------
# Figures that are not one experiment's grid: the bandwidth roofline, two GPUs side by side, the per-stage
# breakdown of a megakernel step, the per-op kernel tables, the README's headline
# ----------------------------------------------------------------------------------------------

QUANT_MARKERS = {"bf16": "o", "fp16": "D", "fp32": "P", "int8": "s", "int4": "^"}


def _quant_marker(q: str) -> str:
    return QUANT_MARKERS.get(q, "v")


def _marker_handles(series: Sequence[str], quants: Sequence[str]) -> list:
    from matplotlib.lines import Line2D
    hs = [Line2D([], [], ls="none", marker="o", ms=7, color=_color(s), label=s) for s in series]
    hs += [Line2D([], [], ls="none", marker=_quant_marker(q), ms=7, color="#555555", label=f"weights {q}")
           for q in quants]
    return hs


def _placeholder(what: str, detail: str = "") -> Figure:
    fig = Figure(figsize=(8, 3.2), dpi=DPI)
    ax = fig.add_subplot(111)
    ax.axis("off")
    ax.text(0.5, 0.62, what, ha="center", va="center", fontsize=15, weight="bold")
    if detail:
        ax.text(0.5, 0.32, detail, ha="center", va="center", fontsize=10, color="#555555")
    return fig


def roofline(df: pd.DataFrame, gpu_name: str) -> Figure:
    """% of the copy bandwidth against bytes per step, every measured point of one GPU (roofline_rows), a panel per
    batch size; colour = impl, marker = weight format, hollow = not from a clean commit, x = throttled (only where
    telemetry ran)."""
    df = _with_series(df)
    batches = sorted(pd.to_numeric(df["batch"]).unique())
    ratios = [2.0 if b == batches[0] else 1.0 for b in batches]
    fig = _figure(max(10.0, 4.2 * sum(ratios) + 3.0), 5.6)
    axes = fig.subplots(1, len(batches), squeeze=False, width_ratios=ratios)
    series = _series_order(df["series"])
    quants = [q for q in QUANT_MARKERS if q in set(df["quant"])] + sorted(set(df["quant"]) - set(QUANT_MARKERS))
    ymax = max(110.0, float(pd.to_numeric(df["pct_of_copy_bw"]).max()) * 1.08)
    gb = pd.to_numeric(df["bytes_per_step"]) / 1e9
    xlo, xhi = float(gb.min()) / 1.4, float(gb.max()) * 1.4
    for ax, b in zip(axes[0], batches):
        d = df[pd.to_numeric(df["batch"]) == b]
        for _, r in d.iterrows():
            c = _color(r["series"])
            ax.plot([r["bytes_per_step"] / 1e9], [r["pct_of_copy_bw"]], ls="none", marker=_quant_marker(r["quant"]),
                    ms=7, mfc=_face(r, c), mec=c, mew=1.4, zorder=3, gid="point")
            if bool(r["throttled"]):
                ax.plot([r["bytes_per_step"] / 1e9], [r["pct_of_copy_bw"]], ls="none", marker="x", ms=9, mew=1.6,
                        color="#000000", zorder=4, gid="throttled")
        ax.axhline(100.0, color="#000000", ls="--", lw=1.3, zorder=2, label=CEILING)
        _log_axis(ax.xaxis, ax.set_xscale)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(0, ymax)
        ax.grid(alpha=0.3)
        ctxs = ", ".join(str(int(c)) for c in sorted(d["ctx"].unique()))
        ax.set_title(f"batch {b} ({len(d)} points; contexts {ctxs})", fontsize=10)
        ax.set_xlabel("bytes a decode step must move (GB, log scale)")
        ax.set_ylabel("% of copy bandwidth (same process)")
    _title(fig, "Bandwidth roofline: % of the copy bandwidth vs bytes per step, every measured point", df, gpu_name,
           "Each marker: one point's newest row (model, weights, batch, context), megakernel at "
           f"fusion={DEFAULT_FUSION}; 100 % = a step moving its bytes at the device-to-device copy bandwidth measured "
           "in the same process. " + _telemetry_note(df, "x") + _hollow_note(df))
    handles = _marker_handles(series, quants) + _hollow_handles(df) + _throttle_handles(df)
    return _finish(fig, axes, handles)


def _group_label(r) -> str:
    extra = "" if (int(r["batch"]), int(r["ctx"])) == (1, 1024) else f"\nb{int(r['batch'])} ctx{int(r['ctx'])}"
    return f"{r['model']}\n{A.quant_label(r['quant'], r['group_size'])}{extra}"


def gpu_compare(pairs: pd.DataFrame, name_a: str, name_b: str) -> Figure:
    """Two GPUs at the points both measured (gpu_pairs): on top the latency on B over the latency on A per point and
    impl, next to the ratio of their copy bandwidths (where a step moving its bytes at copy speed would be); below,
    % of copy on A against % of copy on B."""
    groups = list(dict.fromkeys(_group_label(r) for _, r in pairs.iterrows()))
    series = _series_order(pairs["series"])
    fig = _figure(max(9.0, len(groups) * (len(series) * 0.28 + 0.5) + 3.0), 9.0)
    ax_r, ax_p = fig.subplots(2, 1, height_ratios=[1.1, 1])
    width = 0.8 / max(1, len(series))
    for gi, g in enumerate(groups):
        d = pairs[[_group_label(r) == g for _, r in pairs.iterrows()]]
        for si, name in enumerate(series):
            s = d[d["series"] == name]
            if s.empty:
                continue
            r = s.iloc[0]
            c = _color(name)
            x = gi + (si - (len(series) - 1) / 2) * width
            ax_r.bar(x, r["latency_ratio"], width, color=_face(r, c), edgecolor=c, lw=1.3, zorder=3)
            ax_r.text(x, r["latency_ratio"], f"{r['latency_ratio']:.2f}", ha="center", va="bottom", fontsize=7)
        ax_r.hlines(float(d["copy_ratio"].median()), gi - 0.45, gi + 0.45, colors="#000000", linestyles="--", lw=1.3,
                    zorder=4, label=None if gi else f"copy bandwidth ratio {name_a} / {name_b}\n(a step moving its "
                                                        f"bytes at copy speed)")
    ax_r.axhline(1.0, color="#777777", lw=1.0, zorder=2)
    ax_r.set_xticks(range(len(groups)))
    ax_r.set_xticklabels(groups, fontsize=8)
    ax_r.set_xlim(-0.6, len(groups) - 0.4)
    ax_r.set_ylim(0, max(1.3, float(pairs["latency_ratio"].max()) * 1.12))
    ax_r.grid(axis="y", alpha=0.3)
    ax_r.set_ylabel(f"latency on {name_b} / on {name_a} (x)")
    ax_r.set_title("Step latency ratio per point (below 1: faster on " + name_b + ")", fontsize=10)
    lim = max(105.0, float(pd.to_numeric(pairs[["pct_of_copy_bw_a", "pct_of_copy_bw_b"]].stack()).max()) * 1.05)
    ax_p.plot([0, lim], [0, lim], color="#777777", lw=1.0, ls=":", zorder=2, label="same % of copy on both")
    for _, r in pairs.iterrows():
        c = _color(r["series"])
        ax_p.plot([r["pct_of_copy_bw_a"]], [r["pct_of_copy_bw_b"]], ls="none", marker=_quant_marker(r["quant"]), ms=7,
                  mfc=_face(r, c), mec=c, mew=1.4, zorder=3, gid="point")
    ax_p.set_xlim(0, lim)
    ax_p.set_ylim(0, lim)
    ax_p.set_aspect("equal", adjustable="box")
    ax_p.grid(alpha=0.3)
    ax_p.set_xlabel(f"% of copy bandwidth on {name_a} (same process)")
    ax_p.set_ylabel(f"% of copy on {name_b} (same process)")
    quants = [q for q in QUANT_MARKERS if q in set(pairs["quant"])]
    handles, _ = ax_r.get_legend_handles_labels()
    handles += ax_p.get_legend_handles_labels()[0]
    from matplotlib.patches import Patch
    handles += [Patch(facecolor=_color(n), edgecolor=_color(n), label=n) for n in series]
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], ls="none", marker=_quant_marker(q), ms=7, color="#555555", label=f"weights {q}")
                for q in quants]
    n_h = int(pairs["hollow"].sum())
    if n_h:
        handles.append(Patch(facecolor="white", edgecolor="#555555",
                             label=f"{HOLLOW} (on either GPU)\n({n_h} of {len(pairs)} points)"))
    fig.legend(handles, [h.get_label() for h in handles], loc="outside right center", fontsize=8, frameon=False)
    dates = f"{A.measurement_dates(pairs.rename(columns={'timestamp_utc_a': 'timestamp_utc'}))} and " \
            f"{A.measurement_dates(pairs.rename(columns={'timestamp_utc_b': 'timestamp_utc'}))}"
    fig.suptitle(f"{name_a} vs {name_b} at the {len(pairs)} points both measured\nmeasured {dates}", fontsize=12)
    fig.text(0.01, 0.005, f"Newest row per point on each GPU, megakernel at fusion={DEFAULT_FUSION}. Hollow: either "
             f"row not from a clean commit ({n_h} of {len(pairs)} points) or output wrong. Impls measured on one GPU "
             "only are not drawn.", fontsize=8, color="#555555", ha="left", va="bottom", wrap=True)
    return fig


STAGE_COLORS = {WAIT: "#bdbdbd", IDLE: "#e6e6e6", OTHER: "#f3f3f3", BETWEEN: "#ffffff"}


def _stage_color(segment: str) -> str:
    from harness.timeline import OP_COLORS
    return STAGE_COLORS.get(segment) or OP_COLORS.get(segment, "#756bb1")


def step_breakdown_figure(b: pd.DataFrame, gpu_name: str) -> Figure:
    """Where one megakernel step's time goes (step_breakdowns of one GPU): per timeline point a bar of a program's
    time (run per stage, waiting, idle, dispatch) summing to the step's span, and below it the same stages' bytes at
    the copy bandwidth."""
    points = list(dict.fromkeys(b["point"]))
    fig = _figure(13.0, 1.6 * len(points) + 2.2)
    ax = fig.add_subplot(111)
    yticks, ylabels = [], []
    seen: set = set()
    for i, p in enumerate(points):
        d = b[b["point"] == p]
        span = float(d["span_us"].iloc[0])
        y = -i * 1.1
        left = 0.0
        for _, r in d.iterrows():
            if r["us"] <= 0:
                continue
            lab = r["segment"] if r["segment"] not in seen else None
            seen.add(r["segment"])
            ax.barh(y, r["us"], left=left, height=0.42, color=_stage_color(r["segment"]), edgecolor="#555555",
                    lw=0.4, label=lab, gid=f"measured|{p}|{r['segment']}")
            if r["us"] / span > 0.07:
                ax.text(left + r["us"] / 2, y, f"{100 * r['us'] / span:.0f}%", ha="center", va="center", fontsize=7)
            left += r["us"]
        ax.text(left, y, f"  {span:.0f} µs (span)", va="center", fontsize=8)
        yticks.append(y)
        ylabels.append(f"{p}\nmeasured ({int(d['programs'].iloc[0])} programs)\n{d['source'].iloc[0]}")
        st = d[d["stage"] & d["copy_us"].notna()]
        if len(st):
            left = 0.0
            for _, r in st.iterrows():
                ax.barh(y - 0.45, r["copy_us"], left=left, height=0.3, color=_stage_color(r["segment"]), alpha=0.55,
                        edgecolor="#555555", lw=0.4, gid=f"copy|{p}|{r['segment']}")
                left += r["copy_us"]
            ax.text(left, y - 0.45, f"  {left:.0f} µs = {100 * left / span:.0f} % of the span", va="center",
                    fontsize=8)
            yticks.append(y - 0.45)
            ylabels.append(f"bytes_per_step ({float(d['step_bytes'].iloc[0]) / 1e9:.2f} GB) at copy speed "
                           f"({float(d['copy_tbps'].iloc[0]):.2f} TB/s)")
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=8)
    ax.set_xlabel("µs of one decode step, averaged over the programs (each program's time adds up to the span)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, float(b["span_us"].max()) * 1.25)
    fig.suptitle(f"Where a megakernel decode step's time goes, per stage (from results/timelines/)\n{gpu_name}; "
                 "each timeline's commit and date beside its bar", fontsize=12)
    where = "; ".join(sorted({f"{p}: {w}" for p, w in zip(b["point"], b["bytes_from"])
                              if w != "the result rows' bytes_per_step"}))
    fig.text(0.01, 0.005, "Timeline variant of the kernel (harness.timeline: clocks before a program's counter wait, "
             "after it and after its release). A stage = the instructions of one op type over all layers. "
             "Lighter bars: the bytes the step must move (the result rows' bytes_per_step, the bytes % of copy uses, "
             "split by the stage that moves them: its weights, KV cache, logits) at the GPU's copy bandwidth (median "
             "over that GPU's result rows, each measured in its own process), where a step moving its bytes at copy "
             "speed would end." + (f" Bytes from the model shapes, not a row: {where}." if where else ""), fontsize=8,
             color="#555555", ha="left", va="bottom", wrap=True)
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


OP_COLORS_IMPL = {"torch": "#6baed6", "cublas-bf16": "#6baed6", "tinygemm": "#2171b5", "gemlite": "#9ecae1",
                  "triton-fma": "#fdae6b", "triton": "#e6550d", "qgemv": "#a63603"}


def op_bar_id(r) -> str:
    """The gid of an op figure's bar: its table, configuration, op and impl."""
    ctx = r["ctx"]
    ctx = "-" if ctx is None or (isinstance(ctx, float) and math.isnan(ctx)) else int(ctx)
    return f"{r['source']}|{r['model']}|{r['quant']}|b{int(r['batch'])}|ctx{ctx}|{r['op']}|{r['impl']}"


def op_bandwidth(ops: pd.DataFrame, gpu_name: str) -> Figure:
    """The per-op kernel tables of one GPU (op_tables): a panel per table and configuration, a bar per op and impl,
    ours (oranges) next to the library kernels (blues); labels = latency in µs."""
    panels = op_panels(ops)
    n_cols = min(2, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    h = max(3.0, 0.19 * max(len(ops[(ops[list(OP_PANEL)].astype(object).where(ops[list(OP_PANEL)].notna(), None)
                                       .apply(tuple, axis=1) == k)]) for k in panels) + 1.2)
    fig = _figure(7.2 * n_cols + 3.0, h * n_rows + 1.6)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    keyed = ops.assign(_k=ops[list(OP_PANEL)].astype(object).where(ops[list(OP_PANEL)].notna(), None)
                       .apply(tuple, axis=1))
    impls_seen: list = []
    for ax, k in zip(axes, panels):
        d = keyed[keyed["_k"] == k]
        pct = d["kind"].iloc[0] == "qgemv"
        metric = "op_pct_of_copy" if pct else "op_gbps"  # one denominator per op: its weights in the table's format
        opnames = list(dict.fromkeys(d["op"]))
        impls = [i for i in OP_IMPL_ORDER if i in set(d["impl"])] + sorted(set(d["impl"]) - set(OP_IMPL_ORDER))
        hgt = 0.8 / len(impls)
        for oi, op in enumerate(opnames):
            for ii, impl in enumerate(impls):
                s = d[(d["op"] == op) & (d["impl"] == impl)]
                if s.empty:
                    continue
                r = s.iloc[0]
                y = oi + (ii - (len(impls) - 1) / 2) * hgt
                ax.barh(y, r[metric], hgt, color=OP_COLORS_IMPL.get(impl, "#756bb1"), zorder=3, gid=op_bar_id(r))
                ax.text(r[metric], y, f" {r['latency_us']:.1f} µs", va="center", fontsize=6)
                if impl not in impls_seen:
                    impls_seen.append(impl)
        ax.set_yticks(range(len(opnames)))
        ax.set_yticklabels(opnames, fontsize=7)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        source, model, quant, batch, ctx = k
        ax.set_title(f"{model} {quant} batch {int(batch)}" + (f" ctx {int(ctx)}" if ctx is not None else "")
                     + f"  [{source}]", fontsize=9)
        if pct:
            ax.axvline(100.0, color="#000000", ls="--", lw=1.2, zorder=2)
            ax.set_xlim(0, max(115.0, float(d[metric].max()) * 1.2))
            ax.set_xlabel(f"% of copy at the op's weight bytes in {quant} (copy measured in the same process)")
        else:
            _log_axis(ax.xaxis, ax.set_xscale, subs=(1.0,))
            ax.set_xlim(float(d[metric].min()) / 2, float(d[metric].max()) * 6)
            ax.set_xlabel(f"GB/s at the op's weight bytes in {quant} (ops without weights: the bytes they move; "
                          "log scale)", fontsize=8)
    from matplotlib.patches import Patch
    handles = [Patch(color=OP_COLORS_IMPL.get(i, "#756bb1"), label=(OURS.get(i) or LIBRARY.get(i) or i)
                     .replace(" (cuBLAS", "\n(cuBLAS").replace(", SDPA", ",\nSDPA")) for i in impls_seen]
    fig.legend(handles, [h.get_label() for h in handles], loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"Per-op kernels: ours next to the library kernels (results/ops/)\n{gpu_name}", fontsize=12)
    unread = ", ".join(sorted(set(ops.attrs.get("unread", []))))
    fig.text(0.01, 0.005, "Each bar: one kernel at the configuration's real shapes. Every kernel of an op is divided "
             "by the same bytes: the op's weights in the panel's format (weights + scales + zeros, int4 in groups of "
             "128), or for an op without weights the bytes it moves, so the bars of an op rank as their latencies do "
             "(a library GEMV on a dequantised bf16 weight moves more bytes than that, and gets no credit for them). "
             "bench_ops tables: harness.bench_ops (L2 flushed, CUDA graph); qgemv tables: scripts/qgemv_bench.py, % of "
             "the copy bandwidth measured in the same process, qgemv's row/warp variants left out."
             + (f" Files in another layout, not drawn: {unread}." if unread else ""), fontsize=8,
             color="#555555", ha="left", va="bottom", wrap=True)
    return fig


def headline_figure(t: pd.DataFrame, gpu_name: str) -> Figure:
    """The README's figure (headline_table): per model and weight format, the speedup over torch-compile of the
    megakernel, layerwise, gemlite and flash-attn from the megakernel row's run, and the % of copy of each (the bars
    in one order in both panels)."""
    fig = _figure(13.0, 4.8)
    ax_s, ax_p = fig.subplots(1, 2)
    groups = [f"{r['model']}\n{A.quant_label(r['quant'], r['group_size'])}"
              + (f"\n[{r['backend']}]" if "backend" in t.columns else "") for _, r in t.iterrows()]
    sp = [("megakernel/model", "mega_speedup"), ("layerwise", "layerwise_speedup"), ("gemlite", "gemlite_speedup"),
          ("flash-attn", "flash-attn_speedup")]
    pc = [(REF, "compile_pct")] + [(name, col.replace("speedup", "pct")) for name, col in sp]  # the same order
    drawn_names = {name for name, _ in sp + pc}
    for ax, bars, fmt in ((ax_s, sp, "{:.2f}"), (ax_p, pc, "{:.0f}")):
        drawn: set = set()
        width = 0.8 / len(bars)
        for gi, (_, r) in enumerate(t.iterrows()):
            for bi, (name, col) in enumerate(bars):
                v = r[col]
                x = gi + (bi - (len(bars) - 1) / 2) * width
                if pd.isna(v):
                    ax.text(x, 0.01, "not in\nthis run", rotation=90, ha="center", va="bottom", fontsize=6,
                            color="#777777", transform=ax.get_xaxis_transform())
                    continue
                c = _color(name)
                ax.bar(x, v, width, color=c if r["clean"] else "white", edgecolor=c, lw=1.4, zorder=3,
                       label=name if name not in drawn else None, gid=f"{groups[gi]}|{name}")
                drawn.add(name)
                ax.text(x, v, fmt.format(v), ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax_s.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, zorder=2, label=f"{REF} (= 1)")
    ax_s.set_ylabel(f"speedup over {REF} (x, same run)")
    ax_s.set_title("Speedup over torch-compile", fontsize=10)
    ax_p.axhline(100.0, color="#000000", ls="--", lw=1.2, zorder=2, label="copy bandwidth (= 100 %)")
    ax_p.set_ylim(0, 110)
    ax_p.set_ylabel("% of copy bandwidth (same process)")
    ax_p.set_title("% of the copy bandwidth measured in the same process", fontsize=10)
    from matplotlib.patches import Patch

    handles = {}
    for ax in (ax_s, ax_p):
        for h, l in zip(*ax.get_legend_handles_labels()):  # each impl by a solid patch (its first bar may be hollow)
            handles.setdefault(l, h if l not in drawn_names else Patch(facecolor=_color(l), edgecolor=_color(l),
                                                                       label=l))
    n_dirty = int((~t["clean"]).sum())
    if n_dirty:
        handles[HOLLOW] = Patch(facecolor="white", edgecolor="#555555",
                                label=f"{HOLLOW}\n({n_dirty} of {len(t)} runs)")
    hs = list(handles.values())
    fig.legend(hs, [h.get_label() for h in hs], loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"Megakernel vs the references on {gpu_name} (batch {HEADLINE_POINT['batch']}, context "
                 f"{HEADLINE_POINT['ctx']}), measured {A.measurement_dates(t) or '?'}", fontsize=12)
    fig.text(0.01, 0.005, "Newest megakernel (fusion=model) run per point, its backend in brackets (the one "
             "megakernel.backend=auto picks: Gluon where it ran); every bar of a group comes from that run. "
             f"Hollow: the run was not measured at a clean commit ({n_dirty} of {len(t)}).", fontsize=8,
             color="#555555", ha="left", va="bottom", wrap=True)
    return fig


def _save_as(fig: Figure, out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=DPI)
    return path


def _gpu_name(rows: pd.DataFrame, slug: str) -> str:
    names = rows.loc[[gpu_slug(g) == slug for g in rows["gpu_name"]], "gpu_name"] \
        if not rows.empty and "gpu_name" in rows.columns else pd.Series(dtype=str)
    return str(names.iloc[0]) if len(names) else slug


def render_roofline(rows: pd.DataFrame, out_dir: str | Path, gpus: Optional[Sequence[str]] = None,
                    tag: Optional[str] = None) -> list[Path]:
    """<out_dir>/roofline-<gpu>.png for every GPU with rows (of `tag`)."""
    gpus = list(gpus) if gpus else (gpus_in(with_tag(rows, tag)) or [NO_GPU])
    paths = []
    for g in gpus:
        slug = gpu_slug(g) if g != NO_GPU else NO_GPU
        df = roofline_rows(rows, slug, tag) if slug != NO_GPU else pd.DataFrame()
        fig = roofline(df, _gpu_name(rows, slug)) if not df.empty else \
            _placeholder(f"no rows yet for the roofline on {'any GPU' if slug == NO_GPU else g}",
                         "measure them with: python run.py +experiment=bandwidth_by_impl -m")
        paths.append(_save_as(fig, out_dir, f"roofline-{slug}.png"))
    return paths


def render_gpu_compare(rows: pd.DataFrame, out_dir: str | Path, tag: Optional[str] = None) -> list[Path]:
    """<out_dir>/gpu_compare-<gpu a>-vs-<gpu b>.png for every pair of GPUs with points in common (a placeholder
    gpu_compare-none.png when no pair has any)."""
    pairs = gpu_compare_pairs(rows, tag) if not rows.empty else []
    if not pairs:
        return [_save_as(_placeholder("no point measured on two GPUs yet", "run the same sweep on a second GPU"),
                         out_dir, "gpu_compare-none.png")]
    return [_save_as(gpu_compare(gpu_pairs(rows, a, b, tag), _gpu_name(rows, a), _gpu_name(rows, b)), out_dir,
                     f"gpu_compare-{a}-vs-{b}.png") for a, b in pairs]


def render_step_breakdown(timelines_dir: str | Path, out_dir: str | Path, rows: Optional[pd.DataFrame] = None,
                          gpus: Optional[Sequence[str]] = None) -> list[Path]:
    """<out_dir>/step_breakdown-<gpu>.png for every GPU with timeline tables under `timelines_dir`."""
    b = step_breakdowns(Path(timelines_dir), rows)
    slugs = [gpu_slug(g) for g in gpus] if gpus else sorted(b["gpu_slug"].unique())
    if not slugs:
        return [_save_as(_placeholder("no megakernel timelines yet", "record one with: python -m harness.timeline "
                                      "model=llama1b quant=bf16 (GPU)"), out_dir, f"step_breakdown-{NO_GPU}.png")]
    return [_save_as(step_breakdown_figure(b[b["gpu_slug"] == s], str(b.loc[b["gpu_slug"] == s, "gpu_name"].iloc[0])),
                     out_dir, f"step_breakdown-{s}.png") for s in slugs if (b["gpu_slug"] == s).any()]


def render_op_bandwidth(ops_dir: str | Path, out_dir: str | Path, gpus: Optional[Sequence[str]] = None) -> list[Path]:
    """<out_dir>/op_bandwidth-<gpu>.png for every GPU with per-op tables under `ops_dir`."""
    ops = op_tables(Path(ops_dir))
    unread = op_files_unread(Path(ops_dir))
    slugs = [gpu_slug(g) for g in gpus] if gpus else sorted(ops["gpu_slug"].unique())
    if not slugs:
        return [_save_as(_placeholder("no per-op tables yet", "measure them with: python -m harness.bench_ops (GPU)"),
                         out_dir, f"op_bandwidth-{NO_GPU}.png")]
    paths = []
    for s in slugs:
        d = ops[ops["gpu_slug"] == s].reset_index(drop=True)
        if d.empty:
            continue
        d.attrs["unread"] = unread
        paths.append(_save_as(op_bandwidth(d, str(d["gpu_name"].iloc[0])), out_dir, f"op_bandwidth-{s}.png"))
    return paths


HEADLINE_PNG = "headline.png"
HEADLINE_MD = "headline.md"


def render_headline(rows: pd.DataFrame, out_dir: str | Path, gpu: str = HEADLINE_GPU,
                    tag: Optional[str] = None) -> list[Path]:
    """<out_dir>/headline.png and headline.md (the README's figure and table)."""
    t = headline_table(rows, gpu, tag)
    name = _gpu_name(rows, gpu_slug(gpu))
    fig = headline_figure(t, name) if not t.empty else _placeholder(f"no megakernel rows yet on {name}")
    png = _save_as(fig, out_dir, HEADLINE_PNG)
    md = Path(out_dir) / HEADLINE_MD
    md.write_text(headline_markdown(rows, gpu, tag))
    return [png, md]


README = REPO_ROOT / "README.md"
README_START = "<!-- headline:start -->"
README_END = "<!-- headline:end -->"


def readme_headline(readme: str | Path = README) -> str:
    """The part of the README between its headline markers (the table a test compares with headline_markdown)."""
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n") + "\n"


def sync_readme(headline_md: str, readme: str | Path = README) -> bool:
    """Writes `headline_md` between the README's headline markers; True when that changed the README."""
    path = Path(readme)
    text = path.read_text()
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    new = f"{before}{README_START}\n{headline_md.rstrip()}\n{README_END}{after}"
    if new != text:
        path.write_text(new)
        return True
    return False


def render_named(name: str, results_root: str | Path, out_dir: str | Path, gpus: Optional[Sequence[str]] = None,
                 tag: Optional[str] = None) -> list[Path]:
    """What the notebook of figure `name` writes, from the results root (rows, timelines/, ops/)."""
    from harness.results import load_results

    root = Path(results_root)
    if name in PLOTTERS:
        return render(name, load_results(root), out_dir, gpus=gpus, tag=tag)
    if name == "roofline":
        return render_roofline(load_results(root), out_dir, gpus=gpus, tag=tag)
    if name == "gpu_compare":
        return render_gpu_compare(load_results(root), out_dir, tag=tag)
    if name == "step_breakdown":
        return render_step_breakdown(root / "timelines", out_dir, load_results(root), gpus=gpus)
    if name == "op_bandwidth":
        return render_op_bandwidth(root / "ops", out_dir, gpus=gpus)
    if name == "headline":
        return render_headline(load_results(root), out_dir, tag=tag)
    raise ValueError(f"no figure {name!r}; choose one of {sorted(FIGURES)}")


# Every figure with a notebook: the experiments' figures, then the others.
FIGURES = (*PLOTTERS, "roofline", "gpu_compare", "step_breakdown", "op_bandwidth", "headline")


def findings(name: str, results_root: str | Path, rows: Optional[pd.DataFrame] = None,
             tag: Optional[str] = None) -> str:
    """The findings a notebook ends with, computed from the same tables its figure draws (harness.figure_data)."""
    from harness.results import load_results

    root = Path(results_root)
    if rows is None:
        rows = load_results(root)
    if name == "step_breakdown":
        return findings_step_breakdown(step_breakdowns(root / "timelines", rows))
    if name == "op_bandwidth":
        return findings_op_bandwidth(op_tables(root / "ops"))
    if name == "headline":
        return findings_headline(rows, tag=tag)
    if name == "roofline":
        return findings_roofline(rows, tag=tag)
    if name == "gpu_compare":
        return findings_gpu_compare(rows, tag=tag)
    if name in PLOTTERS:
        return findings_experiment(name, rows, tag=tag)
    raise ValueError(f"no figure {name!r}; choose one of {sorted(FIGURES)}")


# ----------------------------------------------------------------------------------------------
# Executing the notebooks headless
# ----------------------------------------------------------------------------------------------

def execute_notebook(path: str | Path, params: Optional[dict] = None, timeout: int = 120) -> "object":
    """Runs a notebook with nbclient (kernel python3); `params` are appended to its "parameters" cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    if params:
        cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
        if cell is None:
            raise ValueError(f"{path} has no cell tagged 'parameters' to take {sorted(params)}")
        cell.source += "\n# injected\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    return nb


NO_GPU_SENTENCE = ("error: make figures-gpu measures every experiment on a CUDA GPU and torch sees none on this "
                   "machine; re-plot the committed tables without a GPU with: python -m harness.figures")


def has_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, or a broken one: no GPU to measure on
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m harness.figures",
                                description="Execute the figure notebooks headless (writes results/figures/*.png and "
                                            "headline.md, and puts the headline table into README.md).")
    p.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
    p.add_argument("--results", default=None, help="results root (default: the notebook's, results/)")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: results/figures; the README is "
                                               "updated only from there)")
    p.add_argument("--gpu-plan", action="store_true",
                   help="print what `make figures-gpu` measures and its estimated device time, then exit")
    p.add_argument("--require-gpu", action="store_true",
                   help="exit 2 with one sentence unless torch sees a CUDA GPU (the first step of make figures-gpu)")
    a = p.parse_args(argv)
    if a.require_gpu:
        if not has_cuda():
            print(NO_GPU_SENTENCE, file=sys.stderr)
            return 2
        return 0
    if a.gpu_plan:
        from harness.results import load_results
        print(gpu_plan_text(load_results(Path(a.results) if a.results else REPO_ROOT / "results")))
        return 0
    params = {k: str(Path(v).resolve()) for k, v in (("RESULTS", a.results), ("FIGURES", a.out)) if v}
    notebooks = [Path(n) for n in a.notebooks] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    for nb in notebooks:
        execute_notebook(nb, params)
        print(f"executed {nb}")
    out = Path(a.out).resolve() if a.out else REPO_ROOT / "results" / "figures"
    if any(n.stem == "headline" for n in notebooks) and out == (REPO_ROOT / "results" / "figures").resolve():
        if sync_readme((out / HEADLINE_MD).read_text()):
            print(f"updated the headline table in {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
