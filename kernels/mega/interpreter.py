"""The persistent interpreter: ONE @triton.jit kernel that walks per-program instruction queues.

Grid = programs (on the GPU: SMs x programs_per_sm, clamped to what is co-resident, see runtime.py;
1 in the CPU interpreter). Program p reads queue[p, 0 .. length[p]) (kernels/mega/instructions.py
word layout) and for each instruction:
  1. waits, bounded, until its counter reaches the count it needs (acquire, gpu scope, barriers on
     both sides); a wait on a counter already seen at that count by this program is skipped;
     on timeout it raises the error flag, writes its own error record [code, program, position, instr,
     counter, seen, target, launch] and stops (the others stop too: their spins watch the flag, and
     each records where it stood, so the host can name the most upstream stalled instruction);
  2. runs the instruction's device function (below, one per `Op`, dispatched on the Op values);
  3. release-increments the counter it bumps.
With TIMELINE (a constexpr, off by default and then compiled out), each program also writes, per queue position,
[clock before the wait, clock after it, clock after the release, SM id] to the timeline buffer (int64): the GPU's
global nanosecond timer (CLOCK = 1), or in the CPU interpreter a logical clock (CLOCK = 0: one shared counter
bumped at every event, so the order of events across programs is kept).
With L2_PREFETCH = n > 0 (GPU only), an instruction that has to wait first asks L2 for the first n K steps of its
first weight tile, so the stage boundary's drain-and-refill overlaps the wait.

Arguments are the NamedTuples of kernels/mega/args.py. Model dims, quant kind, batch and every tile size are
constexprs (`dims`, `tiles`): each configuration compiles its own specialised kernel. All arithmetic is fp32 on
values loaded from any dtype (bf16 is wrong in the Triton interpreter otherwise); tensor-core dots take the
activation dtype on the GPU. Layer offsets are int64 (stacked weights and KV caches pass 2^31 elements).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.attention import attn_partial_tile, split_range, split_seqs
from kernels.elementwise import silu
from kernels.gemv import gemv_tile
from kernels.lm_head import argmax_of_partials, tile_argmax
from kernels.mega.instructions import WORDS, Op
from kernels.mega.tiles import (await_counter, combine_group, now, prefetch_l2, queue_entry, record_timeline, release,
                                round_for_store)

# The dispatch's opcodes, as constexprs (kernels/mega/instructions.Op).
OP_EMBED = tl.constexpr(int(Op.EMBED))
OP_RMS_QKV_ROPE = tl.constexpr(int(Op.RMS_QKV_ROPE))
OP_ATTN_PARTIAL = tl.constexpr(int(Op.ATTN_PARTIAL))
OP_ATTN_REDUCE = tl.constexpr(int(Op.ATTN_REDUCE))
OP_OPROJ_RESIDUAL = tl.constexpr(int(Op.OPROJ_RESIDUAL))
OP_RMS_GATE_UP_SILU = tl.constexpr(int(Op.RMS_GATE_UP_SILU))
OP_DOWN_RESIDUAL = tl.constexpr(int(Op.DOWN_RESIDUAL))
OP_LM_HEAD = tl.constexpr(int(Op.LM_HEAD))
OP_ARGMAX = tl.constexpr(int(Op.ARGMAX))
WORDS_C = tl.constexpr(WORDS)


# ----------------------------------------------------------------------------------------------
# One device function per instruction (kernels/mega/instructions.py says what each fuses)
# ----------------------------------------------------------------------------------------------
@triton.jit
def embed(col_block, bufs, wts, dims: tl.constexpr, tiles: tl.constexpr):
    """Embed(col_block): h[:, cols] = embed[tokens, cols]."""
    rows = tl.arange(0, tiles.B_PAD)
    row_ok = rows < dims.B
    cols = col_block * tiles.EMBED_BLOCK + tl.arange(0, tiles.EMBED_BLOCK)
    tok = tl.load(bufs.tokens + rows, mask=row_ok, other=0).to(tl.int64)
    m = row_ok[:, None] & (cols < dims.D)[None, :]
    e = tl.load(wts.embed + tok[:, None] * dims.D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(bufs.h + rows[:, None] * dims.D + cols[None, :], e, mask=m)


@triton.jit
def rms_qkv_rope(layer, row_block, bufs, wts, cache, dims: tl.constexpr, tiles: tl.constexpr):
    """RmsQkvRope(layer, row_block): one pair block of one head slot of the fused wqkv, RoPE, q store or K/V append."""
    HALF: tl.constexpr = dims.HD // 2
    QKV_N: tl.constexpr = (dims.H + 2 * dims.KVH) * dims.HD
    rows = tl.arange(0, tiles.B_PAD)
    row_ok = rows < dims.B
    lw = layer.to(tl.int64)
    slot = row_block // tiles.NPB
    i = (row_block % tiles.NPB) * tiles.QKV.BN + tl.arange(0, tiles.QKV.BN)  # pair index within the head
    i_ok = i < HALF
    w_l = wts.qkv.w + lw * (QKV_N * dims.WSTR_D)
    s_l = wts.qkv.s + lw * (QKV_N * dims.SSTR_D)
    z_l = wts.qkv.z + lw * (QKV_N * dims.SSTR_D)
    nw = wts.attn_norm + lw * dims.D
    row0 = slot * dims.HD + (row_block % tiles.NPB) * tiles.QKV.BN  # first lo row; its hi partner is HALF rows below
    lo = gemv_tile(bufs.h, dims.D, dims.B, dims.D, w_l, dims.WSTR_D, s_l, z_l, dims.SSTR_D, nw, cache.eps, row0,
                   slot * dims.HD + HALF, dims.KIND, dims.QGROUP, True, tiles.B_PAD, tiles.QKV.BN, tiles.QKV.BK,
                   tiles.QKV.GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
    hi = gemv_tile(bufs.h, dims.D, dims.B, dims.D, w_l, dims.WSTR_D, s_l, z_l, dims.SSTR_D, nw, cache.eps, row0 + HALF,
                   slot * dims.HD + dims.HD, dims.KIND, dims.QGROUP, True, tiles.B_PAD, tiles.QKV.BN, tiles.QKV.BK,
                   tiles.QKV.GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
    pos = tl.load(bufs.positions + rows, mask=row_ok, other=0)
    m = (row_ok & (pos >= 0) & (pos < cache.s_max))[:, None] & i_ok[None, :]
    if slot < dims.H + dims.KVH:  # q or k head: rotate-half RoPE at each sequence's position
        cs = pos.to(tl.int64)[:, None] * HALF + i[None, :]
        cos = tl.load(cache.cos + cs, mask=m, other=0.0)
        sin = tl.load(cache.sin + cs, mask=m, other=0.0)
        lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
    if slot < dims.H:
        dst = bufs.q + (rows * (dims.H * dims.HD) + slot * dims.HD)[:, None] + i[None, :]
        tl.store(dst, lo, mask=m)
        tl.store(dst + HALF, hi, mask=m)
    else:
        g = (slot - dims.H) % dims.KVH
        off = (((lw * dims.B + rows) * dims.KVH + g) * cache.s_max + pos)[:, None] * dims.HD + i[None, :]
        if slot < dims.H + dims.KVH:
            tl.store(cache.k + off, round_for_store(lo, cache.k), mask=m)
            tl.store(cache.k + off + HALF, round_for_store(hi, cache.k), mask=m)
        else:
            tl.store(cache.v + off, round_for_store(lo, cache.v), mask=m)
            tl.store(cache.v + off + HALF, round_for_store(hi, cache.v), mask=m)


@triton.jit
def attn_partial(layer, kv_head, split, bufs, cache, dims: tl.constexpr, tiles: tl.constexpr):
    """AttnPartial(layer, kv_head, split): the flash-decoding partial of one kv group over context slice
    split % N_SPLITS of each sequence of group split // N_SPLITS (Lowered.split_seqs / split_range)."""
    GQ: tl.constexpr = dims.H // dims.KVH
    lw = layer.to(tl.int64)
    gi = tl.arange(0, tiles.G_PAD)
    d = tl.arange(0, tiles.HD_PAD)
    first, last, split = split_seqs(split, dims.B, tiles.N_SPLITS, tiles.SEQS_PER_GROUP)
    for bb in range(first, last):
        seq_len = tl.minimum(tl.load(bufs.positions + bb) + 1, cache.s_max)
        start, end = split_range(seq_len, split, tiles.N_SPLITS, tiles.KV_BLOCK)
        base = ((lw * dims.B + bb) * dims.KVH + kv_head) * cache.s_max * dims.HD
        out, lse2 = attn_partial_tile(bufs.q + (bb * dims.H + kv_head * GQ) * dims.HD, cache.k + base, cache.v + base,
                                      dims.HD, dims.HD, dims.HD, start, end, cache.scale_log2, GQ, tiles.G_PAD, dims.HD,
                                      tiles.HD_PAD, tiles.KV_BLOCK, tiles.DOT_DTYPE)
        head = bb * dims.H + kv_head * GQ + gi
        tl.store(bufs.o_part + ((head * tiles.N_SPLITS + split) * tiles.HD_PAD)[:, None] + d[None, :], out,
                 mask=(gi < GQ)[:, None])
        tl.store(bufs.lse + head * tiles.N_SPLITS + split, lse2, mask=gi < GQ)


@triton.jit
def attn_reduce(kv_head, bufs, dims: tl.constexpr, tiles: tl.constexpr):
    """AttnReduce(layer, kv_head): all query heads of the group at once, every sequence."""
    GQ: tl.constexpr = dims.H // dims.KVH
    gi = tl.arange(0, tiles.GR_PAD)
    d = tl.arange(0, tiles.HD_PAD)
    for bb in range(dims.B):
        head0 = bb * dims.H + kv_head * GQ
        o = combine_group(bufs.o_part + head0 * tiles.N_SPLITS * tiles.HD_PAD, bufs.lse + head0 * tiles.N_SPLITS,
                          tiles.N_SPLITS, GQ, tiles.GR_PAD, tiles.SPLITS_PAD, tiles.HD_PAD)
        tl.store(bufs.attn + bb * (dims.H * dims.HD) + (kv_head * GQ + gi)[:, None] * dims.HD + d[None, :], o,
                 mask=(gi < GQ)[:, None] & (d < dims.HD)[None, :])


@triton.jit
def gemv_residual(layer, row_block, lin, x_ptr, K, WSTR: tl.constexpr, SSTR: tl.constexpr, bufs, eps,
                  BN: tl.constexpr, BK: tl.constexpr, GPS: tl.constexpr, TPI: tl.constexpr,
                  dims: tl.constexpr, tiles: tl.constexpr):
    """OProjResidual and DownResidual: h[:, rows] += x @ W[rows].T for the rows of one row block (TPI tiles)."""
    rows = tl.arange(0, tiles.B_PAD)
    row_ok = rows < dims.B
    lw = layer.to(tl.int64)
    w_l = lin.w + lw * (dims.D * WSTR)
    s_l = lin.s + lw * (dims.D * SSTR)
    z_l = lin.z + lw * (dims.D * SSTR)
    for t in range(TPI):
        n0 = (row_block * TPI + t) * BN
        offs = n0 + tl.arange(0, BN)
        acc = gemv_tile(x_ptr, K, dims.B, K, w_l, WSTR, s_l, z_l, SSTR, x_ptr, eps, n0, dims.D, dims.KIND, dims.QGROUP,
                        False, tiles.B_PAD, BN, BK, GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
        hp = bufs.h + rows[:, None] * dims.D + offs[None, :]
        hm = row_ok[:, None] & (offs < dims.D)[None, :]
        tl.store(hp, tl.load(hp, mask=hm, other=0.0) + acc, mask=hm)


@triton.jit
def rms_gate_up_silu(layer, row_block, bufs, wts, eps, dims: tl.constexpr, tiles: tl.constexpr):
    """RmsGateUpSilu(layer, row_block): act[:, rows] = silu(norm(h) @ Wg[rows].T) * (norm(h) @ Wu[rows].T)."""
    rows = tl.arange(0, tiles.B_PAD)
    row_ok = rows < dims.B
    lw = layer.to(tl.int64)
    step = lw * (dims.F * dims.WSTR_D)
    sz_step = lw * (dims.F * dims.SSTR_D)
    nw = wts.mlp_norm + lw * dims.D
    for t in range(tiles.GU.TPI):
        n0 = (row_block * tiles.GU.TPI + t) * tiles.GU.BN
        offs = n0 + tl.arange(0, tiles.GU.BN)
        gate = gemv_tile(bufs.h, dims.D, dims.B, dims.D, wts.gate.w + step, dims.WSTR_D, wts.gate.s + sz_step,
                         wts.gate.z + sz_step, dims.SSTR_D, nw, eps, n0, dims.F, dims.KIND, dims.QGROUP, True,
                         tiles.B_PAD, tiles.GU.BN, tiles.GU.BK, tiles.GU.GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
        up = gemv_tile(bufs.h, dims.D, dims.B, dims.D, wts.up.w + step, dims.WSTR_D, wts.up.s + sz_step,
                       wts.up.z + sz_step, dims.SSTR_D, nw, eps, n0, dims.F, dims.KIND, dims.QGROUP, True,
                       tiles.B_PAD, tiles.GU.BN, tiles.GU.BK, tiles.GU.GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
        tl.store(bufs.act + rows[:, None] * dims.F + offs[None, :], silu(gate) * up,
                 mask=row_ok[:, None] & (offs < dims.F)[None, :])


@triton.jit
def lm_head(row_block, bufs, wts, eps, dims: tl.constexpr, tiles: tl.constexpr):
    """LmHead(row_block): logits rows of norm(h), and the block's max logit and its lowest index per sequence."""
    B_PAD: tl.constexpr = tiles.B_PAD  # (tl.zeros takes no tuple field as a shape)
    rows = tl.arange(0, B_PAD)
    row_ok = rows < dims.B
    best = tl.full([B_PAD], float("-inf"), dtype=tl.float32)
    best_i = tl.zeros([B_PAD], dtype=tl.int32)
    for t in range(tiles.LM.TPI):
        n0 = (row_block * tiles.LM.TPI + t) * tiles.LM.BN
        offs = n0 + tl.arange(0, tiles.LM.BN)
        logit = gemv_tile(bufs.h, dims.D, dims.B, dims.D, wts.lm.w, dims.WSTR_D, wts.lm.s, wts.lm.z, dims.SSTR_D,
                          wts.final_norm, eps, n0, dims.V, dims.KIND, dims.QGROUP, True, tiles.B_PAD, tiles.LM.BN,
                          tiles.LM.BK, tiles.LM.GPS, tiles.USE_DOT, tiles.DOT_DTYPE, tiles.FOLD)
        tl.store(bufs.logits + rows[:, None] * dims.V + offs[None, :], logit,
                 mask=row_ok[:, None] & (offs < dims.V)[None, :])
        tb, ti = tile_argmax(logit, offs, dims.V)
        take = tb > best  # strict: earlier tiles hold the lower indices
        best_i = tl.where(take, ti, best_i)
        best = tl.maximum(best, tb)
    tl.store(bufs.pmax + rows * tiles.N_LM + row_block, best, mask=row_ok)
    tl.store(bufs.pidx + rows * tiles.N_LM + row_block, best_i, mask=row_ok)


@triton.jit
def argmax(bufs, advance, dims: tl.constexpr, tiles: tl.constexpr):
    """Argmax: the next token of every sequence (advance: written back with position + 1); zeroes the counters.
    The step's only sink: every other instruction has finished when it runs."""
    for bb in range(dims.B):
        idx = argmax_of_partials(bufs.pmax + bb * tiles.N_LM, bufs.pidx + bb * tiles.N_LM, tiles.N_LM,
                                 tiles.ARGMAX_BLOCK)
        tl.store(bufs.next_tokens + bb, idx)
        if advance != 0:
            tl.store(bufs.tokens + bb, idx)
            tl.store(bufs.positions + bb, tl.load(bufs.positions + bb) + 1)
    c = tl.arange(0, 1024)
    for c0 in range(0, dims.N_COUNTERS, 1024):
        tl.store(bufs.counters + c0 + c, 0, mask=c0 + c < dims.N_COUNTERS)


@triton.jit
def prefetch_first_tile(op, layer, a, wts, dims: tl.constexpr, tiles: tl.constexpr, STEPS: tl.constexpr):
    """Asks L2 for the first STEPS K steps of the first weight tile of instruction (op, layer, a)."""
    HALF: tl.constexpr = dims.HD // 2
    QKV_N: tl.constexpr = (dims.H + 2 * dims.KVH) * dims.HD
    lp = layer.to(tl.int64)
    if op == OP_RMS_QKV_ROPE:
        r0 = (a // tiles.NPB) * dims.HD + (a % tiles.NPB) * tiles.QKV.BN
        w_l = wts.qkv.w + lp * (QKV_N * dims.WSTR_D)
        prefetch_l2(w_l, r0, QKV_N, dims.WSTR_D, dims.D, tiles.QKV.BN, STEPS * tiles.QKV.BK)
        prefetch_l2(w_l, r0 + HALF, QKV_N, dims.WSTR_D, dims.D, tiles.QKV.BN, STEPS * tiles.QKV.BK)
    elif op == OP_OPROJ_RESIDUAL:
        prefetch_l2(wts.o.w + lp * (dims.D * dims.WSTR_Q), a * tiles.O.TPI * tiles.O.BN, dims.D, dims.WSTR_Q,
                    dims.H * dims.HD, tiles.O.BN, STEPS * tiles.O.BK)
    elif op == OP_RMS_GATE_UP_SILU:
        r0 = a * tiles.GU.TPI * tiles.GU.BN
        prefetch_l2(wts.gate.w + lp * (dims.F * dims.WSTR_D), r0, dims.F, dims.WSTR_D, dims.D, tiles.GU.BN,
                    STEPS * tiles.GU.BK)
        prefetch_l2(wts.up.w + lp * (dims.F * dims.WSTR_D), r0, dims.F, dims.WSTR_D, dims.D, tiles.GU.BN,
                    STEPS * tiles.GU.BK)
    elif op == OP_DOWN_RESIDUAL:
        prefetch_l2(wts.down.w + lp * (dims.D * dims.WSTR_F), a * tiles.DN.TPI * tiles.DN.BN, dims.D, dims.WSTR_F,
                    dims.F, tiles.DN.BN, STEPS * tiles.DN.BK)
    elif op == OP_LM_HEAD:
        prefetch_l2(wts.lm.w, a * tiles.LM.TPI * tiles.LM.BN, dims.V, dims.WSTR_D, dims.D, tiles.LM.BN,
                    STEPS * tiles.LM.BK)


# ----------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _megakernel(queue, bufs, wts, cache, dims: tl.constexpr, tiles: tl.constexpr, TIMELINE: tl.constexpr,
                CLOCK: tl.constexpr, L2_PREFETCH: tl.constexpr):
    # queue, bufs, wts, cache: kernels/mega/args.py (Queue, Buffers, Weights, Cache); dims, tiles: its Dims, Tiles.
    pid = tl.program_id(0)
    n_instr = tl.load(queue.lengths + pid)
    qbase = queue.queue + pid * queue.stride
    pc = 0
    alive = 1
    last_c = -1
    last_seen = 0
    while (pc < n_instr) & (alive != 0):
        word = qbase + pc * WORDS_C
        op, layer, a, b, wc, wn, bc = queue_entry(word)
        if TIMELINE:
            t_start = now(bufs.clock, CLOCK)
        if (wc >= 0) & ((wc != last_c) | (wn > last_seen)):
            if L2_PREFETCH > 0:  # the first L2_PREFETCH K steps of the first weight tile, while we wait
                prefetch_first_tile(op, layer, a, wts, dims, tiles, L2_PREFETCH)
            seen = await_counter(bufs, queue, word, pid, pc, wc, wn, WORDS_C)
            if seen < wn:
                alive = 0
            else:
                last_c = wc
                last_seen = seen
        if TIMELINE:
            t_ready = now(bufs.clock, CLOCK)
        if alive != 0:
            # One int64 layer index for every instruction body, widened here rather than in each body: with the
            # widening in each body, LLVM picks other 64-bit address forms and ptxas schedules the gate/up K loop's
            # loads differently, 2% slower at llama8b int4 on an H200 (docs/perf-notes.md, "Architecture change").
            lw = layer.to(tl.int64)
            if op == OP_EMBED:
                embed(a, bufs, wts, dims, tiles)
            elif op == OP_RMS_QKV_ROPE:
                rms_qkv_rope(lw, a, bufs, wts, cache, dims, tiles)
            elif op == OP_ATTN_PARTIAL:
                attn_partial(lw, a, b, bufs, cache, dims, tiles)
            elif op == OP_ATTN_REDUCE:
                attn_reduce(a, bufs, dims, tiles)
            elif op == OP_OPROJ_RESIDUAL:
                gemv_residual(lw, a, wts.o, bufs.attn, dims.H * dims.HD, dims.WSTR_Q, dims.SSTR_Q, bufs, cache.eps,
                              tiles.O.BN, tiles.O.BK, tiles.O.GPS, tiles.O.TPI, dims, tiles)
            elif op == OP_RMS_GATE_UP_SILU:
                rms_gate_up_silu(lw, a, bufs, wts, cache.eps, dims, tiles)
            elif op == OP_DOWN_RESIDUAL:
                gemv_residual(lw, a, wts.down, bufs.act, dims.F, dims.WSTR_F, dims.SSTR_F, bufs, cache.eps,
                              tiles.DN.BN, tiles.DN.BK, tiles.DN.GPS, tiles.DN.TPI, dims, tiles)
            elif op == OP_LM_HEAD:
                lm_head(a, bufs, wts, cache.eps, dims, tiles)
            else:
                tl.static_assert(OP_ARGMAX == 8, "Argmax is the last opcode")
                argmax(bufs, queue.advance, dims, tiles)
            if bc >= 0:
                release(bufs.counters + bc)
        if TIMELINE:
            record_timeline(bufs, queue, pid, pc, t_start, t_ready, CLOCK, WORDS_C)
        pc += 1
