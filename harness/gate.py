"""Regression gate: the newest rows of a results table against a committed baseline, per GPU.

    python -m harness.gate --results results --baselines results/baselines [--gpu SLUG] [--strict] [--only K=V,..]
    python -m harness.gate --refresh --results results --baselines results/baselines [--gpu SLUG]

A point is what was measured: GPU (slug of gpu_name), model, quant, group size, batch, ctx, impl, fusion and,
for the megakernel, the backend that ran (column `mega_backend`, never "auto"; absent or empty = "triton", the only
backend there was before the column; no label suffix for it).
The results tag is NOT part of it: the same point measured under another tag is the same point.
Several runs of one point on one side: the newest run at a clean commit (git_sha without "-dirty") wins;
a point never measured at a clean commit takes its newest run. Newest = latest `timestamp_utc`.

Compares same-run ratios only (they cancel most of what differs between two sessions on one GPU):
`pct_of_copy_bw` and `speedup_over_torch_compile` (where the run measured torch-compile too). A point
regresses when ANY of them drops beyond its threshold. Threshold (`--threshold auto`), per point and metric:

    spread    = (latency_us_p90 - latency_us_p10) / (2 * latency_us_median) of the row (harness.analysis);
                for the speedup, sqrt(spread(row)^2 + spread(torch-compile row of that run)^2)
    threshold = min_threshold + K * sqrt(spread_baseline^2 + spread_current^2)     K = 2, min_threshold = 3 %
    delta     = current / baseline - 1                REGRESSION if delta < -threshold

`--threshold 0.05` fixes it at 5 % instead. Only a GPU's own baseline, <baselines>/<gpu-slug>.parquet, is used.

Exit status: 1 when a point regresses or a point that was ok is now wrong/failed/unsupported (or, with --strict,
a baseline point is missing or the GPU has no baseline); every failing point is named on a line of its own
starting "FAIL". 0 otherwise (a GPU without a baseline passes with a message unless --strict). 2 for a usage
error (a missing folder, no rows to compare, a bad option), with one sentence saying what to change.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from harness import analysis as A
from harness.errors import ConfigError
from harness.results import is_clean_sha, load_results  # noqa: F401 - is_clean_sha: G.is_clean_sha for callers
from kernels import gpu_slug

METRICS = ("pct_of_copy_bw", A.speedup_column(A.DEFAULT_REFERENCE))
METRIC_LABELS = {"pct_of_copy_bw": "%copy", A.speedup_column(A.DEFAULT_REFERENCE): "x compile"}
NOISE_K = 2.0  # threshold = floor + K x combined relative noise of both sides ...
MIN_THRESHOLD = 0.03  # ... the floor: drift between sessions on one GPU that a row's own p10..p90 cannot see
# Which megakernel ran, where a row says so; rows without the column ran the only backend there was, "triton": the
# backend an unrecorded row counts as, and the one labels leave unsaid. Not the configuration's default
# (megakernel.backend=auto, harness.config): rows record the backend auto resolved to.
MEGA_BACKEND_COLUMN = "mega_backend"
DEFAULT_MEGA_BACKEND = "triton"
# Identity of a point for the gate (not harness.results.POINT_KEY_FIELDS: that one has `tag`, which names a
# sweep, not what was measured; keying on it let re-tagged rows pass as "new").
GATE_POINT_FIELDS = ("gpu_slug", "model", "quant", "group_size", "batch", "ctx", "impl", "fusion",
                     MEGA_BACKEND_COLUMN)
ONLY_FIELDS = GATE_POINT_FIELDS[1:]  # --only selects within a GPU; --gpu picks the GPU
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
    source: str = ""  # which rows were compared (tag, date, commit of each side): printed for failing points


# ---------------------------------------------------------------------------------------------- point identity

def _ident(v):
    """A comparable form of a key value: NaN/NA/None/"" -> None, 128.0 -> 128, numpy scalars -> Python."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):  # not a scalar: kept as it is
        return v
    if isinstance(v, str) and not v.strip():
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def mega_backend(r: Mapping) -> Optional[str]:
    """The megakernel backend of a row (DEFAULT_MEGA_BACKEND when unrecorded); None for other impls."""
    if r.get("impl") != "megakernel":
        return None
    b = _ident(r.get(MEGA_BACKEND_COLUMN))
    return DEFAULT_MEGA_BACKEND if b is None else str(b)


def _fields(r: Mapping) -> dict:
    out = {f: _ident(r.get(f)) for f in GATE_POINT_FIELDS}
    out["gpu_slug"] = gpu_slug(r.get("gpu_name"))
    out[MEGA_BACKEND_COLUMN] = mega_backend(r)
    return out


def gate_key(r: Mapping) -> str:
    """The gate's identity of a row's point (GATE_POINT_FIELDS) as one string."""
    return json.dumps([_fields(r)[f] for f in GATE_POINT_FIELDS], default=str)


def point_label(r: Mapping) -> str:
    """"llama1b bf16 b1 ctx1024 megakernel/model": no tag (not part of a point), the backend if not
    DEFAULT_MEGA_BACKEND ("... megakernel/model backend=gluon")."""
    label = A.point_label({**r, "tag": None})
    b = mega_backend(r)
    return label + (f" backend={b}" if b not in (None, DEFAULT_MEGA_BACKEND) else "")


def select_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per point (gate_key): the newest clean-commit row, else the newest row.

    Newest = latest `timestamp_utc`; rows without one count as oldest; a tie goes to the later row in `df`.
    """
    if df.empty:
        return df.assign(gate_key=pd.Series(dtype=str))
    df = df.assign(gate_key=[gate_key(r) for r in df.to_dict("records")])
    clean = df["git_sha"].map(is_clean_sha) if "git_sha" in df.columns else pd.Series(False, index=df.index)
    order = (df.assign(_clean=clean.to_numpy(), _ts=A.timestamps(df), _pos=np.arange(len(df)))
             .sort_values(["_clean", "_ts", "_pos"], na_position="first", kind="stable"))
    keep = ~order["gate_key"].duplicated(keep="last")
    return order[keep].sort_values("_pos").drop(columns=["_clean", "_ts", "_pos"]).reset_index(drop=True)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Same-run ratios on every row (before choosing: a ratio belongs to its run), then one row per point."""
    if df.empty:
        return select_runs(df)
    return select_runs(A.add_same_run_ratios(df))


def parse_only(specs: Sequence[str]) -> dict[str, set[str]]:
    """["model=llama1b", "quant=bf16,int4"] -> {"model": {"llama1b"}, "quant": {"bf16", "int4"}}."""
    out: dict[str, set[str]] = {}
    for s in specs:
        name, sep, values = s.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--only {s!r}: write FIELD=VALUE[,VALUE...], e.g. --only quant=bf16,int4")
        if name not in ONLY_FIELDS:
            raise ConfigError(f"--only {s!r}: FIELD must be one of {', '.join(ONLY_FIELDS)}")
        if name in out:
            raise ConfigError(f"--only {name} is given twice; list every value in one: --only {name}=A,B")
        out[name] = {v.strip() for v in values.split(",") if v.strip()}
    return out


def apply_only(df: pd.DataFrame, only: Mapping[str, set[str]]) -> pd.DataFrame:
    """The rows whose point matches every --only field (values compared as text: batch 1 matches "1")."""
    if df.empty or not only:
        return df
    def match(r):
        f = _fields(r)
        # mega_backend has no value outside the megakernel's rows: selecting a backend keeps the references
        return all(str(f[k]) in v or (k == MEGA_BACKEND_COLUMN and f[k] is None) for k, v in only.items())
    keep = [match(r) for r in df.to_dict("records")]
    return df[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- comparison

def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def threshold_for(spread_base: float, spread_cur: float, k: float = NOISE_K, floor: float = MIN_THRESHOLD) -> float:
    """floor + k * sqrt(spread_base^2 + spread_cur^2); a side without a spread contributes nothing."""
    parts = [x for x in (spread_base, spread_cur) if not math.isnan(x)]
    return floor + k * math.sqrt(sum(x * x for x in parts))


def _short_sha(sha) -> str:
    sha = str(sha or "")
    return (sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")) if sha else "no sha"


def _source(b: Mapping, c: Mapping) -> str:
    def one(r):
        return f"tag {r.get('tag')}, {str(r.get('timestamp_utc') or '?')[:10]}, {_short_sha(r.get('git_sha'))}"
    return f"current: {one(c)}; baseline: {one(b)}"


def compare(baseline: pd.DataFrame, current: pd.DataFrame, threshold: str | float = "auto",
            min_threshold: float = MIN_THRESHOLD) -> list[PointVerdict]:
    """Verdicts for every point of `baseline` and `current` (both as `prepare` returns them: one row per point)."""
    base = {r["gate_key"]: r for r in baseline.to_dict("records")} if not baseline.empty else {}
    cur = {r["gate_key"]: r for r in current.to_dict("records")} if not current.empty else {}
    keys = sorted(set(base) | set(cur), key=lambda k: point_label(base.get(k) or cur[k]))
    out = []
    for k in keys:
        b, c = base.get(k), cur.get(k)
        label = point_label(b or c)
        if c is None:
            out.append(PointVerdict(label, MISSING, note="in the baseline, not in the current rows"))
            continue
        if b is None:
            out.append(PointVerdict(label, NEW, note="not in the baseline"))
            continue
        source = _source(b, c)
        b_ok, c_ok = b.get("status") in A.MEASURED_STATUSES, c.get("status") in A.MEASURED_STATUSES
        if b.get("status") == "ok" and c.get("status") != "ok":
            note = str(c.get("note") or "")[:120]
            note = f"status ok -> {c.get('status')}" + (f": {note}" if note else "")
            out.append(PointVerdict(label, BROKEN, note=note, source=source))
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
                t = threshold_for(_num(b.get(A.spread_column(m))), _num(c.get(A.spread_column(m))), floor=min_threshold)
            else:
                t = float(threshold)
            d = cv / bv - 1.0
            deltas.append(MetricDelta(m, bv, cv, d, t, REGRESSION if d < -t else IMPROVED if d > t else SAME))
        if not deltas:
            out.append(PointVerdict(label, NOT_MEASURED, note="no ratio to compare"))
            continue
        # ANY regressed metric fails the point: a kernel can lose % of copy bandwidth while its speedup holds
        # (the reference slowed too) or the reverse.
        verdict = REGRESSION if any(d.verdict == REGRESSION for d in deltas) else \
            IMPROVED if any(d.verdict == IMPROVED for d in deltas) else SAME
        note = "throttled while measured" if str(c.get("tel_throttled")).lower() == "true" else ""
        if c.get("status") == "wrong":
            note = (note + "; " if note else "") + "output wrong"
        out.append(PointVerdict(label, verdict, deltas, note, source))
    return out


def format_verdict(p: PointVerdict, width: int) -> str:
    parts = []
    for d in p.deltas:
        parts.append(f"{METRIC_LABELS.get(d.metric, d.metric)} {d.baseline:7.3f} -> {d.current:7.3f} "
                     f"({d.delta * 100:+6.1f}% vs ±{d.threshold * 100:4.1f}%)")
    body = "   ".join(parts)
    note = f"  ({p.note})" if p.note else ""
    return f"  {p.label:<{width}}  {body}{'   ' if body else ''}{p.verdict}{note}"


def failure_line(slug: str, p: PointVerdict) -> str:
    """One line naming a failing point and why."""
    if p.verdict == REGRESSION:
        why = ", ".join(f"{METRIC_LABELS.get(d.metric, d.metric)} {d.baseline:.3f} -> {d.current:.3f} "
                        f"({d.delta * 100:+.1f}%, threshold -{d.threshold * 100:.1f}%)"
                        for d in p.deltas if d.verdict == REGRESSION)
    else:
        why = p.note
    return f"FAIL {slug} {p.label}: {p.verdict} {why}" + (f" [{p.source}]" if p.source else "")


# ---------------------------------------------------------------------------------------------- files

def _baseline_path(baselines: Path, slug: str) -> Path:
    return baselines / f"{slug}.parquet"


def _load_baseline(path: Path, slug: str, say: Callable[[str], None]) -> pd.DataFrame:
    df = pd.read_parquet(path)
    if df.empty:
        return select_runs(df)
    slugs = [gpu_slug(g) for g in df.get("gpu_name", pd.Series(["unknown"] * len(df)))]
    other = [s for s in slugs if s != slug]
    if other:
        say(f"baseline {path}: {len(other)} rows of other GPUs ({', '.join(sorted(set(other)))}) ignored")
        df = df[[s == slug for s in slugs]].reset_index(drop=True)
    if "run_id" not in df.columns:  # a baseline written by hand: treat each row as its own run
        df["run_id"] = [f"baseline-{i}" for i in range(len(df))]
    # Ratios were computed when the baseline was written, from the rows of each row's own run (which the
    # baseline may no longer hold); recompute only where a file lacks them.
    if any(m not in df.columns for m in METRICS):
        df = A.add_same_run_ratios(df)
    return select_runs(df)


def _load_rows(results: Path) -> pd.DataFrame:
    if not results.is_dir():
        raise ConfigError(f"--results {results} is not a folder; give the results root (it holds <gpu-slug>/*.parquet)")
    rows = load_results(results)
    if rows.empty:
        raise ConfigError(f"--results {results} holds no result rows (<gpu-slug>/*.parquet); measure first with run.py")
    return A.with_gpu_slug(rows)


def resolve_gpu(df: pd.DataFrame, name: str, what: Optional[str] = None) -> str:
    """The GPU slug `name` means: its slug if rows have it, else the one slug that contains it ("h100").
    `what` names the option in an error (default "--gpu NAME")."""
    what = what or f"--gpu {name}"
    slugs = sorted(set(df["gpu_slug"]))
    want = gpu_slug(name)
    if want in slugs:
        return want
    hits = [s for s in slugs if want in s]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ConfigError(f"{what} matches several GPUs ({', '.join(hits)}); give the full slug")
    raise ConfigError(f"{what} matches no GPU with rows here; GPUs there: {', '.join(slugs)}")


# ---------------------------------------------------------------------------------------------- commands

def gate(results: str | os.PathLike, baselines: str | os.PathLike, gpu: Optional[str] = None,
         threshold: str | float = "auto", min_threshold: float = MIN_THRESHOLD, strict: bool = False,
         only: Optional[Mapping[str, set[str]]] = None, say: Callable[[str], None] = print) -> int:
    """Prints the report; returns the exit status (0 pass, 1 fail). Raises ConfigError on a usage error."""
    results, baselines = Path(results), Path(baselines)
    if not baselines.is_dir():
        raise ConfigError(f"--baselines {baselines} is not a folder; give the folder of <gpu-slug>.parquet baselines")
    only = dict(only or {})
    rows = apply_only(_load_rows(results), only)
    slug_filter = (resolve_gpu(rows, gpu) if not rows.empty else gpu_slug(gpu)) if gpu else None
    if slug_filter:
        rows = rows[rows["gpu_slug"] == slug_filter]
    if rows.empty:
        sel = " ".join([f"--gpu {slug_filter}"] * bool(slug_filter) +
                       [f"--only {k}={','.join(sorted(v))}" for k, v in only.items()])
        raise ConfigError(f"no rows under {results} match {sel}; check the GPU slug and --only values")
    slugs = sorted(set(rows["gpu_slug"]))
    for p in sorted(baselines.glob("*.parquet")):
        if p.stem not in slugs:
            why = f"--gpu {slug_filter}" if slug_filter else "no current rows for that GPU"
            say(f"baseline {p} ignored: GPU {p.stem} is not compared ({why})")
    failures: list[str] = []
    for slug in slugs:
        path = _baseline_path(baselines, slug)
        if not path.is_file():
            msg = (f"GPU {slug}: no baseline {path}; nothing to compare (write one with "
                   f"`python -m harness.gate --refresh --results {results} --baselines {baselines} --gpu {slug}`)")
            say(msg)
            if strict:
                failures.append(f"FAIL {slug}: no baseline {path} (--strict)")
            continue
        base = apply_only(_load_baseline(path, slug, say), only)
        cur = prepare(rows[rows["gpu_slug"] == slug].drop(columns="gpu_slug"))
        verdicts = compare(base, cur, threshold, min_threshold)
        how = (f"auto: {min_threshold:.0%} + {NOISE_K:g} x noise" if threshold == "auto"
               else f"fixed ±{float(threshold):.1%}")
        say(f"GPU {slug}: baseline {path} ({len(base)} points, measured {A.measurement_dates(base) or '-'}) vs "
            f"{results} ({len(cur)} points, measured {A.measurement_dates(cur) or '-'}); threshold {how}")
        width = max((len(v.label) for v in verdicts), default=10)
        for v in verdicts:
            say(format_verdict(v, width))
        counts = {k: sum(v.verdict == k for v in verdicts) for k in (REGRESSION, BROKEN, IMPROVED, SAME, MISSING,
                                                                      NEW, NOT_MEASURED)}
        failing = [v for v in verdicts if v.verdict in FAILING or (strict and v.verdict == MISSING)]
        failures += [failure_line(slug, v) for v in failing]
        say(f"GPU {slug}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) +
            (" -> FAIL" if failing else " -> pass") +
            ("" if strict or not counts[MISSING] else " (missing points fail only with --strict)"))
    for line in failures:
        say(line)
    return 1 if failures else 0


def refresh(results: str | os.PathLike, baselines: str | os.PathLike, gpu: Optional[str] = None,
            say: Callable[[str], None] = print) -> list[Path]:
    """Writes <baselines>/<gpu-slug>.parquet from the rows the gate would compare (every GPU but cpu, or `gpu`)."""
    results, baselines = Path(results), Path(baselines)
    rows = _load_rows(results)
    slugs = [resolve_gpu(rows, gpu)] if gpu else sorted(s for s in set(rows["gpu_slug"]) if s != "cpu")
    written = []
    for slug in slugs:
        cur = rows[rows["gpu_slug"] == slug].drop(columns="gpu_slug")
        if cur.empty:
            raise ConfigError(f"no rows of GPU {slug} under {results}; no baseline written (check --gpu)")
        chosen = prepare(cur)
        baselines.mkdir(parents=True, exist_ok=True)
        path = _baseline_path(baselines, slug)
        tmp = path.with_name(f".{path.name}.tmp")
        chosen.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        shas = sorted({str(s) for s in chosen.get("git_sha", pd.Series(dtype=str)).dropna() if str(s)})
        say(f"wrote {path}: {len(chosen)} points of GPU {slug}, measured {A.measurement_dates(chosen)}"
            f"{', git ' + ', '.join(_short_sha(s) for s in shas) if shas else ''}; review it, then `git add {path}`")
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
    p = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 pass, 1 a point regressed (each named on a FAIL line), "
                                       "2 usage error. Details: docs/figures.md, 'The regression gate'.")
    p.add_argument("--results", default="results", help="results root (<root>/<gpu-slug>/*.parquet)")
    p.add_argument("--baselines", default="results/baselines", help="folder of <gpu-slug>.parquet baselines")
    p.add_argument("--gpu", default=None, help="compare only this GPU (name or slug)")
    p.add_argument("--threshold", type=_threshold, default="auto", help="auto (from measured noise) or e.g. 0.05")
    p.add_argument("--min-threshold", type=float, default=MIN_THRESHOLD, help="floor of the auto threshold")
    p.add_argument("--strict", action="store_true",
                   help="a baseline point missing from the results, or a GPU without a baseline, fails")
    p.add_argument("--only", action="append", default=[], metavar="FIELD=V[,V]",
                   help="compare only points with these values (both sides; repeatable); "
                        f"FIELD: {', '.join(ONLY_FIELDS)}")
    p.add_argument("--refresh", action="store_true", help="write the baseline(s) from the rows the gate would compare")
    a = p.parse_args(argv)
    try:
        if a.refresh:
            if a.only:
                raise ConfigError("--only does not go with --refresh: a baseline holds every point of its GPU")
            refresh(a.results, a.baselines, a.gpu)
            return 0
        return gate(a.results, a.baselines, a.gpu, a.threshold, a.min_threshold, a.strict, parse_only(a.only))
    except ConfigError as e:
        print(f"harness.gate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
