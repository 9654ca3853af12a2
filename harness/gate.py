"""Regression gate: the latest rows of a results table against a committed baseline, per GPU.

    python -m harness.gate --results results --baselines results/baselines [--gpu SLUG] [--threshold auto]
    python -m harness.gate --refresh --results results --baselines results/baselines [--gpu SLUG]

Compares same-run ratios only (they cancel most of what differs between two sessions on one GPU):
`pct_of_copy_bw` and `speedup_over_torch_compile` (where the run measured torch-compile too).
Only a GPU's own baseline, results/baselines/<gpu-slug>.parquet, is used; baselines of other GPUs
are ignored with a message. Threshold (`--threshold auto`), per point and metric:

    noise     = sqrt(spread_baseline^2 + spread_current^2), raised to the run-to-run relative std of
                the metric where the current table holds >= 3 runs of the point
    threshold = max(min_threshold, K * noise)        K = 2, min_threshold = 3 %
    delta     = current / baseline - 1               REGRESSION if delta < -threshold

spread = (p90 - p10) / (2 * median) of the row's latencies (harness.analysis); for a speedup, the
row's and its reference's spreads combined the same way. `--threshold 0.05` fixes it at 5 % instead.

Exit status: 1 when a point regresses or a point that was ok is now wrong/failed/unsupported (or,
with --strict, a baseline point is missing); 0 otherwise, including when no baseline exists for the
GPU (a message says so); 2 for a usage error.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from harness import analysis as A
from harness.results import load_results
from kernels import gpu_slug

METRICS = ("pct_of_copy_bw", A.speedup_column(A.DEFAULT_REFERENCE))
METRIC_LABELS = {"pct_of_copy_bw": "%copy", A.speedup_column(A.DEFAULT_REFERENCE): "x compile"}
NOISE_K = 2.0  # threshold = K x combined relative noise ...
MIN_THRESHOLD = 0.03  # ... but never below 3 %: run-to-run clock and thermal drift on one GPU
REGRESSION, IMPROVED, SAME, BROKEN, MISSING, NEW, NOT_MEASURED = (
    "REGRESSION", "improved", "ok", "BROKEN", "missing", "new", "not measured")
FAILING = (REGRESSION, BROKEN)


@dataclass
class MetricDelta:
    metric: str
    baseline: float
    current: float
    delta: float  # relative: current / baseline - 1
    threshold: float  # relative
    verdict: str


@dataclass
class PointVerdict:
    label: str
    verdict: str
    deltas: list[MetricDelta] = field(default_factory=list)
    note: str = ""


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Same-run ratios on every row, then the newest row per point."""
    if df.empty:
        return df
    return A.latest(A.add_same_run_ratios(A.with_point_key(df)))


def _num(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def threshold_for(spread_base: float, spread_cur: float, run_to_run: float = math.nan,
                  k: float = NOISE_K, floor: float = MIN_THRESHOLD) -> float:
    """max(floor, k * noise), noise = sqrt(spread_base^2 + spread_cur^2) raised to `run_to_run`."""
    parts = [x for x in (spread_base, spread_cur) if not math.isnan(x)]
    noise = math.sqrt(sum(x * x for x in parts)) if parts else 0.0
    if not math.isnan(run_to_run):
        noise = max(noise, run_to_run)
    return max(floor, k * noise)


def compare(baseline: pd.DataFrame, current: pd.DataFrame, threshold: str | float = "auto",
            min_threshold: float = MIN_THRESHOLD, history: Optional[pd.DataFrame] = None) -> list[PointVerdict]:
    """Verdicts for every point of `baseline` and `current` (both as `prepare` returns them).

    history: all rows of the current table (for the run-to-run spread of repeated points).
    """
    run_spread = {m: A.run_to_run_spread(A.add_same_run_ratios(history), m) for m in METRICS} \
        if history is not None and not history.empty else {}
    base = {r["point_key"]: r for r in baseline.to_dict("records")} if not baseline.empty else {}
    cur = {r["point_key"]: r for r in current.to_dict("records")} if not current.empty else {}
    keys = sorted(set(base) | set(cur), key=lambda k: A.point_label(base.get(k) or cur[k]))
    out = []
    for k in keys:
        b, c = base.get(k), cur.get(k)
        label = A.point_label(b or c)
        if c is None:
            out.append(PointVerdict(label, MISSING, note="in the baseline, not in the current rows"))
            continue
        if b is None:
            out.append(PointVerdict(label, NEW, note="not in the baseline"))
            continue
        b_ok, c_ok = b.get("status") in A.MEASURED_STATUSES, c.get("status") in A.MEASURED_STATUSES
        if b.get("status") == "ok" and c.get("status") != "ok":
            note = str(c.get("note") or "")[:120]
            out.append(PointVerdict(label, BROKEN, note=f"status ok -> {c.get('status')}" + (f": {note}" if note else "")))
            continue
        if not (b_ok and c_ok):
            out.append(PointVerdict(label, NOT_MEASURED, note=f"status {b.get('status')} -> {c.get('status')}"))
            continue
        deltas = []
        for m in METRICS:
            if m == A.speedup_column(str(c.get("impl"))):
                continue  # the reference over itself: 1 by definition
            bv, cv = _num(b.get(m)), _num(c.get(m))
            if math.isnan(bv) or math.isnan(cv) or bv <= 0:
                continue
            if threshold == "auto":
                t = threshold_for(_num(b.get(A.spread_column(m))), _num(c.get(A.spread_column(m))),
                                  _num(run_spread.get(m, pd.Series(dtype=float)).get(k)), floor=min_threshold)
            else:
                t = float(threshold)
            d = cv / bv - 1.0
            v = REGRESSION if d < -t else IMPROVED if d > t else SAME
            deltas.append(MetricDelta(m, bv, cv, d, t, v))
        if not deltas:
            out.append(PointVerdict(label, NOT_MEASURED, note="no ratio to compare"))
            continue
        verdict = REGRESSION if any(d.verdict == REGRESSION for d in deltas) else \
            IMPROVED if any(d.verdict == IMPROVED for d in deltas) else SAME
        note = "throttled while measured" if str(c.get("tel_throttled")).lower() == "true" else ""
        if c.get("status") == "wrong":
            note = (note + "; " if note else "") + "output wrong"
        out.append(PointVerdict(label, verdict, deltas, note))
    return out


def format_verdict(p: PointVerdict, width: int) -> str:
    parts = []
    for d in p.deltas:
        parts.append(f"{METRIC_LABELS.get(d.metric, d.metric)} {d.baseline:7.3f} -> {d.current:7.3f} "
                     f"({d.delta * 100:+6.1f}% vs ±{d.threshold * 100:4.1f}%)")
    body = "   ".join(parts)
    note = f"  ({p.note})" if p.note else ""
    return f"  {p.label:<{width}}  {body}{'   ' if body else ''}{p.verdict}{note}"


def _baseline_path(baselines: Path, slug: str) -> Path:
    return baselines / f"{slug}.parquet"


def _load_baseline(path: Path, slug: str, say: Callable[[str], None]) -> pd.DataFrame:
    df = pd.read_parquet(path)
    if df.empty:
        return df
    slugs = [gpu_slug(g) for g in df.get("gpu_name", pd.Series(["unknown"] * len(df)))]
    other = [s for s in slugs if s != slug]
    if other:
        say(f"baseline {path}: {len(other)} rows of other GPUs ({', '.join(sorted(set(other)))}) ignored")
        df = df[[s == slug for s in slugs]].reset_index(drop=True)
    if "run_id" not in df.columns:  # a baseline written by hand: treat each row as its own run
        df["run_id"] = [f"baseline-{i}" for i in range(len(df))]
    # Ratios were computed when the baseline was written (from rows of the same run); recompute only if absent.
    if any(m not in df.columns for m in METRICS):
        df = A.add_same_run_ratios(df)
    return A.latest(A.with_point_key(df))


def gate(results: str | os.PathLike, baselines: str | os.PathLike, gpu: Optional[str] = None,
         threshold: str | float = "auto", min_threshold: float = MIN_THRESHOLD, strict: bool = False,
         say: Callable[[str], None] = print) -> int:
    """Prints the report; returns the exit status (0 pass, 1 regression)."""
    results, baselines = Path(results), Path(baselines)
    rows = load_results(results)
    slug_filter = gpu_slug(gpu) if gpu else None
    if not rows.empty:
        rows = A.with_gpu_slug(rows)
    current_slugs = sorted(set(rows["gpu_slug"])) if not rows.empty else []
    base_files = {p.stem: p for p in sorted(baselines.glob("*.parquet"))} if baselines.is_dir() else {}
    slugs = [slug_filter] if slug_filter else current_slugs
    for s, p in base_files.items():
        if s not in slugs:
            why = f"--gpu {slug_filter}" if slug_filter else "no current rows for that GPU"
            say(f"baseline {p} ignored: GPU {s} is not compared ({why})")
    if not slugs:
        say(f"no result rows under {results}; nothing to compare")
        return 0
    status = 0
    for slug in slugs:
        cur_all = rows[rows["gpu_slug"] == slug].drop(columns="gpu_slug") if not rows.empty else rows
        path = _baseline_path(baselines, slug)
        if not path.is_file():
            say(f"GPU {slug}: no baseline {path}; nothing to compare (write one with "
                f"`python -m harness.gate --refresh --results {results} --baselines {baselines} --gpu {slug}`)")
            continue
        base = _load_baseline(path, slug, say)
        cur = prepare(cur_all)
        verdicts = compare(base, cur, threshold, min_threshold, history=cur_all)
        how = (f"auto: max({min_threshold:.0%}, {NOISE_K:g} x noise)" if threshold == "auto"
               else f"fixed ±{float(threshold):.1%}")
        say(f"GPU {slug}: baseline {path} ({len(base)} points, measured {A.measurement_dates(base) or '?'}) vs "
            f"{results} ({len(cur)} points, measured {A.measurement_dates(cur) or '-'}); threshold {how}")
        width = max((len(v.label) for v in verdicts), default=10)
        for v in verdicts:
            say(format_verdict(v, width))
        counts = {k: sum(v.verdict == k for v in verdicts) for k in (REGRESSION, BROKEN, IMPROVED, SAME, MISSING,
                                                                      NEW, NOT_MEASURED)}
        failed = counts[REGRESSION] + counts[BROKEN] + (counts[MISSING] if strict else 0)
        say(f"GPU {slug}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) +
            (" -> FAIL" if failed else " -> pass") + ("" if strict or not counts[MISSING] else
                                                      " (missing points fail only with --strict)"))
        if failed:
            status = 1
    return status


def refresh(results: str | os.PathLike, baselines: str | os.PathLike, gpu: Optional[str] = None,
            say: Callable[[str], None] = print) -> list[Path]:
    """Writes <baselines>/<gpu-slug>.parquet from the current latest rows (every GPU but cpu, or `gpu`)."""
    results, baselines = Path(results), Path(baselines)
    rows = load_results(results)
    if rows.empty:
        say(f"no result rows under {results}; no baseline written")
        return []
    rows = A.with_gpu_slug(rows)
    slugs = [gpu_slug(gpu)] if gpu else sorted(s for s in set(rows["gpu_slug"]) if s != "cpu")
    written = []
    for slug in slugs:
        cur = rows[rows["gpu_slug"] == slug].drop(columns="gpu_slug")
        if cur.empty:
            say(f"GPU {slug}: no rows under {results}; no baseline written")
            continue
        latest = prepare(cur)
        baselines.mkdir(parents=True, exist_ok=True)
        path = _baseline_path(baselines, slug)
        tmp = path.with_name(f".{path.name}.tmp")
        latest.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        shas = sorted({str(s) for s in latest.get("git_sha", pd.Series(dtype=str)).dropna() if str(s)})
        say(f"wrote {path}: {len(latest)} points of GPU {slug}, measured {A.measurement_dates(latest)}"
            f"{', git ' + ', '.join(s[:12] for s in shas) if shas else ''}; review it, then `git add {path}`")
        written.append(path)
    return written


def _threshold(s: str) -> str | float:
    if s == "auto":
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold {s!r}: give auto or a relative number such as 0.05") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"--threshold {s}: give a relative threshold between 0 and 1, e.g. 0.05")
    return v


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results root (<root>/<gpu-slug>/*.parquet)")
    p.add_argument("--baselines", default="results/baselines", help="folder of <gpu-slug>.parquet baselines")
    p.add_argument("--gpu", default=None, help="compare only this GPU (name or slug)")
    p.add_argument("--threshold", type=_threshold, default="auto", help="auto (from measured noise) or e.g. 0.05")
    p.add_argument("--min-threshold", type=float, default=MIN_THRESHOLD, help="floor of the auto threshold")
    p.add_argument("--strict", action="store_true", help="a baseline point missing from the results fails")
    p.add_argument("--refresh", action="store_true", help="write the baseline(s) from the current latest rows")
    a = p.parse_args(argv)
    if a.refresh:
        return 0 if refresh(a.results, a.baselines, a.gpu) else 1
    return gate(a.results, a.baselines, a.gpu, a.threshold, a.min_threshold, a.strict)


if __name__ == "__main__":
    sys.exit(main())
