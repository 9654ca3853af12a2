"""Synthetic result rows for the reporting tests (figures, gate, merging): written into tmp dirs only.

`run_rows` builds the rows of ONE run_point call as harness.runner does (one timestamp, one copy
bandwidth, one resolved config shared by every impl; speedup over the run's baseline).
"""
from __future__ import annotations

import datetime as dt
import json
import random
from functools import lru_cache
from pathlib import Path

GPU = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
ALL_IMPLS = ("torch-eager", "torch-graph", "torch-compile", "flash-attn", "layerwise", "megakernel")
# Rough shape of a decode step's latency by impl (µs at 1 GB/step), for plausible-looking plots only.
_BASE_US = {"torch-eager": 3000.0, "torch-graph": 900.0, "torch-compile": 700.0, "flash-attn": 880.0,
            "layerwise": 650.0, "megakernel": 520.0}
_FUSION_FACTOR = {"op": 1.25, "block": 1.12, "layer": 1.05, "model": 1.0, "none": 1.0}
_GB = {"llama1b": 2.5, "llama3b": 6.4, "llama8b": 16.0}
_QUANT_BYTES = {"bf16": 1.0, "int8": 0.53, "int4": 0.29}


def run_rows(model="llama1b", quant="bf16", batch=1, ctx=1024, impls=ALL_IMPLS, fusion="model",
             gpu=GPU, when="2026-11-22T06:00:00+00:00", latency=None, spread=0.004, status=None,
             copy_tbps=3.0, baseline="torch-eager", tag="default", seed=0, hostname="node1", git_sha="abc123",
             mega_backend=None) -> list[dict]:
    """Rows of one run. latency: {impl: µs} overrides the model; status: {impl: status}.

    git_sha: "abc123" is a clean commit, "abc123-dirty" a dirty tree. mega_backend: None writes no
    `mega_backend` column (rows from before it existed), else the megakernel row records it.
    """
    rng = random.Random(seed)
    gb = _GB.get(model, 2.0) * _QUANT_BYTES.get(quant, 1.0) + batch * ctx * 1.3e-4
    nbytes = int(gb * 1e9)
    rows, latency, status = [], dict(latency or {}), dict(status or {})
    config = {"model": {"name": model}, "quant": {"name": quant}, "bench": {"batch": batch, "ctx": ctx},
              "fusion": fusion, "seed": seed}
    for impl in impls:
        fus = fusion if impl == "megakernel" else "none"
        lat = latency.get(impl, _BASE_US[impl] * gb * _FUSION_FACTOR[fus] * (1 + 0.06 * (batch - 1) ** 0.5)
                          * (1 + rng.uniform(-0.005, 0.005)))
        st = status.get(impl, "ok")
        r = {"gpu_name": gpu, "hostname": hostname, "git_sha": git_sha, "timestamp_utc": when, "model": model,
             "quant": quant, "group_size": 128 if quant == "int4" else 0, "batch": batch, "ctx": ctx, "tag": tag,
             "impl": impl, "fusion": fus, "bytes_per_step": nbytes, "copy_tbps": copy_tbps, "status": st,
             "note": "", "config_json": json.dumps(config, sort_keys=True), "baseline": baseline,
             "tel_throttled": False}
        if mega_backend is not None and impl == "megakernel":
            r["mega_backend"] = mega_backend
        if st in ("ok", "wrong"):
            r.update(latency_us_median=lat, latency_us_p10=lat * (1 - spread), latency_us_p90=lat * (1 + spread),
                     latency_us_mean=lat, latency_us_std=lat * spread / 1.28, repeats=50,
                     gbps=nbytes / (lat * 1e-6) / 1e9, rel_err=0.001 if st == "ok" else 0.5,
                     correct=st == "ok")
            r["pct_of_copy_bw"] = 100.0 * r["gbps"] / (copy_tbps * 1e3)
        rows.append(r)
    base = next((r for r in rows if r["impl"] == baseline and "latency_us_median" in r), None)
    for r in rows:
        r["speedup"] = base["latency_us_median"] / r["latency_us_median"] if base and "latency_us_median" in r \
            else float("nan")
    return rows


def stamp(minutes: int) -> str:
    t = dt.datetime(2026, 11, 22, 6, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minutes)
    return t.isoformat(timespec="seconds")


def full_sweeps(store, gpu=GPU) -> int:
    """Appends every experiment's sweep (as run.py -m would), one file per run; returns the number of runs."""
    n = 0

    def add(**kw):
        nonlocal n
        store.append(run_rows(gpu=gpu, when=stamp(n), seed=n, baseline="torch-compile", **kw))
        n += 1

    for model in ("llama1b", "llama8b"):
        for quant in ("bf16", "int4"):
            for ctx in (128, 1024, 4096, 8192, 32768):
                add(model=model, quant=quant, ctx=ctx)
            for batch in (2, 4, 8, 16):
                add(model=model, quant=quant, batch=batch)
            for fusion in ("op", "block", "layer", "model"):
                add(model=model, quant=quant, fusion=fusion, impls=("megakernel", "layerwise", "torch-compile"))
    for model in ("llama1b", "llama3b", "llama8b"):
        add(model=model, quant="int8")
    add(model="llama3b", quant="bf16")
    add(model="llama3b", quant="int4")
    return n


def stored_and_loaded(root, *runs: list):
    """Appends each run's rows to a results store at root and loads them all back (with the loader's columns)."""
    from harness.results import ResultsStore, load_results

    store = ResultsStore(root)
    for rows in runs:
        store.append(rows)
    return load_results(root)


@lru_cache(maxsize=None)
def frozen_results(before: str = "20261202") -> Path:
    """A copy of the committed results/ rows measured before `before` (UTC, YYYYMMDD; row files are named by their
    timestamp), made once per process: tests that pin counts and values of committed rows read this, so rows that
    later sessions commit under the same tags and GPUs do not move them."""
    import atexit
    import shutil
    import tempfile

    dst = Path(tempfile.mkdtemp(prefix="frozen-rows-"))
    atexit.register(shutil.rmtree, dst, True)
    for gpu_dir in (Path(__file__).resolve().parent.parent / "results").glob("nvidia-*"):
        kept = [f for f in gpu_dir.glob("*.parquet") if f.name < before]
        if kept:
            (dst / gpu_dir.name).mkdir()
            for f in kept:
                shutil.copy2(f, dst / gpu_dir.name / f.name)
    return dst
