"""Tuned tile choices per (GPU, model, quant, batch), cached in kernels/mega/tuned.json.

An entry is the winner of a same-run comparison by scripts/mega_tune.py (variants timed from a CUDA graph in one
process, the built-in choice `base:` first): it is written only when a variant beat the built-in choice by at
least MIN_GAIN, and it records both times and the table it came from. The megakernel applies the entry of its
GPU (by name), model, quant mode and batch on top of the built-in tiles; tiles given explicitly win over it, and
`Megakernel(..., tuned=False)` (mega_tune's own variants) ignores it. Entries go stale when the kernel changes:
re-run the comparison and `scripts/mega_tune.py --update-cache` (or `--cache-from TABLE.csv`) rewrites them.

    {"nvidia-h200": {"llama1b:int4:1": {"tiles": {"gemv_rows": 8}, "ms": 1.129, "base_ms": 1.223, ...}}}
"""
from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Optional

from kernels import gpu_slug
from kernels.mega.lower import TileOptions

CACHE = Path(__file__).with_name("tuned.json")
MIN_GAIN = 0.03  # a variant must be 3% faster than the built-in choice, same run, to be cached
RUNTIME_KEYS = ("programs_per_sm", "fusion", "policy", "backend")  # Megakernel arguments, not tiles
TILE_KEYS = tuple(f.name for f in fields(TileOptions))


def parse_variant(text: str) -> tuple[str, dict, dict]:
    """"NAME:key=value,..." -> (name, Megakernel keyword arguments, TileOptions fields). A key that is neither
    raises ValueError naming the choices."""
    name, _, body = text.partition(":")
    run_kw, tiles = {}, {}
    for item in filter(None, body.split(",")):
        k, _, v = item.partition("=")
        if k not in RUNTIME_KEYS + TILE_KEYS:
            raise ValueError(f"variant {text!r}: {k!r} is not one of {', '.join(RUNTIME_KEYS + TILE_KEYS)}")
        val = v if k in ("fusion", "policy", "backend") else int(v)
        (run_kw if k in RUNTIME_KEYS else tiles)[k] = val
    return name, run_kw, tiles


def point_key(model: str, quant: str, batch: int) -> str:
    return f"{model}:{quant}:{int(batch)}"


def load(path: Path = CACHE) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def lookup(gpu_name: Optional[str], model: str, quant: str, batch: int, path: Path = CACHE) -> dict:
    """The cached tile overrides for this point on this GPU ({} if none)."""
    entry = load(path).get(gpu_slug(gpu_name), {}).get(point_key(model, quant, batch))
    return dict(entry["tiles"]) if entry else {}


def update_from_rows(rows: Iterable[dict], path: Path = CACHE, source: str = "") -> list[str]:
    """Folds mega_tune rows (gpu, point "model:quant:batch", ctx, spec "NAME:k=v,...", ms) into the cache: per
    (GPU, point) the fastest tiles-only variant replaces the entry if it beat that run's `base:` row by MIN_GAIN;
    if `base:` won, the entry is removed. Returns one line per change."""
    runs: dict = {}
    for r in rows:
        runs.setdefault((gpu_slug(r["gpu"]), r["point"]), []).append(r)
    cache, notes = load(path), []
    for (gpu, point), rs in sorted(runs.items()):
        base = [r for r in rs if parse_variant(r["spec"])[1:] == ({}, {})]
        if not base:
            continue
        base_ms = float(base[0]["ms"])
        cands = [r for r in rs if not parse_variant(r["spec"])[1] and parse_variant(r["spec"])[2]]
        best = min(cands, key=lambda r: float(r["ms"]), default=None)
        entries = cache.setdefault(gpu, {})
        if best is not None and float(best["ms"]) <= base_ms * (1 - MIN_GAIN):
            entries[point] = {"tiles": parse_variant(best["spec"])[2], "ms": float(best["ms"]), "base_ms": base_ms,
                              "ctx": int(best.get("ctx", 0) or 0), "variant": best["spec"], "source": source}
            notes.append(f"{gpu} {point}: {best['spec']} {float(best['ms']):.3f} ms vs built-in {base_ms:.3f} ms")
        elif point in entries:
            del entries[point]
            notes.append(f"{gpu} {point}: built-in tiles won ({base_ms:.3f} ms); entry removed")
    cache = {g: e for g, e in cache.items() if e}
    Path(path).write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return notes


def update_from_csv(table: Path, path: Path = CACHE) -> list[str]:
    with open(table, newline="") as f:
        return update_from_rows(list(csv.DictReader(f)), path, source=str(table))
