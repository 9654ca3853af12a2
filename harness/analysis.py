"""Pure functions over a results DataFrame (harness.results.load_results): no I/O, no plotting.

The order that keeps ratios honest: derive same-run ratios on ALL rows first (`add_same_run_ratios`,
joining the rows of one run on `run_id`), THEN keep the newest row per point (`latest`). A ratio is
a property of a row and the reference measured next to it, so re-measuring the reference alone later
never changes an older row's speedup.

Noise (used by the regression gate and shown as error bars):
  latency_rel_spread = (latency_us_p90 - latency_us_p10) / (2 * latency_us_median)
i.e. half the 10..90 % spread of one row's step latencies, relative to its median (1.28 sigma for
a normal distribution). A ratio metric M gets `M_rel_spread`: pct_of_copy_bw has the row's spread;
speedup_over_<ref> = latency(ref) / latency(row) has sqrt(spread(row)^2 + spread(ref)^2).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from harness.results import POINT_KEY_FIELDS, point_key
from kernels import gpu_slug

MEASURED_STATUSES = ("ok", "wrong")  # rows with a latency: ok, or timed but numerically wrong
DEFAULT_REFERENCE = "torch-compile"
# Identity of a point for figures: the point key without `tag`/`extra` (newest measurement wins).
FIGURE_POINT_FIELDS = ("gpu_name", "model", "quant", "group_size", "impl", "fusion", "batch", "ctx")
# Columns that describe a row in the long table.
ID_COLUMNS = ("gpu_name", "model", "quant", "group_size", "impl", "fusion", "batch", "ctx", "tag", "status",
              "timestamp_utc", "run_id", "point_key")


def speedup_column(ref: str) -> str:
    """Name of the same-run speedup column over `ref`: "torch-compile" -> "speedup_over_torch_compile"."""
    return "speedup_over_" + re.sub(r"[^0-9a-zA-Z]+", "_", ref).strip("_").lower()


def spread_column(metric: str) -> str:
    return f"{metric}_rel_spread"


def with_point_key(df: pd.DataFrame) -> pd.DataFrame:
    """`point_key` filled in where missing (rows written before it existed)."""
    df = df.copy()
    if "point_key" not in df.columns:
        df["point_key"] = None
    missing = df["point_key"].isna()
    if missing.any():
        df.loc[missing, "point_key"] = [point_key(r) for r in df.loc[missing].to_dict("records")]
    return df


def with_gpu_slug(df: pd.DataFrame) -> pd.DataFrame:
    """A `gpu_slug` column ("NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3")."""
    df = df.copy()
    df["gpu_slug"] = [gpu_slug(g) for g in df["gpu_name"]] if "gpu_name" in df.columns else "unknown"
    return df


def measured(df: pd.DataFrame, statuses: Sequence[str] = MEASURED_STATUSES) -> pd.DataFrame:
    """Rows whose status is in `statuses` (default ok and wrong: the rows that have a latency)."""
    if df.empty or "status" not in df.columns:
        return df.iloc[0:0].copy() if not df.empty else df.copy()
    return df[df["status"].isin(list(statuses))].reset_index(drop=True)


def timestamps(df: pd.DataFrame) -> pd.Series:
    """`timestamp_utc` as UTC datetimes (NaT where absent or unreadable).

    format="ISO8601": without it pandas infers one format from the first value and silently turns
    every row written with another precision (fractional seconds or not) into NaT.
    """
    if "timestamp_utc" not in df.columns:
        return pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    return pd.to_datetime(df["timestamp_utc"], utc=True, errors="coerce", format="ISO8601")


def latest(df: pd.DataFrame, by: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The newest row per point (by `timestamp_utc`; later files win ties).

    by: the columns that identify a point; default `point_key` (all POINT_KEY_FIELDS, tag included).
    """
    if df.empty:
        return df.copy()
    if by is None:
        df, by = with_point_key(df), ["point_key"]
    by = [c for c in by if c in df.columns]
    order = (df.assign(_ts=timestamps(df), _pos=np.arange(len(df)))
             .sort_values(["_ts", "_pos"], na_position="first", kind="stable"))
    keys = order[by].astype(object).where(order[by].notna(), "<na>")
    keep = ~keys.duplicated(keep="last")
    return order[keep].sort_values("_pos").drop(columns=["_ts", "_pos"]).reset_index(drop=True)


def add_spread(df: pd.DataFrame) -> pd.DataFrame:
    """`latency_rel_spread` and `pct_of_copy_bw_rel_spread` (see the module docstring)."""
    df = df.copy()
    if df.empty:
        return df
    need = {"latency_us_p10", "latency_us_p90", "latency_us_median"}
    if need <= set(df.columns):
        med = pd.to_numeric(df["latency_us_median"], errors="coerce")
        s = (pd.to_numeric(df["latency_us_p90"], errors="coerce") - pd.to_numeric(df["latency_us_p10"], errors="coerce"))
        df["latency_rel_spread"] = (s / (2 * med)).where(med > 0)
    else:
        df["latency_rel_spread"] = np.nan
    df[spread_column("pct_of_copy_bw")] = df["latency_rel_spread"]
    return df


def add_same_run_ratios(df: pd.DataFrame, refs: Iterable[str] = (DEFAULT_REFERENCE,)) -> pd.DataFrame:
    """For each ref impl: `speedup_over_<ref>` = latency(ref) / latency(row), ref from the SAME run.

    NaN where the row's run has no measured (ok/wrong) row of `ref`, or the row has no latency.
    Also adds the spread columns (`add_spread`) and `speedup_over_<ref>_rel_spread`.
    """
    df = add_spread(df)
    if df.empty:
        for ref in refs:
            df[speedup_column(ref)] = pd.Series(dtype=float)
        return df
    if "run_id" not in df.columns:
        raise ValueError("rows have no run_id; load them with harness.results.load_results (it derives one)")
    lat = pd.to_numeric(df.get("latency_us_median"), errors="coerce") if "latency_us_median" in df.columns \
        else pd.Series(np.nan, index=df.index)
    usable = df["status"].isin(MEASURED_STATUSES) if "status" in df.columns else lat.notna()
    for ref in refs:
        col = speedup_column(ref)
        ref_rows = df[(df["impl"] == ref) & usable & lat.notna()]
        ref_rows = ref_rows.drop_duplicates("run_id", keep="last")
        ref_lat = df["run_id"].map(pd.Series(lat[ref_rows.index].to_numpy(), index=ref_rows["run_id"].to_numpy()))
        ref_spread = df["run_id"].map(pd.Series(ref_rows["latency_rel_spread"].to_numpy(),
                                                index=ref_rows["run_id"].to_numpy()))
        df[col] = (ref_lat / lat).where(usable & (lat > 0))
        df[spread_column(col)] = np.sqrt(df["latency_rel_spread"] ** 2 + ref_spread ** 2).where(df[col].notna())
    return df


def tidy(df: pd.DataFrame, metrics: Sequence[str], id_columns: Sequence[str] = ID_COLUMNS) -> pd.DataFrame:
    """Long table for plotting: one row per (row, metric) with columns id_columns + metric, value, rel_spread."""
    metrics = [m for m in metrics if m in df.columns]
    ids = [c for c in id_columns if c in df.columns]
    if df.empty or not metrics:
        return pd.DataFrame(columns=[*ids, "metric", "value", "rel_spread"])
    parts = []
    for m in metrics:
        part = df[ids].copy()
        part["metric"] = m
        part["value"] = pd.to_numeric(df[m], errors="coerce")
        sc = spread_column(m)
        part["rel_spread"] = pd.to_numeric(df[sc], errors="coerce") if sc in df.columns else np.nan
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    return out[out["value"].notna()].reset_index(drop=True)


def measurement_dates(df: pd.DataFrame) -> str:
    """"2026-11-22", or "2026-11-20 to 2026-11-22" when the rows span several days ("" if none)."""
    if df.empty or "timestamp_utc" not in df.columns:
        return ""
    ts = timestamps(df).dropna()
    if ts.empty:
        return ""
    lo, hi = ts.min().strftime("%Y-%m-%d"), ts.max().strftime("%Y-%m-%d")
    return lo if lo == hi else f"{lo} to {hi}"


def quant_label(quant: str, group_size) -> str:
    """"int4" with its group size ("int4 g128"); other modes as they are."""
    if quant == "int4" and group_size is not None and not (isinstance(group_size, float) and math.isnan(group_size)):
        return f"int4 g{int(group_size)}"
    return str(quant)


def point_label(r: dict) -> str:
    """One readable line naming a point: "llama1b bf16 b1 ctx1024 megakernel/model [tag]"."""
    impl = r.get("impl", "?")
    fusion = r.get("fusion")
    if isinstance(fusion, str) and fusion not in ("", "none"):
        impl = f"{impl}/{fusion}"
    tag = r.get("tag")
    tag = f" [{tag}]" if isinstance(tag, str) and tag not in ("", "default") else ""
    return (f"{r.get('model', '?')} {quant_label(r.get('quant', '?'), r.get('group_size'))} "
            f"b{_int(r.get('batch'))} ctx{_int(r.get('ctx'))} {impl}{tag}")


def _int(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


__all__ = [
    "DEFAULT_REFERENCE", "FIGURE_POINT_FIELDS", "MEASURED_STATUSES", "POINT_KEY_FIELDS", "add_same_run_ratios",
    "add_spread", "latest", "measured", "measurement_dates", "point_label", "quant_label", "speedup_column",
    "spread_column", "tidy", "timestamps", "with_gpu_slug", "with_point_key",
]
