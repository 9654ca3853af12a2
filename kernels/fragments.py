"""Weights stored in the register order of the tensor cores' `mma.sync.m16n8k16` A operand, so that a GEMV kernel
(kernels/qgemv.py) turns each loaded 32-bit word into MMA operands with a few integer instructions and no data
movement between threads. The values are those of kernels/quant.py (same q, same scales and zeros, same bytes
per weight); only their order in memory differs. This module holds the packers, their PyTorch inverses, and an
emulator of the m16n8k16 fragment semantics that the CPU tests check the packers against.

The A operand of m16n8k16 (16 rows x 16 columns of one k-tile) sits in a warp as four 32-bit registers per lane
(PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane l holds rows r = l / 4 and r + 8, columns c = 2 (l % 4),
c + 1, c + 8, c + 9:
    a0 = (r, c), (r, c + 1)        a1 = (r + 8, c), (r + 8, c + 1)
    a2 = (r, c + 8), (r, c + 9)    a3 = (r + 8, c + 8), (r + 8, c + 9)
(each register two 16-bit halves, the lower column in the low half). B (16 x 8, x^T) is two registers per lane:
b0 = (k = c, c + 1; n = r), b1 = (k = c + 8, c + 9; n = r); D (16 x 8 fp32) is four: (r, c), (r, c + 1),
(r + 8, c), (r + 8, c + 1), columns being batch rows n.

The K order inside a step of 64 columns is permuted (the MMA sums over k, so any order used for both W and x is
the same sum): k-tile j's operand columns 2t, 2t + 1 (t = lane % 4) are the step's columns 16 t + 4 j + {0, 1},
and its columns 2t + 8, 2t + 9 are 16 t + 4 j + {2, 3}. A lane's B operands for the 4 k-tiles are then x's 16
contiguous columns 16 t .. 16 t + 15 (two 16-byte loads of bf16), and its A values per row are runs of 4 columns.

int4 fragments: one word per lane and k-tile holds its 8 nibbles, a_i's low column in bits 4i..4i+3 and its high
column in bits 16 + 4i..16 + 4i + 3, so that `(w >> 4i) & 0x000F000F | MAGIC` is a_i as a 16-bit float pair
(bf16: MAGIC 0x43004300 gives 128 + q; fp16: 0x64006400 gives 1024 + q). A lane's 4 words (4 k-tiles, 64 columns)
are contiguous: one 16-byte load. Storage [ceil(N/16), ceil(K/64), 32, 4]
int32, a 16-row x 64-column block per 512 contiguous bytes, blocks of one row tile consecutive along K.

int8 fragments: two words per lane and k-tile, w0 = bytes (a0 low, a0 high, a1 low, a1 high), w1 the same for a2,
a3; `prmt(w ^ 0x80808080, 0x64646464, 0x4140 / 0x4342)` gives fp16x2 {1024 + q + 128}. A lane's 8 words (4
k-tiles) are contiguous, the four w0 first, then the four w1: two 16-byte loads. Storage
[ceil(N/16), ceil(K/64), 32, 8] int32.
Rows and columns past N and K are zero-filled (the kernels mask them); Llama shapes need no padding.
"""
from __future__ import annotations

import torch

FRAG_ROWS = 16  # rows of one mma tile (the m of m16n8k16)
FRAG_COLS = 64  # columns one lane's 16-byte int4 load covers: 4 k-tiles of 16
LANES = 32


def _lane_coords(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [32, 1, 4], step columns [32, 4 (k-tile), 4]) of the low half of a0..a3 of each lane and k-tile, in the
    permuted K order above (the high half is column + 1)."""
    lane = torch.arange(LANES, device=device)
    r, t = lane // 4, lane % 4
    rows = torch.stack([r, r + 8, r, r + 8], dim=1)[:, None, :]
    j = torch.arange(4, device=device)
    cols = 16 * t[:, None, None] + 4 * j[None, :, None] + torch.tensor([0, 0, 2, 2], device=device)[None, None, :]
    return rows, cols


def _tiles(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] (any integer dtype) -> [Nt, Ks, 16 (row), 64 (step column)] int64, zero-filled past N, K."""
    n, k = q.shape
    nt, ks = -(-n // FRAG_ROWS), -(-k // FRAG_COLS)
    full = torch.zeros(nt * FRAG_ROWS, ks * FRAG_COLS, dtype=torch.int64, device=q.device)
    full[:n, :k] = q.to(torch.int64)
    return full.reshape(nt, FRAG_ROWS, ks, FRAG_COLS).permute(0, 2, 1, 3)


def _gather(tiles: torch.Tensor, col_offset: int) -> torch.Tensor:
    """tiles [Nt, Ks, 16, 64] -> [Nt, Ks, 32, 4 (k-tile), 4 (a_i)]: the value at (row, column + col_offset) of each
    lane's a_i, per k-tile."""
    rows, cols = _lane_coords(tiles.device)
    return tiles[:, :, rows, cols + col_offset]


def int4_to_fragments(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] values 0..15 (kernels.quant.unpack_int4) -> [ceil(N/16), ceil(K/64), 32, 4] int32 fragment words."""
    t = _tiles(q)
    lo, hi = _gather(t, 0), _gather(t, 1)  # [Nt, Ks, 32, 4 (k-tile), 4 (a_i)]
    shift = 4 * torch.arange(4, device=q.device)
    words = ((lo << shift) | (hi << (16 + shift))).sum(dim=-1)  # disjoint bit fields: the sum is an OR
    return (words - ((words >> 31) << 32)).to(torch.int32)  # as signed 32-bit


def int4_from_fragments(frag: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse: fragment words -> q [N, K] uint8 (values 0..15)."""
    w = frag.to(torch.int64) & 0xFFFFFFFF
    shift = 4 * torch.arange(4, device=frag.device)
    lo = (w[..., None] >> shift) & 0xF  # [Nt, Ks, 32, 4 (k-tile), 4 (a_i)]
    hi = (w[..., None] >> (16 + shift)) & 0xF
    return _scatter(lo, hi, n, k)


def int8_to_fragments(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] int8 -> [ceil(N/16), ceil(K/64), 32, 8] int32 fragment words (bytes as stored, two's complement)."""
    t = _tiles(q.to(torch.int64) & 0xFF)
    lo, hi = _gather(t, 0), _gather(t, 1)  # [Nt, Ks, 32, 4 (k-tile), 4 (a_i)]
    w0 = lo[..., 0] | (hi[..., 0] << 8) | (lo[..., 1] << 16) | (hi[..., 1] << 24)
    w1 = lo[..., 2] | (hi[..., 2] << 8) | (lo[..., 3] << 16) | (hi[..., 3] << 24)
    words = torch.cat([w0, w1], dim=-1)  # [Nt, Ks, 32, 8]: k-tile j in words j (a0, a1) and 4 + j (a2, a3)
    return (words - ((words >> 31) << 32)).to(torch.int32)


def int8_from_fragments(frag: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse: fragment words -> q [N, K] int8."""
    w = (frag.to(torch.int64) & 0xFFFFFFFF).unflatten(-1, (2, 4)).transpose(-1, -2)  # [Nt, Ks, 32, 4 (k-tile), 2]
    byte = lambda v, i: (v >> (8 * i)) & 0xFF  # noqa: E731
    lo = torch.stack([byte(w[..., 0], 0), byte(w[..., 0], 2), byte(w[..., 1], 0), byte(w[..., 1], 2)], dim=-1)
    hi = torch.stack([byte(w[..., 0], 1), byte(w[..., 0], 3), byte(w[..., 1], 1), byte(w[..., 1], 3)], dim=-1)
    q = _scatter(lo, hi, n, k)
    return (q.to(torch.int16) - ((q.to(torch.int16) >> 7) << 8)).to(torch.int8)


def _scatter(lo: torch.Tensor, hi: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """[Nt, Ks, 32, 4 (k-tile), 4 (a_i)] low / high column values -> the matrix [N, K] uint8."""
    nt, ks = lo.shape[:2]
    rows, cols = _lane_coords(lo.device)
    t = torch.zeros(nt, ks, FRAG_ROWS, FRAG_COLS, dtype=torch.int64, device=lo.device)
    t[:, :, rows.expand_as(cols), cols] = lo
    t[:, :, rows.expand_as(cols), cols + 1] = hi
    full = t.permute(0, 2, 1, 3).reshape(nt * FRAG_ROWS, ks * FRAG_COLS)
    return full[:n, :k].to(torch.uint8)


def b_operand_columns(device="cpu") -> torch.Tensor:
    """[32, 4 (k-tile), 2 (b0, b1), 2 (half)]: the step column of x each lane's B registers hold (permuted order):
    lane l, k-tile j -> 16 (l % 4) + 4 j + 2 reg + half, i.e. x[16 (l % 4) + 0..15] in register order."""
    lane = torch.arange(LANES, device=device)
    j = torch.arange(4, device=device)
    return (16 * (lane % 4))[:, None, None, None] + 4 * j[None, :, None, None] \
        + 2 * torch.arange(2, device=device)[None, None, :, None] + torch.arange(2, device=device)[None, None, None, :]


# ----------------------------------------------------------------------------------------------
# The fragment semantics of mma.sync.m16n8k16 (row.col), as the PTX ISA states them, in PyTorch: the tests run the
# kernels' register-level recipe through this to check the packers and the kernels' index arithmetic on a CPU.
# ----------------------------------------------------------------------------------------------
def mma_m16n8k16(a_regs: torch.Tensor, b_regs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One warp's D = A B + C. a_regs [32, 4, 2] (lane, register, half), b_regs [32, 2, 2], c [32, 4] fp32 (d0..d3)
    -> d [32, 4], in the fragment layouts of the PTX ISA (module docstring; no K permutation here: that is the
    packers' business); A, B, C as fp32 values."""
    lane = torch.arange(LANES)
    r0, c0 = lane // 4, 2 * (lane % 4)
    rows = torch.stack([r0, r0 + 8, r0, r0 + 8], dim=1)
    cols = torch.stack([c0, c0, c0 + 8, c0 + 8], dim=1)
    a = torch.zeros(16, 16, dtype=torch.float32)
    for half in range(2):
        a[rows, cols + half] = a_regs[:, :, half].float()
    r, cc = lane // 4, 2 * (lane % 4)
    b = torch.zeros(16, 8, dtype=torch.float32)
    for reg in range(2):
        for half in range(2):
            b[cc + 8 * reg + half, r] = b_regs[:, reg, half].float()
    d = a @ b
    d_rows = torch.stack([r, r, r + 8, r + 8], dim=1)
    d_cols = torch.stack([cc, cc + 1, cc, cc + 1], dim=1)
    return d[d_rows, d_cols] + c.float()
