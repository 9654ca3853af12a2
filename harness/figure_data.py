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

Rows also say whether NVML telemetry ran while they were measured (`telemetry_ran`) and, only where it did, whether
the GPU throttled (`throttled`): a row without telemetry is never drawn as "not throttled".

Besides the experiment figures, the tables of the figures that are not one experiment's grid live here too: the
bandwidth roofline (`roofline_rows`), two GPUs side by side (`gpu_pairs`), the per-stage breakdown of a megakernel
step (`step_breakdown`, from results/timelines/), the per-op kernel tables (`op_tables`, from results/ops/), the
README's headline (`headline_table`, `headline_markdown`), the findings each notebook ends with (`findings`), and
the device-time estimate of `make figures-gpu` (`gpu_plan`).

harness.figures draws these rows; it re-exports the functions here under its own name.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from harness import analysis as A
from harness.results import REPO_ROOT, is_clean_sha, short_sha
from kernels import gpu_slug

EXPERIMENTS_DIR = REPO_ROOT / "experiments"
REF = A.DEFAULT_REFERENCE
SPEEDUP = A.speedup_column(REF)
DEFAULT_FUSION = "model"  # RunConfig.fusion: the megakernel curve of every figure but the fusion ablation

IMPL_ORDER = ("torch-eager", "torch-graph", "torch-compile", "gemlite", "flash-attn", "layerwise", "megakernel")
# Figure-only impl names: a megakernel backend other than triton (backend_as_impl), drawn after the megakernel
DRAWN_ORDER = IMPL_ORDER + ("megakernel-gluon",)
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


ABLATION_PANEL = ("gpu_slug", "model", "quant", "group_size", "batch", "ctx")  # one panel of the fusion ablation


def figure_rows(experiment: str, rows: pd.DataFrame, gpu: Optional[str] = None,
                tag: Optional[str] = None) -> pd.DataFrame:
    """The rows a figure draws: same-run ratios, measured (ok/wrong), newest per point, in the grid. The fusion
    ablation draws each panel from ONE run (the newest that measured more than one megakernel fusion there): its bars
    are compared with one another, so a newer run of some impls must not replace them one by one. Raises ValueError
    when `tag` matches no row (with_tag)."""
    if experiment == "fusion_ablation":
        return with_markers(in_grid(_one_run_per_panel(rows, gpu, tag), experiment_grid(experiment)))
    df = _newest_rows(rows, gpu, tag)
    if df.empty:
        return df
    return with_markers(in_grid(df, experiment_grid(experiment)))


def _one_run_per_panel(rows: pd.DataFrame, gpu: Optional[str], tag: Optional[str]) -> pd.DataFrame:
    """Per ABLATION_PANEL, the measured rows of the newest run that measured more than one megakernel fusion there;
    a panel no such run measured (each fusion its own run, e.g. a `fusion=op,block,...` multirun) keeps the newest
    row per series, each with its own run's ratio."""
    df = _measured_rows(rows, gpu, tag)
    if df.empty:
        return df
    newest = A.latest(df, by=A.FIGURE_POINT_FIELDS)
    key = list(ABLATION_PANEL)
    mega = df[df["impl"] == "megakernel"]
    runs = (mega.groupby(key + ["run_id"], dropna=False)
            .agg(fusions=("fusion", "nunique"), when=("timestamp_utc", "max")).reset_index())
    runs = runs[runs["fusions"] > 1].sort_values("when").drop_duplicates(key, keep="last")
    if runs.empty:
        return newest
    single = A.latest(df.merge(runs[key + ["run_id"]], on=key + ["run_id"], how="inner"), by=A.FIGURE_POINT_FIELDS)
    covered = newest.merge(runs[key], on=key, how="left", indicator=True)["_merge"].eq("both").to_numpy()
    return pd.concat([newest[~covered], single], ignore_index=True)


def _measured_rows(rows: pd.DataFrame, gpu: Optional[str] = None, tag: Optional[str] = None) -> pd.DataFrame:
    """Same-run ratios on every row, then the measured (ok/wrong) rows of `gpu` (and `tag`)."""
    with_tag(rows, tag)  # fails before anything is derived, naming the tags there are
    if rows.empty:
        return rows.copy()
    df = A.with_gpu_slug(A.add_same_run_ratios(rows))
    if gpu is not None:
        df = df[df["gpu_slug"] == gpu_slug(gpu)]
    if tag is not None:
        df = df[df["tag"] == tag]
    return backend_as_impl(A.measured(df))


def backend_as_impl(df: pd.DataFrame) -> pd.DataFrame:
    """Figures draw each megakernel backend as its own impl: "megakernel" for the Triton backend (and rows from
    before there was another), "megakernel-<backend>" for another, so that the newest row per point never mixes
    backends. Rows record the backend that ran (megakernel.backend=auto resolved), so an auto run is drawn as the
    backend it picked at each point. An experiment's figure shows such an impl only where its grid names it; the
    figures that draw every impl of their rows (roofline, GPU comparison) show it as one more impl."""
    if df.empty or "mega_backend" not in df.columns:
        return df
    b = df["mega_backend"]
    other = b.notna() & ~b.astype(str).isin(("", "triton"))
    if not other.any():
        return df
    df = df.copy()
    df.loc[other, "impl"] = df.loc[other, "impl"] + "-" + b[other].astype(str)
    return df


def _newest_rows(rows: pd.DataFrame, gpu: Optional[str] = None, tag: Optional[str] = None) -> pd.DataFrame:
    """_measured_rows, newest per point."""
    df = _measured_rows(rows, gpu, tag)
    return df if df.empty else A.latest(df, by=A.FIGURE_POINT_FIELDS)


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
    df["telemetry_ran"] = telemetry_ran(df)
    df["throttled"] = df["telemetry_ran"] & _truthy(df["tel_throttled"] if "tel_throttled" in df.columns
                                                    else pd.Series(False, index=df.index))
    return df


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])


def telemetry_ran(df: pd.DataFrame) -> pd.Series:
    """True where telemetry sampled the GPU while the row was measured: its `telemetry` mode is not "off" (nor
    missing) and, where the row has `tel_n_samples`, it took at least one sample. Only these rows can say whether the
    GPU throttled; for every other row that is unknown, whatever its `tel_throttled` column holds."""
    if df.empty or "telemetry" not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    mode = df["telemetry"].astype(str).str.strip().str.lower()
    ran = ~mode.isin(["", "off", "nan", "none", "<na>"])
    if "tel_n_samples" in df.columns:
        ran &= pd.to_numeric(df["tel_n_samples"], errors="coerce").fillna(0) > 0
    return ran.astype(bool)


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

def provenance(df: pd.DataFrame) -> pd.Series:
    """Per row, where it comes from: "commit 1a2b3c4d-dirty, 2026-11-22" (short sha, measurement date in UTC). The
    runs of one commit on one day share it; a line figure gives each its own marker shape and legend entry."""
    sha = df["git_sha"] if "git_sha" in df.columns else pd.Series("", index=df.index)
    day = A.timestamps(df).dt.strftime("%Y-%m-%d").fillna("date unknown")
    return pd.Series([f"commit {short_sha(s)}, {d}" for s, d in zip(sha, day)], index=df.index, dtype=object)


def sweeps(df: pd.DataFrame) -> pd.Series:
    """Per row, its sweep: the rows of one GPU and one commit measured in one session (each within SESSION_GAP_S of
    the previous row of that GPU), e.g. the jobs of one `run.py -m`. A line figure joins points of one sweep only:
    the same code on the same machine, never a later session or another commit. Id: "<short sha>@<first time>"."""
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    ts = A.timestamps(df)
    gpu = df["gpu_name"].astype(str) if "gpu_name" in df.columns else pd.Series("", index=df.index)
    sha = df["git_sha"].fillna("").astype(str) if "git_sha" in df.columns else pd.Series("", index=df.index)
    out, prev, current = {}, None, None
    for i in sorted(df.index, key=lambda i: (gpu[i], sha[i], ts[i] if pd.notna(ts[i]) else pd.Timestamp.min)):
        t = ts[i]
        same = (prev is not None and gpu[i] == gpu[prev] and sha[i] == sha[prev] and pd.notna(t)
                and pd.notna(ts[prev]) and (t - ts[prev]).total_seconds() <= SESSION_GAP_S)
        if not same:
            when = t.strftime("%Y-%m-%dT%H:%M") if pd.notna(t) else f"row {i}"
            current = f"{short_sha(sha[i])}@{when}"
        out[i], prev = current, i
    return pd.Series([out[i] for i in df.index], index=df.index, dtype=object)


def series_name(impl: str, fusion) -> str:
    return f"{impl}/{fusion}" if isinstance(fusion, str) and fusion not in ("", "none") else impl


def _with_series(df: pd.DataFrame) -> pd.DataFrame:
    """A `series` column: the impl, with the fusion for fused impls ("megakernel/model")."""
    return df.assign(series=[series_name(a, b) for a, b in zip(df["impl"], df["fusion"])])


def _series_order(names) -> list[str]:
    def key(n: str):
        impl, _, fusion = n.partition("/")
        i = DRAWN_ORDER.index(impl) if impl in DRAWN_ORDER else len(DRAWN_ORDER)
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


def _quant_of(df: pd.DataFrame, m: str, q: str) -> str:
    g = df.loc[(df["model"] == m) & (df["quant"] == q), "group_size"]
    return A.quant_label(q, g.iloc[0] if len(g) else None)


# ----------------------------------------------------------------------------------------------
# The bandwidth roofline: every measured point of a GPU, % of copy against bytes per step
# ----------------------------------------------------------------------------------------------

def roofline_rows(rows: pd.DataFrame, gpu: Optional[str] = None, tag: Optional[str] = None) -> pd.DataFrame:
    """Every point of `gpu` (any model, quant, batch, ctx), newest row per point, with a `% of copy` and bytes per
    step; the megakernel at fusion=model only (the other fusions are the fusion ablation's)."""
    df = _newest_rows(rows, gpu, tag)
    if df.empty:
        return with_markers(df)
    pct = pd.to_numeric(df["pct_of_copy_bw"], errors="coerce") if "pct_of_copy_bw" in df.columns else None
    keep = df["fusion"].isin(["none", DEFAULT_FUSION]) & (df["gpu_slug"] != "cpu")
    if pct is None or "bytes_per_step" not in df.columns:
        keep &= False
    else:
        keep &= pct.notna() & (pd.to_numeric(df["bytes_per_step"], errors="coerce") > 0)
    return with_markers(df[keep].reset_index(drop=True))


# ----------------------------------------------------------------------------------------------
# Two GPUs at the same points
# ----------------------------------------------------------------------------------------------

PAIR_KEY = ("model", "quant", "group_size", "impl", "fusion", "batch", "ctx")


def gpu_pairs(rows: pd.DataFrame, gpu_a: str, gpu_b: str, tag: Optional[str] = None) -> pd.DataFrame:
    """The points both GPUs measured (newest row per point on each; megakernel at fusion=model), one line per point:
    each side's columns with suffix _a / _b, `latency_ratio` = latency on B / latency on A, `copy_ratio` = copy
    bandwidth of A / of B (the latency ratio a step that moved at the copy bandwidth would have), `hollow` when
    either row is hollow."""
    sides = []
    for g in (gpu_a, gpu_b):
        d = _newest_rows(rows, g, tag)
        d = d[d["fusion"].isin(["none", DEFAULT_FUSION])] if not d.empty else d
        sides.append(with_markers(d))
    a, b = sides
    cols = ["latency_us_median", "latency_us_p10", "latency_us_p90", "pct_of_copy_bw", SPEEDUP, "copy_tbps",
            "gpu_name", "gpu_slug", "clean", "hollow", "throttled", "telemetry_ran", "git_sha", "timestamp_utc"]
    if a.empty or b.empty:
        return pd.DataFrame(columns=[*PAIR_KEY, *(f"{c}_a" for c in cols), *(f"{c}_b" for c in cols),
                                     "latency_ratio", "copy_ratio", "hollow", "series"])
    pick = lambda d: d[[*PAIR_KEY, *[c for c in cols if c in d.columns]]]  # noqa: E731
    m = pick(a).merge(pick(b), on=list(PAIR_KEY), suffixes=("_a", "_b"))
    m["latency_ratio"] = pd.to_numeric(m["latency_us_median_b"]) / pd.to_numeric(m["latency_us_median_a"])
    m["copy_ratio"] = pd.to_numeric(m["copy_tbps_a"]) / pd.to_numeric(m["copy_tbps_b"])
    m["hollow"] = m["hollow_a"].astype(bool) | m["hollow_b"].astype(bool)
    m = _with_series(m)
    models = _model_order(m["model"])
    quants = ["bf16", "fp16", "fp32", "int8", "int4"]
    qpos = m["quant"].map(lambda q: quants.index(q) if q in quants else len(quants))
    return m.assign(_m=m["model"].map(models.index), _q=qpos) \
        .sort_values(["_m", "_q", "batch", "ctx", "series"]).drop(columns=["_m", "_q"]).reset_index(drop=True)


def gpu_compare_pairs(rows: pd.DataFrame, tag: Optional[str] = None) -> list[tuple[str, str]]:
    """Every pair of GPUs (slugs, sorted) that measured at least one point in common."""
    gpus = gpus_in(with_tag(rows, tag))
    return [(a, b) for i, a in enumerate(gpus) for b in gpus[i + 1:] if not gpu_pairs(rows, a, b, tag).empty]


# ----------------------------------------------------------------------------------------------
# The per-stage breakdown of one megakernel step (results/timelines/<gpu>/<point>.parquet)
# ----------------------------------------------------------------------------------------------

STAGE_ORDER = ("Embed", "RmsQkvRope", "AttnPartial", "AttnReduce", "OProjResidual", "RmsGateUpSilu", "DownResidual",
               "LmHead", "Argmax")  # the order of the instructions within a step
WAIT = "waiting for a dependency"
IDLE = "idle after its last instruction"
OTHER = "between instructions (dispatch)"
BETWEEN = "between launches"


def stage_bytes(spec, quant: str, group_size: int, batch: int, ctx: int) -> dict[str, int]:
    """The bytes a decode step must move (harness.metrics.bytes_per_step, the rows' `bytes_per_step`), split by the
    megakernel stage that moves them: each linear layer's weights to the stage that multiplies by them, a block's norm
    weight to the stage it is fused into, the KV cache read to AttnPartial, the K/V append to RmsQkvRope (which writes
    them), the final norm, LM head and logits to LmHead. The stages sum to bytes_per_step's total."""
    from harness.metrics import bytes_per_step
    from kernels.quant import quant_mode

    mode = quant_mode(quant)
    parts = bytes_per_step(spec, quant, group_size, batch, ctx)
    lin = {name: spec.n_layers * mode.linear_nbytes(n, k, group_size) for name, (n, k) in spec.linear_shapes().items()}
    norm = spec.n_layers * spec.dim * mode.act_bytes  # the attention (or the MLP) norm weight of every block
    return {"Embed": parts["embedding_rows"], "RmsQkvRope": lin["wqkv"] + norm + parts["kv_append"],
            "AttnPartial": parts["kv_read"], "OProjResidual": lin["wo"],
            "RmsGateUpSilu": lin["w_gate"] + lin["w_up"] + norm, "DownResidual": lin["w_down"],
            "LmHead": parts["lm_head"] + parts["norms"] - 2 * norm + parts["logits"]}


def step_breakdown(frame: pd.DataFrame, copy_tbps: Optional[float] = None,
                   stage_bytes: Optional[dict] = None) -> pd.DataFrame:
    """One timeline table (harness.timeline.timeline_frame: one row per instruction) -> where a program's time goes,
    averaged over the programs: one line per stage (the instructions of one op type, over all layers) with its run
    time, then one line each for the time spent waiting for a dependency, idle after the program's last instruction,
    between instructions, and between launches. `us` sums to the step's span exactly. `bytes` (from `stage_bytes`:
    stage -> the bytes of the step it moves; NaN without) and `copy_us` (bytes / copy bandwidth, when `copy_tbps` is
    given) are the stage's bytes and the time they take at the copy bandwidth. The timeline's own `bytes` column (the
    schedule's cost model) is not used."""
    parts: dict[str, float] = {}
    wait = idle = other = 0.0
    spans = 0.0
    for _, g in frame.groupby("launch", sort=True):
        t0, t1 = float(g["t_start"].min()), float(g["t_end"].max())
        n = g.groupby("program").ngroups
        spans += t1 - t0
        for op, r in g.groupby("op")["run_us"].sum().items():
            parts[op] = parts.get(op, 0.0) + float(r) / n
        w = float(g["wait_us"].sum()) / n
        tail = float((t1 - g.groupby("program")["t_end"].max()).sum()) / n
        wait += w
        idle += tail
        other += (t1 - t0) - float(g["run_us"].sum()) / n - w - tail
    span = float(frame["t_end"].max() - frame["t_start"].min())
    ops = [o for o in STAGE_ORDER if o in parts] + sorted(o for o in parts if o not in STAGE_ORDER)
    rows = [{"segment": o, "stage": True, "us": parts[o],
             "bytes": float(stage_bytes.get(o, 0)) if stage_bytes is not None else float("nan")} for o in ops]
    rows += [{"segment": WAIT, "stage": False, "us": wait, "bytes": 0.0},
             {"segment": IDLE, "stage": False, "us": idle, "bytes": 0.0},
             {"segment": OTHER, "stage": False, "us": other, "bytes": 0.0},
             {"segment": BETWEEN, "stage": False, "us": span - spans, "bytes": 0.0}]
    out = pd.DataFrame(rows)
    out["share_pct"] = 100.0 * out["us"] / span if span > 0 else float("nan")
    out["copy_us"] = out["bytes"] / (copy_tbps * 1e6) if copy_tbps and copy_tbps > 0 else float("nan")
    out.loc[~out["stage"], "copy_us"] = float("nan")
    out["span_us"] = span
    return out


def copy_tbps_by_gpu(rows: pd.DataFrame) -> dict[str, float]:
    """GPU slug -> the median copy bandwidth (TB/s) over that GPU's result rows (each measured in its own process)."""
    if rows.empty or "copy_tbps" not in rows.columns:
        return {}
    d = A.with_gpu_slug(rows)
    c = pd.to_numeric(d["copy_tbps"], errors="coerce")
    return {g: float(v) for g, v in c.groupby(d["gpu_slug"]).median().dropna().items()}


# A timeline's point name: model-quant-b<batch>-ctx<ctx>-<fusion>, then -<backend> for a megakernel backend other
# than triton (the one that ran: harness.timeline)
TIMELINE_POINT = (r"^(?P<model>.+)-(?P<quant>[^-]+)-b(?P<batch>\d+)-ctx(?P<ctx>\d+)-(?P<fusion>op|block|layer|model)"
                  r"(?:-(?P<backend>[a-z]+))?$")


def step_bytes(point: str, rows: Optional[pd.DataFrame]) -> tuple[Optional[dict], float, str]:
    """(stage -> bytes, the step's bytes, where they come from) of a timeline point ("llama8b-int8-b1-ctx1024-model"):
    the step's bytes are the `bytes_per_step` the result rows record at that model, quant, batch and ctx (on any GPU:
    they depend on the shapes only), split by stage_bytes; at a point no row measured, bytes_per_step of
    harness.metrics (what a row would record). Raises ValueError when the stages do not sum to the rows' bytes."""
    import re

    from harness.models import named_spec

    m = re.match(TIMELINE_POINT, point)
    try:
        spec = named_spec(m["model"]) if m else None
    except Exception:  # noqa: BLE001 - a model=hf checkpoint: no shapes here
        spec = None
    if spec is None:
        return None, float("nan"), "no model shapes for this point"
    q, batch, ctx = m["quant"], int(m["batch"]), int(m["ctx"])
    d = rows if rows is not None and not rows.empty else pd.DataFrame(columns=["model", "quant", "batch", "ctx"])
    d = d[(d["model"] == m["model"]) & (d["quant"] == q) & (pd.to_numeric(d["batch"]) == batch)
          & (pd.to_numeric(d["ctx"]) == ctx)]
    from harness.config import QuantConfig
    gs = int(d["group_size"].iloc[-1]) if len(d) else (QuantConfig().group_size if q == "int4" else 0)
    stages = stage_bytes(spec, q, gs, batch, ctx)
    if d.empty:
        return stages, float(sum(stages.values())), "harness.metrics.bytes_per_step (no result row at this point)"
    recorded = float(pd.to_numeric(d["bytes_per_step"]).iloc[-1])
    if sum(stages.values()) != recorded:
        raise ValueError(f"{point}: the stages' bytes from the model shapes sum to {sum(stages.values())}, the result "
                         f"rows' bytes_per_step is {recorded:.0f}")
    return stages, recorded, "the result rows' bytes_per_step"


def step_breakdowns(timelines_dir: Path, rows: Optional[pd.DataFrame] = None,
                    gpu: Optional[str] = None) -> pd.DataFrame:
    """step_breakdown of every timeline table under `timelines_dir` (<gpu-slug>/<point>.parquet), one block per point
    with columns gpu_slug, gpu_name, point, tiles, copy_tbps (from `rows`: copy_tbps_by_gpu; NaN without rows),
    step_bytes and bytes_from (step_bytes: the rows' bytes_per_step, split by stage), source (commit and date of the
    table: harness.timeline.source_line)."""
    from harness.timeline import source_line

    copies = copy_tbps_by_gpu(rows) if rows is not None else {}
    parts = []
    for f in sorted(Path(timelines_dir).glob("*/*.parquet")):
        slug = f.parent.name
        if gpu is not None and slug != gpu_slug(gpu):
            continue
        frame = pd.read_parquet(f)
        if frame.empty:
            continue
        point = str(frame["point"].iloc[0]) if "point" in frame.columns else f.stem
        stages, total, bytes_from = step_bytes(point, rows)
        b = step_breakdown(frame, copies.get(slug), stages)
        b.insert(0, "point", point)
        b.insert(0, "gpu_name", str(frame["gpu"].iloc[0]) if "gpu" in frame.columns else slug)
        b.insert(0, "gpu_slug", slug)
        b["tiles"] = str(frame["tiles"].iloc[0]) if "tiles" in frame.columns else ""
        b["copy_tbps"] = copies.get(slug, float("nan"))
        b["programs"] = int(frame.groupby(["launch", "program"]).ngroups)
        b["step_bytes"], b["bytes_from"], b["source"] = total, bytes_from, source_line(frame, f)
        parts.append(b)
    cols = ["gpu_slug", "gpu_name", "point", "segment", "stage", "us", "bytes", "share_pct", "copy_us", "span_us",
            "tiles", "copy_tbps", "programs", "step_bytes", "bytes_from", "source"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


# ----------------------------------------------------------------------------------------------
# The per-op kernel tables (results/ops/*.csv): ours next to the library kernels
# ----------------------------------------------------------------------------------------------

# impl -> who wrote it, for each per-op table format
OURS = {"triton": "ours: Triton kernel (kernels/)", "qgemv": "ours: qgemv (tensor cores, Gluon)",
        "triton-fma": "ours: Triton GEMV (FMA path)"}
LIBRARY = {"torch": "library: PyTorch (cuBLAS GEMV on the dequantised weight, SDPA-flash attention, eager ops)",
           "cublas-bf16": "library: cuBLAS bf16 (dequantised weight)", "tinygemm": "library: tinygemm int4",
           "gemlite": "library: GemLite"}
OP_IMPL_ORDER = ("torch", "cublas-bf16", "tinygemm", "gemlite", "triton-fma", "triton", "qgemv")
QGEMV_VARIANT = r"^qgemv-r\d+w\d+$"  # row/warp geometries of qgemv measured for the tuning notes: not drawn
QGEMV_LAYERS = {"qkv": "qkv", "o": "o_proj", "gate": "gate", "down": "down", "lm": "lm_head"}
OP_PANEL = ("source", "model", "quant", "batch", "ctx")
# bench_ops op -> the linear layers (harness.models shapes; "lm_head": vocab x dim) whose weights it reads
OP_WEIGHTS = {"qkv(+rmsnorm)": ("wqkv",), "o_proj(+residual)": ("wo",), "gate_up(+rmsnorm,silu)": ("w_gate", "w_up"),
              "down(+residual)": ("w_down",), "lm_head(+rmsnorm,argmax)": ("lm_head",)}


def op_weight_bytes(r) -> float:
    """The bytes of an op's weights in the quant format of its table (kernels.quant linear_nbytes: weights + scales +
    zeros, int4 in groups of 128 as both benchmarks quantise) at the model's shapes; NaN for an op without weights."""
    from harness.config import QuantConfig
    from harness.models import named_spec
    from kernels.quant import quant_mode

    mode, gs = quant_mode(r["quant"]), QuantConfig().group_size
    if r["kind"] == "qgemv":
        return float(mode.linear_nbytes(int(r["n"]), int(r["k"]), gs))
    if r["op"] not in OP_WEIGHTS:
        return float("nan")
    spec = named_spec(r["model"])
    shapes = {**spec.linear_shapes(), "lm_head": (spec.vocab_size, spec.dim)}
    return float(sum(mode.linear_nbytes(*shapes[w], gs) for w in OP_WEIGHTS[r["op"]]))


def _with_op_bytes(ops: pd.DataFrame) -> pd.DataFrame:
    """One denominator per panel and op, the same for every kernel of it (`op_bytes`): the op's weights in the table's
    quant format (op_weight_bytes), or for an op without weights the bytes the table records for it (the same for every
    impl: the smallest where they differ). `op_gbps` = op_bytes / latency and `op_pct_of_copy` (of the copy bandwidth
    measured in the same process; NaN for bench_ops tables) are what the op figure draws: a kernel that reads more or
    fewer bytes than the op's weights does not look slower or faster by its own count."""
    w = pd.Series([op_weight_bytes(r) for r in ops.to_dict("records")], index=ops.index, dtype=float)
    recorded = pd.to_numeric(ops["bytes"]).groupby([ops[c] for c in (*OP_PANEL, "op")], dropna=False).transform("min")
    out = ops.assign(op_bytes=w.fillna(recorded), op_bytes_are=w.notna().map({True: "weights", False: "recorded"}))
    out["op_gbps"] = out["op_bytes"] / (pd.to_numeric(out["latency_us"]) * 1e3)
    out["op_pct_of_copy"] = 100 * out["op_gbps"] / (pd.to_numeric(out["copy_tbps"]) * 1e3)
    return out


def op_tables(ops_dir: Path) -> pd.DataFrame:
    """Every per-op table under `ops_dir` in one frame, one line per (table, op, impl): gpu_name, gpu_slug, source
    (file name), kind (bench_ops: `python -m harness.bench_ops`, every kernel next to its PyTorch equivalent, no copy
    measured; qgemv: scripts/qgemv_bench.py, the GEMVs next to cuBLAS / tinygemm / GemLite with the copy bandwidth of
    the same process), model, quant, batch, ctx (NaN where the table has none), op, shape, impl, ours (bool),
    latency_us, bytes (what that impl reads and writes, as its table records), gbps (bytes / latency), pct_of_copy_bw
    and copy_tbps (NaN for bench_ops), and the one denominator per op the figure uses: op_bytes, op_bytes_are,
    op_gbps, op_pct_of_copy (_with_op_bytes). qgemv's row/warp variants (qgemv-rXwY) are left out; files of another
    layout are left out (op_files_unread)."""
    parts = []
    for f in sorted(Path(ops_dir).glob("*.csv")):
        d = pd.read_csv(f)
        kind = _op_kind(d)
        if kind == "bench_ops":
            d = d.assign(kind=kind, pct_of_copy_bw=float("nan"), copy_tbps=float("nan"), gpu_name=d["gpu"])
        elif kind == "qgemv":
            d = d[~d["impl"].astype(str).str.match(QGEMV_VARIANT)]
            d = d.assign(kind=kind, ctx=float("nan"), gpu_name=d["gpu"],
                         op=d["layer"].map(lambda v: QGEMV_LAYERS.get(str(v), str(v))),
                         shape=[f"[{b},{k}]x[{n},{k}]" for b, n, k in zip(d["batch"], d["n"], d["k"])],
                         gbps=d["bytes"] / (d["latency_us"] * 1e3))
        else:
            continue
        d = d.assign(source=f.name, gpu_slug=[gpu_slug(g) for g in d["gpu_name"]],
                     ours=d["impl"].isin(list(OURS)))
        parts.append(d)
    cols = ["gpu_name", "gpu_slug", "source", "kind", "model", "quant", "batch", "ctx", "op", "shape", "impl", "ours",
            "latency_us", "bytes", "gbps", "pct_of_copy_bw", "copy_tbps"]
    extra = ["op_bytes", "op_bytes_are", "op_gbps", "op_pct_of_copy"]
    if not parts:
        return pd.DataFrame(columns=cols + extra)
    return _with_op_bytes(pd.concat([p.reindex(columns=cols + ["n", "k"]) for p in parts], ignore_index=True)) \
        [cols + extra]


def _op_kind(d: pd.DataFrame) -> Optional[str]:
    if {"op", "impl", "bytes", "latency_us", "gbps", "model", "quant", "batch", "ctx", "gpu"} <= set(d.columns):
        return "bench_ops"
    if {"layer", "impl", "n", "k", "batch", "latency_us", "bytes", "pct_of_copy_bw", "copy_tbps", "gpu"} \
            <= set(d.columns):
        return "qgemv"
    return None


def op_files_unread(ops_dir: Path) -> list[str]:
    """CSV files under `ops_dir` in neither per-op layout (named in the figure's note, never silently dropped)."""
    return [f.name for f in sorted(Path(ops_dir).glob("*.csv")) if _op_kind(pd.read_csv(f, nrows=1)) is None]


def op_panels(ops: pd.DataFrame) -> list[tuple]:
    """The panels of an op figure, in order: one per (source, model, quant, batch, ctx)."""
    if ops.empty:
        return []
    keys = ops[list(OP_PANEL)].astype(object).where(ops[list(OP_PANEL)].notna(), None).drop_duplicates()
    models = _model_order(ops["model"])
    return sorted((tuple(k) for k in keys.itertuples(index=False)),
                  key=lambda k: (k[0], models.index(k[1]), k[2], k[3] or 0, k[4] or 0))


# ----------------------------------------------------------------------------------------------
# The headline: the megakernel next to the references on one GPU (README, results/figures/headline.md)
# ----------------------------------------------------------------------------------------------

HEADLINE_GPU = "nvidia-h200"
HEADLINE_MODELS = ("llama1b", "llama8b")
HEADLINE_POINT = {"batch": 1, "ctx": 1024}
HEADLINE_REFS = ("layerwise", "gemlite", "flash-attn", REF)
HEADLINE_MEGA = ("megakernel", "megakernel-gluon")  # backends as figures name them (backend_as_impl), last preferred


def headline_table(rows: pd.DataFrame, gpu: str = HEADLINE_GPU, tag: Optional[str] = None) -> pd.DataFrame:
    """One line per (model, quant) of HEADLINE_MODELS at batch 1, ctx 1024 on `gpu`: the newest megakernel row
    (fusion=model) and, from the same run, the other impls' speedups over torch-compile and torch-compile's own
    latency. `clean` is the megakernel row's (the run's rows share one commit); `fastest` is the impl (megakernel:
    any fusion) with the lowest median latency among the run's measured rows at that point. The megakernel row is
    the backend megakernel.backend=auto picks (kernels.mega.resolve_backend): of the newest run that measured the
    megakernel at that point, its Gluon row where it has one, else its Triton row (`backend`)."""
    df = _measured_rows(rows, gpu, tag)
    cols = ["model", "quant", "group_size", "backend", "mega_us", "mega_p10", "mega_p90", "mega_pct", "mega_speedup",
            "layerwise_speedup", "gemlite_speedup", "flash-attn_speedup", "compile_us", "compile_p10", "compile_p90",
            "compile_pct", "layerwise_pct", "gemlite_pct", "flash-attn_pct", "fastest", "git_sha", "clean",
            "timestamp_utc", "run_id"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    sel = df["model"].isin(HEADLINE_MODELS) & df["impl"].isin(HEADLINE_MEGA) & (df["fusion"] == DEFAULT_FUSION)
    for k, v in HEADLINE_POINT.items():
        sel &= pd.to_numeric(df[k], errors="coerce") == v
    mega = with_markers(df[sel])
    if not mega.empty:  # per point: the newest run's megakernel rows, the Gluon one last (kept)
        t_run = pd.to_datetime(mega.groupby("run_id")["timestamp_utc"].transform("max"), utc=True)
        mega = mega.assign(_t=t_run, _g=mega["impl"].map(HEADLINE_MEGA.index)).sort_values(["_t", "_g"]) \
            .groupby(["model", "quant", "group_size"], dropna=False).tail(1).drop(columns=["_t", "_g"])
    every = backend_as_impl(A.with_gpu_slug(A.add_same_run_ratios(rows)))
    out = []
    for _, r in mega.iterrows():
        run = every[every["run_id"] == r["run_id"]]
        line = {"model": r["model"], "quant": r["quant"], "group_size": r["group_size"],
                "backend": "Gluon" if r["impl"] != "megakernel" else "Triton", "mega_us": r["latency_us_median"],
                "mega_p10": r["latency_us_p10"], "mega_p90": r["latency_us_p90"],
                "mega_pct": r["pct_of_copy_bw"], "mega_speedup": r[SPEEDUP], "git_sha": r["git_sha"],
                "clean": bool(r["clean"]), "timestamp_utc": r["timestamp_utc"], "run_id": r["run_id"]}
        for impl in HEADLINE_REFS:
            s = A.measured(run[run["impl"] == impl])
            key = "compile" if impl == REF else impl
            if impl != REF:
                line[f"{key}_speedup"] = float(s[SPEEDUP].iloc[-1]) if len(s) else float("nan")
            else:
                for q, col in (("us", "latency_us_median"), ("p10", "latency_us_p10"), ("p90", "latency_us_p90")):
                    line[f"compile_{q}"] = float(s[col].iloc[-1]) if len(s) else float("nan")
            line[f"{key}_pct"] = float(s["pct_of_copy_bw"].iloc[-1]) if len(s) else float("nan")
        point = A.measured(run[(run["model"] == r["model"]) & (run["quant"] == r["quant"])])
        lat = pd.to_numeric(point["latency_us_median"], errors="coerce")
        line["fastest"] = str(point.loc[lat.idxmin(), "impl"]) if lat.notna().any() else ""
        out.append(line)
    if not out:
        return pd.DataFrame(columns=cols)
    t = pd.DataFrame(out)
    quants = ["bf16", "fp16", "int8", "int4"]
    t = t.assign(_m=t["model"].map(list(HEADLINE_MODELS).index),
                 _q=t["quant"].map(lambda q: quants.index(q) if q in quants else len(quants)))
    return t.sort_values(["_m", "_q"]).drop(columns=["_m", "_q"]).reset_index(drop=True)[cols]


def _x(v) -> str:
    return "—" if v is None or pd.isna(v) else f"{float(v):.2f}x"


def _commit(sha, clean: bool) -> str:
    short = short_sha(sha)
    return f"`{short}`" if clean else f"`{short}` **not a clean commit**"


def headline_markdown(rows: pd.DataFrame, gpu: str = HEADLINE_GPU, tag: Optional[str] = None) -> str:
    """The headline table as markdown, with the sentences that read it (all computed from the rows)."""
    t = headline_table(rows, gpu, tag)
    names = rows.loc[[gpu_slug(g) == gpu_slug(gpu) for g in rows["gpu_name"]], "gpu_name"] \
        if not rows.empty and "gpu_name" in rows.columns else pd.Series(dtype=str)
    gpu_name = str(names.iloc[0]) if len(names) else gpu
    head = (f"<!-- generated by `python -m harness.figures` (harness.figure_data.headline_markdown) from results/; "
            f"do not edit by hand -->\n")
    where = f"{gpu_name}, batch {HEADLINE_POINT['batch']}, context {HEADLINE_POINT['ctx']}"
    if t.empty:
        return head + f"No megakernel rows yet on {where} for {', '.join(HEADLINE_MODELS)}.\n"
    lines = [head, f"**{where}**, the newest run of each point (measured {A.measurement_dates(t) or '?'}); "
             f"speedups are over the torch-compile row of the same run; the megakernel is the backend "
             f"`megakernel.backend=auto` picks (Gluon where it runs, else Triton).\n",
             "| model | weights | megakernel backend | megakernel µs (p10–p90) | megakernel % of copy | "
             "megakernel vs torch-compile | layerwise vs torch-compile | gemlite vs torch-compile | "
             "flash-attn vs torch-compile | torch-compile µs | fastest in the run | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['model']} | {A.quant_label(r['quant'], r['group_size'])} | {r['backend']} | "
                     f"{r['mega_us']:.0f} "
                     f"({r['mega_p10']:.0f}–{r['mega_p90']:.0f}) | {r['mega_pct']:.1f} | {_x(r['mega_speedup'])} | "
                     f"{_x(r['layerwise_speedup'])} | {_x(r['gemlite_speedup'])} | {_x(r['flash-attn_speedup'])} | "
                     f"{'—' if pd.isna(r['compile_us']) else format(r['compile_us'], '.0f')} | "
                     f"{r['fastest'] or '—'} | {_commit(r['git_sha'], r['clean'])} |")
    n_dirty = int((~t["clean"]).sum())
    sp = pd.to_numeric(t["mega_speedup"], errors="coerce")
    best = t.loc[sp.idxmax()] if sp.notna().any() else None
    worst = t.loc[sp.idxmin()] if sp.notna().any() else None
    faster = int((sp > 1).sum())
    lines.append("")
    text = (f"The megakernel is faster than torch-compile in {faster} of {int(sp.notna().sum())} of these runs")
    if best is not None:
        text += (f"; its speedup ranges from {_x(worst['mega_speedup'])} ({worst['model']} "
                 f"{A.quant_label(worst['quant'], worst['group_size'])}) to {_x(best['mega_speedup'])} "
                 f"({best['model']} {A.quant_label(best['quant'], best['group_size'])})")
    pct = pd.to_numeric(t["mega_pct"], errors="coerce")
    text += (f", and it moves its bytes at {pct.min():.0f} to {pct.max():.0f} % of the copy bandwidth measured in the "
             f"same process. ")
    # a speedup within the two rows' own p10-p90 spread (each half its width over its median, combined) is a tie
    spread = (((t["mega_p90"] - t["mega_p10"]) / (2 * t["mega_us"])) ** 2
              + ((t["compile_p90"] - t["compile_p10"]) / (2 * t["compile_us"])) ** 2) ** 0.5
    tie = (sp - 1).abs() <= spread
    text += (f"Counting a speedup within the two rows' p10–p90 spread as a tie: faster in {int(((sp > 1) & ~tie).sum())}, "
             f"a tie in {int((tie & sp.notna()).sum())}, slower in {int(((sp < 1) & ~tie).sum())}. ")
    fastest = t["fastest"][t["fastest"] != ""].value_counts()
    if len(fastest):
        text += ("Fastest impl of each run: " + ", ".join(f"{impl} in {n}" for impl, n in fastest.items()) + ". ")
    text += (f"{n_dirty} of the {len(t)} runs were not measured at a clean commit (marked in the commit column)."
             if n_dirty else f"All {len(t)} runs were measured at a clean commit.")
    lines.append(text)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The device time of `make figures-gpu`, estimated from the committed rows
# ----------------------------------------------------------------------------------------------

PLAN_FIRST = "bandwidth_by_impl"  # measured first: it runs telemetry, and later experiments resume its points
SESSION_GAP_S = 15 * 60  # two runs of one GPU further apart than this belong to different sessions


def experiment_points(name: str, experiments_dir: Path = EXPERIMENTS_DIR) -> list[dict]:
    """Every (model, quant, batch, ctx) point of an experiment's sweep."""
    import itertools

    g = experiment_grid(name, experiments_dir)
    keys = ("model", "quant", "batch", "ctx")
    vals = [g.get(k, [None]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*vals)]


def _impls_per_point(name: str, experiments_dir: Path = EXPERIMENTS_DIR) -> tuple[int, int]:
    """(impls the experiment measures at a point, megakernel fusions it measures besides fusion=model)."""
    g = experiment_grid(name, experiments_dir)
    impls = g.get("impl") or list(IMPL_ORDER)
    fusions = g.get("fusion") or [DEFAULT_FUSION]
    extra = len([f for f in fusions if f != DEFAULT_FUSION]) if "megakernel" in impls else 0
    return len(impls), extra


def seconds_per_row(rows: pd.DataFrame) -> pd.DataFrame:
    """Per GPU: wall seconds per measured impl row, from the committed sessions. A run's wall time is the time to
    the next run of the same GPU when that comes within SESSION_GAP_S (the last run of a session has none); it holds
    weights, compiles, correctness, warm-up, timing and telemetry. Also the share of it that the timing itself takes
    (repeats x median latency of each row)."""
    if rows.empty:
        return pd.DataFrame(columns=["gpu_slug", "runs", "rows", "s_per_row", "timing_pct"])
    d = A.with_gpu_slug(rows)
    d = d[d["gpu_slug"] != "cpu"].assign(_ts=A.timestamps(d))
    out = []
    for slug, g in d.groupby("gpu_slug"):
        lat = pd.to_numeric(g["latency_us_median"], errors="coerce").fillna(0)
        rep = pd.to_numeric(g["repeats"], errors="coerce").fillna(0) if "repeats" in g.columns else lat * 0
        runs = g.assign(_timing_us=lat * rep).groupby("run_id").agg(
            ts=("_ts", "min"), n=("impl", "size"), timing_us=("_timing_us", "sum")).sort_values("ts")
        gaps = runs["ts"].shift(-1) - runs["ts"]
        secs = gaps.dt.total_seconds()
        ok = secs.notna() & (secs > 0) & (secs <= SESSION_GAP_S)
        if not ok.any():
            continue
        per_row = secs[ok] / runs.loc[ok, "n"]
        out.append({"gpu_slug": slug, "runs": int(ok.sum()), "rows": int(runs.loc[ok, "n"].sum()),
                    "s_per_row": float(per_row.median()),
                    "timing_pct": float(100 * runs.loc[ok, "timing_us"].sum() / 1e6 / secs[ok].sum())})
    return pd.DataFrame(out)


def gpu_plan(rows: pd.DataFrame, experiments_dir: Path = EXPERIMENTS_DIR) -> pd.DataFrame:
    """What `make figures-gpu` measures, experiment by experiment in the order it runs them (PLAN_FIRST, then by
    name), under one results.tag so that later experiments resume the points earlier ones measured: the points of
    each sweep, how many are new, the impl rows those measure, and an estimate of the device time: rows x the median
    wall seconds per row of the committed sessions (seconds_per_row, all GPUs' runs together). An estimate: compile
    times, the GPU and the larger contexts and batches of the sweeps move it."""
    names = sorted(p.stem for p in Path(experiments_dir).glob("*.yaml"))
    names = [n for n in names if n == PLAN_FIRST] + [n for n in names if n != PLAN_FIRST]
    spr = seconds_per_row(rows)
    per_row = float((spr["s_per_row"] * spr["rows"]).sum() / spr["rows"].sum()) if not spr.empty else float("nan")
    seen: set = set()
    out = []
    for n in names:
        pts = experiment_points(n, experiments_dir)
        keys = [tuple(p.values()) for p in pts]
        new = [k for k in dict.fromkeys(keys) if k not in seen]
        impls, extra = _impls_per_point(n, experiments_dir)
        # a new point: every impl and every extra megakernel fusion; a point measured before: the extra fusions, with
        # the baseline measured again beside them (harness.runner keeps speedups same-run)
        n_rows = len(new) * (impls + extra) + (len(set(keys)) - len(new)) * (extra + 1 if extra else 0)
        seen.update(keys)
        out.append({"experiment": n, "points": len(set(keys)), "new_points": len(new), "rows": n_rows,
                    "est_minutes": n_rows * per_row / 60})
    return pd.DataFrame(out)


def gpu_plan_text(rows: pd.DataFrame, experiments_dir: Path = EXPERIMENTS_DIR) -> str:
    plan = gpu_plan(rows, experiments_dir)
    spr = seconds_per_row(rows)
    lines = ["experiment            points  new  impl rows  est. minutes"]
    for _, r in plan.iterrows():
        lines.append(f"{r['experiment']:<22}{r['points']:>6}{r['new_points']:>5}{r['rows']:>11}"
                     f"{r['est_minutes']:>14.0f}")
    total = plan["est_minutes"].sum()
    lines.append(f"{'total':<22}{plan['points'].sum():>6}{plan['new_points'].sum():>5}{plan['rows'].sum():>11}"
                 f"{total:>14.0f}")
    basis = "; ".join(f"{r['gpu_slug']}: {r['s_per_row']:.1f} s per impl row over {r['runs']} runs (timing itself "
                      f"{r['timing_pct']:.1f} % of it)" for _, r in spr.iterrows()) or "no committed sessions"
    lines.append(f"Estimate, not a measurement: about {total / 60:.1f} h of device time ({basis}).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Findings: the sentences each notebook ends with, computed from the tables its figure draws
# ----------------------------------------------------------------------------------------------

def _label(r) -> str:
    return f"{r['model']} {A.quant_label(r['quant'], r['group_size'])}"


def _span(vals, fmt: str = "{:.2f}", unit: str = "x") -> str:
    v = [float(x) for x in vals if pd.notna(x)]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return f"{fmt.format(lo)}{unit}" if abs(hi - lo) < 1e-12 else f"{fmt.format(lo)}{unit} to {fmt.format(hi)}{unit}"


def _clean_line(df: pd.DataFrame) -> str:
    n, dirty = len(df), int((~df["clean"].astype(bool)).sum())
    return (f"{n} rows, {dirty} of them not from a clean commit (hollow), measured "
            f"{A.measurement_dates(df) or '?'}")


def findings_experiment(experiment: str, rows: pd.DataFrame, tag: Optional[str] = None) -> str:
    """Per GPU, what the experiment's figure shows, in sentences computed from figure_rows."""
    out = []
    gpus = gpus_in(with_tag(rows, tag))
    if not gpus:
        return f"No GPU rows yet for {experiment}."
    grid = experiment_grid(experiment)
    for g in gpus:
        df = _with_series(figure_rows(experiment, rows, g, tag))
        if df.empty:
            out.append(f"- {g}: no rows yet in the grid of {experiment}.")
            continue
        out.append(f"- {df['gpu_name'].iloc[0]}: {_clean_line(df)}.")
        for (m, q), d in df.groupby(["model", "quant"], sort=False):
            lab = _label(d.iloc[0])
            mk = d[d["series"] == series_name("megakernel", DEFAULT_FUSION)]
            if experiment == "speedup_vs_context":
                xs = sorted(int(v) for v in d["ctx"].unique())
                missing = [v for v in grid.get("ctx", []) if v not in xs]
                out.append(f"  - {lab}: contexts measured {xs}" + (f" (not yet: {missing})" if missing else "") +
                           f"; megakernel speedup over {REF} {_span(mk[SPEEDUP])}, layerwise "
                           f"{_span(d.loc[d['impl'] == 'layerwise', SPEEDUP])}.")
            elif experiment == "batch_sweep":
                xs = sorted(int(v) for v in d["batch"].unique())
                parts = []
                for name in (series_name("megakernel", DEFAULT_FUSION), REF, "layerwise"):
                    s = d[d["series"] == name].sort_values("batch")
                    if len(s) >= 2:
                        lat, bat = s["latency_us_median"], s["batch"]
                        parts.append(f"{name} {lat.iloc[0]:.0f} µs at batch {int(bat.iloc[0])}"
                                     f" -> {lat.iloc[-1]:.0f} µs at batch {int(bat.iloc[-1])}"
                                     f" ({s['latency_us_median'].iloc[-1] / s['latency_us_median'].iloc[0]:.2f}x)")
                    elif len(s) == 1:
                        parts.append(f"{name} {s['latency_us_median'].iloc[0]:.0f} µs at batch "
                                     f"{int(s['batch'].iloc[0])} only")
                out.append(f"  - {lab}: batches measured {xs}; " + "; ".join(parts) + ".")
            elif experiment == "speedup_vs_model":
                pass  # below, per quant
            elif experiment == "fusion_ablation":
                fus = {f: d.loc[d["series"] == series_name("megakernel", f), "latency_us_median"] for f in FUSION_ORDER}
                have = {f: float(v.iloc[0]) for f, v in fus.items() if len(v)}
                if have:
                    best = min(have, key=have.get)
                    txt = f"  - {lab}: fastest megakernel fusion {best} ({have[best]:.0f} µs"
                    b = d.loc[d["series"] == series_name("megakernel", best), SPEEDUP]
                    txt += f", {b.iloc[0]:.2f}x {REF})" if len(b) and pd.notna(b.iloc[0]) else ")"
                    if "op" in have and DEFAULT_FUSION in have:
                        txt += f"; one launch per step vs one per op: {have['op'] / have[DEFAULT_FUSION]:.2f}x faster"
                    out.append(txt + ".")
            elif experiment == "bandwidth_by_impl":
                best = d.loc[pd.to_numeric(d["pct_of_copy_bw"]).idxmax()]
                out.append(f"  - {lab}: highest % of copy {best['pct_of_copy_bw']:.1f} ({best['series']}); megakernel "
                           f"{_span(mk['pct_of_copy_bw'], '{:.1f}', ' %')}.")
        if experiment == "speedup_vs_model":
            for q, d in df.groupby("quant", sort=False):
                per = []
                for m in _model_order(d["model"]):
                    dm = d[(d["model"] == m) & (d["series"] != REF) & d[SPEEDUP].notna()]
                    if dm.empty:
                        continue
                    b = dm.loc[dm[SPEEDUP].idxmax()]
                    mkm = dm.loc[dm["series"] == series_name("megakernel", DEFAULT_FUSION), SPEEDUP]
                    per.append(f"{m}: best {b['series']} {b[SPEEDUP]:.2f}x" +
                               (f", megakernel {mkm.iloc[0]:.2f}x" if len(mkm) else ""))
                missing = [m for m in grid.get("model", []) if m not in set(d["model"])]
                out.append(f"  - {q}: " + "; ".join(per) + (f" (not yet measured: {', '.join(missing)})"
                                                            if missing else "") + ".")
        if experiment == "bandwidth_by_impl":
            ran = int(df["telemetry_ran"].sum())
            out.append(f"  - telemetry ran for {ran} of {len(df)} rows" +
                       (f"; {int(df['throttled'].sum())} of those throttled." if ran else
                        ": whether the GPU throttled is unknown."))
    return "\n".join(out)


def findings_roofline(rows: pd.DataFrame, tag: Optional[str] = None) -> str:
    out = []
    for g in gpus_in(with_tag(rows, tag)):
        df = _with_series(roofline_rows(rows, g, tag))
        if df.empty:
            continue
        out.append(f"- {df['gpu_name'].iloc[0]}: {_clean_line(df)}; telemetry ran for "
                   f"{int(df['telemetry_ran'].sum())} of them, {int(df['throttled'].sum())} throttled.")
        for name in _series_order(df["series"]):
            s = df[df["series"] == name]
            p = pd.to_numeric(s["pct_of_copy_bw"])
            top = s.loc[p.idxmax()]
            out.append(f"  - {name}: {len(s)} points, median {p.median():.1f} % of copy, highest {p.max():.1f} % "
                       f"({_label(top)} b{int(top['batch'])} ctx{int(top['ctx'])}, "
                       f"{top['bytes_per_step'] / 1e9:.2f} GB per step).")
    return "\n".join(out) or "No GPU rows yet."


def findings_gpu_compare(rows: pd.DataFrame, tag: Optional[str] = None) -> str:
    out = []
    for a, b in gpu_compare_pairs(rows, tag):
        p = gpu_pairs(rows, a, b, tag)
        na, nb = p["gpu_name_a"].iloc[0], p["gpu_name_b"].iloc[0]
        out.append(f"- {na} -> {nb}: {len(p)} points measured on both ({int(p['hollow'].sum())} hollow); the copy "
                   f"bandwidth ratio is {p['copy_ratio'].median():.2f}, the latency ratio a step moving its bytes at "
                   f"copy speed would have.")
        for name in _series_order(p["series"]):
            s = p[p["series"] == name]
            out.append(f"  - {name}: latency on {nb} / on {na} median {s['latency_ratio'].median():.2f} "
                       f"({_span(s['latency_ratio'], '{:.2f}', '')} over {len(s)} points); % of copy "
                       f"{s['pct_of_copy_bw_a'].median():.1f} -> {s['pct_of_copy_bw_b'].median():.1f} (medians).")
    return "\n".join(out) or "No point measured on two GPUs yet."


def findings_step_breakdown(b: pd.DataFrame) -> str:
    out = []
    for (g, p), d in b.groupby(["gpu_name", "point"], sort=False):
        span = float(d["span_us"].iloc[0])
        st = d[d["stage"]]
        top = st.loc[st["us"].idxmax()]
        wait = float(d.loc[d["segment"] == WAIT, "us"].sum())
        copy = float(st["copy_us"].sum()) if st["copy_us"].notna().any() else float("nan")
        line = (f"- {g} {p}: span {span:.0f} µs; programs run {100 * st['us'].sum() / span:.0f} % of it, wait for a "
                f"dependency {100 * wait / span:.0f} %; the longest stage is {top['segment']} "
                f"({100 * top['us'] / span:.0f} % of the span)")
        if pd.notna(copy):
            line += (f"; at copy speed the step's bytes would take {copy:.0f} µs "
                     f"({100 * copy / span:.0f} % of the span)")
        out.append(line + ".")
    return "\n".join(out) or "No megakernel timelines yet."


def findings_op_bandwidth(ops: pd.DataFrame) -> str:
    out = []
    if ops.empty:
        return "No per-op tables yet."
    keyed = ops.assign(_k=ops[list(OP_PANEL)].astype(object).where(ops[list(OP_PANEL)].notna(), None)
                       .apply(tuple, axis=1))
    for k in op_panels(ops):
        d = keyed[keyed["_k"] == k]
        wins, total, ratios = 0, 0, []
        for op, g in d.groupby("op", sort=False):
            ours, lib = g[g["ours"]], g[~g["ours"]]
            if ours.empty or lib.empty:
                continue
            o, best_lib = ours["latency_us"].min(), lib.loc[lib["latency_us"].idxmin()]
            total += 1
            wins += int(o < best_lib["latency_us"])
            ratios.append((best_lib["latency_us"] / o, op, best_lib["impl"]))
        if not ratios:
            continue
        hi, lo = max(ratios), min(ratios)
        source, model, quant, batch, ctx = k
        out.append(f"- {d['gpu_name'].iloc[0]} {model} {quant} batch {int(batch)}"
                   + (f" ctx {int(ctx)}" if ctx is not None else "") + f" [{source}]: ours faster than the fastest "
                   f"library kernel for {wins} of {total} ops; the speedup of ours over it ranges from {lo[0]:.2f}x "
                   f"({lo[1]}, vs {lo[2]}) to {hi[0]:.2f}x ({hi[1]}, vs {hi[2]}).")
    return "\n".join(out)


def findings_headline(rows: pd.DataFrame, gpu: str = HEADLINE_GPU, tag: Optional[str] = None) -> str:
    return headline_markdown(rows, gpu, tag).rstrip("\n").split("\n")[-1]
