"""Low-batch GEMV over quantized weights: y = rmsnorm?(x) @ W.T (+ residual), fp32 accumulation.

Weights (`kernels.quant.QLinear`, W: [N, K]) are streamed exactly once and dequantised in registers:
dense (bf16/fp16), int8 per output channel (W = q * s[n]), int4 group-wise (W = (q - 8) * s + z).
Each program owns BLOCK_N output rows and walks all of K, so it sees all of x and can fuse the
RMSNorm of x as a prologue: the sum of squares is accumulated from the same x loads, and the
1/rms factor (constant per batch row) is applied to the accumulator at the end.

Two inner products, one constexpr switch (USE_DOT), chosen by the tile rule of kernels/tiles.py:
- FMA: acc[B_PAD, BLOCK_N, BLOCK_K / FOLD] += x * w element-wise in fp32, reduced over K once at the end.
- tl.dot: tensor cores, operands in the activation dtype on the GPU (fp32 in the interpreter, where
  bf16 dot is wrong), batch padded to 16 rows (the smallest tl.dot tile).
Weight tiles are [BLOCK_N, BLOCK_K] row-major slices: 16-byte vector loads along K (int4: 64 bytes per
group of 128), every weight byte read once per launch.

int4 has its own tensor-core tile (_int4_dot_tile: integer nibbles on the tensor cores, scale and zero once per
group); on the FMA path it dequantises with "unit floats" (int4_dequant_halves).

Known gaps (H100, 2026-11-22, harness.bench_ops): on the dot path the fused RMSNorm prologue is slow
(llama8b wqkv batch 16: 59 us fused vs ~29 us plain; on the FMA path it is free: 29.9 vs 28.5 us at
batch 1); int4 dequantisation is instruction-bound (the FMA loop compiled for sm_90 issues 7.7 instructions
per weight, against 4.5 for bf16: scripts/gemv_sass.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act, check_out, dot_operand_dtype, sm_count
from kernels.elementwise import silu
from kernels.quant import Kind, QLinear
from kernels.tiles import DOT_MIN_ROWS, batch_pad, fma_cols, k_step, uses_tensor_cores

# The constexpr KIND values of the kernels (kernels.quant.Kind).
KIND_DENSE = tl.constexpr(int(Kind.DENSE))
KIND_INT8 = tl.constexpr(int(Kind.INT8))
KIND_INT4 = tl.constexpr(int(Kind.INT4))
# Per-op tile heights, from sweeps on an H100 80GB (llama1b wo 2048x2048, llama8b wqkv 6144x4096, bf16 / int8 /
# int4 g128, batch 1 / 4 / 16, L2 flushed, 2026-11-22); the numbers quoted are from them.
_FMA_BLOCK_N = 8  # batch 1: 8 rows x 1024 columns, 4 warps (bf16 8b wqkv 28.4 us = 1.78 TB/s; cuBLAS 29.8 us)
_FMA_BLOCK_N_INT4 = 4  # int4 batch 1-2: 4 x 1024 (8b wqkv 19.3 vs 20.8 us at 8 rows; 1b w_down 16.1 vs 18.0)
_DOT_BLOCK_N = 32  # x is re-read by every program: wide tiles keep those L2 reads under the weight bytes,
_DOT_BLOCK_N_WIDE = 64  # ...and 64 rows once that still leaves a program per SM (lm_head, 8b gate/up)
_DOT_BLOCK_K = 512
_NUM_WARPS = 4  # 4 warps won most cells; 8 won llama1b bf16 batch 1 by ~10% and lost int8/int4 batch 1 by 20-30%


# ----------------------------------------------------------------------------------------------
# Tile helpers (reused by lm_head.py and the megakernel)
# ----------------------------------------------------------------------------------------------
@triton.jit
def load_x_block(x_ptr, stride_xb, nw_ptr, rows, B, cols, col_mask, HAS_NORM: tl.constexpr):
    """x[rows, cols] as fp32 [B_PAD, BK] (times norm weight[cols] when HAS_NORM), and x^2 (raw)."""
    mask = (rows[:, None] < B) & col_mask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sq = x * x
    if HAS_NORM:
        nw = tl.load(nw_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        x = x * nw[None, :]
    return x, sq


@triton.jit
def dot_acc(a, b, acc):
    """acc + a @ b with fp32 accumulation; fp32 operands multiply exactly ('ieee', not tf32)."""
    if a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _halves(t):
    """t [R, 2m] -> (its even columns, its odd columns), each [R, m]. Pairs of neighbours sit in one thread (the
    loads are vectors along the columns), so this moves no data."""
    return tl.split(tl.reshape(t, [t.shape[0], t.shape[1] // 2, 2]))


@triton.jit
def _fold2(acc, x, w):
    """acc [B_PAD, BN, BK / 2] += x [B_PAD, BK] * w [BN, BK], columns 2j and 2j + 1 into accumulator j."""
    x0, x1 = _halves(x)
    w0, w1 = _halves(w)
    acc += x0[:, None, :] * w0[None, :, :]
    acc += x1[:, None, :] * w1[None, :, :]
    return acc


@triton.jit
def fold_mac(acc, x, w, FOLD: tl.constexpr):
    """acc [B_PAD, BN, BK / FOLD] += the products x [B_PAD, BK] * w [BN, BK] (fp32), FOLD (1 or 2) neighbouring
    columns into one accumulator: one FMA per weight as with FOLD 1, but a tile of FOLD x more columns for the same
    registers, so more weight bytes in flight per program (docs/perf-notes.md, "K folding")."""
    if FOLD == 1:
        acc += x[:, None, :] * w[None, :, :]
    else:
        tl.static_assert(FOLD == 2, "FOLD is 1 or 2")
        acc = _fold2(acc, x, w)
    return acc


@triton.jit
def multiply_accumulate(acc, x, w, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    """acc += x @ w.T. x: [B_PAD, BK] fp32, w: [BN, BK]; acc: [B_PAD, BN] (dot) or [B_PAD, BN, BK / FOLD] (FMA)."""
    if USE_DOT:
        acc = dot_acc(x.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), acc)
    else:
        acc = fold_mac(acc, x, w.to(tl.float32), FOLD)
    return acc


@triton.jit
def sumsq_init(B_PAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """Accumulator of sum(x^2) per batch row for the fused RMSNorm: element-wise [B_PAD, BLOCK_K], reduced once
    after the K loop on both paths (reducing every step made the megakernel's batch-16 step 4% slower on an
    H100: 24.6 vs 23.6 ms, llama8b bf16)."""
    return tl.zeros([B_PAD, BLOCK_K], dtype=tl.float32)


@triton.jit
def sumsq_total(ssq):
    """sum(x^2) per batch row: [B_PAD]."""
    return tl.sum(ssq, axis=1)


@triton.jit
def nibble_minus_8(q):
    """q - 8 as fp32 for integers q in [0, 16), without an int-to-float conversion instruction: the bits
    0x4B000000 | q are the float 2^23 + q exactly, so one OR and one subtraction give q - 8."""
    return (q.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0  # 2^23 + 8


def _unit_float_ptx(src: str, masks: tuple) -> str:
    """PTX for inline_asm_elementwise(pack=4) turning the 4 bytes of register `src` into "unit floats": per byte a
    prmt (the byte to bits 16-23, zeros elsewhere), a shift to bits 15-22 (the top of the fp32 mantissa), then per
    mask one lop3 (v & mask) | 0x3F800000, written to outputs $(4 m + byte)."""
    lines = [f"prmt.b32 t, {src}, zero, 0x4{i}44;\nshr.u32 t, t, 1;\n"
             + "".join(f"lop3.b32 ${4 * m + i}, t, {mask}, 0x3F800000, 0xEA;\n" for m, mask in enumerate(masks))
             for i in range(4)]
    return "{\n.reg .b32 t, zero;\nmov.b32 zero, 0;\n" + "".join(lines) + "}"


# int4_dequant_halves' unit floats (low nibble -> 1 + q/256, high nibble -> 1 + q/16), GPU only.
_UNIT_FLOAT_ASM = tl.constexpr(_unit_float_ptx("$8", ("0x00078000", "0x00780000")))


@triton.jit
def int4_dequant_halves(w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, offs_n, n_mask, g0, n_groups,
                        HALF_G: tl.constexpr, HALF_G_PAD: tl.constexpr, GROUPS_PER_STEP: tl.constexpr,
                        ASM: tl.constexpr):
    """Groups g0 .. g0 + GROUPS_PER_STEP - 1 of rows offs_n -> (w_even, w_odd): [BN, GROUPS_PER_STEP, HALF_G_PAD]
    fp32, the weights of input columns g * GROUP + 2j (low nibbles) and g * GROUP + 2j + 1 (high nibbles).
    Padded bytes (j >= HALF_G) and groups past n_groups are masked; their junk weights meet x = 0."""
    g = g0 + tl.arange(0, GROUPS_PER_STEP)
    j = tl.arange(0, HALF_G_PAD)
    g_mask = g < n_groups
    mask3 = n_mask[:, None, None] & g_mask[None, :, None] & (j < HALF_G)[None, None, :]
    # packed: [BN, GROUPS_PER_STEP, HALF_G_PAD] uint8, HALF_G contiguous bytes per group (16-byte vectors)
    packed = tl.load(w_ptr + offs_n[:, None, None] * stride_wn + (g * HALF_G)[None, :, None] + j[None, None, :],
                     mask=mask3, other=0)
    mask2 = n_mask[:, None] & g_mask[None, :]
    sz_offs = offs_n[:, None] * stride_sn + g[None, :]  # scale, zero: [BN, GROUPS_PER_STEP]
    s = tl.load(s_ptr + sz_offs, mask=mask2, other=0.0).to(tl.float32)[:, :, None]
    z = tl.load(z_ptr + sz_offs, mask=mask2, other=0.0).to(tl.float32)[:, :, None]
    # The byte moved to bits 15-22 (the top of the fp32 mantissa) and OR-ed with the exponent of 1.0 is the float
    # 1 + lo / 256 + hi / 16; masking one nibble gives f = 1 + q / 256 (low) or 1 + q / 16 (high), so (q - 8) s + z
    # is one FMA with per-group constants: f * 256 s + (z - 264 s), f * 16 s + (z - 24 s). Per byte: a byte move
    # and a shift, two LOP3, two FFMA (the nibble_minus_8 route took ~10 instructions per weight, this ~7).
    if ASM:
        f_even, f_odd = tl.inline_asm_elementwise(_UNIT_FLOAT_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [packed],
                                                  dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    else:
        b15 = packed.to(tl.int32) << 15
        f_even = ((b15 & 0x00078000) | 0x3F800000).to(tl.float32, bitcast=True)
        f_odd = ((b15 & 0x00780000) | 0x3F800000).to(tl.float32, bitcast=True)
    w_even = f_even * (s * 256.0) + (z - s * 264.0)
    w_odd = f_odd * (s * 16.0) + (z - s * 24.0)
    return w_even, w_odd


# q - 8 of both nibbles of 4 packed bytes, as 16-bit floats, in packed 16-bit arithmetic (GPU only):
# prmt spreads bytes b0, b1 (b2, b3) into the two 16-bit halves of a register; lop3 computes (v & 0x000F000F) | MAGIC,
# the float MAGIC + q exactly (bf16 128 + q, fp16 1024 + q: the nibble lands in the mantissa bits of unit weight);
# one packed fma then subtracts MAGIC + 8. 12 instructions per 8 weights, against ~4 per weight in fp32.
_NIBBLE_ASM = """{{
.reg .b32 t0, t1, u0, u1, zero, one, bias;
mov.b32 zero, 0;
mov.b32 one, {one};
mov.b32 bias, {bias};
prmt.b32 t0, $4, zero, 0x4140;
prmt.b32 t1, $4, zero, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, 0x000F000F, {magic}, 0xEA;
lop3.b32 $1, t1, 0x000F000F, {magic}, 0xEA;
lop3.b32 $2, u0, 0x000F000F, {magic}, 0xEA;
lop3.b32 $3, u1, 0x000F000F, {magic}, 0xEA;
fma.rn.{ty} $0, $0, one, bias;
fma.rn.{ty} $1, $1, one, bias;
fma.rn.{ty} $2, $2, one, bias;
fma.rn.{ty} $3, $3, one, bias;
}}"""
_NIBBLE_ASM_BF16 = tl.constexpr(_NIBBLE_ASM.format(one="0x3F803F80", bias="0xC308C308", magic="0x43004300",
                                                   ty="bf16x2"))
_NIBBLE_ASM_FP16 = tl.constexpr(_NIBBLE_ASM.format(one="0x3C003C00", bias="0xE408E408", magic="0x64006400",
                                                   ty="f16x2"))


@triton.jit
def int4_nibbles(packed, DTYPE: tl.constexpr):
    """Packed int4 bytes -> (low nibbles - 8, high nibbles - 8) as DTYPE, exactly (integers in [-8, 8)).
    bf16 / fp16 use packed 16-bit PTX (GPU only); fp32 (and the interpreter, where DTYPE is fp32) nibble_minus_8."""
    if DTYPE == tl.bfloat16:
        lo, hi = tl.inline_asm_elementwise(_NIBBLE_ASM_BF16, "=r,=r,=r,=r,r", [packed],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    elif DTYPE == tl.float16:
        lo, hi = tl.inline_asm_elementwise(_NIBBLE_ASM_FP16, "=r,=r,=r,=r,r", [packed],
                                           dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        lo = nibble_minus_8(packed & 0xF)
        hi = nibble_minus_8(packed >> 4)
    return lo, hi


@triton.jit
def int4_group_columns(g0, n_groups, K, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                       GROUPS_PER_STEP: tl.constexpr):
    """Input columns [GROUPS_PER_STEP * GROUP_PAD] of groups g0.. (each padded to GROUP_PAD) and their mask."""
    c = tl.arange(0, GROUPS_PER_STEP * GROUP_PAD)
    if GROUP == GROUP_PAD:  # whole groups are contiguous columns
        cols = g0 * GROUP + c
        col_mask = cols < K
    else:
        cols = (g0 + c // GROUP_PAD) * GROUP + c % GROUP_PAD
        col_mask = (g0 + c // GROUP_PAD < n_groups) & (c % GROUP_PAD < GROUP)
    return cols, col_mask


@triton.jit
def load_w_block(w_ptr, stride_wn, offs_n, n_mask, cols, K):
    """W[offs_n, cols] as stored: [BLOCK_N, BLOCK_K], 16-byte vectors along K (0 outside [N, K])."""
    return tl.load(w_ptr + offs_n[:, None] * stride_wn + cols[None, :], mask=n_mask[:, None] & (cols < K)[None, :],
                   other=0)


@triton.jit
def _dense_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, nw_ptr, offs_n, n_mask, HAS_NORM: tl.constexpr,
                B_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    """Dense or int8 (q only; the caller applies the scale): (x @ W[offs_n].T [B_PAD, BN] fp32, sum(x^2) [B_PAD]).
    FOLD (FMA path): neighbouring columns per accumulator (fold_mac)."""
    rows = tl.arange(0, B_PAD)
    cols = tl.arange(0, BLOCK_K)
    if USE_DOT:
        acc = tl.zeros([B_PAD, BLOCK_N], dtype=tl.float32)
    else:  # element-wise partial products, reduced over K once after the loop
        acc = tl.zeros([B_PAD, BLOCK_N, BLOCK_K // FOLD], dtype=tl.float32)
    ssq = sumsq_init(B_PAD, BLOCK_K)  # x^2 sums for the fused RMSNorm
    for k0 in range(0, K, BLOCK_K):
        col_mask = k0 + cols < K
        w = load_w_block(w_ptr, stride_wn, offs_n, n_mask, k0 + cols, K)
        x, sq = load_x_block(x_ptr, stride_xb, nw_ptr, rows, B, k0 + cols, col_mask, HAS_NORM)
        acc = multiply_accumulate(acc, x, w, USE_DOT, DOT_DTYPE, FOLD)
        if HAS_NORM:
            ssq += sq
    if not USE_DOT:
        acc = tl.sum(acc, axis=2)
    return acc, sumsq_total(ssq)


@triton.jit
def _int4_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, offs_n, n_mask,
               GROUP: tl.constexpr, HAS_NORM: tl.constexpr, B_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, ASM: tl.constexpr):
    """int4 group-wise on the FMA path: (x @ W[offs_n].T [B_PAD, BN] fp32, sum(x^2) [B_PAD]). ASM: unpack the
    nibbles with PTX (GPU). The nibble halves are interleaved back into column order in registers, so x is read
    contiguously. (Keeping the halves apart and splitting x instead measured the same at batch 1 and up to 2.5x
    slower at batch 2 on an H100.)"""
    GROUP_PAD: tl.constexpr = BLOCK_K // GROUPS_PER_STEP  # GROUP rounded up to a power of two
    n_groups = K // GROUP
    rows = tl.arange(0, B_PAD)
    acc = tl.zeros([B_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)  # element-wise products, reduced once at the end
    ssq = sumsq_init(B_PAD, BLOCK_K)  # x^2 sums for the fused RMSNorm
    for g0 in range(0, n_groups, GROUPS_PER_STEP):
        w_even, w_odd = int4_dequant_halves(w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, offs_n, n_mask, g0, n_groups,
                                            GROUP // 2, GROUP_PAD // 2, GROUPS_PER_STEP, ASM)
        w = tl.reshape(tl.interleave(w_even, w_odd), [BLOCK_N, BLOCK_K])  # [BN, BLOCK_K] in column order
        cols, col_mask = int4_group_columns(g0, n_groups, K, GROUP, GROUP_PAD, GROUPS_PER_STEP)
        x, sq = load_x_block(x_ptr, stride_xb, nw_ptr, rows, B, cols, col_mask, HAS_NORM)
        acc += x[:, None, :] * w[None, :, :]
        if HAS_NORM:
            ssq += sq
    return tl.sum(acc, axis=2), sumsq_total(ssq)


@triton.jit
def _int4_dot_group(acc, ssq, x_ptr, stride_xb, B, nw_ptr, w_ptrs, s_ptrs, z_ptrs, n_mask, g,
                    GROUP: tl.constexpr, HAS_NORM: tl.constexpr, B_PAD: tl.constexpr, B_DOT: tl.constexpr,
                    DOT_DTYPE: tl.constexpr):
    """One group g of _int4_dot_tile: acc [B_DOT, BN] += x[:, group] @ W[rows, group].T; ssq [B_PAD, GROUP] += x^2."""
    HALF_G: tl.constexpr = GROUP // 2
    c = g * GROUP + tl.arange(0, GROUP)
    packed = tl.load(w_ptrs + g * HALF_G, mask=n_mask[:, None], other=0)  # [BN, HALF_G] uint8, 16-byte vectors
    s = tl.load(s_ptrs + g, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptrs + g, mask=n_mask, other=0.0).to(tl.float32)
    rows = tl.arange(0, B_PAD)
    x = tl.load(x_ptr + rows[:, None] * stride_xb + c[None, :], mask=(rows < B)[:, None], other=0.0).to(tl.float32)
    if HAS_NORM:
        ssq += x * x
        nw = tl.load(nw_ptr + c).to(tl.float32)
        x = x * nw[None, :]
    if B_PAD == 1:  # the dot operand: x in row 0, zeros below; its sum broadcasts over rows later discarded
        x16 = tl.where((tl.arange(0, B_DOT) == 0)[:, None], x, 0.0)
    elif B_PAD < B_DOT:
        r16 = tl.arange(0, B_DOT)
        x16 = tl.load(x_ptr + r16[:, None] * stride_xb + c[None, :], mask=(r16 < B)[:, None], other=0.0).to(tl.float32)
        if HAS_NORM:
            x16 = x16 * nw[None, :]
    else:
        x16 = x
    x_sum = tl.sum(x if B_PAD == 1 else x16, axis=1)
    x_even, x_odd = tl.split(tl.reshape(x16, [B_DOT, HALF_G, 2]))  # columns 2j (low nibbles), 2j + 1 (high)
    w_even, w_odd = int4_nibbles(packed, DOT_DTYPE)
    d = dot_acc(x_even.to(DOT_DTYPE), tl.trans(w_even), tl.zeros(acc.shape, dtype=tl.float32))
    d = dot_acc(x_odd.to(DOT_DTYPE), tl.trans(w_odd), d)
    acc += d * s[None, :] + x_sum[:, None] * z[None, :]
    return acc, ssq


@triton.jit
def _int4_dot_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, offs_n, n_mask,
                   GROUP: tl.constexpr, HAS_NORM: tl.constexpr, B_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                   GROUPS_PER_STEP: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """int4 group-wise on tensor cores, at any batch: (x @ W[offs_n].T [B_PAD, BN] fp32, sum(x^2) [B_PAD]).
    Per group the integer weights q - 8 (exact in bf16/fp16) meet x in one tl.dot per nibble half (x's even and
    odd columns), and the scale and zero enter once per group and row:
        sum_k x_k ((q_k - 8) s + z) = s * sum_k x_k (q_k - 8) + z * sum_k x_k.
    So the ALU only unpacks nibbles (int4_nibbles); the multiply-adds run on tensor cores. Batches below 16 are
    padded to 16 rows inside the tile (masked loads, no memory traffic). GROUPS_PER_STEP groups per loop
    iteration (unrolled, so their loads are in flight together), then the remaining groups one at a time.
    GROUP: a power of two >= 32."""
    tl.static_assert(GROUP >= 32 and (GROUP & (GROUP - 1)) == 0, "int4 tl.dot path: GROUP must be a power of two >= 32")
    HALF_G: tl.constexpr = GROUP // 2
    B_DOT: tl.constexpr = 16 if B_PAD < 16 else B_PAD
    n_groups = K // GROUP
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + tl.arange(0, HALF_G)[None, :]
    s_ptrs = s_ptr + offs_n * stride_sn
    z_ptrs = z_ptr + offs_n * stride_sn
    acc = tl.zeros([B_DOT, BLOCK_N], dtype=tl.float32)
    ssq = sumsq_init(B_PAD, GROUP)
    n_full = n_groups // GROUPS_PER_STEP * GROUPS_PER_STEP
    for g0 in range(0, n_full, GROUPS_PER_STEP):
        for gi in tl.static_range(GROUPS_PER_STEP):
            acc, ssq = _int4_dot_group(acc, ssq, x_ptr, stride_xb, B, nw_ptr, w_ptrs, s_ptrs, z_ptrs, n_mask,
                                       g0 + gi, GROUP, HAS_NORM, B_PAD, B_DOT, DOT_DTYPE)
    for g in range(n_full, n_groups):
        acc, ssq = _int4_dot_group(acc, ssq, x_ptr, stride_xb, B, nw_ptr, w_ptrs, s_ptrs, z_ptrs, n_mask, g,
                                   GROUP, HAS_NORM, B_PAD, B_DOT, DOT_DTYPE)
    if B_DOT != B_PAD:  # keep the first B_PAD rows
        pick = tl.arange(0, B_PAD)[:, None] == tl.arange(0, B_DOT)[None, :]  # [B_PAD, B_DOT]
        acc = tl.sum(tl.where(pick[:, :, None], acc[None, :, :], 0.0), axis=1)
    return acc, sumsq_total(ssq)


@triton.jit
def gemv_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, eps, n_start, N,
              KIND: tl.constexpr, GROUP: tl.constexpr, HAS_NORM: tl.constexpr, B_PAD: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr,
              USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    """rmsnorm?(x) @ W[n_start : n_start + BLOCK_N].T -> [B_PAD, BLOCK_N] fp32 (rows >= B and cols >= N: junk).

    x: [B, K] (row stride stride_xb); W: [N, K] as KIND (kernels.quant.Kind; int4 with group GROUP).
    BLOCK_K: input columns per step (int4: GROUPS_PER_STEP whole groups, each padded to a power of two).
    FOLD: input columns per fp32 accumulator on the dense / int8 FMA path (fold_mac); the others ignore it."""
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    ASM: tl.constexpr = DOT_DTYPE != tl.float32  # PTX dequantisation: GPU (the interpreter's dot dtype is fp32)
    if KIND == KIND_INT4 and USE_DOT:
        out, sumsq = _int4_dot_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, offs_n,
                                    n_mask, GROUP, HAS_NORM, B_PAD, BLOCK_N, GROUPS_PER_STEP, DOT_DTYPE)
    elif KIND == KIND_INT4:
        out, sumsq = _int4_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, offs_n,
                                n_mask, GROUP, HAS_NORM, B_PAD, BLOCK_N, BLOCK_K, GROUPS_PER_STEP, ASM)
    else:
        out, sumsq = _dense_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, nw_ptr, offs_n, n_mask, HAS_NORM,
                                 B_PAD, BLOCK_N, BLOCK_K, USE_DOT, DOT_DTYPE, FOLD)
    if KIND == KIND_INT8:  # W = q * s[n], so the per-channel scale factors out of the sum
        s = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        out = out * s[None, :]
    if HAS_NORM:  # rmsnorm(x) @ W.T = (1 / rms(x)) * ((x * norm_w) @ W.T), per batch row
        out = out * tl.rsqrt(sumsq / K + eps)[:, None]
    return out


@triton.jit
def load_rows_tile(ptr, stride_b, rows, offs_n, B, N):
    """ptr[rows, offs_n] as fp32 [B_PAD, BLOCK_N] (0 outside [B, N])."""
    mask = (rows[:, None] < B) & (offs_n[None, :] < N)
    return tl.load(ptr + rows[:, None] * stride_b + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_rows_tile(ptr, stride_b, val, rows, offs_n, B, N):
    """ptr[rows, offs_n] = val (cast to ptr's dtype), masked to [B, N]."""
    mask = (rows[:, None] < B) & (offs_n[None, :] < N)
    tl.store(ptr + rows[:, None] * stride_b + offs_n[None, :], val.to(ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, nw_ptr, res_ptr, y_ptr, B, N, K,
                 stride_xb, stride_wn, stride_sn, stride_rb, stride_yb, eps,
                 KIND: tl.constexpr, GROUP: tl.constexpr, HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                 B_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr,
                 USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    # grid: (cdiv(N, BLOCK_N),). x: [B, K], W: [N, K], residual: [B, N], y: [B, N]
    n_start = tl.program_id(0) * BLOCK_N
    acc = gemv_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, eps, n_start, N,
                    KIND, GROUP, HAS_NORM, B_PAD, BLOCK_N, BLOCK_K, GROUPS_PER_STEP, USE_DOT, DOT_DTYPE, FOLD)
    rows = tl.arange(0, B_PAD)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    if HAS_RESIDUAL:
        acc += load_rows_tile(res_ptr, stride_rb, rows, offs_n, B, N)
    store_rows_tile(y_ptr, stride_yb, acc, rows, offs_n, B, N)


@triton.jit
def _gemv_silu_mul_kernel(x_ptr, wg_ptr, sg_ptr, zg_ptr, wu_ptr, su_ptr, zu_ptr, nw_ptr, y_ptr, B, N, K,
                          stride_xb, stride_wn, stride_sn, stride_yb, eps,
                          KIND: tl.constexpr, GROUP: tl.constexpr, HAS_NORM: tl.constexpr, B_PAD: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr,
                          USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    # grid: (cdiv(F, BLOCK_N),). x: [B, K], W_gate, W_up: [F, K] (same layout), y: [B, F]
    n_start = tl.program_id(0) * BLOCK_N
    gate = gemv_tile(x_ptr, stride_xb, B, K, wg_ptr, stride_wn, sg_ptr, zg_ptr, stride_sn, nw_ptr, eps, n_start, N,
                     KIND, GROUP, HAS_NORM, B_PAD, BLOCK_N, BLOCK_K, GROUPS_PER_STEP, USE_DOT, DOT_DTYPE, FOLD)
    up = gemv_tile(x_ptr, stride_xb, B, K, wu_ptr, stride_wn, su_ptr, zu_ptr, stride_sn, nw_ptr, eps, n_start, N,
                   KIND, GROUP, HAS_NORM, B_PAD, BLOCK_N, BLOCK_K, GROUPS_PER_STEP, USE_DOT, DOT_DTYPE, FOLD)
    store_rows_tile(y_ptr, stride_yb, silu(gate) * up, tl.arange(0, B_PAD), n_start + tl.arange(0, BLOCK_N), B, N)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GemvConfig:
    """Block sizes of one GEMV launch (the constexprs of gemv_tile, plus warps)."""

    b_pad: int
    block_n: int
    block_k: int  # input columns per step (int4: groups_per_step groups, each padded to a power of two)
    groups_per_step: int  # int4 only (1 otherwise)
    use_dot: bool
    num_warps: int = _NUM_WARPS
    k_fold: int = 1  # input columns per fp32 accumulator (dense / int8 FMA path; fold_mac)

    def constexprs(self) -> dict:
        return dict(B_PAD=self.b_pad, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                    GROUPS_PER_STEP=self.groups_per_step, USE_DOT=self.use_dot, FOLD=self.k_fold)


def pick_config(x: torch.Tensor, w: QLinear, *, block_n: Optional[int] = None, block_k: Optional[int] = None,
                k_fold: int = 1) -> GemvConfig:
    """Block sizes for x: [B, K] @ W.T by the tile rule (kernels/tiles.py) and this launcher's tile heights.
    block_n, block_k (input columns per step; int4: rounded to whole groups) and k_fold (1 or 2, dense / int8 on
    the FMA path) override the geometry, not the inner product (tests, scripts/gemv_variants.py)."""
    b_sz, k = x.shape
    use_dot = uses_tensor_cores(w.kind, w.group_size, b_sz, act_is_fp32=x.dtype == torch.float32)
    b_pad = batch_pad(w.kind, b_sz, use_dot)
    fold = 1 if (use_dot or w.kind == Kind.INT4) else k_fold
    if use_dot and w.kind != Kind.INT4:
        wide = triton.cdiv(w.out_features, _DOT_BLOCK_N_WIDE) >= sm_count(x.device)
        block_n = block_n or (_DOT_BLOCK_N_WIDE if wide else _DOT_BLOCK_N)
        cols = block_k or _DOT_BLOCK_K
    else:  # the FMA tile, and the int4 tensor-core tile (which steps through the groups of the same budget)
        block_n = block_n or (_FMA_BLOCK_N_INT4 if w.kind == Kind.INT4 else _FMA_BLOCK_N)
        cols = fma_cols(b_pad, block_n, k_fold)
        cols = block_k or (cols if fold > 1 else cols // k_fold)
    if use_dot:
        block_n = max(block_n, DOT_MIN_ROWS)
    block_k, groups_per_step = k_step(w.kind, w.group_size, k, cols, use_dot)
    return GemvConfig(b_pad, block_n, block_k, groups_per_step, use_dot, _NUM_WARPS, min(fold, block_k))


def _check_linear(x: torch.Tensor, w: QLinear, name: str) -> None:
    check_act(x, f"{name} input x")
    if x.dim() != 2 or x.shape[1] != w.in_features:
        raise ValueError(f"{name}: x must be [B, {w.in_features}] for this weight; got {tuple(x.shape)}")
    # The kernels read the weight, its scales and its zeros row-major: the weight at its row stride, the scale and
    # the zero both at the scale's row stride, every column at unit stride.
    for what, t in (("the weight", w.weight), ("the weight's scale", w.scale), ("the weight's zero", w.zero)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name}: {what} must be contiguous (QLinear layouts are row-major); "
                             f"got shape {tuple(t.shape)}, strides {t.stride()}")


def _norm_weight(norm_weight: Optional[torch.Tensor], k: int, name: str) -> Optional[torch.Tensor]:
    """The fused RMSNorm's weight as the kernels read it: [K], contiguous (a strided view is copied)."""
    if norm_weight is None:
        return None
    if norm_weight.shape != (k,):
        raise ValueError(f"{name}: norm_weight must be [K] = [{k}]; got shape {tuple(norm_weight.shape)}")
    return norm_weight.contiguous()


def _out(out: Optional[torch.Tensor], shape: tuple, dtype: torch.dtype, device, name: str) -> torch.Tensor:
    """out= checked (any row stride, unit column stride), or a new tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_out(out, shape, name)
    return out


def _weight_args(w: QLinear):
    """(weight, scale, zero, scale row stride) with the weight standing in for absent tensors."""
    s = w.scale if w.scale is not None else w.weight
    z = w.zero if w.zero is not None else w.weight
    stride_sn = w.scale.stride(0) if w.kind == Kind.INT4 else 1
    return w.weight, s, z, stride_sn


def gemv(x: torch.Tensor, w: QLinear, residual: Optional[torch.Tensor] = None,
         norm_weight: Optional[torch.Tensor] = None, eps: float = 1e-5, *, out: Optional[torch.Tensor] = None,
         config: Optional[GemvConfig] = None) -> torch.Tensor:
    """x: [B, K] -> y: [B, N] = rmsnorm?(x) @ W.T (+ residual) in x.dtype (or out's dtype), fp32 accumulation.

    norm_weight: [K] fuses y = rmsnorm(x, norm_weight, eps) @ W.T. residual: [B, N] is added in fp32.
    config: block sizes other than pick_config's (tests, tuning).

    An int8 / int4 weight whose tensor-core fragments were made (kernels.qgemv.fragments_of, on a GPU) goes through
    kernels.qgemv instead where kernels.qgemv.preferred says so (int4 at batch <= 16, int8 at batch <= 8; no fused
    norm, no explicit config).

    Strides: x, residual and out= may have any row stride (x and residual are copied first if their columns are not
    unit-stride; out= must have unit-stride columns); norm_weight is copied if it is not contiguous."""
    _check_linear(x, w, "gemv")
    if x.stride(1) != 1:
        x = x.contiguous()
    b_sz, k = x.shape
    n = w.out_features
    if residual is not None and residual.shape != (b_sz, n):
        raise ValueError(f"gemv: residual must be [B, N] = {(b_sz, n)}; got {tuple(residual.shape)}")
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    norm_weight = _norm_weight(norm_weight, k, "gemv")
    if out is not None:
        check_out(out, (b_sz, n), "gemv")
    if w.frag is not None and norm_weight is None and config is None and x.is_cuda:
        from kernels.qgemv import preferred, qgemv  # Gluon: imported only where it can run

        if preferred(w, b_sz) and x.stride(0) % 2 == 0 and (residual is None or residual.stride(1) == 1):
            return qgemv(x, w, residual, out=out)
    y = _out(out, (b_sz, n), x.dtype, x.device, "gemv")
    cfg = config or pick_config(x, w)
    weight, s, z, stride_sn = _weight_args(w)
    res = residual if residual is not None else y
    nw = norm_weight if norm_weight is not None else x
    grid = (triton.cdiv(n, cfg.block_n),)
    _gemv_kernel[grid](x, weight, s, z, nw, res, y, b_sz, n, k,
                       x.stride(0), weight.stride(0), stride_sn, res.stride(0), y.stride(0), eps,
                       KIND=int(w.kind), GROUP=max(w.group_size, 2), HAS_NORM=norm_weight is not None,
                       HAS_RESIDUAL=residual is not None, DOT_DTYPE=dot_operand_dtype(x.dtype), **cfg.constexprs(),
                       num_warps=cfg.num_warps)
    return y


def gemv_silu_mul(x: torch.Tensor, w_gate: QLinear, w_up: QLinear, norm_weight: Optional[torch.Tensor] = None,
                  eps: float = 1e-5, *, out: Optional[torch.Tensor] = None,
                  config: Optional[GemvConfig] = None) -> torch.Tensor:
    """x: [B, K] -> silu(rmsnorm?(x) @ Wg.T) * (rmsnorm?(x) @ Wu.T): [B, F] in x.dtype.
    One program reads the same BLOCK_N rows of both weights (same kind, shape and group size). Strides as in gemv."""
    _check_linear(x, w_gate, "gemv_silu_mul")
    _check_linear(x, w_up, "gemv_silu_mul")
    if (w_gate.kind, w_gate.out_features, w_gate.group_size) != (w_up.kind, w_up.out_features, w_up.group_size):
        raise ValueError("gemv_silu_mul: w_gate and w_up must share kind, shape and group size")
    if x.stride(1) != 1:
        x = x.contiguous()
    b_sz, k = x.shape
    n = w_gate.out_features
    norm_weight = _norm_weight(norm_weight, k, "gemv_silu_mul")
    y = _out(out, (b_sz, n), x.dtype, x.device, "gemv_silu_mul")
    cfg = config or pick_config(x, w_gate)
    wg, sg, zg, stride_sn = _weight_args(w_gate)
    wu, su, zu, _ = _weight_args(w_up)
    nw = norm_weight if norm_weight is not None else x
    grid = (triton.cdiv(n, cfg.block_n),)
    _gemv_silu_mul_kernel[grid](x, wg, sg, zg, wu, su, zu, nw, y, b_sz, n, k,
                                x.stride(0), wg.stride(0), stride_sn, y.stride(0), eps,
                                KIND=int(w_gate.kind), GROUP=max(w_gate.group_size, 2),
                                HAS_NORM=norm_weight is not None, DOT_DTYPE=dot_operand_dtype(x.dtype),
                                **cfg.constexprs(), num_warps=cfg.num_warps)
    return y
