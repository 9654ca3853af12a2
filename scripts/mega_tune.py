"""Same-run comparison of megakernel variants (tile options, programs per SM, fusion, policy) at
one or more points, on the GPU. Each variant is checked against the first variant's logits and timed from a
CUDA graph; the table gives ms/step, % of the copy bandwidth measured in the same process, registers and
co-resident programs. Exploration only: committed benchmark rows come from run.py sweeps.

    python scripts/mega_tune.py --points llama1b:bf16:1 llama8b:int4:1 --ctx 1024 \
        --variants base: r8:gemv_rows=8 w8:num_warps=8,programs_per_sm=1 [--update-cache]
    python scripts/mega_tune.py --cache-from results/tuning/TABLE.csv   # any machine
Variants run with the built-in tiles (tuned=False); --update-cache / --cache-from write the winners that beat
`base:` by kernels/mega/tuned.MIN_GAIN into kernels/mega/tuned.json, which the megakernel then applies.
A variant is NAME:key=value,...; keys: programs_per_sm, fusion, policy, backend (triton | gluon), or
kernels/mega/lower.TileOptions fields
(num_warps, gemv_rows, k_fold, l2_prefetch).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from harness.metrics import bytes_per_step  # noqa: E402
from harness.models import named_spec  # noqa: E402
from kernels.model import KVCache  # noqa: E402
from harness.timing import measure_copy_bandwidth, time_step  # noqa: E402
from harness.weights import random_weights  # noqa: E402
from kernels.mega.lower import TileOptions  # noqa: E402
from kernels.mega.runtime import Megakernel  # noqa: E402
from kernels.mega.tuned import CACHE, parse_variant, update_from_csv, update_from_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", nargs="+", default=["llama1b:bf16:1"], help="model:quant:batch")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--variants", nargs="+", default=["base:"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--update-cache", action="store_true",
                    help=f"fold this run's winners into {os.path.relpath(CACHE)} (the first variant must be base:)")
    ap.add_argument("--cache-from", nargs="+", default=[], metavar="TABLE.csv",
                    help="no GPU: fold committed mega_tune tables into the cache and exit")
    args = ap.parse_args()
    if args.cache_from:
        missing = [t for t in args.cache_from if not os.path.isfile(t)]
        if missing:
            sys.exit(f"error: --cache-from: no such table {missing[0]}; give a mega_tune CSV such as "
                     f"results/tuning/mega_tune-h200-4-int4-tiles.csv")
        for table in args.cache_from:
            for note in update_from_csv(table) or [f"{table}: no change"]:
                print(note)
        return
    dev = torch.device("cuda")
    copy_tbs = measure_copy_bandwidth(dev)
    gpu = torch.cuda.get_device_name(dev)
    rows = []
    for point in args.points:
        model, quant, batch = point.split(":")
        batch = int(batch)
        spec = named_spec(model)
        w = random_weights(spec, quant, 128, dev, seed=0)
        cache = KVCache.empty(spec, batch, args.ctx + 1, w.dtype, dev)
        gen = torch.Generator(device=dev).manual_seed(1)
        for t in (cache.k, cache.v):
            for i in range(t.shape[0]):
                t[i, :, :, :args.ctx].normal_(generator=gen)
        tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen, device=dev)
        positions = torch.full((batch,), args.ctx, dtype=torch.long, device=dev)
        nbytes = bytes_per_step(spec, quant, 128, batch, args.ctx)["total"]
        base = None
        for text in args.variants:
            name, run_kw, tiles = parse_variant(text)
            t0 = time.time()
            try:
                mk = Megakernel(w, cache, tiles=TileOptions(**tiles), tuned=False, **run_kw)  # base: the built-in tiles
                out = mk.decode(tokens, positions).clone()
                mk.check()
            except Exception as e:  # noqa: BLE001 - report and go on with the next variant
                print(f"{point} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            build_s = time.time() - t0
            if base is None:
                base = out
            diff = float((out - base).abs().max() / base.abs().max())
            res = time_step(lambda: mk.decode(tokens, positions), dev, warmup=5, repeats=args.repeats,
                            cuda_graph=True)
            mk.check()
            ms = res.median_us / 1e3
            row = dict(gpu=gpu, point=point, ctx=args.ctx, variant=name, spec=text, ms=round(ms, 4),
                       pct_copy=round(100 * nbytes / (ms * 1e-3) / (copy_tbs * 1e12), 1),
                       regs=mk.n_regs, programs_per_sm=mk.programs_per_sm, programs=mk.n_programs,
                       rel_diff_vs_first=f"{diff:.2e}", build_s=round(build_s, 1), copy_tbs=round(copy_tbs, 3))
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items() if k not in ("gpu", "spec")), flush=True)
            del mk
            torch.cuda.empty_cache()
        del w, cache
        torch.cuda.empty_cache()
    if rows and os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "mega_tune.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                wr.writeheader()
            wr.writerows(rows)
    if args.update_cache and rows:
        for note in update_from_rows(rows, source="scripts/mega_tune.py run") or ["tile cache: no change"]:
            print(note)
    print(f"\n{gpu}, copy {copy_tbs:.3f} TB/s, ctx {args.ctx}")
    print(f"{'point':18} {'variant':14} {'ms':>8} {'%copy':>6} {'regs':>5} {'pps':>4} {'diff':>9}")
    for r in rows:
        print(f"{r['point']:18} {r['variant']:14} {r['ms']:8.3f} {r['pct_copy']:6.1f} {r['regs']:5d} "
              f"{r['programs_per_sm']:4d} {r['rel_diff_vs_first']:>9}")


if __name__ == "__main__":
    main()
