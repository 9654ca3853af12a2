"""Per-program timeline of one megakernel decode step: where every microsecond goes.

The interpreter kernel, built with timeline=True (a separately compiled variant; the default kernel has no
timing code), records per instruction the clock before its counter wait, after the wait and after its
release, and the SM it ran on. Here that becomes a table (one row per instruction: program, op, layer,
wait and run time, bytes) with summaries per op and per (layer, stage), and a plot: programs on the y-axis,
time on the x-axis, a bar per instruction coloured by op, its wait drawn thin and grey before it.

    python -m harness.timeline model=llama1b quant=bf16 [bench.batch=1 bench.ctx=1024 fusion=model \
        megakernel.programs_per_sm=1 megakernel.tiles.gemv_rows=8 ...]

writes results/timelines/<gpu>/<point>.parquet and .png and prints the summaries. On the CPU (Triton
interpreter) the clock is logical (one tick per event), so only the order of events is meaningful. The table records
the GPU, the commit (git sha, "-dirty" for a tree that differs from it) and the time it was measured, and the plot's
title says them; a table written before it recorded them says so and names the commit that added it to the repository.

    python -m harness.timeline --replot [results/timelines ...]     # redraws the plot of every table (any machine)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pandas as pd

OP_COLORS = {"Embed": "#7f7f7f", "RmsQkvRope": "#1f77b4", "AttnPartial": "#ff7f0e", "AttnReduce": "#d62728",
             "OProjResidual": "#9467bd", "RmsGateUpSilu": "#2ca02c", "DownResidual": "#17becf",
             "LmHead": "#8c564b", "Argmax": "#e377c2"}


def timeline_frame(mk) -> pd.DataFrame:
    """The last step's records of a Megakernel built with timeline=True, one row per instruction; times in
    microseconds from the step's first event (GPU) or in ticks (interpreter)."""
    recs = mk.timeline_records()
    prog = mk.prog
    rows = []
    for launch, program, pos, instr, t0, t1, t2, sm in recs:
        ins = prog.instrs[instr]
        rows.append(dict(launch=launch, program=program, pos=pos, instr=instr, op=type(ins).__name__,
                         layer=getattr(ins, "layer", -1), t_start=t0, t_ready=t1, t_end=t2, sm=sm,
                         bytes=float(prog.cost_bytes(ins))))
    df = pd.DataFrame(rows)
    scale = 1e-3 if not mk.interpret else 1.0  # ns -> us on the GPU
    origin = df["t_start"].min()
    for c in ("t_start", "t_ready", "t_end"):
        df[c] = (df[c] - origin) * scale
    df["wait_us"] = df["t_ready"] - df["t_start"]
    df["run_us"] = df["t_end"] - df["t_ready"]
    return df


def op_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per op: count, summed run and wait time over programs, mean run time, and the bandwidth of the op's
    bytes over its summed run time per program (how fast one program streams while it runs that op)."""
    g = df.groupby("op", sort=False)
    out = pd.DataFrame({"n": g.size(), "run_us_sum": g["run_us"].sum(), "wait_us_sum": g["wait_us"].sum(),
                        "run_us_mean": g["run_us"].mean(), "bytes": g["bytes"].sum()})
    out["gb_s_per_program"] = out["bytes"] / out["run_us_sum"].where(out["run_us_sum"] > 0) / 1e3
    return out.sort_values("run_us_sum", ascending=False)


def stage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, op): the wall span from the first instruction's ready to the last one's end, the bytes, and
    the achieved bandwidth over that span (TB/s): which stage of which layer streams slowly."""
    g = df.groupby(["layer", "op"], sort=False)
    out = pd.DataFrame({"n": g.size(), "first_ready": g["t_ready"].min(), "last_end": g["t_end"].max(),
                        "bytes": g["bytes"].sum()})
    out["span_us"] = out["last_end"] - out["first_ready"]
    out["tb_s"] = out["bytes"] / out["span_us"].where(out["span_us"] > 0) / 1e6
    return out.reset_index()


def step_summary(df: pd.DataFrame) -> dict:
    """Span of the step, and the share of program-time spent running, waiting, or idle after the queue ran out."""
    span = float(df["t_end"].max() - df["t_start"].min())
    programs = df.groupby(["launch", "program"])
    n = programs.ngroups
    run, wait = float(df["run_us"].sum()), float(df["wait_us"].sum())
    ends = programs["t_end"].max()
    return {"span": span, "programs": n, "run_pct": 100 * run / (n * span), "wait_pct": 100 * wait / (n * span),
            "tail_pct": 100 * float((span - ends).sum()) / (n * span),
            "end_spread": float(ends.max() - ends.min())}


def plot_timeline(df: pd.DataFrame, path: str, title: str, unit: str = "us") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    df = df.copy()
    df["row"] = df.groupby(["launch", "program"]).ngroup() if df["launch"].nunique() > 1 else df["program"]
    n_rows = int(df["row"].max()) + 1
    fig, ax = plt.subplots(figsize=(14, max(4.0, min(16.0, 0.06 * n_rows + 2))))
    for op, part in df.groupby("op"):
        for row, bars in part.groupby("row"):
            ax.broken_barh(list(zip(bars["t_ready"], bars["run_us"])), (row - 0.4, 0.8),
                           facecolors=OP_COLORS.get(op, "black"), linewidth=0)
    waits = df[df["wait_us"] > 0]
    for row, bars in waits.groupby("row"):
        ax.broken_barh(list(zip(bars["t_start"], bars["wait_us"])), (row - 0.1, 0.2), facecolors="#c7c7c7",
                       linewidth=0)
    ax.set_ylim(-1, n_rows)
    ax.invert_yaxis()
    ax.set_xlabel("time since the step's first event (µs)" if unit == "us" else "logical clock (events)")
    ax.set_ylabel("program (launch-major)" if df["launch"].nunique() > 1 else "program")
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=c, label=op) for op, c in OP_COLORS.items() if op in set(df["op"])]
    handles.append(Patch(color="#c7c7c7", label="waiting on a counter"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def source_line(frame: pd.DataFrame, path: Optional[Path] = None) -> str:
    """Where a timeline table comes from, in a few words: "commit 1a2b3c4d-dirty (not a clean commit), measured
    2026-11-30". A table without the `git_sha` / `timestamp_utc` columns (written before they were recorded) says so,
    and names the commit that added `path` to the repository (git log), as an upper bound of its date."""
    from harness.results import is_clean_sha, short_sha

    if "git_sha" in frame.columns and "timestamp_utc" in frame.columns:
        sha = frame["git_sha"].iloc[0]
        day = pd.to_datetime(frame["timestamp_utc"].iloc[0], utc=True).strftime("%Y-%m-%d")
        return f"commit {short_sha(sha)}" + ("" if is_clean_sha(sha) else " (not a clean commit)") + f", measured {day}"
    added = _added_in(path) if path is not None else None
    return "commit and date not recorded" + (f" (table added in {added})" if added else "")


def _added_in(path: Path) -> Optional[str]:
    """"e2971010 on 2026-11-22": the commit that added `path` (None outside a git checkout or for an untracked file)."""
    import subprocess

    try:
        p = subprocess.run(["git", "-C", str(Path(path).parent), "log", "--diff-filter=A", "--format=%h %ad",
                            "--date=short", "--abbrev=8", "--", Path(path).name], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = p.stdout.split("\n") if p.returncode == 0 else []
    sha, _, day = (lines[-2] if len(lines) > 1 else "").partition(" ")  # the oldest: the commit that added it
    return f"{sha} on {day}" if sha else None


def clock_unit(df: pd.DataFrame) -> str:
    """The unit of a timeline table's clock: logical ticks under the CPU interpreter, µs on a GPU."""
    return "ticks" if str(df["gpu"].iloc[0]) == "cpu" else "us"


def timeline_title(df: pd.DataFrame, path: Optional[Path] = None) -> str:
    """The plot's title, from the table alone: point, GPU, commit and date, the step's summary, the tiles."""
    s = step_summary(df)
    unit = clock_unit(df)
    per_sm = (f" ({int(df['programs_per_sm'].iloc[0])}/SM, {df['regs'].iloc[0] or '-'} regs)"
              if {"programs_per_sm", "regs"} <= set(df.columns) else "")
    return (f"megakernel timeline, {df['point'].iloc[0]} - {df['gpu'].iloc[0]}, {source_line(df, path)}\n"
            f"step {s['span']:.1f} {unit}, {s['programs']} programs{per_sm}: running {s['run_pct']:.0f}%, waiting "
            f"{s['wait_pct']:.0f}%, done early {s['tail_pct']:.0f}%\n{df['tiles'].iloc[0]}")


def replot(paths: list[str]) -> list[Path]:
    """Redraws <table>.png next to every timeline table under `paths` (files or folders), title from the table."""
    tables = [t for p in map(Path, paths) for t in (sorted(p.glob("**/*.parquet")) if p.is_dir() else [p])]
    for t in tables:
        df = pd.read_parquet(t)
        plot_timeline(df, str(t.with_suffix(".png")), timeline_title(df, t), clock_unit(df))
        print(f"wrote {t.with_suffix('.png')}")
    return [t.with_suffix(".png") for t in tables]


def record(cfg, steps: int = 5):
    """Builds the point of `cfg` and a timeline megakernel for it; runs `steps` steps; returns (frame, mk, point)."""
    import torch

    from harness.config import validate
    from harness.impls import REGISTRY
    from harness.runner import pick_device, prepare_point
    from harness.impls.megakernel import runtime_from_config

    spec = validate(cfg, list(REGISTRY))
    device = pick_device(cfg.bench.device)
    pt = prepare_point(cfg, spec, device)
    mk = runtime_from_config(cfg, pt.weights, pt.cache, timeline=True)
    for _ in range(steps):
        mk.decode(pt.tokens, pt.positions)
    mk.check()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timeline_frame(mk), mk, pt


def main(overrides: Optional[list[str]] = None) -> None:
    from harness.cli import compose
    from harness.errors import ConfigError
    from harness.results import git_sha
    from kernels import gpu_slug

    args = sys.argv[1:] if overrides is None else list(overrides)
    if args[:1] == ["--replot"]:
        from harness.results import REPO_ROOT
        replot(args[1:] or [str(REPO_ROOT / "results" / "timelines")])
        return
    cfg = compose(overrides, __doc__)
    try:
        df, mk, pt = record(cfg)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")
    import torch

    gpu = torch.cuda.get_device_name(mk.device) if mk.device.type == "cuda" else "cpu"
    b = cfg.bench
    name = f"{cfg.model.name}-{cfg.quant.name}-b{b.batch}-ctx{b.ctx}-{cfg.fusion}"
    if mk.backend != "triton":  # the backend that ran (megakernel.backend=auto resolved); triton: no suffix, as before
        name += f"-{mk.backend}"
    out_dir = Path(cfg.results.dir) / "timelines" / gpu_slug(gpu)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = df.assign(gpu=gpu, point=name, tiles=mk.tiles_summary(), git_sha=git_sha(),
                   timestamp_utc=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
                   programs_per_sm=mk.programs_per_sm, regs=mk.n_regs or 0)
    df.to_parquet(out_dir / f"{name}.parquet", index=False)
    title = timeline_title(df)
    plot_timeline(df, str(out_dir / f"{name}.png"), title, clock_unit(df))
    pd.set_option("display.width", 200)
    print(title)
    print(op_summary(df).round(2).to_string())
    st = stage_summary(df)
    print("\nper stage, first two layers and the LM head:")
    print(st[(st["layer"] <= 1) | (st["op"].isin(["LmHead", "Argmax"]))].round(3).to_string(index=False))
    print(f"\nwrote {out_dir / name}.parquet and .png")


if __name__ == "__main__":
    from harness import use_interpreter_without_gpu

    use_interpreter_without_gpu()
    main()
