"""Device buffers of one decode step, shared by the interpreter kernel and the Python VM (no Triton here)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from kernels.mega.lower import Lowered
from kernels.tiles import next_pow2

ERROR_WORDS = 8  # a record: [code, program, queue position, instr id, counter, value seen, target, launch]


def hd_pad_of(head_dim: int) -> int:
    """Head dim padded to a power of two (>= 16, the smallest tl.dot tile): the o_part row length."""
    return max(next_pow2(head_dim), 16)


@dataclass
class State:
    """Every buffer the instructions read or write, except weights and the (shared) KV cache."""

    tokens: torch.Tensor  # [B] int32
    positions: torch.Tensor  # [B] int32
    next_tokens: torch.Tensor  # [B] int32
    h: torch.Tensor  # [B, D] fp32 residual stream
    q: torch.Tensor  # [B, H, hd] fp32 roped queries
    attn: torch.Tensor  # [B, H * hd] fp32
    act: torch.Tensor  # [B, F] fp32
    o_part: torch.Tensor  # [B, H, n_splits, hd_pad] fp32
    lse: torch.Tensor  # [B, H, n_splits] fp32, base 2
    logits: torch.Tensor  # [B, V] fp32
    pmax: torch.Tensor  # [B, n_lm] fp32
    pidx: torch.Tensor  # [B, n_lm] int32
    counters: torch.Tensor  # [n_counters] int32
    error: torch.Tensor  # [(1 + programs) * ERROR_WORDS] int32: word 0 the flag, then one record per program

    @classmethod
    def alloc(cls, prog: Lowered, device, n_programs: int = 1) -> "State":
        s, B, ns = prog.spec, prog.batch, prog.tiles.n_splits
        f32 = dict(dtype=torch.float32, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        return cls(tokens=torch.zeros(B, **i32), positions=torch.zeros(B, **i32), next_tokens=torch.zeros(B, **i32),
                   h=torch.zeros(B, s.dim, **f32), q=torch.zeros(B, s.n_heads, s.head_dim, **f32),
                   attn=torch.zeros(B, s.q_dim, **f32), act=torch.zeros(B, s.ffn_dim, **f32),
                   o_part=torch.zeros(B, s.n_heads, ns, hd_pad_of(s.head_dim), **f32),
                   lse=torch.zeros(B, s.n_heads, ns, **f32), logits=torch.zeros(B, s.vocab_size, **f32),
                   pmax=torch.zeros(B, prog.n_lm, **f32), pidx=torch.zeros(B, prog.n_lm, **i32),
                   counters=torch.zeros(prog.space.size, **i32),
                   error=torch.zeros((1 + n_programs) * ERROR_WORDS, **i32))

    def buffers(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def zero_(self) -> None:
        for t in self.buffers().values():
            t.zero_()
