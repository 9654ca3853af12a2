"""Same-run comparison of per-op GEMV options (kernels/gemv.gemv / gemv_silu_mul keyword arguments) at the real
projection shapes of a model, on the GPU: microseconds per call from a CUDA graph and % of the copy bandwidth
measured in the same process (weight bytes only), with each variant's largest difference from the first.
Exploration only, like scripts/mega_tune.py. results/tuning/gemv-h200-*.txt hold two such comparisons (measured
with an earlier, equivalent form of this script; their first line gives the command that repeats them).

    python scripts/gemv_variants.py --model llama8b --quant int8 bf16 --batch 1 \
        --variants base: f2:k_fold=2 r16:block_n=16
A variant is NAME:key=value,... with keys block_n, block_k, k_fold (kernels/gemv.pick_config's geometry) and
num_warps; the inner product follows the tile rule (kernels/tiles.py). gate_up runs gemv_silu_mul.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from harness.models import named_spec  # noqa: E402
from kernels.quant import quantize_linear  # noqa: E402
from harness.timing import measure_copy_bandwidth, time_step  # noqa: E402
from kernels.gemv import gemv, gemv_silu_mul, pick_config  # noqa: E402

KEYS = ("block_n", "block_k", "k_fold", "num_warps")


def parse(text: str) -> tuple[str, dict]:
    """"NAME:key=value,..." -> (name, {key: int}) with keys from KEYS."""
    name, _, body = text.partition(":")
    kw = {}
    for item in filter(None, body.split(",")):
        k, _, v = item.partition("=")
        if k not in KEYS:
            sys.exit(f"error: variant {text!r}: {k!r} is not one of {', '.join(KEYS)}")
        kw[k] = int(v)
    return name, kw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama8b")
    ap.add_argument("--quant", nargs="+", default=["int8"], choices=("bf16", "fp16", "int8", "int4"))
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--layers", nargs="+", default=["wqkv", "w_down", "gate_up", "lm_head"])
    ap.add_argument("--variants", nargs="+", default=["base:"])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run through the Triton interpreter")
    args = ap.parse_args()
    dev = torch.device(args.device)
    copy = measure_copy_bandwidth(dev)
    spec = named_spec(args.model)
    shapes = {**spec.linear_shapes(), "gate_up": spec.linear_shapes()["w_gate"], "lm_head": (spec.vocab_size, spec.dim)}
    act = torch.float16 if "fp16" in args.quant else torch.bfloat16
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{gpu}, copy {copy:.3f} TB/s, {args.model}")
    for quant in args.quant:
        for layer in args.layers:
            n, k = shapes[layer]
            gen = torch.Generator(device=dev).manual_seed(0)
            w = quantize_linear(torch.randn(n, k, generator=gen, device=dev, dtype=act) * k ** -0.5, quant, 128)
            w_bytes = sum(t.numel() * t.element_size() for t in (w.weight, w.scale, w.zero) if t is not None)
            for batch in args.batch:
                x = torch.randn(batch, k, generator=gen, device=dev, dtype=act)
                cells, first = [], None
                for text in args.variants:
                    name, kw = parse(text)
                    warps = kw.pop("num_warps", None)
                    cfg = pick_config(x, w, **kw)
                    cfg = dataclasses.replace(cfg, num_warps=warps) if warps else cfg
                    if layer == "gate_up":
                        call, nbytes = (lambda cfg=cfg: gemv_silu_mul(x, w, w, config=cfg)), 2 * w_bytes
                    else:
                        call, nbytes = (lambda cfg=cfg: gemv(x, w, config=cfg)), w_bytes
                    y = call().float()
                    first = y if first is None else first
                    diff = float((y - first).abs().max() / first.abs().max())
                    us = time_step(call, dev, warmup=10, repeats=args.repeats, cuda_graph=True).median_us
                    cells.append(f"{name} {us:8.1f} us {100 * nbytes / (us * 1e-6) / (copy * 1e12):5.1f}% "
                                 f"(diff {diff:.0e})")
                print(f"{quant:5} {layer:8} B{batch:<3} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
