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

    figures.render("speedup_vs_context", load_results("results"), "results/figures")
    python -m harness.figures      # executes every notebook in notebooks/ headless (nbclient)

PNG files: <out_dir>/<experiment>-<gpu-slug>.png. Plots are drawn on matplotlib Figure objects
(no pyplot state), so this module works the same in a notebook, a test or a script.
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
    DEFAULT_FUSION, EXPERIMENTS_DIR, FUSION_ORDER, IMPL_ORDER, REF, REQUIRES, SPEEDUP, _model_order,
    _series_order, _with_series, experiment_grid, figure_rows, figure_table, gpus_in, in_grid, series_name,
    with_tag,
)
from harness.results import REPO_ROOT
from kernels import gpu_slug

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NO_GPU = "any-gpu"  # slug of the placeholder written when results/ holds no GPU rows at all

COLORS = {"torch-eager": "#9e9e9e", "torch-graph": "#8c6d31", "torch-compile": "#252525", "flash-attn": "#3182bd",
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
    for h, l in pairs + [(h, h.get_label()) for h in extra]:
        if l not in handles:
            handles[l] = h
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

def _line_panels(df: pd.DataFrame, grid: dict, x: str, y: str, xlabel: str, ylabel: str, log2x: bool,
                 ref_line: bool, spread: str) -> tuple[Figure, np.ndarray]:
    models = _model_order(grid.get("model") or df["model"].unique())
    quants = list(grid.get("quant") or df["quant"].unique())
    fig, axes = _panels(len(models), len(quants))
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
            for name in _series_order(d["series"]):
                if ref_line and name == REF:
                    continue
                s = d[d["series"] == name].sort_values(x)
                c = _color(name)
                if y == "latency_us_median":  # the measured p10..p90, asymmetric
                    yerr = np.vstack([(s[y] - s["latency_us_p10"]).clip(lower=0).fillna(0),
                                      (s["latency_us_p90"] - s[y]).clip(lower=0).fillna(0)])
                else:
                    yerr = (s[y] * s[spread]).fillna(0).to_numpy() if spread in s.columns else None
                ax.errorbar(s[x], s[y], yerr=yerr, color=c, lw=1.6, capsize=3, label=name, marker="o", ms=6,
                            zorder=3)
                for _, r in s[s["hollow"]].iterrows():
                    ax.plot([r[x]], [r[y]], "o", ms=6, mfc="white", mec=c, zorder=4)
            if ref_line:
                ax.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, label=f"{REF} (reference = 1)", zorder=2)
            if log2x:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs_all)
                ax.set_xticklabels([f"{v:g}" for v in xs_all], fontsize=8)
                ax.set_xlim(min(xs_all) / 1.4, max(xs_all) * 1.4)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"{m} {A.quant_label(q, d['group_size'].iloc[0])} "
                         f"({d[x].nunique()} of {len(xs_all)} {x} values measured)", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    return fig, axes


def speedup_vs_context(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    fig, axes = _line_panels(df, grid, "ctx", SPEEDUP, "context length (tokens in the KV cache)",
                             f"speedup over {REF} (x, same run)", True, True, A.spread_column(SPEEDUP))
    _title(fig, f"Decode-step speedup over {REF} vs context length (batch {grid.get('batch', ['?'])[0]})", df,
           gpu_name, COMMON_NOTE + _hollow_note(df) + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _hollow_handles(df))


def batch_sweep(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    fig, axes = _line_panels(df, grid, "batch", "latency_us_median", "batch (sequences decoded together)",
                             "decode-step latency (µs, median)", True, False, "latency_rel_spread")
    _title(fig, f"Decode-step latency vs batch (context {grid.get('ctx', ['?'])[0]})", df, gpu_name,
           "Median step latency; error bars: p10..p90 of the step latency. Newest row per point. " + _hollow_note(df)
           + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _hollow_handles(df))


def speedup_vs_model(df: pd.DataFrame, gpu_name: str, grid: dict) -> Figure:
    models = _model_order(grid.get("model") or df["model"].unique())
    quants = list(grid.get("quant") or df["quant"].unique())
    fig, axes = _panels(1, len(quants))
    xpos = {m: i for i, m in enumerate(models)}
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
            c = _color(name)
            ax.errorbar(s["_x"], s[SPEEDUP], yerr=(s[SPEEDUP] * s[A.spread_column(SPEEDUP)]).fillna(0),
                        color=c, marker="o", ms=6, lw=1.6, capsize=3, label=name, zorder=3)
            for _, r in s[s["hollow"]].iterrows():
                ax.plot([r["_x"]], [r[SPEEDUP]], "o", ms=6, mfc="white", mec=c, zorder=4)
        ax.axhline(1.0, color=COLORS[REF], ls="--", lw=1.2, label=f"{REF} (reference = 1)", zorder=2)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([_model_tick(m) for m in models], fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_xlabel("model (parameters)")
        ax.set_ylabel(f"speedup over {REF} (x, same run)")
    b, c = grid.get("batch", ["?"])[0], grid.get("ctx", ["?"])[0]
    _title(fig, f"Decode-step speedup over {REF} vs model size (batch {b}, context {c})", df, gpu_name,
           COMMON_NOTE + _hollow_note(df) + f"Megakernel at fusion={DEFAULT_FUSION}.")
    return _finish(fig, axes, _hollow_handles(df))


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
           COMMON_NOTE + _hollow_note(df) + "Labels: median step latency. op/block/layer/model = one launch per "
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
    throttled = df["tel_throttled"].astype(str).str.lower().eq("true") if "tel_throttled" in df.columns \
        else pd.Series(False, index=df.index)
    for gi, (m, q) in enumerate(groups):
        g = df[(df["model"] == m) & (df["quant"] == q)]
        for ii, name in enumerate(impls):
            s = g[g["series"] == name]
            if s.empty:
                continue
            r = s.iloc[0]
            x = gi + (ii - (len(impls) - 1) / 2) * width
            c = _color(name)
            hatch = "//" if bool(throttled.loc[s.index[0]]) else None
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
    handles += _hollow_handles(df, bars=True)
    fig.legend(handles, [h.get_label() for h in handles], loc="outside right center", fontsize=8, frameon=False)
    b, c = grid.get("batch", ["?"])[0], grid.get("ctx", ["?"])[0]
    missing = [f"{m} {q}" for m in _model_order(grid.get("model", [])) for q in grid.get("quant", [])
               if (m, q) not in groups]
    _title(fig, f"Achieved bandwidth by impl (batch {b}, context {c})", df, gpu_name,
           "bytes_per_step / latency; ceiling: device-to-device copy measured in the same process. Hatched: "
           "GPU throttled while measured. " + _hollow_note(df) +
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.figures",
                                description="Execute the figure notebooks headless (writes results/figures/*.png).")
    p.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
    p.add_argument("--results", default=None, help="results root (default: the notebook's, results/)")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: results/figures)")
    a = p.parse_args(argv)
    params = {k: str(Path(v).resolve()) for k, v in (("RESULTS", a.results), ("FIGURES", a.out)) if v}
    for nb in a.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        execute_notebook(nb, params)
        print(f"executed {nb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
