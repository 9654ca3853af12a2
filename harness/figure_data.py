"""The rows a figure draws, read from result tables and the experiment grids (no matplotlib here).

An experiment's grid is what experiments/<name>.yaml fixes or sweeps; a figure draws the rows of one
GPU that fall in it, after same-run ratios were derived and only the newest row of each point kept
(harness.analysis). Each row belongs to one series: its impl, with the fusion for fused impls.

    figure_rows("speedup_vs_context", load_results("results"), gpu="h100")
    figure_table("batch_sweep", rows)   # the numbers behind a figure

Every row a figure draws says how its marker is drawn: `clean` (harness.results.is_clean_sha of its git_sha: a
commit, not a dirty tree or an unknown one) and `hollow` (True when the row is not clean or its output was wrong:
status "wrong"), so that a figure never draws numbers from a dirty tree as if they came from a commit; `hollow_why`
says which.

harness.figures draws these rows; it re-exports the functions here under its own name.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from harness import analysis as A
from harness.results import REPO_ROOT, is_clean_sha
from kernels import gpu_slug

EXPERIMENTS_DIR = REPO_ROOT / "experiments"
REF = A.DEFAULT_REFERENCE
SPEEDUP = A.speedup_column(REF)
DEFAULT_FUSION = "model"  # RunConfig.fusion: the megakernel curve of every figure but the fusion ablation

IMPL_ORDER = ("torch-eager", "torch-graph", "torch-compile", "flash-attn", "layerwise", "megakernel")
FUSION_ORDER = ("op", "block", "layer", "model")


# ----------------------------------------------------------------------------------------------
# Rows of a figure
# ----------------------------------------------------------------------------------------------

def experiment_grid(name: str, experiments_dir: Path = EXPERIMENTS_DIR) -> dict[str, list]:
    """Row column -> allowed values, from what experiments/<name>.yaml fixes and sweeps."""
    f = Path(experiments_dir) / f"{name}.yaml"
    if not f.is_file():
        known = sorted(p.stem for p in Path(experiments_dir).glob("*.yaml"))
        raise ValueError(f"experiment {name!r} has no {f}; choose one of {known}")
    y = yaml.safe_load(f.read_text()) or {}
    bench = y.get("bench") or {}
    grid: dict[str, list] = {}
    for key in ("batch", "ctx"):
        if key in bench:
            grid[key] = [int(bench[key])]
    if "fusion" in y:
        grid["fusion"] = [str(y["fusion"])]
    fusions = (y.get("megakernel") or {}).get("fusions")  # several fusions measured in one run
    if fusions:
        grid["fusion"] = [str(f) for f in fusions]
    names = (y.get("impl") or {}).get("names")
    if names and "*" not in names:
        grid["impl"] = [str(n) for n in names]
    params = ((y.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    cols = {"model": "model", "quant": "quant", "bench.ctx": "ctx", "bench.batch": "batch", "fusion": "fusion"}
    for key, values in params.items():
        if key in cols:
            vals = [v.strip() for v in str(values).split(",")]
            grid[cols[key]] = [int(v) for v in vals] if cols[key] in ("ctx", "batch") else vals
    grid.setdefault("fusion", [DEFAULT_FUSION])
    return grid


def in_grid(df: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """Rows whose values are in the grid (`fusion` constrains only fused impls: others say "none")."""
    keep = pd.Series(True, index=df.index)
    for col, vals in grid.items():
        if col not in df.columns:
            continue
        if col == "fusion":
            keep &= (df["fusion"] == "none") | df["fusion"].isin(vals)
        elif col in ("ctx", "batch"):
            keep &= pd.to_numeric(df[col], errors="coerce").isin(vals)
        else:
            keep &= df[col].isin(vals)
    return df[keep].reset_index(drop=True)


def with_tag(rows: pd.DataFrame, tag: Optional[str]) -> pd.DataFrame:
    """The rows measured under results.tag=`tag` (all rows when tag is None). A tag that no row carries raises
    ValueError: a figure asked for a tag is never drawn as an empty "no rows yet" placeholder (a typo would
    otherwise pass for a sweep still to run)."""
    if tag is None:
        return rows
    tags = rows["tag"] if "tag" in rows.columns else pd.Series(dtype=str)
    if not (tags == tag).any():
        present = ", ".join(sorted(str(t) for t in tags.dropna().unique())) or "none"
        raise ValueError(f"results.tag={tag!r} matches no result row (tags present: {present})")
    return rows[tags == tag]


def figure_rows(experiment: str, rows: pd.DataFrame, gpu: Optional[str] = None,
                tag: Optional[str] = None) -> pd.DataFrame:
    """The rows a figure draws: same-run ratios, measured (ok/wrong), newest per point, in the grid. Raises
    ValueError when `tag` matches no row (with_tag)."""
    with_tag(rows, tag)  # fails before anything is derived, naming the tags there are
    if rows.empty:
        return rows.copy()
    df = A.with_gpu_slug(A.add_same_run_ratios(rows))
    if gpu is not None:
        df = df[df["gpu_slug"] == gpu_slug(gpu)]
    if tag is not None:
        df = df[df["tag"] == tag]
    df = A.latest(A.measured(df), by=A.FIGURE_POINT_FIELDS)
    return with_markers(in_grid(df, experiment_grid(experiment)))


NOT_CLEAN = "not from a clean commit"  # hollow_why of a row measured from a dirty tree or an unknown commit
WRONG = "output wrong"  # hollow_why of a row whose logits failed the check against the fp32 reference


def with_markers(df: pd.DataFrame) -> pd.DataFrame:
    """`clean`, `hollow` and `hollow_why` on every row (see the module docstring). `clean` is taken from the row when
    harness.results.load gave it one, else derived from `git_sha` by the same rule (no sha: not clean)."""
    df = df.copy()
    if "clean" in df.columns:
        clean = df["clean"].eq(True)  # a missing value (a row from elsewhere) is not clean
    elif "git_sha" in df.columns:
        clean = df["git_sha"].map(is_clean_sha)
    else:
        clean = pd.Series(False, index=df.index)
    wrong = df["status"].eq("wrong") if "status" in df.columns else pd.Series(False, index=df.index)
    df["clean"] = clean.astype(bool)
    df["hollow"] = (~df["clean"]) | wrong
    df["hollow_why"] = ["; ".join([w for w, on in ((NOT_CLEAN, not c), (WRONG, bool(x))) if on])
                        for c, x in zip(df["clean"], wrong)]
    return df


def figure_table(experiment: str, rows: pd.DataFrame, gpu: Optional[str] = None,
                 tag: Optional[str] = None) -> pd.DataFrame:
    """The numbers behind a figure, one line per point (for display next to the PNG)."""
    df = figure_rows(experiment, rows, gpu, tag)
    cols = ["gpu_slug", "model", "quant", "group_size", "batch", "ctx", "impl", "fusion", "status",
            "latency_us_median", "latency_rel_spread", "pct_of_copy_bw", SPEEDUP, "copy_tbps", "timestamp_utc",
            "git_sha", "clean", "hollow"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    return df[[c for c in cols if c in df.columns]].sort_values(
        ["gpu_slug", "model", "quant", "batch", "ctx", "impl", "fusion"]).reset_index(drop=True)


def gpus_in(rows: pd.DataFrame) -> list[str]:
    """GPU slugs present in the rows (CPU rows excluded: their latencies mean nothing)."""
    if rows.empty or "gpu_name" not in rows.columns:
        return []
    return sorted({gpu_slug(g) for g in rows["gpu_name"]} - {"cpu"})


# What a figure cannot do without (beyond having rows): a reason shown on the placeholder.
REQUIRES = {
    "speedup_vs_context": (lambda d: d[SPEEDUP].notna().any(), f"no run measured {REF} next to another impl"),
    "speedup_vs_model": (lambda d: d[SPEEDUP].notna().any(), f"no run measured {REF} next to another impl"),
    "fusion_ablation": (lambda d: (d["impl"] == "megakernel").any(), "no megakernel rows"),
    "batch_sweep": (lambda d: True, ""),
    "bandwidth_by_impl": (lambda d: d["pct_of_copy_bw"].notna().any(), "no row with pct_of_copy_bw"),
}


# ----------------------------------------------------------------------------------------------
# Series of a figure and their order
# ----------------------------------------------------------------------------------------------

def series_name(impl: str, fusion) -> str:
    return f"{impl}/{fusion}" if isinstance(fusion, str) and fusion not in ("", "none") else impl


def _with_series(df: pd.DataFrame) -> pd.DataFrame:
    """A `series` column: the impl, with the fusion for fused impls ("megakernel/model")."""
    return df.assign(series=[series_name(a, b) for a, b in zip(df["impl"], df["fusion"])])


def _series_order(names) -> list[str]:
    def key(n: str):
        impl, _, fusion = n.partition("/")
        i = IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)
        f = FUSION_ORDER.index(fusion) if fusion in FUSION_ORDER else -1
        return (i, f, n)
    return sorted(set(names), key=key)


def _model_order(models) -> list[str]:
    from harness.models import named_spec

    def size(m):
        try:
            return named_spec(m).n_params()
        except Exception:  # noqa: BLE001 - a model=hf name: after the named ones
            return math.inf
    return sorted(set(models), key=lambda m: (size(m), m))
