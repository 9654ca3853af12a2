"""Python VM: executes the megakernel's instruction stream with PyTorch ops (fp32 math), checking
every counter before every instruction. It is the oracle for the interpreter kernel and runs on any
device (no Triton): the same buffers (kernels/mega/state.py), the same tiles, the same split ranges.

- `execute(i)` raises DependencyError if instruction i's wait counter has not reached its count, i.e.
  if it would run before the instructions it reads from.
- `run(schedule)` interleaves the programs of each launch (a program advances while its head is
  ready) and raises DeadlockError if no program can advance: a schedule bug, not a hang.
- `run_order(ids)` executes exactly that order (a wrong order raises DependencyError).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from kernels.quant import QLinear
from kernels.model import KVCache
from kernels.model import ModelWeights
from kernels.reference import rms_normalize
from kernels.mega.instructions import (Argmax, AttnPartial, AttnReduce, DownResidual, Embed, LmHead,
                                       OProjResidual, RmsGateUpSilu, RmsQkvRope)
from kernels.mega.lower import Lowered
from kernels.mega.schedule import Schedule
from kernels.mega.state import State

LOG2E = 1.4426950408889634


class DependencyError(AssertionError):
    """An instruction was about to run before its wait counter reached its count."""


class DeadlockError(RuntimeError):
    """No program of a launch can advance: every queue head waits on work that is not ahead of it."""


class PyVM:
    def __init__(self, prog: Lowered, weights: ModelWeights, cache: KVCache, state: Optional[State] = None):
        self.prog, self.w, self.cache = prog, weights, cache
        self.device = weights.device
        self.state = state if state is not None else State.alloc(prog, self.device)
        self.counters = [0] * prog.space.size
        self.cos, self.sin = prog.spec.rope_tables(cache.max_len, self.device)
        self.advance = False
        self._dq: dict = {}  # (linear name, layer) -> fp32 weight, a few at a time

    # ---- helpers -------------------------------------------------------------------------
    def _weight(self, name: str, layer: int) -> torch.Tensor:
        """fp32 [N, K] dequantized weight of one layer (or the LM head for layer -1)."""
        key = (name, layer)
        if key not in self._dq:
            if len(self._dq) >= 6:
                self._dq.pop(next(iter(self._dq)))
            ql: QLinear = self.w.lm_head if layer < 0 else getattr(self.w.layers[layer], name)
            self._dq[key] = ql.dequantize(torch.float32)
        return self._dq[key]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_normalize(x, self.prog.spec.norm_eps) * weight.float()

    def _idx(self, rows) -> torch.Tensor:
        return torch.as_tensor(list(rows), dtype=torch.long, device=self.device)

    # ---- running -------------------------------------------------------------------------
    def ready(self, i: int) -> bool:
        ins = self.prog.instrs[i]
        return ins.wait is None or self.counters[self.prog.space.index(ins.wait.counter)] >= ins.wait.count

    def execute(self, i: int) -> None:
        ins = self.prog.instrs[i]
        if not self.ready(i):
            c = self.prog.space.index(ins.wait.counter)
            raise DependencyError(f"instruction #{i} {ins} would run before counter {c} {ins.wait.counter} reached "
                                  f"{ins.wait.count} (it is {self.counters[c]})")
        getattr(self, "_" + type(ins).__name__)(ins)
        if ins.bump is not None:
            self.counters[self.prog.space.index(ins.bump)] += 1
        self.state.counters.copy_(torch.tensor(self.counters, dtype=torch.int32))

    def run_order(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.execute(i)

    def run(self, schedule: Schedule, advance: bool = False) -> torch.Tensor:
        """One step as the kernel runs it: launch after launch, programs interleaved. Returns logits."""
        self.advance = advance
        for li, la in enumerate(schedule.launches):
            heads = [0] * la.grid
            while any(h < len(q) for h, q in zip(heads, la.programs)):
                moved = False
                for p, q in enumerate(la.programs):
                    while heads[p] < len(q) and self.ready(q[heads[p]]):
                        self.execute(q[heads[p]])
                        heads[p] += 1
                        moved = True
                if not moved:
                    blocked = [f"program {p}: #{q[h]} {self.prog.instrs[q[h]]}" for p, (h, q)
                               in enumerate(zip(heads, la.programs)) if h < len(q)]
                    raise DeadlockError(f"launch {li}: no program can advance; blocked heads: " + "; ".join(blocked[:4]))
        return self.state.logits

    def decode(self, schedule: Schedule, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.state.tokens.copy_(tokens)
        self.state.positions.copy_(positions)
        return self.run(schedule)

    # ---- instructions (fp32) ---------------------------------------------------------------
    def _Embed(self, ins: Embed) -> None:
        cols = self._idx(self.prog.gemv_rows(ins))
        st = self.state
        st.h[:, cols] = self.w.embed[st.tokens.long()][:, cols].float()

    def _RmsQkvRope(self, ins: RmsQkvRope) -> None:
        s, st, prog = self.prog.spec, self.state, self.prog
        slot, pairs = prog.qkv_pairs(ins.row_block)
        i = self._idx(pairs)
        lo_rows = slot * s.head_dim + i
        x = self._norm(st.h, self.w.layers[ins.layer].attn_norm)
        wq = self._weight("wqkv", ins.layer)
        lo, hi = x @ wq[lo_rows].T, x @ wq[lo_rows + prog.half].T  # [B, P]
        pos = st.positions.long()
        ok = (pos >= 0) & (pos < self.cache.max_len)
        b = torch.arange(prog.batch, device=self.device)[ok]
        pos, lo, hi = pos[ok], lo[ok], hi[ok]
        if slot < s.n_heads + s.n_kv_heads:
            cos, sin = self.cos[pos][:, i], self.sin[pos][:, i]
            lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
        if slot < s.n_heads:
            st.q[b[:, None], slot, i[None, :]] = lo
            st.q[b[:, None], slot, i[None, :] + prog.half] = hi
            return
        g = (slot - s.n_heads) % s.n_kv_heads
        c = (self.cache.k if slot < s.n_heads + s.n_kv_heads else self.cache.v)[ins.layer]
        c[b[:, None], g, pos[:, None], i[None, :]] = lo.to(c.dtype)
        c[b[:, None], g, pos[:, None], i[None, :] + prog.half] = hi.to(c.dtype)

    def _AttnPartial(self, ins: AttnPartial) -> None:
        s, st, prog = self.prog.spec, self.state, self.prog
        hd, gq = s.head_dim, prog.group
        heads = slice(ins.kv_head * gq, (ins.kv_head + 1) * gq)
        sl = prog.split_slice(ins.split)
        for b in prog.split_seqs(ins.split):
            seq_len = min(int(st.positions[b]) + 1, self.cache.max_len)
            keys = prog.split_range(seq_len, ins.split)
            st.o_part[b, heads, sl] = 0.0
            if len(keys) == 0:
                st.lse[b, heads, sl] = -math.inf
                continue
            k = self.cache.k[ins.layer, b, ins.kv_head, keys.start:keys.stop].float()  # [n, hd]
            v = self.cache.v[ins.layer, b, ins.kv_head, keys.start:keys.stop].float()
            sc = (st.q[b, heads] @ k.T) * (hd ** -0.5 * LOG2E)  # [GQ, n], base 2
            m = sc.max(dim=-1).values
            p = torch.exp2(sc - m[:, None])
            l_sum = p.sum(-1)
            st.o_part[b, heads, sl, :hd] = (p @ v) / l_sum[:, None]
            st.lse[b, heads, sl] = m + torch.log2(l_sum)

    def _AttnReduce(self, ins: AttnReduce) -> None:
        s, st, prog = self.prog.spec, self.state, self.prog
        hd, gq = s.head_dim, prog.group
        for b in range(prog.batch):
            for h in range(ins.kv_head * gq, (ins.kv_head + 1) * gq):
                lse = st.lse[b, h]
                m = lse.max()
                m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
                wgt = torch.exp2(lse - m)
                den = wgt.sum()
                o = (st.o_part[b, h, :, :hd] * wgt[:, None]).sum(0) / torch.where(den > 0, den, torch.ones_like(den))
                st.attn[b, h * hd:(h + 1) * hd] = o

    def _OProjResidual(self, ins: OProjResidual) -> None:
        rows = self._idx(self.prog.gemv_rows(ins))
        self.state.h[:, rows] += self.state.attn @ self._weight("wo", ins.layer)[rows].T

    def _RmsGateUpSilu(self, ins: RmsGateUpSilu) -> None:
        rows = self._idx(self.prog.gemv_rows(ins))
        x = self._norm(self.state.h, self.w.layers[ins.layer].mlp_norm)
        gate = x @ self._weight("w_gate", ins.layer)[rows].T
        up = x @ self._weight("w_up", ins.layer)[rows].T
        self.state.act[:, rows] = F.silu(gate) * up

    def _DownResidual(self, ins: DownResidual) -> None:
        rows = self._idx(self.prog.gemv_rows(ins))
        self.state.h[:, rows] += self.state.act @ self._weight("w_down", ins.layer)[rows].T

    def _LmHead(self, ins: LmHead) -> None:
        r = self.prog.gemv_rows(ins)
        st = self.state
        x = self._norm(st.h, self.w.final_norm)
        logits = x @ self._weight("lm_head", -1)[r.start:r.stop].T  # [B, rows]
        st.logits[:, r.start:r.stop] = logits
        best, idx = logits.max(dim=-1)  # first maximal index on ties
        st.pmax[:, ins.row_block] = best
        st.pidx[:, ins.row_block] = (idx + r.start).to(torch.int32)

    def _Argmax(self, ins: Argmax) -> None:
        st = self.state
        j = st.pmax.argmax(dim=-1)  # first block holding the max: the lowest index
        nxt = st.pidx.gather(1, j[:, None])[:, 0]
        st.next_tokens.copy_(nxt)
        if self.advance:
            st.tokens.copy_(nxt)
            st.positions += 1
        self.counters = [0] * len(self.counters)
