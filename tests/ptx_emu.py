"""A PTX interpreter for the subset the project's inline assembly uses, on the CPU: the tests run the very strings the
kernels pass to inline_asm_elementwise (kernels/gemv.py, kernels/qgemv.py), so a wrong mask, magic number, byte
selector or shift in them fails a test without a GPU.

Registers are int64 tensors of 32-bit values, one element per thread; an mma.sync needs exactly 32 threads (one
warp, lane = index). Operands `$N` are given and read back by number. Supported: `.reg` declarations, braces,
mov / and / or / xor / shl / shr (.b32 / .u32), lop3.b32 (any truth table), prmt.b32 (default mode),
sub / fma .rn on bf16x2 / f16x2, cvt.rn.f16x2.f32, and mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.*.f32 (by
kernels/fragments.mma_m16n8k16, the PTX ISA's fragment layouts). Anything else raises, so the emulator never
silently skips an instruction it does not know.
"""
from __future__ import annotations

import re

import torch

from kernels.fragments import mma_m16n8k16

MASK32 = 0xFFFFFFFF
_HALF = {"bf16": torch.bfloat16, "f16": torch.float16}


def halves_to_float(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """32-bit values [...] -> their two 16-bit halves as fp32 [..., 2] (low half first)."""
    h = torch.stack([v & 0xFFFF, (v >> 16) & 0xFFFF], dim=-1)
    return (h - ((h >> 15) << 16)).to(torch.int16).view(dtype).float()


def float_to_halves(f: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 [..., 2] -> 32-bit values [...] holding them rounded to `dtype` (low half first)."""
    h = f.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF
    return h[..., 0] | (h[..., 1] << 16)


def f32_bits(f: torch.Tensor) -> torch.Tensor:
    return f.float().view(torch.int32).to(torch.int64) & MASK32


def _as_f32(v: torch.Tensor) -> torch.Tensor:
    u = v & MASK32
    return torch.where(u >= 1 << 31, u - (1 << 32), u).to(torch.int32).view(torch.float32)


def _lop3(a, b, c, lut: int):
    out = torch.zeros_like(a)
    for bit in range(8):  # minterm bit = (a << 2) | (b << 1) | c, as PTX encodes the table (F0, CC, AA)
        if lut >> bit & 1:
            ta = a if bit & 4 else ~a
            tb = b if bit & 2 else ~b
            tc = c if bit & 1 else ~c
            out |= ta & tb & tc
    return out & MASK32


def _prmt(a, b, sel: int):
    """Default mode: the 8 bytes {b, a} (a bytes 0-3, b bytes 4-7); per result byte a selector nibble: its low 3
    bits pick the byte, its top bit replicates that byte's sign bit instead."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = torch.zeros_like(a)
    for i in range(4):
        s = sel >> (4 * i) & 0xF
        byte = src[s & 7]
        if s & 8:
            byte = torch.where(byte & 0x80 != 0, torch.full_like(byte, 0xFF), torch.zeros_like(byte))
        out |= byte << (8 * i)
    return out


class PTX:
    """Runs one inline-asm string over `threads` threads."""

    def __init__(self, text: str):
        body = text.replace("{", " ").replace("}", " ")
        self.lines = [ln.strip() for ln in body.split(";") if ln.strip()]

    def run(self, operands: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """operands: {N: int64 tensor of 32-bit values} for the inputs (and outputs, any value); returns every $N."""
        regs: dict[str, torch.Tensor] = {f"${n}": (v.to(torch.int64) & MASK32) for n, v in operands.items()}
        shape = next(iter(regs.values())).shape

        def val(tok: str) -> torch.Tensor:
            tok = tok.strip()
            if tok in regs:
                return regs[tok]
            if re.fullmatch(r"-?(0x[0-9A-Fa-f]+|\d+)", tok):
                return torch.full(shape, int(tok, 0) & MASK32, dtype=torch.int64)
            raise KeyError(f"PTX operand {tok!r} is neither a register nor an integer")

        for line in self.lines:
            op, _, rest = line.partition(" ")
            if op == ".reg":
                for name in rest.split(None, 1)[1].split(","):
                    regs[name.strip()] = torch.zeros(shape, dtype=torch.int64)
                continue
            if op.startswith("mma.sync.aligned.m16n8k16.row.col.f32."):
                self._mma(op, rest, regs, val)
                continue
            args = [t.strip() for t in rest.split(",")]
            d = args[0]
            if op in ("mov.b32", "mov.u32"):
                regs[d] = val(args[1])
            elif op in ("and.b32",):
                regs[d] = val(args[1]) & val(args[2])
            elif op in ("or.b32",):
                regs[d] = val(args[1]) | val(args[2])
            elif op in ("xor.b32",):
                regs[d] = val(args[1]) ^ val(args[2])
            elif op in ("shl.b32",):
                regs[d] = (val(args[1]) << int(args[2], 0)) & MASK32
            elif op in ("shr.u32", "shr.b32"):
                regs[d] = val(args[1]) >> int(args[2], 0)
            elif op == "lop3.b32":
                regs[d] = _lop3(val(args[1]), val(args[2]), val(args[3]), int(args[4], 0))
            elif op == "prmt.b32":
                regs[d] = _prmt(val(args[1]), val(args[2]), int(args[3], 0))
            elif re.fullmatch(r"(sub|fma)\.rn\.(bf16|f16)x2", op):
                kind, ty = op.split(".")[0], _HALF[op.split(".")[2][:-2]]
                xs = [halves_to_float(val(a), ty).double() for a in args[1:]]
                r = xs[0] - xs[1] if kind == "sub" else xs[0] * xs[1] + xs[2]
                regs[d] = float_to_halves(r.float(), ty)
            elif op == "cvt.rn.f16x2.f32":  # d = {upper: a, lower: b}
                hi, lo = _as_f32(val(args[1])), _as_f32(val(args[2]))
                regs[d] = float_to_halves(torch.stack([lo, hi], dim=-1), torch.float16)
            else:
                raise NotImplementedError(f"PTX instruction {op!r} is not emulated")
        return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}

    @staticmethod
    def _mma(op: str, rest: str, regs: dict, val) -> None:
        ty = _HALF[op.split(".")[-3]]
        flat = [t.strip() for t in rest.split(",")]  # {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}: braces stripped
        if len(flat) != 14:
            raise ValueError(f"mma.sync m16n8k16 takes 14 register operands; got {len(flat)}: {rest}")
        d, a, b, c = flat[0:4], flat[4:8], flat[8:10], flat[10:14]
        lanes = val(a[0]).shape
        if lanes != (32,):
            raise ValueError(f"mma.sync needs one warp of 32 threads; got {tuple(lanes)}")
        a_regs = torch.stack([halves_to_float(val(r), ty) for r in a], dim=1)  # [32, 4, 2]
        b_regs = torch.stack([halves_to_float(val(r), ty) for r in b], dim=1)  # [32, 2, 2]
        cf = torch.stack([_as_f32(val(r)) for r in c], dim=1)  # [32, 4]
        out = mma_m16n8k16(a_regs, b_regs, cf)
        for i, r in enumerate(d):
            regs[r] = f32_bits(out[:, i])
