"""Diff tool: runs the Python VM and the interpreter kernel on the same inputs and reports the first
instruction after which their states differ (command line: `python -m harness.diff`).

Method: a prefix of the lowering's topological order is closed under dependencies, so the kernel can
run any prefix (build_schedule(limit=n)); both sides start from the same zeroed buffers and the same
KV cache, run instructions [0, n), and every buffer plus the written KV-cache positions is compared.
A binary search over n finds the first instruction whose outputs differ (O(log N) kernel runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kernels.model import KVCache, ModelWeights
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
                     policy: str = "round-robin", n_programs: int = 1, tiles=None,
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
