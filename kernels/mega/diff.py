"""Diff tool: runs the Python VM and the interpreter kernel on the same inputs and reports the first
instruction after which their states differ.

Method: a prefix of the lowering's topological order is closed under dependencies, so the kernel can
run any prefix (build_schedule(limit=n)); both sides start from the same zeroed buffers and the same
KV cache, run instructions [0, n), and every buffer plus the written KV-cache positions is compared.
A binary search over n finds the first instruction whose outputs differ (O(log N) kernel runs).

    python -m kernels.mega.diff --model tiny --quant int4 --batch 4 --ctx 20
    python -m kernels.mega.diff --model tiny --corrupt w_down:1     # demo: perturb one weight on the kernel side
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.environ.get("TRITON_INTERPRET") != "1":
    import torch as _torch
    if not _torch.cuda.is_available():  # the interpreter must be chosen before `kernels` imports Triton: re-exec
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "kernels.mega.diff", *sys.argv[1:]])

import argparse
from dataclasses import dataclass
from typing import Optional

import torch

from harness.reference import KVCache
from harness.weights import ModelWeights
from kernels.mega.pyvm import PyVM
from kernels.mega.schedule import build_schedule


@dataclass
class Divergence:
    instr_id: int  # the first instruction after which the states differ
    instr: str
    mismatches: dict  # buffer -> (max abs error, max abs reference)

    def __str__(self) -> str:
        bufs = ", ".join(f"{k} (max err {e:.3g}, ref scale {s:.3g})" for k, (e, s) in self.mismatches.items())
        return f"first divergence after instruction #{self.instr_id} {self.instr}: {bufs}"


def _compare(a: dict, b: dict, tol: float) -> dict:
    out = {}
    for name, x in a.items():
        y = b[name]
        xf, yf = x.float(), y.float()
        both_nan = torch.isnan(xf) & torch.isnan(yf)
        same_inf = torch.isinf(xf) & torch.isinf(yf) & (torch.sign(xf) == torch.sign(yf))
        ok_special = both_nan | same_inf
        diff = torch.where(ok_special, torch.zeros_like(xf), (xf - yf).abs())
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        finite = yf[torch.isfinite(yf)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        err = float(diff.max()) if diff.numel() else 0.0
        if err > tol * max(scale, 1e-6):
            out[name] = (err, scale)
    return out


def _snapshot(state, cache: KVCache, positions: torch.Tensor) -> dict:
    snap = {k: v.clone() for k, v in state.buffers().items() if k != "error"}  # errors raise in check()
    b = torch.arange(positions.shape[0], device=positions.device)
    p = positions.long().clamp(0, cache.max_len - 1)
    snap["k_cache[pos]"] = cache.k[:, b, :, p].clone()  # [L, B, KVH, hd]
    snap["v_cache[pos]"] = cache.v[:, b, :, p].clone()
    return snap


def first_divergence(weights: ModelWeights, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, *,
                     kernel_weights: Optional[ModelWeights] = None, fusion: str = "model",
                     policy: str = "round-robin", n_programs: int = 1, tiles: Optional[dict] = None,
                     tol: float = 1e-3) -> Optional[Divergence]:
    """None if the VM and the kernel agree on the whole step, else the first differing instruction.
    `kernel_weights` (same shapes) lets the kernel run on other weights than the VM (fault injection)."""
    from kernels.mega.runtime import Megakernel

    mk = Megakernel(kernel_weights or weights, cache.clone(), fusion=fusion, policy=policy, n_programs=n_programs,
                    tiles=tiles)
    prog = mk.prog
    vm_cache, k_cache = cache.clone(), mk.cache

    def states_after(n: int) -> dict:
        for c in (vm_cache, k_cache):
            c.k.copy_(cache.k)
            c.v.copy_(cache.v)
        vm = PyVM(prog, weights, vm_cache)
        mk.state.zero_()
        for st in (vm.state, mk.state):
            st.tokens.copy_(tokens)
            st.positions.copy_(positions)
        vm.run_order(range(n))
        mk.reschedule(build_schedule(prog, n_programs, policy, fusion, mk.device, limit=n))
        mk.launch()
        mk.check()
        return _compare(_snapshot(mk.state, k_cache, positions), _snapshot(vm.state, vm_cache, positions), tol)

    n_all = len(prog.instrs)
    last = states_after(n_all)
    if not last:
        return None
    lo, hi = 0, n_all  # states agree after lo instructions, differ after hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        diff = states_after(mid)
        if diff:
            hi, last = mid, diff
        else:
            lo = mid
    return Divergence(hi - 1, str(prog.instrs[hi - 1]), last)


def main(argv=None) -> int:
    from harness.models import named_spec
    from harness.weights import random_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--quant", default="fp32")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=20, help="positions already in the cache")
    ap.add_argument("--fusion", default="model")
    ap.add_argument("--policy", default="round-robin")
    ap.add_argument("--programs", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--corrupt", default="", help="NAME:LAYER: negate row 0 of that linear (e.g. w_down:1), kernel side only")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    spec = named_spec(a.model)
    w = random_weights(spec, a.quant, a.group_size, device, seed=0)
    kw = None
    if a.corrupt:
        name, layer = a.corrupt.split(":")
        kw = random_weights(spec, a.quant, a.group_size, device, seed=0)
        lin = getattr(kw.layers[int(layer)], name)
        if lin.kind == "int4":
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
    raise SystemExit(main())
