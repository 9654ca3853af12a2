"""Quantized GEMV on the tensor cores, in Gluon (Hopper; any GPU with mma.sync m16n8k16): y = x @ W.T (+ residual),
W int4 (group-wise) or int8 (per channel) in the fragment layouts of kernels/fragments.py.

Why: on the FMA path the int4 loop issues 7.7 SASS instructions per weight and int8 4.4 (one I2F), while the
memory stream at the copy rate leaves room for about 4 (scripts/gemv_sass.py; docs/perf-notes.md), so the
quantized GEMVs streamed at 25-55% of copy. Here the tensor cores do every multiply-add, fp32 accumulation, and the
ALU only turns weights into MMA operands:
- the weights are stored in the A-operand register order of mma.sync.m16n8k16 (the weights are the M side:
  "swap-AB", x^T is the 16 x 8 B side, batch padded to 8), so one 16-byte load per lane brings the operands of
  four k-tiles and no value crosses a lane;
- int4: per 32-bit word (8 weights) 3 shifts and 4 LOP3 give 16-bit MAGIC + q (bf16 128 + q with bf16 x; fp16
  1024 + q, then 4 HSUB2 to q - 8, with fp16 x); int8: a XOR and 2 PRMT give fp16 1024 + 128 + q per 4 weights, and
  bf16 x is converted to fp16 per fragment (exact in fp16's range);
- the offsets left in the operands leave through sum x, an MMA of x with an all-ones A, once per group (int4:
  y += s * sum x (q + OFFSET) + (z - OFFSET s) * sum x) or once at the end (int8: sum x (q + OFFSET) - OFFSET sum x).
A program owns RT row tiles of 16 rows (RT = 1) and its WARPS warps split K, their sums meeting at the end. Three
kernels share these device functions: _qgemv_kernel (a warp's next group in flight), _qgemv_chunk_kernel (CH groups
per iteration) and _qgemv_tma_kernel (Hopper: a TMA ring in shared memory, kept as a measured variant); pick_launch
chooses between the first two by shape (docs/perf-notes.md).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels import sm_count
from kernels.fragments import FRAG_ROWS, int4_to_fragments, int8_to_fragments
from kernels.quant import Kind, QLinear, unpack_int4

MAX_BATCH_MMA = 8  # the N of m16n8k16: batch rows per MMA (an n-tile)
MAX_BATCH = 16  # two n-tiles

_MMA = "mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{$0, $1, $2, $3}}, {{a0, a1, a2, a3}}, {{{b0}, {b1}}}, {{{c}}};\n"
# 16-bit float pairs: the magic that turns a nibble / byte in a half's low bits into MAGIC + value exactly, and the
# offset of the value that comes out: q + OFFSET (int4: q - 8 + OFFSET; int8: q + OFFSET). The MMA sums
# x (q + OFFSET); the kernel subtracts OFFSET * sum x once per group (sum x: an MMA of x with ones), which costs a
# few instructions per group instead of one 16-bit subtraction per two weights.
_BF16 = dict(t="bf16", magic="0x43004300", int4_offset=136)  # bf16 128 + q
_F16 = dict(t="f16", magic="0x64006400", int4_offset=0, int8_offset=1152)  # fp16 1024 + q (int8: q + 128)
# fp16 int4 subtracts 1032 per weight pair instead (exact): folding an offset of 1032 left errors of 2 fp16 ulps in
# the outputs of a 64-column GEMV on the H200 (tests/kernels/test_qgemv.py), where bf16's 136 leaves none.
_F16_INT4 = dict(_F16, sub="0x64086408")


def _int4_mma_ptx(f: dict) -> str:
    """Four k-tiles: per lane one word of 8 nibbles -> a0..a3 (MAGIC + q, or q - 8 where f has a `sub`), then
    D += A B. Operands: $0-3 D (f32), $4-7 the words, $8-11 b0 and $12-15 b1 of each k-tile, $16-19 C."""
    body = ["{\n.reg .b32 a0, a1, a2, a3, t, bias;\n", f"mov.b32 bias, {f.get('sub', '0')};\n"]
    for j in range(4):
        w = f"${4 + j}"
        body.append(f"lop3.b32 a0, {w}, 0x000F000F, {f['magic']}, 0xEA;\n")  # (w & mask) | magic
        for i in (1, 2, 3):
            body.append(f"shr.u32 t, {w}, {4 * i};\nlop3.b32 a{i}, t, 0x000F000F, {f['magic']}, 0xEA;\n")
        if "sub" in f:
            body.append("".join(f"sub.rn.{f['t']}x2 a{i}, a{i}, bias;\n" for i in range(4)))
        acc = "$16, $17, $18, $19" if j == 0 else "$0, $1, $2, $3"
        body.append(_MMA.format(t=f["t"], b0=f"${8 + j}", b1=f"${12 + j}", c=acc))
    return "".join(body) + "}"


def int8_f16_ptx(word: str, lo: str, hi: str) -> str:
    """PTX that turns the 4 int8 of `word` into fp16 1024 + 128 + q, exactly: bytes 0, 1 in the halves of `lo`,
    bytes 2, 3 in those of `hi` (a XOR makes each byte q + 128, unsigned; a byte permute puts each under the fp16
    exponent of 1024). The enclosing asm declares .b32 registers u and magic, with magic = 0x64646464. Shared by
    this GEMV and the Gluon megakernel (kernels/mega/hopper.py)."""
    return f"xor.b32 u, {word}, 0x80808080;\nprmt.b32 {lo}, u, magic, 0x4140;\nprmt.b32 {hi}, u, magic, 0x4342;\n"


def _int8_mma_ptx(f: dict) -> str:
    """Four k-tiles: per lane two words of 4 bytes each -> a0..a3 (fp16 1152 + q), then D += A B. Operands: $0-3 D,
    $4-7 the first word (a0, a1) and $8-11 the second (a2, a3) of each k-tile, $12-15 b0 and $16-19 b1, $20-23 C."""
    body = ["{\n.reg .b32 a0, a1, a2, a3, u, magic;\nmov.b32 magic, 0x64646464;\n"]
    for j in range(4):
        for w, (lo, hi) in ((f"${4 + j}", ("a0", "a1")), (f"${8 + j}", ("a2", "a3"))):
            body.append(int8_f16_ptx(w, lo, hi))
        acc = "$20, $21, $22, $23" if j == 0 else "$0, $1, $2, $3"
        body.append(_MMA.format(t="f16", b0=f"${12 + j}", b1=f"${16 + j}", c=acc))
    return "".join(body) + "}"


def _ones_mma_ptx(f: dict) -> str:
    """Four k-tiles of D += ONES B: each D element becomes C + the sum of x over the 64 columns, per batch row.
    Operands: $0-3 D, $4-7 b0 and $8-11 b1 of each k-tile, $12-15 C."""
    one = "0x3F803F80" if f["t"] == "bf16" else "0x3C003C00"
    body = [f"{{\n.reg .b32 a0, a1, a2, a3;\nmov.b32 a0, {one};\nmov.b32 a1, a0;\nmov.b32 a2, a0;\nmov.b32 a3, a0;\n"]
    for j in range(4):
        acc = "$12, $13, $14, $15" if j == 0 else "$0, $1, $2, $3"
        body.append(_MMA.format(t=f["t"], b0=f"${4 + j}", b1=f"${8 + j}", c=acc))
    return "".join(body) + "}"


INT4_BF16_PTX = gl.constexpr(_int4_mma_ptx(_BF16))
INT4_F16_PTX = gl.constexpr(_int4_mma_ptx(_F16_INT4))
INT4_BF16_OFFSET = gl.constexpr(float(_BF16["int4_offset"]))
INT4_F16_OFFSET = gl.constexpr(float(_F16["int4_offset"]))
INT8_F16_OFFSET = gl.constexpr(float(_F16["int8_offset"]))
INT8_F16_PTX = gl.constexpr(_int8_mma_ptx(_F16))
ONES_BF16_PTX = gl.constexpr(_ones_mma_ptx(_BF16))
ONES_F16_PTX = gl.constexpr(_ones_mma_ptx(_F16))
# bf16x2 -> f16x2 (exact for values in fp16's range): the halves to fp32 (shifts), then one packed conversion
BF16X2_TO_F16X2_PTX = gl.constexpr("{\n.reg .b32 lo, hi;\nshl.b32 lo, $1, 16;\nand.b32 hi, $1, 0xFFFF0000;\n"
                                   "cvt.rn.f16x2.f32 $0, hi, lo;\n}")
KIND_INT8 = gl.constexpr(int(Kind.INT8))
KIND_INT4 = gl.constexpr(int(Kind.INT4))


@gluon.constexpr_function
def _dim_layout(layout, dim, rank):
    """The 1-D layout of dimension `dim` of a rank-`rank` distributed layout (the others sliced away)."""
    out = layout
    for d in reversed(range(rank)):
        if d != dim:
            out = gl.SliceLayout(d, out)
    return out


@gluon.jit
def _index(n: gl.constexpr, dim: gl.constexpr, layout: gl.constexpr, RANK: gl.constexpr = 4):
    """arange(0, n) along dimension `dim` of a RANK-D layout, expanded to RANK dims (size 1 elsewhere)."""
    i = gl.arange(0, n, layout=_dim_layout(layout, dim, RANK))
    for d in gl.static_range(RANK):
        if d != dim:
            i = gl.expand_dims(i, d)
    return i


@gluon.jit
def _x_fragments(x_ptr, stride_xb, B, K2, k0, wp, LX: gl.constexpr, CVT: gl.constexpr, N0: gl.constexpr = 0,
                 CLAMP: gl.constexpr = False):
    """The B operands (b0, b1: [1, WARPS, 32, 4] int32, 16-bit float pairs) of 4 k-tiles from column k0 (a tensor
    per warp) for batch rows N0..N0 + 7: in the permuted K order of kernels/fragments.py lane l holds
    x[N0 + l / 4, k0 + 16 (l % 4) + 0..15], two 16-byte loads; 0 past B and K, or with CLAMP (int4, K a multiple of
    64) x's last row and last k-step there. x_ptr: x as int32 pairs [B, K2 = K / 2]. CVT: bf16 pairs to fp16 pairs."""
    lane = _index(32, 2, LX)
    e = _index(8, 3, LX)  # [.., 8]: pairs b0 j, b1 j interleaved: word 2 j + reg
    n = N0 + lane // 4
    if CLAMP:  # past B and K: in-range values instead of zeros (finite, for operands whose result is discarded);
        # clamped per lane and per k-step, not per element, so the loads stay 16-byte vectors. Needs K % 64 == 0.
        kw = gl.minimum(k0, 2 * K2 - 64) // 2 + 8 * (lane % 4) + e + 0 * wp
        words = gl.load(x_ptr + gl.minimum(n, B - 1) * stride_xb + kw)
    else:
        kw = k0 // 2 + 8 * (lane % 4) + e + 0 * wp  # word (pair) index along K
        words = gl.load(x_ptr + n * stride_xb + kw, mask=(n < B) & (kw < K2), other=0)
    if CVT:
        words = gl.inline_asm_elementwise(BF16X2_TO_F16X2_PTX, "=r,r", [words], dtype=gl.int32, is_pure=True,
                                          pack=1)
    b0, b1 = gl.split(words.reshape([1, words.shape[1], 32, 4, 2]))
    return b0, b1


@gluon.jit
def _group_x(x_ptr, stride_xb, B, K2, k0, wx, LX: gl.constexpr, CVT: gl.constexpr, KPG: gl.constexpr,
             NT: gl.constexpr, CLAMP: gl.constexpr = False):
    """The x fragments of one scale group of KPG k-steps from column k0: (xa0, xa1) of its first k-step and (xb0,
    xb1) of its second for batch rows 0-7, (ya0, ya1, yb0, yb1) the same for rows 8-15; the ones a KPG or NT does
    not use are aliases of xa0 / xa1."""
    xa0, xa1 = _x_fragments(x_ptr, stride_xb, B, K2, k0, wx, LX, CVT, 0, CLAMP)
    xb0, xb1, ya0, ya1, yb0, yb1 = xa0, xa1, xa0, xa1, xa0, xa1
    if KPG == 2:
        xb0, xb1 = _x_fragments(x_ptr, stride_xb, B, K2, k0 + 64, wx, LX, CVT, 0, CLAMP)
    if NT == 2:
        ya0, ya1 = _x_fragments(x_ptr, stride_xb, B, K2, k0, wx, LX, CVT, 8, CLAMP)
        if KPG == 2:
            yb0, yb1 = _x_fragments(x_ptr, stride_xb, B, K2, k0 + 64, wx, LX, CVT, 8, CLAMP)
    return xa0, xa1, xb0, xb1, ya0, ya1, yb0, yb1


@gluon.jit
def _first_step_in(xa0, xa1, ya0, ya1, L: gl.constexpr, NT: gl.constexpr):
    """The first k-step's x fragments (rows 0-7, and 8-15 when NT == 2) in the accumulators' layout L (the same
    registers: the conversion moves nothing, asserted)."""
    xa0 = gl.convert_layout(xa0, L, assert_trivial=True)
    xa1 = gl.convert_layout(xa1, L, assert_trivial=True)
    if NT == 2:
        ya0 = gl.convert_layout(ya0, L, assert_trivial=True)
        ya1 = gl.convert_layout(ya1, L, assert_trivial=True)
    return xa0, xa1, ya0, ya1


@gluon.jit
def _group_words(p, ok, KIND: gl.constexpr, KPG: gl.constexpr, STEP: gl.constexpr, CLAMP: gl.constexpr):
    """A lane's words of one group at p (wa: its first k-step, wb: its second; int8: wa1 the second words of each
    k-tile). CLAMP (int4, p clamped into range by the caller): unmasked; else masked by ok (0 where it is false)."""
    if CLAMP:
        wa = gl.load(p)
        wb = gl.load(p + STEP) if KPG == 2 else wa
        return wa, wa, wb
    return (gl.load(p, mask=ok, other=0), gl.load(p + 4, mask=ok & (KIND == KIND_INT8), other=0),
            gl.load(p + STEP, mask=ok & (KPG == 2), other=0))


@gluon.jit
def _chunk_words(p, ok, KIND: gl.constexpr, CLAMP: gl.constexpr):
    """A lane's words of the chunk slots at p (wa; int8: wa1, the second words of each k-tile), as _group_words."""
    if CLAMP:
        wa = gl.load(p)
        return wa, wa
    return gl.load(p, mask=ok, other=0), gl.load(p + 4, mask=ok & (KIND == KIND_INT8), other=0)


@gluon.constexpr_function
def _acc_shape(shape):
    """[..., 2, 2] -> [..., 4]"""
    return list(shape[:-2]) + [4]


@gluon.jit
def _rows_to_acc(v, L: gl.constexpr):
    """[..., 2] values of a lane's two rows (r, r + 8) -> [..., 4] in the accumulators' layout L, whose last dim is
    d0..d3 = rows r, r, r + 8, r + 8: each value twice, in registers (no data moves, asserted)."""
    v = gl.join(v, v)
    return gl.convert_layout(v.reshape(_acc_shape(v.shape)), L, assert_trivial=True)


@gluon.jit
def _group_fold(s_ptr, z_ptr, rows2, g, ok2, stride_sn, L: gl.constexpr, OFFSET: gl.constexpr):
    """The int4 group fold's factors for the accumulators in L: s and z - OFFSET s (y += s sum x (q + OFFSET) +
    (z - OFFSET s) sum x), loaded once per row (rows2: [..., 2], a lane's rows r and r + 8; 0 where ok2 is false):
    two 16-bit loads per row and group, where loading per accumulator element took four."""
    off = rows2 * stride_sn + g
    s = gl.load(s_ptr + off, mask=ok2, other=0.0).to(gl.float32)
    z = gl.load(z_ptr + off, mask=ok2, other=0.0).to(gl.float32)
    return _rows_to_acc(s, L), _rows_to_acc(z - OFFSET * s, L)


@gluon.jit
def _int4_step(w, b0, b1, d, dx, X_BF16: gl.constexpr):
    """One int4 k-step: d += (MAGIC + q) x (fp16: q - 8), dx += sum x, over 4 k-tiles."""
    if X_BF16:
        d = gl.inline_asm_elementwise(INT4_BF16_PTX, "=f,=f,=f,=f," + "r," * 12 + "f,f,f,f",
                                      [w, b0, b1, d], dtype=gl.float32, is_pure=True, pack=4)
        dx = gl.inline_asm_elementwise(ONES_BF16_PTX, "=f,=f,=f,=f," + "r," * 8 + "f,f,f,f",
                                       [b0, b1, dx], dtype=gl.float32, is_pure=True, pack=4)
    else:
        d = gl.inline_asm_elementwise(INT4_F16_PTX, "=f,=f,=f,=f," + "r," * 12 + "f,f,f,f",
                                      [w, b0, b1, d], dtype=gl.float32, is_pure=True, pack=4)
        dx = gl.inline_asm_elementwise(ONES_F16_PTX, "=f,=f,=f,=f," + "r," * 8 + "f,f,f,f",
                                       [b0, b1, dx], dtype=gl.float32, is_pure=True, pack=4)
    return d, dx


@gluon.jit
def _int4_group(wa, wb, b0a, b1a, b0b, b1b, L: gl.constexpr, RT: gl.constexpr, KPG: gl.constexpr,
                X_BF16: gl.constexpr):
    """One scale group of KPG k-steps (slot a, and b when KPG == 2) from zero: (sum x (q + OFFSET), sum x)."""
    WARPS: gl.constexpr = gl.num_warps()
    d = gl.zeros([RT, WARPS, 32, 4], gl.float32, layout=L)
    dx = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)
    d, dx = _int4_step(wa, b0a, b1a, d, dx, X_BF16)
    if KPG == 2:
        b0b = gl.convert_layout(b0b, L, assert_trivial=True)
        b1b = gl.convert_layout(b1b, L, assert_trivial=True)
        d, dx = _int4_step(wb, b0b, b1b, d, dx, X_BF16)
    return d, dx


@gluon.jit
def _int8_step(w0, w1, b0, b1, acc, acc_x):
    """One int8 k-step: acc += (1152 + q) x over 4 k-tiles (w0: their a0 / a1 words, w1: a2 / a3), acc_x += sum x."""
    acc = gl.inline_asm_elementwise(INT8_F16_PTX, "=f,=f,=f,=f," + "r," * 16 + "f,f,f,f", [w0, w1, b0, b1, acc],
                                    dtype=gl.float32, is_pure=True, pack=4)
    acc_x = gl.inline_asm_elementwise(ONES_F16_PTX, "=f,=f,=f,=f," + "r," * 8 + "f,f,f,f", [b0, b1, acc_x],
                                      dtype=gl.float32, is_pure=True, pack=4)
    return acc, acc_x


@gluon.jit
def _store_out(out, rows, cols, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, KIND: gl.constexpr,
               HAS_RESIDUAL: gl.constexpr):
    """y[cols, rows] = out (d0..d3 of each lane: rows r, r, r + 8, r + 8, batch rows c, c + 1), times the int8
    channel scale, plus the residual."""
    row_ok = rows < N
    if KIND == KIND_INT8:  # W = q * s[n]: the per-channel scale once, at the end
        out = out * gl.load(s_ptr + rows, mask=row_ok, other=0.0).to(gl.float32)
    out_ok = row_ok & (cols < B)
    if HAS_RESIDUAL:
        out += gl.load(res_ptr + cols * stride_rb + rows, mask=out_ok, other=0.0).to(gl.float32)
    gl.store(y_ptr + cols * stride_yb + rows, out.to(y_ptr.dtype.element_ty), mask=out_ok)


@gluon.jit
def _store_rows(acc, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, L: gl.constexpr, RT: gl.constexpr,
                KIND: gl.constexpr, HAS_RESIDUAL: gl.constexpr, N0: gl.constexpr):
    """Stores the warps' sum of acc (each warp a K slice of the program's RT row tiles) for batch rows N0..N0 + 7."""
    out = gl.sum(acc, axis=1)  # [RT, 32, 4]: the sum of the warps' K slices
    L3: gl.constexpr = gl.SliceLayout(1, L)
    tile = gl.program_id(0) * RT + _index(RT, 0, L3, 3)
    lane = _index(32, 1, L3, 3)
    q4 = _index(4, 2, L3, 3)
    rows = tile * 16 + lane // 4 + 8 * (q4 // 2)
    cols = N0 + 2 * (lane % 4) + q4 % 2  # batch rows of d0..d3: c, c + 1, c, c + 1
    _store_out(out, rows, cols, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, KIND, HAS_RESIDUAL)


@gluon.jit
def _qgemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, res_ptr, y_ptr, B, N, K, stride_xb, stride_sn, stride_rb, stride_yb,
                  KIND: gl.constexpr, GROUP: gl.constexpr, RT: gl.constexpr, NT: gl.constexpr,
                  HAS_RESIDUAL: gl.constexpr, X_BF16: gl.constexpr):
    # grid: (cdiv(N, 16 RT),); the warps of a program split K. x: [B, K] (B <= 8 NT) as int32 pairs [B, K / 2],
    # W: fragments [cdiv(N, 16), cdiv(K, 64), 32, WPL] int32, s / z: [N, K / GROUP] (int4) or s: [N] (int8),
    # residual / y: [B, N]. X_BF16: x is bf16 (else fp16). NT: n-tiles of 8 batch rows (1 or 2); the weights'
    # operands are made once per k-tile and serve every n-tile (the second costs MMAs and x loads, no dequantising).
    WARPS: gl.constexpr = gl.num_warps()
    WPL: gl.constexpr = 4 if KIND == KIND_INT4 else 8  # words per lane per k-step of 64 columns
    KPG: gl.constexpr = GROUP // 64 if KIND == KIND_INT4 else 1  # k-steps per scale group (int8: per k-step)
    gl.static_assert(NT == 1 or NT == 2, "qgemv: 1 or 2 n-tiles of 8 batch rows")
    # [row tile, warp, lane, 4]: the last dim is the k-tile of a weight / x word, or d0..d3 of an accumulator
    L: gl.constexpr = gl.BlockedLayout([RT, 1, 1, 4], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    LX: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    rt = _index(RT, 0, L)
    wp = _index(WARPS, 1, L)
    lane = _index(32, 2, L)
    q4 = _index(4, 3, L)
    tile = gl.program_id(0) * RT + rt  # [RT, 1, 1, 1]
    k_steps = gl.cdiv(K, 64)
    n_groups = k_steps // KPG
    per_warp = gl.cdiv(n_groups, WARPS)  # groups of K each warp walks: warp w the groups w * per_warp + i
    words = (tile * k_steps * 32 + lane) * WPL + q4  # this lane's first words of k-step 0
    tile_ok = tile * 16 < N
    # a lane's two rows, r and r + 8 (the accumulator's d0, d1 and d2, d3), for the group scales
    L2: gl.constexpr = gl.BlockedLayout([RT, 1, 1, 2], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    rows2 = (gl.program_id(0) * RT + _index(RT, 0, L2)) * 16 + _index(32, 2, L2) // 4 + 8 * _index(2, 3, L2)
    rows2_ok = rows2 < N
    g0_2 = _index(WARPS, 1, L2) * per_warp  # the warp's first group, in L2
    OFFSET: gl.constexpr = INT4_BF16_OFFSET if X_BF16 else INT4_F16_OFFSET
    wx = _index(WARPS, 1, LX)
    # Warp w walks the groups w * per_warp .. (w + 1) * per_warp - 1 and loads one group ahead of its arithmetic:
    # the words and x fragments of group i + 1 are in flight while group i's MMAs run. A group is KPG (1 or 2)
    # k-steps: slot a is its first, slot b its second. x fragments: xa / xb batch rows 0-7, ya / yb rows 8-15.
    gl.static_assert(KPG == 1 or KPG == 2, "qgemv: a scale group is 64 or 128 columns")
    XCVT: gl.constexpr = KIND == KIND_INT8 and X_BF16
    STEP: gl.constexpr = 32 * WPL  # words of one k-step of one row tile
    g0 = wp * per_warp
    w_ptrs = w_ptr + words + g0 * (KPG * STEP)
    acc = gl.zeros([RT, WARPS, 32, 4], gl.float32, layout=L)  # int4: the scaled group sums; int8: sum x (q + OFFSET)
    acc_x = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)  # int8: sum x
    acc2 = gl.zeros([RT, WARPS, 32, 4], gl.float32, layout=L)  # the same for batch rows 8-15 (NT == 2)
    acc_x2 = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)
    # int4: a group past the warp's share or past K folds with s = z = 0 (masked scale loads), so its operands need
    # only be finite: its weight and x loads are clamped into range instead of masked (no predicates, no zero-fill)
    CLAMP: gl.constexpr = KIND == KIND_INT4
    gl.static_assert(RT == 1 or not CLAMP, "qgemv: the unmasked int4 weight loads assume one row tile per program")
    g_last = gl.maximum(gl.minimum(g0 + per_warp, n_groups) - 1, 0)  # the warp's last group (in range)
    w_base = w_ptr + words
    p = w_base + gl.minimum(g0, g_last) * (KPG * STEP) if CLAMP else w_ptrs
    wa_next, wa1_next, wb_next = _group_words(p, tile_ok & (g0 < n_groups), KIND, KPG, STEP, CLAMP)
    gx0 = wx * per_warp
    K2 = K // 2
    xa0_next, xa1_next, xb0_next, xb1_next, ya0_next, ya1_next, yb0_next, yb1_next = _group_x(
        x_ptr, stride_xb, B, K2, gx0 * (KPG * 64), wx, LX, XCVT, KPG, NT, CLAMP)
    for i in range(0, per_warp):
        wa, wa1, wb = wa_next, wa1_next, wb_next
        xa0, xa1, xb0, xb1 = xa0_next, xa1_next, xb0_next, xb1_next
        ya0, ya1, yb0, yb1 = ya0_next, ya1_next, yb0_next, yb1_next
        ok_next = tile_ok & (g0 + i + 1 < n_groups) & (i + 1 < per_warp)
        p = w_base + gl.minimum(g0 + i + 1, g_last) * (KPG * STEP) if CLAMP else w_ptrs + (i + 1) * (KPG * STEP)
        wa_next, wa1_next, wb_next = _group_words(p, ok_next, KIND, KPG, STEP, CLAMP)
        xa0_next, xa1_next, xb0_next, xb1_next, ya0_next, ya1_next, yb0_next, yb1_next = _group_x(
            x_ptr, stride_xb, B, K2, (gx0 + i + 1) * (KPG * 64), wx, LX, XCVT, KPG, NT, CLAMP)
        xa0, xa1, ya0, ya1 = _first_step_in(xa0, xa1, ya0, ya1, L, NT)
        if KIND == KIND_INT4:
            d, dx = _int4_group(wa, wb, xa0, xa1, xb0, xb1, L, RT, KPG, X_BF16)
            # y += s * sum x (q - 8) + z * sum x = s * sum x (q + OFFSET) + (z - OFFSET s) * sum x
            s, zo = _group_fold(s_ptr, z_ptr, rows2, g0_2 + i, rows2_ok & (g0_2 + i < n_groups), stride_sn, L, OFFSET)
            acc = gl.fma(zo, dx, gl.fma(s, d, acc))
            if NT == 2:
                d2, dx2 = _int4_group(wa, wb, ya0, ya1, yb0, yb1, L, RT, KPG, X_BF16)
                acc2 = gl.fma(zo, dx2, gl.fma(s, d2, acc2))
        else:
            acc, acc_x = _int8_step(wa, wa1, xa0, xa1, acc, acc_x)
            if NT == 2:
                acc2, acc_x2 = _int8_step(wa, wa1, ya0, ya1, acc2, acc_x2)
    if KIND == KIND_INT8:
        acc = acc - INT8_F16_OFFSET * acc_x  # sum x q
        acc2 = acc2 - INT8_F16_OFFSET * acc_x2
    _store_rows(acc, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, L, RT, KIND, HAS_RESIDUAL, 0)
    if NT == 2:
        _store_rows(acc2, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, L, RT, KIND, HAS_RESIDUAL, 8)


# ----------------------------------------------------------------------------------------------
# The chunked variant: CH scale groups per loop iteration, loaded as one tensor
# ----------------------------------------------------------------------------------------------
# Why: a short GEMV is latency-bound (llama8b qkv int4: each warp walks 4 groups of K, one dependent load round
# trip per group with one group in flight). Here a warp's loop iteration takes CH groups at once (their words and
# x fragments as [.., CH, KPG, 4] tensors, the next iteration's in flight meanwhile): CH x the bytes in flight per
# warp and 1 / CH the round trips, for more registers. Each inline-asm call still takes one k-step (pack=4 over the
# last dimension), so the math is the kernel's above, element for element.
@gluon.jit
def _x_chunk(x_ptr, stride_xb, B, K2, k0, g, g_end, LX: gl.constexpr, CH: gl.constexpr, KPG: gl.constexpr,
             CVT: gl.constexpr, N0: gl.constexpr, CLAMP: gl.constexpr = False):
    """b0, b1 ([1, WARPS, 32, CH, KPG, 4] int32) of the CH x KPG k-steps of 64 columns from column k0 ([1, WARPS,
    1, 1, 1, 1]: each warp its own) for batch rows N0..N0 + 7; 0 past B and K and for groups g >= g_end, or with
    CLAMP (int4) in-range values there (x's last row, the next groups or K's last k-step)."""
    lane = _index(32, 2, LX, 6)
    c = _index(CH, 3, LX, 6)
    st = _index(KPG, 4, LX, 6)
    e = _index(8, 5, LX, 6)
    n = N0 + lane // 4
    if CLAMP:  # as in _x_fragments: past B, K and g_end, in-range values (per lane and k-step: 16-byte loads)
        kstep = gl.minimum(k0 // 64 + c * KPG + st, 2 * K2 // 64 - 1)
        words = gl.load(x_ptr + gl.minimum(n, B - 1) * stride_xb + 32 * kstep + 8 * (lane % 4) + e)
    else:
        kw = k0 // 2 + 32 * (c * KPG + st) + 8 * (lane % 4) + e
        ok = (n < B) & (kw < K2) & (g + c < g_end)
        words = gl.load(x_ptr + n * stride_xb + kw, mask=ok, other=0)
    if CVT:
        words = gl.inline_asm_elementwise(BF16X2_TO_F16X2_PTX, "=r,r", [words], dtype=gl.int32, is_pure=True,
                                          pack=1)
    b0, b1 = gl.split(words.reshape([1, words.shape[1], 32, CH, KPG, 4, 2]))
    return b0, b1


@gluon.jit
def _qgemv_chunk_kernel(x_ptr, w_ptr, s_ptr, z_ptr, res_ptr, y_ptr, B, N, K, stride_xb, stride_sn, stride_rb,
                        stride_yb, KIND: gl.constexpr, GROUP: gl.constexpr, RT: gl.constexpr, NT: gl.constexpr,
                        CH: gl.constexpr, HAS_RESIDUAL: gl.constexpr, X_BF16: gl.constexpr):
    # As _qgemv_kernel; the warps of a program split the groups of K, each warp CH groups per iteration.
    WARPS: gl.constexpr = gl.num_warps()
    WPL: gl.constexpr = 4 if KIND == KIND_INT4 else 8
    KPG: gl.constexpr = GROUP // 64 if KIND == KIND_INT4 else 1
    gl.static_assert(NT == 1 or NT == 2, "qgemv: 1 or 2 n-tiles of 8 batch rows")
    gl.static_assert(KPG == 1 or KPG == 2, "qgemv: a scale group is 64 or 128 columns")
    # [row tile, warp, lane, group of the chunk, k-step of the group, 4]
    L6: gl.constexpr = gl.BlockedLayout([RT, 1, 1, CH, KPG, 4], [1, 1, 32, 1, 1, 1], [1, WARPS, 1, 1, 1, 1],
                                        [5, 4, 3, 2, 1, 0])
    LX: gl.constexpr = gl.BlockedLayout([1, 1, 1, CH, KPG, 8], [1, 1, 32, 1, 1, 1], [1, WARPS, 1, 1, 1, 1],
                                        [5, 4, 3, 2, 1, 0])
    LG: gl.constexpr = gl.SliceLayout(4, L6)  # [RT, WARPS, 32, CH, 4]: per group
    LA: gl.constexpr = gl.SliceLayout(3, LG)  # [RT, WARPS, 32, 4]: the accumulators
    XCVT: gl.constexpr = KIND == KIND_INT8 and X_BF16
    tile = gl.program_id(0) * RT + _index(RT, 0, L6, 6)
    wp = _index(WARPS, 1, L6, 6)
    lane = _index(32, 2, L6, 6)
    c = _index(CH, 3, L6, 6)
    st = _index(KPG, 4, L6, 6)
    q4 = _index(4, 5, L6, 6)
    k_steps = gl.cdiv(K, 64)
    n_groups = k_steps // KPG
    per_warp = gl.cdiv(n_groups, WARPS)
    g0 = wp * per_warp  # this warp's first group
    g_end = gl.minimum(g0 + per_warp, n_groups)
    tile_ok = tile * 16 < N
    w_ptrs = w_ptr + (((tile * k_steps + (g0 + c) * KPG + st) * 32 + lane) * WPL + q4)
    # a lane's two rows (r, r + 8) and the group of each chunk slot, for the scale / zero loads: [RT, WARPS, 32, CH, 2]
    LG2: gl.constexpr = gl.SliceLayout(4, gl.BlockedLayout([RT, 1, 1, CH, KPG, 2], [1, 1, 32, 1, 1, 1],
                                                           [1, WARPS, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0]))
    rows2 = (gl.program_id(0) * RT + _index(RT, 0, LG2, 5)) * 16 + _index(32, 2, LG2, 5) // 4 + \
        8 * _index(2, 4, LG2, 5)
    rows2_ok = rows2 < N
    g0_g = _index(WARPS, 1, LG2, 5) * per_warp + _index(CH, 3, LG2, 5)
    g_end_g = gl.minimum(_index(WARPS, 1, LG2, 5) * per_warp + per_warp, n_groups)
    OFFSET: gl.constexpr = INT4_BF16_OFFSET if X_BF16 else INT4_F16_OFFSET
    wx = _index(WARPS, 1, LX, 6)
    g0x = wx * per_warp
    g_endx = gl.minimum(g0x + per_warp, n_groups)
    K2 = K // 2
    acc = gl.zeros([RT, WARPS, 32, 4], gl.float32, layout=LA)
    acc2 = gl.zeros([RT, WARPS, 32, 4], gl.float32, layout=LA)  # batch rows 8-15 (NT == 2)
    acc8 = gl.zeros([RT, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)  # int8: sum x (q + OFFSET), per slot
    acc8x = gl.zeros([1, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)  # int8: sum x
    acc8_2 = gl.zeros([RT, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
    acc8x_2 = gl.zeros([1, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
    # int4: a chunk slot past the warp's share or past K folds with s = z = 0 (masked scale loads), so its operands
    # need only be finite: its weight and x loads are clamped into range instead of masked (no zero-fill)
    CLAMP: gl.constexpr = KIND == KIND_INT4
    gl.static_assert(RT == 1 or not CLAMP, "qgemv: the unmasked int4 weight loads assume one row tile per program")
    GSTEP: gl.constexpr = KPG * 32 * WPL  # words of one group of one row tile
    w_row = w_ptr + (((tile * k_steps + st) * 32 + lane) * WPL + q4)  # group 0's k-step st
    g_last = gl.maximum(g_end - 1, 0)  # the warp's last group (in range)
    p = w_row + gl.minimum(g0 + c, g_last) * GSTEP if CLAMP else w_ptrs
    wa_next, wa1_next = _chunk_words(p, tile_ok & (g0 + c < g_end), KIND, CLAMP)
    xa0_next, xa1_next = _x_chunk(x_ptr, stride_xb, B, K2, g0x * (KPG * 64), g0x, g_endx, LX, CH, KPG, XCVT, 0,
                                  CLAMP)
    ya0_next, ya1_next = xa0_next, xa1_next  # unused unless NT == 2
    if NT == 2:
        ya0_next, ya1_next = _x_chunk(x_ptr, stride_xb, B, K2, g0x * (KPG * 64), g0x, g_endx, LX, CH, KPG, XCVT, 8,
                                      CLAMP)
    STEP: gl.constexpr = CH * KPG * 32 * WPL  # words of one iteration of one row tile
    for i in range(0, gl.cdiv(per_warp, CH)):
        wa, wa1, xa0, xa1, ya0, ya1 = wa_next, wa1_next, xa0_next, xa1_next, ya0_next, ya1_next
        gn = (i + 1) * CH  # the next iteration's first group, relative to g0
        p = w_row + gl.minimum(g0 + gn + c, g_last) * GSTEP if CLAMP else w_ptrs + gn * GSTEP
        wa_next, wa1_next = _chunk_words(p, tile_ok & (g0 + gn + c < g_end), KIND, CLAMP)
        xa0_next, xa1_next = _x_chunk(x_ptr, stride_xb, B, K2, (g0x + gn) * (KPG * 64), g0x + gn, g_endx, LX, CH,
                                      KPG, XCVT, 0, CLAMP)
        if NT == 2:
            ya0_next, ya1_next = _x_chunk(x_ptr, stride_xb, B, K2, (g0x + gn) * (KPG * 64), g0x + gn, g_endx, LX,
                                          CH, KPG, XCVT, 8, CLAMP)
        xa0, xa1, ya0, ya1 = _first_step_in(xa0, xa1, ya0, ya1, L6, NT)
        if KIND == KIND_INT4:
            d = gl.zeros([RT, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
            dx = gl.zeros([1, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
            d, dx = _int4_step(wa, xa0, xa1, d, dx, X_BF16)  # every k-step of the chunk at once
            g = g0_g + i * CH
            s, zo = _group_fold(s_ptr, z_ptr, rows2, g, rows2_ok & (g < g_end_g), stride_sn, LG, OFFSET)
            acc += gl.sum(gl.fma(zo, gl.sum(dx, axis=4), s * gl.sum(d, axis=4)), axis=3)
            if NT == 2:
                d2 = gl.zeros([RT, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
                dx2 = gl.zeros([1, WARPS, 32, CH, KPG, 4], gl.float32, layout=L6)
                d2, dx2 = _int4_step(wa, ya0, ya1, d2, dx2, X_BF16)
                acc2 += gl.sum(gl.fma(zo, gl.sum(dx2, axis=4), s * gl.sum(d2, axis=4)), axis=3)
        else:
            acc8, acc8x = _int8_step(wa, wa1, xa0, xa1, acc8, acc8x)
            if NT == 2:
                acc8_2, acc8x_2 = _int8_step(wa, wa1, ya0, ya1, acc8_2, acc8x_2)
    if KIND == KIND_INT8:  # sum x q = sum x (q + OFFSET) - OFFSET sum x, then the slots' sum
        acc = gl.sum(gl.sum(acc8 - INT8_F16_OFFSET * acc8x, axis=4), axis=3)
        acc2 = gl.sum(gl.sum(acc8_2 - INT8_F16_OFFSET * acc8x_2, axis=4), axis=3)
    _store_rows(acc, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, LA, RT, KIND, HAS_RESIDUAL, 0)
    if NT == 2:
        _store_rows(acc2, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, LA, RT, KIND, HAS_RESIDUAL, 8)


# ----------------------------------------------------------------------------------------------
# The TMA-ring variant (Hopper): the weights stream through shared memory
# ----------------------------------------------------------------------------------------------
# Why: the kernels above keep a warp's next group in registers, so the bytes in flight per SM are what registers
# allow, and the short and the wide shapes want different amounts (the chunk table in docs/perf-notes.md). Here
# the tensor memory accelerator copies each program's weights into a ring of NBUF shared-memory stages ahead of the
# arithmetic, whatever the registers. A program owns one row tile (16 rows) as in _qgemv_kernel; a stage is one
# scale group per warp (WARPS x KPG k-steps, warp w the w-th group of the stage), so the warps split K as there and
# their sums meet in _store_rows. The fragment words are read back from shared memory as the register kernel loads
# them from global memory (16 or 32 bytes per lane, 512 B or 1 KB per warp; int8's 32 bytes are two 16-byte shared
# loads, at most a 2-way bank conflict), and the math is the same. The x fragments and the group scales of stage
# st + 1 are loaded while stage st is waited for and computed: a first version that loaded them after the wait,
# with WARPS row tiles per program walking all of K, streamed at 12-44% of copy where _qgemv_kernel reaches 45-76%
# (each stage waited a full round trip for x; one program per WARPS row tiles left 64 programs for the 4096-row
# shapes). Measured against the register kernel: int8 LM head 100.7 against 87.7%, int4 at every shape behind
# (docs/perf-notes.md): kept for measurement, not chosen by pick_launch.
@gluon.jit
def _issue_stage(w_desc, ring, bars, st, stages, tile, KSB: gl.constexpr, NBUF: gl.constexpr):
    """Starts the TMA copy of stage st (k-steps st KSB .. st KSB + KSB - 1 of the program's row tile) into its ring
    slot, if the stage exists."""
    ok = st < stages
    slot = st % NBUF
    mbarrier.expect(bars.index(slot), w_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(w_desc, [st * KSB, tile, 0], bars.index(slot), ring.index(slot), pred=ok)


@gluon.jit
def _stage_operands(x_ptr, s_ptr, z_ptr, stride_xb, stride_sn, B, K2, n_groups, st, wx, wp2, rows2, rows2_ok,
                    LX: gl.constexpr, L: gl.constexpr, KIND: gl.constexpr, KPG: gl.constexpr, NT: gl.constexpr,
                    XCVT: gl.constexpr, OFFSET: gl.constexpr):
    """What a warp needs besides the weights for its group of stage st (group st WARPS + w): the x fragments of its
    KPG k-steps for batch rows 0-7 (xa: first k-step, xb: second) and 8-15 (ya, yb: NT == 2), and (int4) the group
    fold's s and z - OFFSET s (_group_fold; rows2, wp2: a lane's rows and its warp in _group_fold's layout); zeros
    past K."""
    WARPS: gl.constexpr = gl.num_warps()
    gx = st * WARPS + wx  # [1, WARPS, 1, 1] in LX: each warp its group
    xa0, xa1, xb0, xb1, ya0, ya1, yb0, yb1 = _group_x(x_ptr, stride_xb, B, K2, gx * (KPG * 64), wx, LX, XCVT, KPG,
                                                      NT)
    s = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)
    zo = s
    if KIND == KIND_INT4:
        g = st * WARPS + wp2
        s, zo = _group_fold(s_ptr, z_ptr, rows2, g, rows2_ok & (g < n_groups), stride_sn, L, OFFSET)
    return xa0, xa1, xb0, xb1, ya0, ya1, yb0, yb1, s, zo


@gluon.jit
def _qgemv_tma_kernel(w_desc, x_ptr, s_ptr, z_ptr, res_ptr, y_ptr, B, N, K, stride_xb, stride_sn, stride_rb,
                      stride_yb, KIND: gl.constexpr, GROUP: gl.constexpr, NT: gl.constexpr,
                      HAS_RESIDUAL: gl.constexpr, X_BF16: gl.constexpr, NBUF: gl.constexpr):
    # grid: (cdiv(N, 16),). w_desc: the fragments [T, KS, 32, WPL] as [KS, T, 32 WPL] in blocks [KSB, 1, 32 WPL],
    # KSB = WARPS KPG k-steps (one scale group per warp); the other arguments as _qgemv_kernel's.
    WARPS: gl.constexpr = gl.num_warps()
    WPL: gl.constexpr = 4 if KIND == KIND_INT4 else 8
    KPG: gl.constexpr = GROUP // 64 if KIND == KIND_INT4 else 1
    KSB: gl.constexpr = WARPS * KPG
    ROW: gl.constexpr = 32 * WPL  # words of one k-step of one row tile
    gl.static_assert(NT == 1 or NT == 2, "qgemv: 1 or 2 n-tiles of 8 batch rows")
    gl.static_assert(KPG == 1 or KPG == 2, "qgemv: a scale group is 64 or 128 columns")
    L: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    LX: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    LS: gl.constexpr = gl.BlockedLayout([1, WPL], [1, 32], [WARPS, 1], [1, 0])  # a stage: [WARPS, KPG ROW]
    XCVT: gl.constexpr = KIND == KIND_INT8 and X_BF16
    OFFSET: gl.constexpr = INT4_BF16_OFFSET if X_BF16 else INT4_F16_OFFSET
    tile = gl.program_id(0)
    k_steps = gl.cdiv(K, 64)
    n_groups = k_steps // KPG
    stages = gl.cdiv(n_groups, WARPS)
    ring = gl.allocate_shared_memory(gl.int32, [NBUF, KSB, 1, ROW], w_desc.layout)
    # the same bytes as a plain row-major [NBUF, WARPS, KPG ROW] array (the TMA layout is unswizzled): entry
    # [slot, w] holds the KPG k-steps of warp w's group in the stage in that slot
    groups_ring = ring._reinterpret(gl.int32, [NBUF, WARPS, KPG * ROW], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NBUF):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(NBUF):
        _issue_stage(w_desc, ring, bars, i, stages, tile, KSB, NBUF)
    L2: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2], [1, 1, 32, 1], [1, WARPS, 1, 1], [3, 2, 1, 0])
    wp2 = _index(WARPS, 1, L2)
    rows2 = tile * 16 + _index(32, 2, L2) // 4 + 8 * _index(2, 3, L2)  # a lane's rows r, r + 8
    rows2_ok = rows2 < N
    wx = _index(WARPS, 1, LX)
    K2 = K // 2
    acc = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)  # int4: the scaled group sums; int8: sum x (q + OFFSET)
    acc_x = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)  # int8: sum x
    acc2 = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)  # the same for batch rows 8-15 (NT == 2)
    acc_x2 = gl.zeros([1, WARPS, 32, 4], gl.float32, layout=L)
    nxt = _stage_operands(x_ptr, s_ptr, z_ptr, stride_xb, stride_sn, B, K2, n_groups, 0, wx, wp2, rows2, rows2_ok,
                          LX, L, KIND, KPG, NT, XCVT, OFFSET)
    for st in range(0, stages):
        xa0, xa1, xb0, xb1, ya0, ya1, yb0, yb1, s, zo = nxt
        nxt = _stage_operands(x_ptr, s_ptr, z_ptr, stride_xb, stride_sn, B, K2, n_groups, st + 1, wx, wp2, rows2,
                              rows2_ok, LX, L, KIND, KPG, NT, XCVT, OFFSET)
        xa0, xa1, ya0, ya1 = _first_step_in(xa0, xa1, ya0, ya1, L, NT)
        slot = st % NBUF
        mbarrier.wait(bars.index(slot), (st // NBUF) & 1)
        words = groups_ring.index(slot).load(LS)  # [WARPS, KPG ROW]: lane l of warp w its words of each k-step
        gl.thread_barrier()  # every warp has read the slot ...
        fence_async_shared()  # ... before the copy engine overwrites it
        _issue_stage(w_desc, ring, bars, st + NBUF, stages, tile, KSB, NBUF)
        if KIND == KIND_INT4:
            if KPG == 2:
                wa, wb = gl.split(gl.permute(words.reshape([1, WARPS, 2, 32, 4]), [0, 1, 3, 4, 2]))
            else:
                wa = words.reshape([1, WARPS, 32, 4])
                wb = wa
            wa = gl.convert_layout(wa, L, assert_trivial=True)
            wb = gl.convert_layout(wb, L, assert_trivial=True)
            d, dx = _int4_group(wa, wb, xa0, xa1, xb0, xb1, L, 1, KPG, X_BF16)
            acc = gl.fma(zo, dx, gl.fma(s, d, acc))  # y += s sum x (q + OFFSET) + (z - OFFSET s) sum x
            if NT == 2:
                d2, dx2 = _int4_group(wa, wb, ya0, ya1, yb0, yb1, L, 1, KPG, X_BF16)
                acc2 = gl.fma(zo, dx2, gl.fma(s, d2, acc2))
        else:  # a lane's 8 words: the first 4 are the a0 / a1 words of the k-step's 4 k-tiles, the last 4 a2 / a3
            w0, w1 = gl.split(gl.permute(words.reshape([1, WARPS, 32, 2, 4]), [0, 1, 2, 4, 3]))
            w0 = gl.convert_layout(w0, L, assert_trivial=True)
            w1 = gl.convert_layout(w1, L, assert_trivial=True)
            acc, acc_x = _int8_step(w0, w1, xa0, xa1, acc, acc_x)
            if NT == 2:
                acc2, acc_x2 = _int8_step(w0, w1, ya0, ya1, acc2, acc_x2)
    for i in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(i))
    if KIND == KIND_INT8:
        acc = acc - INT8_F16_OFFSET * acc_x  # sum x q
        acc2 = acc2 - INT8_F16_OFFSET * acc_x2
    _store_rows(acc, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, L, 1, KIND, HAS_RESIDUAL, 0)
    if NT == 2:
        _store_rows(acc2, s_ptr, res_ptr, y_ptr, B, N, stride_rb, stride_yb, L, 1, KIND, HAS_RESIDUAL, 8)


TMA_STAGES = 8  # ring depth, in stages of one scale group per warp (2-8 KB)


def tma_descriptor(frag: torch.Tensor, ksb: int) -> TensorDescriptor:
    """The TMA descriptor of fragments [T, KS, 32, WPL] read as [KS, T, 32 WPL] in blocks [KSB, 1, 32 WPL]: KSB
    k-steps of one row tile, each 512 B (int4) or 1 KB (int8) of contiguous memory."""
    t, ks, lanes, wpl = frag.shape
    view = frag.view(t, ks, lanes * wpl).permute(1, 0, 2)
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=3)
    return TensorDescriptor.from_tensor(view, [ksb, 1, lanes * wpl], layout)


def tma_stage_steps(kind: Kind, group: int, warps: int) -> int:
    """k-steps per ring stage of _qgemv_tma_kernel: one scale group per warp."""
    return warps * (max(group, 64) // 64 if kind == Kind.INT4 else 1)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
# Warps of a program (each walks a slice of K), scale groups per loop iteration (chunk: 0 = _qgemv_kernel) and
# row tiles of 16 rows per program, by the shape's class. Measured on an H200 at the llama8b shapes, % of copy, same
# run per table (results/tuning/qgemv-h200-2-chunks-warps.csv and -3-scale-prefetch.csv, batch 1 / 8 / 16):
# - one row tile won at every shape (two share each x fragment, fewer instructions per weight, but leave fewer
#   programs to stream);
# - wide (at least 4 row tiles per SM: gate / up 14336, LM head 128256 rows): 4 warps, no chunk (int4 batch 1 gate
#   50.8, LM head 68.9-71.0; chunks 2 / 4 lose 8-18 points there);
# - long (K at least twice N, and not wide: down 4096 x 14336): int4 4 warps, chunk 4 (49.3 against 45.4 at 8 warps,
#   no chunk; at batch 8 43.4 against 41.8, where 8 warps chunk 2 reach 46.0 but only 39.3 at batch 1); int8 8 warps,
#   chunk 2 (76.7 against 64.1);
# - short (the rest), 4 warps: more rows than columns (qkv 6144 x 4096) chunk 2 (int4 39.4 against 34.4 without
#   a chunk, 31.3 at chunk 4; int8 59.3 against 54.3 / 48.1; batch 8 int4 37.6 against 28.8); square or wider in K
#   (o 4096 x 4096) chunk 4 (int4 31.7 against 28.2 without, 30.1 at chunk 2; int8 49.5 / 44.6 / 44.9, batch 8
#   49.7 against 43.7 at chunk 2);
# - batch 9-16 (two n-tiles): no chunk (chunk 2 spills there), 8 warps for long shapes and 4 for the rest (int4
#   qkv 25.7 at 4 warps against 15.0 at 8; down 31.9 at 8 against 24.1 at 4).
_RT = 1
_TILES_PER_SM_WIDE = 4


def pick_launch(kind: Kind, n: int, k: int, batch: int, sms: int) -> tuple[int, int]:
    """(warps, chunk) of the launch for an N x K weight and `batch` rows of x on a GPU of `sms` SMs (see above)."""
    wide = -(-n // FRAG_ROWS) >= _TILES_PER_SM_WIDE * sms
    long = not wide and k >= 2 * n
    if batch > MAX_BATCH_MMA:
        return (8 if long else 4), 0
    if wide:
        return 4, 0
    if long:
        return (4, 4) if kind == Kind.INT4 else (8, 2)
    return (4, 2) if n > k else (4, 4)


def fragments_of(w: QLinear) -> torch.Tensor:
    """The fragment words of a quantized linear (kernels/fragments.py), made once and kept on the QLinear."""
    if w.frag is None:
        if w.kind == Kind.INT4:
            w.frag = int4_to_fragments(unpack_int4(w.weight)).contiguous()
        elif w.kind == Kind.INT8:
            w.frag = int8_to_fragments(w.weight).contiguous()
        else:
            raise ValueError("qgemv takes int8 and int4 weights; dense weights go through kernels.gemv")
    return w.frag


def supported(w: QLinear, batch: int) -> Optional[str]:
    """Why qgemv cannot take this weight and batch (None if it can)."""
    if w.kind not in (Kind.INT4, Kind.INT8):
        return "qgemv takes int8 and int4 weights"
    if w.kind == Kind.INT4 and w.group_size not in (64, 128):
        return f"qgemv takes int4 groups of 64 or 128 columns (got {w.group_size})"
    if w.kind == Kind.INT4 and (w.in_features <= 0 or w.in_features % w.group_size):
        # the int4 loads are clamped into range, not masked: they need whole groups
        return f"qgemv takes int4 weights of whole groups (K={w.in_features}, group {w.group_size})"
    if not 1 <= batch <= MAX_BATCH:
        return f"qgemv takes 1..{MAX_BATCH} rows of x (got {batch})"
    return None


# int8 at more than this many batch rows streams faster on the FMA GEMV (kernels/gemv.py), H200, Llama-8B shapes
# (results/ops/qgemv-llama8b-h200.csv, batch 1 and 16; results/tuning/qgemv-h200-3-scale-prefetch.csv, batch 8): at
# batch 16 the FMA kernel reaches 73 / 55 / 94 % of copy at gate / down / lm against qgemv's 58 / 51 / 73; at batch
# 8 the two are within a few points (gate 73 / 72, qkv 44 / 49), at batch 1 qgemv is ahead (gate 76 against 47). The FMA kernel's int8 cost per weight (4.4 instructions) is shared by all
# batch rows, while qgemv's second n-tile doubles its MMAs and x loads.
INT8_MAX_BATCH = 8


def preferred(w: QLinear, batch: int) -> bool:
    """Whether kernels.gemv should route this weight and batch to qgemv (given its fragments): where qgemv takes
    it and measured faster than the FMA GEMV."""
    if supported(w, batch) is not None:
        return False
    return not (w.kind == Kind.INT8 and batch > INT8_MAX_BATCH)


def qgemv(x: torch.Tensor, w: QLinear, residual: Optional[torch.Tensor] = None, *,
          out: Optional[torch.Tensor] = None, warps: Optional[int] = None, chunk: Optional[int] = None,
          tma: bool = False, stages: int = TMA_STAGES) -> torch.Tensor:
    """x: [B, K] (B <= 16) -> y = x @ W.T (+ residual): [B, N] in x.dtype (or out's dtype), fp32 accumulation on
    the tensor cores; W int8 or int4 (group 64 or 128). GPU only (Gluon). The launcher picks the warps (K slices per
    program) and the chunk (scale groups per loop iteration: 0 runs _qgemv_kernel, 2 or 4 _qgemv_chunk_kernel) by
    pick_launch; warps / chunk override its choice (tuning; warps without chunk runs the plain kernel). tma runs
    _qgemv_tma_kernel instead (Hopper; stages: its ring depth), a variant kept for measurement
    (docs/perf-notes.md)."""
    why = supported(w, x.shape[0])
    if why:
        raise ValueError(why)
    if x.dim() != 2 or x.shape[1] != w.in_features or x.stride(1) != 1:
        raise ValueError(f"qgemv: x must be a row-major [B, {w.in_features}]; got {tuple(x.shape)}")
    b_sz, k = x.shape
    n = w.out_features
    if residual is not None and (residual.shape != (b_sz, n) or residual.stride(1) != 1):
        raise ValueError(f"qgemv: residual must be a row-major [B, N] = {(b_sz, n)}; got {tuple(residual.shape)}")
    y = torch.empty(b_sz, n, dtype=x.dtype, device=x.device) if out is None else out
    frag = fragments_of(w)
    s = w.scale
    z = w.zero if w.zero is not None else s
    res = residual if residual is not None else y
    auto_warps, auto_chunk = pick_launch(w.kind, n, k, b_sz, sm_count(x.device))
    if chunk is None:  # the launcher's chunk goes with its warps; warps alone asks for the plain kernel
        chunk = auto_chunk if warps is None and not tma else 0
    rt, warps = _RT, warps or auto_warps
    grid = (triton.cdiv(n, FRAG_ROWS * rt),)
    if k % 2 or x.stride(0) % 2 or x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"qgemv: x must be bf16 or fp16 with an even K and row stride; got {x.dtype} {tuple(x.shape)}")
    if chunk not in (0, 1, 2, 4):
        raise ValueError(f"qgemv: chunk must be 0 (the plain kernel), 1, 2 or 4 groups per iteration; got {chunk}")
    args = (x.view(torch.int32), frag, s, z, res, y, b_sz, n, k, x.stride(0) // 2, s.stride(0) if s.dim() == 2 else 1,
            res.stride(0), y.stride(0))
    cx = dict(KIND=int(w.kind), GROUP=max(w.group_size, 64), RT=rt, NT=triton.cdiv(b_sz, MAX_BATCH_MMA),
              HAS_RESIDUAL=residual is not None, X_BF16=x.dtype == torch.bfloat16, num_warps=warps)
    if tma:
        if chunk:
            raise ValueError("qgemv: chunk and tma are different kernels; pass one of them")
        if x.is_cuda and torch.cuda.get_device_capability(x.device) < (9, 0):
            raise ValueError("qgemv: the TMA ring (tma=True) needs a Hopper GPU (sm_90)")
        desc = tma_descriptor(frag, tma_stage_steps(w.kind, w.group_size, warps))
        del cx["RT"]
        _qgemv_tma_kernel[(triton.cdiv(n, FRAG_ROWS),)](desc, *args[:1], *args[2:], NBUF=stages, **cx)
    elif chunk:
        _qgemv_chunk_kernel[grid](*args, CH=chunk, **cx)
    else:
        _qgemv_kernel[grid](*args, **cx)
    return y
