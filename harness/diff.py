"""Runs the megakernel's Python VM and its Triton kernel on the same inputs and prints the first instruction after
which their states differ (kernels/mega/diff.py); exit code 1 when they differ.

    python -m harness.diff --model tiny --quant int4 --batch 4 --ctx 20
    python -m harness.diff --model tiny --corrupt w_down:1     # demo: one weight row negated on the kernel side

On a machine without a GPU the kernel runs in the Triton interpreter (one program).
"""
from __future__ import annotations

import argparse
from typing import Optional

from harness import use_interpreter_without_gpu


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--model", default="tiny", help="a conf/model name (default tiny)")
    ap.add_argument("--quant", default="fp32", help="a quant mode (default fp32)")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size (default 32)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=20, help="positions already in the cache")
    ap.add_argument("--fusion", default="model")
    ap.add_argument("--policy", default="round-robin")
    ap.add_argument("--programs", type=int, default=1, help="programs per launch (1 in the interpreter)")
    ap.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of a buffer comparison")
    ap.add_argument("--corrupt", default="", help="NAME:LAYER: negate row 0 of that linear (e.g. w_down:1), kernel side only")
    a = ap.parse_args(argv)

    import torch

    from harness.errors import ConfigError
    from harness.models import named_spec
    from harness.weights import random_weights
    from kernels.mega.diff import first_divergence
    from kernels.model import KVCache
    from kernels.quant import Kind

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        spec = named_spec(a.model)
        w = random_weights(spec, a.quant, a.group_size, device, seed=0)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")
    kw = None
    if a.corrupt:
        name, _, layer = a.corrupt.partition(":")
        kw = random_weights(spec, a.quant, a.group_size, device, seed=0)
        lin = getattr(kw.layers[int(layer)], name)
        if lin.kind == Kind.INT4:
            lin.weight[0] ^= 0xFF  # q -> 15 - q: row 0 mirrored
        else:
            lin.weight[0] = -lin.weight[0]
    cache = KVCache.empty(spec, a.batch, a.ctx + 1, w.dtype, device)
    gen = torch.Generator(device=device).manual_seed(1)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    tokens = torch.randint(0, spec.vocab_size, (a.batch,), generator=gen, device=device)
    positions = torch.full((a.batch,), a.ctx, dtype=torch.long, device=device)
    d = first_divergence(w, cache, tokens, positions, kernel_weights=kw, fusion=a.fusion, policy=a.policy,
                         n_programs=a.programs, tol=a.tol)
    print("VM and interpreter agree on every instruction" if d is None else d)
    return 0 if d is None else 1


if __name__ == "__main__":
    use_interpreter_without_gpu()
    raise SystemExit(main())
