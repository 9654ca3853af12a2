"""The persistent interpreter: ONE @triton.jit kernel that walks per-program instruction queues.

Grid = programs (on the GPU: SMs x programs_per_sm, clamped to what is co-resident, see runtime.py;
1 in the CPU interpreter). Program p reads queue[p, 0 .. length[p]) (kernels/mega/instructions.py
word layout) and for each instruction:
  1. waits, bounded, until its counter reaches the count it needs (acquire, gpu scope, barriers on
     both sides); a wait on a counter already seen at that count by this program is skipped;
     on timeout it raises the error flag, writes its own error record [code, program, position, instr,
     counter, seen, target, launch] and stops (the others stop too: their spins watch the flag, and
     each records where it stood, so the host can name the most upstream stalled instruction);
  2. runs the instruction's code path (if/elif on the opcode);
  3. release-increments the counter it bumps.
With TIMELINE (a constexpr, off by default and then compiled out), each program also writes, per queue position,
[clock before the wait, clock after it, clock after the release, SM id] to timeline_ptr (int64): the GPU's
global nanosecond timer (CLOCK = 1), or in the CPU interpreter a logical clock (CLOCK = 0: one shared counter
bumped at every event, so the order of events across programs is kept).
With L2_PREFETCH = n > 0 (GPU only; off by default), an instruction that has to wait first asks L2 for the first n
K steps of its first weight tile, so the stage boundary's drain-and-refill overlaps the wait.
Model dims, quant kind, batch and every tile size are constexprs: each configuration compiles its
own specialised kernel. All arithmetic is fp32 on values loaded from any dtype (bf16 is wrong in the
Triton interpreter otherwise); tensor-core dots take the activation dtype on the GPU.
Layer offsets are int64 (stacked weights and KV caches pass 2^31 elements for large models).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.attention import attn_partial_tile, split_range
from kernels.elementwise import silu
from kernels.lm_head import argmax_of_partials, tile_argmax
from kernels.gemv import gemv_tile
from kernels.mega.tiles import (combine_group, now, prefetch_l2, release, report_error, round_for_store, sm_id,
                                wait_until)

ERR_TIMEOUT = 1


@triton.jit
def _megakernel(
        queue_ptr, length_ptr, queue_stride, counter_ptr, error_ptr, launch_id, spin_limit, advance,
        tok_ptr, pos_ptr, next_ptr, h_ptr, q_ptr, attn_ptr, act_ptr, opart_ptr, lse_ptr, logits_ptr, pmax_ptr, pidx_ptr,
        embed_ptr, attn_norm_ptr, mlp_norm_ptr, final_norm_ptr,
        wqkv_ptr, sqkv_ptr, zqkv_ptr, wo_ptr, so_ptr, zo_ptr, wg_ptr, sg_ptr, zg_ptr, wu_ptr, su_ptr, zu_ptr,
        wd_ptr, sd_ptr, zd_ptr, wlm_ptr, slm_ptr, zlm_ptr,
        k_cache_ptr, v_cache_ptr, cos_ptr, sin_ptr, s_max, eps, scale_log2, timeline_ptr, clock_ptr,
        D: tl.constexpr, H: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr, F: tl.constexpr, V: tl.constexpr,
        B: tl.constexpr, KIND: tl.constexpr, QGROUP: tl.constexpr, N_COUNTERS: tl.constexpr,
        WSTR_D: tl.constexpr, WSTR_Q: tl.constexpr, WSTR_F: tl.constexpr,
        SSTR_D: tl.constexpr, SSTR_Q: tl.constexpr, SSTR_F: tl.constexpr,
        B_PAD: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, PREFETCH: tl.constexpr, FOLD: tl.constexpr,
        QKV_P: tl.constexpr, QKV_BK: tl.constexpr, QKV_GPS: tl.constexpr,
        O_BN: tl.constexpr, O_BK: tl.constexpr, O_GPS: tl.constexpr, O_TPI: tl.constexpr,
        GU_BN: tl.constexpr, GU_BK: tl.constexpr, GU_GPS: tl.constexpr, GU_TPI: tl.constexpr,
        DN_BN: tl.constexpr, DN_BK: tl.constexpr, DN_GPS: tl.constexpr, DN_TPI: tl.constexpr,
        LM_BN: tl.constexpr, LM_BK: tl.constexpr, LM_GPS: tl.constexpr, LM_TPI: tl.constexpr, N_LM: tl.constexpr,
        EMBED_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, N_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
        G_PAD: tl.constexpr, GR_PAD: tl.constexpr, HD_PAD: tl.constexpr, ARGMAX_BLOCK: tl.constexpr, W: tl.constexpr,
        TIMELINE: tl.constexpr, CLOCK: tl.constexpr, L2_PREFETCH: tl.constexpr):
    # Buffers: tokens, positions, next [B] int32; h [B, D], q [B, H, HD], attn [B, H HD], act [B, F],
    # o_part [B, H, N_SPLITS, HD_PAD], lse [B, H, N_SPLITS], logits [B, V], pmax / pidx [B, N_LM] (fp32 / int32).
    # Weights stacked over layers: W* [L, N, K or K/2], S*/Z* [L, N] (int8) or [L, N, K/QGROUP] (int4),
    # norms [L, D]; caches [L, B, KVH, s_max, HD]; cos / sin [s_max, HD/2] fp32.
    # timeline (TIMELINE only): [programs, queue_stride / W, 4] int64 of this launch; clock: [1] int64 (CLOCK 0).
    GQ: tl.constexpr = H // KVH  # query heads per kv head
    HALF: tl.constexpr = HD // 2
    Q_DIM: tl.constexpr = H * HD
    QKV_N: tl.constexpr = (H + 2 * KVH) * HD
    NPB: tl.constexpr = (HALF + QKV_P - 1) // QKV_P
    pid = tl.program_id(0)
    n_instr = tl.load(length_ptr + pid)
    qbase = queue_ptr + pid * queue_stride
    rows = tl.arange(0, B_PAD)
    row_ok = rows < B
    pc = 0
    alive = 1
    last_c = -1
    last_seen = 0
    while (pc < n_instr) & (alive != 0):
        word = qbase + pc * W
        op = tl.load(word)
        layer = tl.load(word + 1)
        a = tl.load(word + 2)
        b = tl.load(word + 3)
        wc = tl.load(word + 4)
        wn = tl.load(word + 5)
        bc = tl.load(word + 6)
        if TIMELINE:
            t_start = now(clock_ptr, CLOCK)
        if (wc >= 0) & ((wc != last_c) | (wn > last_seen)):
            if L2_PREFETCH > 0:  # the first L2_PREFETCH K steps of the first weight tile, while we wait
                lp = layer.to(tl.int64)
                if op == 1:
                    r0 = (a // NPB) * HD + (a % NPB) * QKV_P
                    w_l = wqkv_ptr + lp * (QKV_N * WSTR_D)
                    prefetch_l2(w_l, r0, QKV_N, WSTR_D, D, QKV_P, L2_PREFETCH * QKV_BK)
                    prefetch_l2(w_l, r0 + HALF, QKV_N, WSTR_D, D, QKV_P, L2_PREFETCH * QKV_BK)
                elif op == 4:
                    prefetch_l2(wo_ptr + lp * (D * WSTR_Q), a * O_TPI * O_BN, D, WSTR_Q, Q_DIM, O_BN, L2_PREFETCH * O_BK)
                elif op == 5:
                    r0 = a * GU_TPI * GU_BN
                    prefetch_l2(wg_ptr + lp * (F * WSTR_D), r0, F, WSTR_D, D, GU_BN, L2_PREFETCH * GU_BK)
                    prefetch_l2(wu_ptr + lp * (F * WSTR_D), r0, F, WSTR_D, D, GU_BN, L2_PREFETCH * GU_BK)
                elif op == 6:
                    prefetch_l2(wd_ptr + lp * (D * WSTR_F), a * DN_TPI * DN_BN, D, WSTR_F, F, DN_BN, L2_PREFETCH * DN_BK)
                elif op == 7:
                    prefetch_l2(wlm_ptr, a * LM_TPI * LM_BN, V, WSTR_D, D, LM_BN, L2_PREFETCH * LM_BK)
            seen = wait_until(counter_ptr + wc, wn, error_ptr, spin_limit)
            if seen < wn:
                report_error(error_ptr, 1, pid, pc, tl.load(word + 7), wc, seen, wn, launch_id, W)
                alive = 0
            else:
                last_c = wc
                last_seen = seen
        if TIMELINE:
            t_ready = now(clock_ptr, CLOCK)
        if alive != 0:
            lw = layer.to(tl.int64)
            if op == 0:  # Embed(col_block=a)
                cols = a * EMBED_BLOCK + tl.arange(0, EMBED_BLOCK)
                tok = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
                m = row_ok[:, None] & (cols < D)[None, :]
                e = tl.load(embed_ptr + tok[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
                tl.store(h_ptr + rows[:, None] * D + cols[None, :], e, mask=m)
            elif op == 1:  # RmsQkvRope(layer, row_block=a)
                slot = a // NPB
                i = (a % NPB) * QKV_P + tl.arange(0, QKV_P)  # pair index within the head
                i_ok = i < HALF
                w_l = wqkv_ptr + lw * (QKV_N * WSTR_D)
                s_l = sqkv_ptr + lw * (QKV_N * SSTR_D)
                z_l = zqkv_ptr + lw * (QKV_N * SSTR_D)
                nw = attn_norm_ptr + lw * D
                row0 = slot * HD + (a % NPB) * QKV_P  # first lo row; its hi partner is HALF rows below
                lo = gemv_tile(h_ptr, D, B, D, w_l, WSTR_D, s_l, z_l, SSTR_D, nw, eps, row0, slot * HD + HALF,
                               KIND, QGROUP, True, B_PAD, QKV_P, QKV_BK, QKV_GPS, USE_DOT, DOT_DTYPE, PREFETCH, FOLD)
                hi = gemv_tile(h_ptr, D, B, D, w_l, WSTR_D, s_l, z_l, SSTR_D, nw, eps, row0 + HALF, slot * HD + HD,
                               KIND, QGROUP, True, B_PAD, QKV_P, QKV_BK, QKV_GPS, USE_DOT, DOT_DTYPE, PREFETCH, FOLD)
                pos = tl.load(pos_ptr + rows, mask=row_ok, other=0)
                m = (row_ok & (pos >= 0) & (pos < s_max))[:, None] & i_ok[None, :]
                if slot < H + KVH:  # q or k head: rotate-half RoPE at each sequence's position
                    cs = pos.to(tl.int64)[:, None] * HALF + i[None, :]
                    cos = tl.load(cos_ptr + cs, mask=m, other=0.0)
                    sin = tl.load(sin_ptr + cs, mask=m, other=0.0)
                    lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
                if slot < H:
                    dst = q_ptr + (rows * Q_DIM + slot * HD)[:, None] + i[None, :]
                    tl.store(dst, lo, mask=m)
                    tl.store(dst + HALF, hi, mask=m)
                else:
                    g = (slot - H) % KVH
                    off = (((lw * B + rows) * KVH + g) * s_max + pos)[:, None] * HD + i[None, :]
                    if slot < H + KVH:
                        tl.store(k_cache_ptr + off, round_for_store(lo, k_cache_ptr), mask=m)
                        tl.store(k_cache_ptr + off + HALF, round_for_store(hi, k_cache_ptr), mask=m)
                    else:
                        tl.store(v_cache_ptr + off, round_for_store(lo, v_cache_ptr), mask=m)
                        tl.store(v_cache_ptr + off + HALF, round_for_store(hi, v_cache_ptr), mask=m)
            elif op == 2:  # AttnPartial(layer, kv_head=a, split=b), every sequence
                gi = tl.arange(0, G_PAD)
                d = tl.arange(0, HD_PAD)
                for bb in range(B):
                    seq_len = tl.minimum(tl.load(pos_ptr + bb) + 1, s_max)
                    start, end = split_range(seq_len, b, N_SPLITS, KV_BLOCK)
                    base = ((lw * B + bb) * KVH + a) * s_max * HD
                    out, lse2 = attn_partial_tile(q_ptr + (bb * H + a * GQ) * HD, k_cache_ptr + base, v_cache_ptr + base,
                                                  HD, HD, HD, start, end, scale_log2, GQ, G_PAD, HD, HD_PAD, KV_BLOCK,
                                                  DOT_DTYPE)
                    head = bb * H + a * GQ + gi
                    tl.store(opart_ptr + ((head * N_SPLITS + b) * HD_PAD)[:, None] + d[None, :], out,
                             mask=(gi < GQ)[:, None])
                    tl.store(lse_ptr + head * N_SPLITS + b, lse2, mask=gi < GQ)
            elif op == 3:  # AttnReduce(layer, kv_head=a): all query heads of the group at once
                gi = tl.arange(0, GR_PAD)
                d = tl.arange(0, HD_PAD)
                for bb in range(B):
                    head0 = bb * H + a * GQ
                    o = combine_group(opart_ptr + head0 * N_SPLITS * HD_PAD, lse_ptr + head0 * N_SPLITS, N_SPLITS,
                                      GQ, GR_PAD, SPLITS_PAD, HD_PAD)
                    tl.store(attn_ptr + bb * Q_DIM + (a * GQ + gi)[:, None] * HD + d[None, :], o,
                             mask=(gi < GQ)[:, None] & (d < HD)[None, :])
            elif op == 4:  # OProjResidual(layer, row_block=a)
                w_l = wo_ptr + lw * (D * WSTR_Q)
                s_l = so_ptr + lw * (D * SSTR_Q)
                z_l = zo_ptr + lw * (D * SSTR_Q)
                for t in range(O_TPI):
                    n0 = (a * O_TPI + t) * O_BN
                    offs = n0 + tl.arange(0, O_BN)
                    n_ok = offs < D
                    acc = gemv_tile(attn_ptr, Q_DIM, B, Q_DIM, w_l, WSTR_Q, s_l, z_l, SSTR_Q, attn_norm_ptr, eps, n0, D,
                                    KIND, QGROUP, False, B_PAD, O_BN, O_BK, O_GPS, USE_DOT, DOT_DTYPE, PREFETCH, FOLD)
                    hp = h_ptr + rows[:, None] * D + offs[None, :]
                    hm = row_ok[:, None] & n_ok[None, :]
                    tl.store(hp, tl.load(hp, mask=hm, other=0.0) + acc, mask=hm)
            elif op == 5:  # RmsGateUpSilu(layer, row_block=a)
                wg_l = wg_ptr + lw * (F * WSTR_D)
                wu_l = wu_ptr + lw * (F * WSTR_D)
                sg_l = sg_ptr + lw * (F * SSTR_D)
                su_l = su_ptr + lw * (F * SSTR_D)
                zg_l = zg_ptr + lw * (F * SSTR_D)
                zu_l = zu_ptr + lw * (F * SSTR_D)
                for t in range(GU_TPI):
                    n0 = (a * GU_TPI + t) * GU_BN
                    offs = n0 + tl.arange(0, GU_BN)
                    n_ok = offs < F
                    nw = mlp_norm_ptr + lw * D
                    gate = gemv_tile(h_ptr, D, B, D, wg_l, WSTR_D, sg_l, zg_l, SSTR_D, nw, eps, n0, F,
                                     KIND, QGROUP, True, B_PAD, GU_BN, GU_BK, GU_GPS, USE_DOT, DOT_DTYPE, PREFETCH,
                                     FOLD)
                    up = gemv_tile(h_ptr, D, B, D, wu_l, WSTR_D, su_l, zu_l, SSTR_D, nw, eps, n0, F,
                                   KIND, QGROUP, True, B_PAD, GU_BN, GU_BK, GU_GPS, USE_DOT, DOT_DTYPE, PREFETCH, FOLD)
                    tl.store(act_ptr + rows[:, None] * F + offs[None, :], silu(gate) * up,
                             mask=row_ok[:, None] & n_ok[None, :])
            elif op == 6:  # DownResidual(layer, row_block=a)
                w_l = wd_ptr + lw * (D * WSTR_F)
                s_l = sd_ptr + lw * (D * SSTR_F)
                z_l = zd_ptr + lw * (D * SSTR_F)
                for t in range(DN_TPI):
                    n0 = (a * DN_TPI + t) * DN_BN
                    offs = n0 + tl.arange(0, DN_BN)
                    n_ok = offs < D
                    acc = gemv_tile(act_ptr, F, B, F, w_l, WSTR_F, s_l, z_l, SSTR_F, mlp_norm_ptr, eps, n0, D,
                                    KIND, QGROUP, False, B_PAD, DN_BN, DN_BK, DN_GPS, USE_DOT, DOT_DTYPE, PREFETCH,
                                    FOLD)
                    hp = h_ptr + rows[:, None] * D + offs[None, :]
                    hm = row_ok[:, None] & n_ok[None, :]
                    tl.store(hp, tl.load(hp, mask=hm, other=0.0) + acc, mask=hm)
            elif op == 7:  # LmHead(row_block=a)
                best = tl.full([B_PAD], float("-inf"), dtype=tl.float32)
                best_i = tl.zeros([B_PAD], dtype=tl.int32)
                for t in range(LM_TPI):
                    n0 = (a * LM_TPI + t) * LM_BN
                    offs = n0 + tl.arange(0, LM_BN)
                    n_ok = offs < V
                    logit = gemv_tile(h_ptr, D, B, D, wlm_ptr, WSTR_D, slm_ptr, zlm_ptr, SSTR_D, final_norm_ptr, eps, n0,
                                      V, KIND, QGROUP, True, B_PAD, LM_BN, LM_BK, LM_GPS, USE_DOT, DOT_DTYPE, PREFETCH,
                                      FOLD)
                    tl.store(logits_ptr + rows[:, None] * V + offs[None, :], logit, mask=row_ok[:, None] & n_ok[None, :])
                    tb, ti = tile_argmax(logit, offs, V)
                    take = tb > best  # strict: earlier tiles hold the lower indices
                    best_i = tl.where(take, ti, best_i)
                    best = tl.maximum(best, tb)
                tl.store(pmax_ptr + rows * N_LM + a, best, mask=row_ok)
                tl.store(pidx_ptr + rows * N_LM + a, best_i, mask=row_ok)
            else:  # Argmax: the step's only sink; every other instruction has finished
                for bb in range(B):
                    idx = argmax_of_partials(pmax_ptr + bb * N_LM, pidx_ptr + bb * N_LM, N_LM, ARGMAX_BLOCK)
                    tl.store(next_ptr + bb, idx)
                    if advance != 0:
                        tl.store(tok_ptr + bb, idx)
                        tl.store(pos_ptr + bb, tl.load(pos_ptr + bb) + 1)
                c = tl.arange(0, 1024)
                for c0 in range(0, N_COUNTERS, 1024):
                    tl.store(counter_ptr + c0 + c, 0, mask=c0 + c < N_COUNTERS)
            if bc >= 0:
                release(counter_ptr + bc)
        if TIMELINE:
            rec = timeline_ptr + ((pid * (queue_stride // W) + pc) * 4).to(tl.int64)
            tl.store(rec, t_start)
            tl.store(rec + 1, t_ready)
            tl.store(rec + 2, now(clock_ptr, CLOCK))
            tl.store(rec + 3, sm_id(CLOCK))
        pc += 1
