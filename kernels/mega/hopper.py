"""The Gluon backend of the megakernel (Hopper, sm_90): the same instruction stream, lowering, schedule and Python VM
as the Triton backend (kernels/mega/interpreter.py), with the weights streamed by TMA into a shared-memory ring
that runs ahead of every dependency.

Why: in the Triton backend the bytes in flight live in registers, and nothing can load the next instruction's
weights while a program waits on a counter. Weights never depend on activations, so here each program walks a
second, host-built list beside its queue: its weight stream, one entry per [BN, BK] chunk of every GEMV tile of
its queue, in the order its instructions consume them. Each program is warp-specialised: a one-warp loader
partition (_loader) walks the stream and issues every chunk into a ring of nbuf() slots as soon as a slot is free,
whatever instruction the chunk belongs to and whether or not that instruction's counter is ready; the compute
partition (_instructions, WARPS warps) runs the queue, waits on counters for activations only, and hands each slot
back after reading it. Two mbarriers per slot carry the handshake: `ready` (the TMA bytes landed) and `empty` (the
compute warps have read it). The loader's issue work (an entry read, an expect, two TMA boxes) is off the compute
warps' path: their chunk loop holds one mbarrier wait, one arrive and its thread barriers (_take).

Per chunk the compute is one or two tensor-core products (mma.sync through `mma_v2`; see "Chunks" below for what a
chunk holds): the ring slot [BN, BK] is operand A, and x^T [BK, B_PAD] (batch padded to 8 or 16) operand B, loaded
from global memory one chunk ahead (the activations are small and L2-resident) with the RMSNorm weight applied and
handed to the tensor cores through a shared-memory slot that the chunk's thread barrier orders (_tile). At
B_PAD 8 each product runs as two accumulator chains, one per column half of the chunk (_chains). Every
GEMV instruction ends with the same epilogues as the Triton backend (RoPE and the KV-cache append, residual add,
SiLU gate, the LM head's per-block argmax). The other instructions (Embed, AttnPartial, AttnReduce, Argmax) are
written with explicit layouts; attention uses the same flash-decoding split and combine, each partial over one
sequence group and context slice, its K and V blocks copied by cp.async into a small shared-memory ring of their
own (_attn_partial).

int8 weights (per output channel, kernels/quant.py) stream as they are stored, one byte per weight: a ring slot holds
the same [BN, BK] chunk in half the bytes, so the ring is twice as deep for the same bytes in flight. A slot is read
in the tensor cores' int8 operand order (4 consecutive columns per register, the k_width = 4 operand layout: the MMA
sums over k, so x^T uses the same permuted order and the product is unchanged), each register of 4 bytes becomes
4 fp16 operands q in 5 instructions (_int8_f16: a XOR and two byte permutes give 1152 + q, exactly, and two packed
subtractions take the 1152 off, exactly). (Taking 1152 sum_k x_k off once per tile instead, from a sum of the staged
x, saves 17-43 instructions per chunk but measured 9% slower: the two x sums of the KP = 2 loops cost them more in
barrier waits than the instructions saved; docs/perf-notes.md, "Gate and up share each x^T chunk".)
x^T (fp32) is rounded to fp16 for the product: finer than bf16, but its range ends at
fp16's 65504. In the norm stages that operand is h times the norm weight, before the 1 / rms scale (which multiplies
the fp32 rows after the product): a residual-stream value times its norm weight must stay below 65504, a tighter
bound than the normalised activations of the per-op qgemv (kernels/qgemv.py).
The per-channel scale multiplies the tile's fp32 rows in each instruction's epilogue.

Scope, refused with one sentence by `problem()` otherwise: bf16 / fp16 or int8 weights (int4 runs on the Triton
backend), head_dim 64 or 128 (HEAD_DIMS), every GEMV K a multiple of BK, batch <= 16, a Hopper GPU.

Synchronisation, errors and the timeline record are the Triton backend's own device functions (kernels/mega/tiles.py,
@triton.jit helpers of scalar atomics, which a Gluon kernel calls as they are): bounded acquire spins, the error
record of the first stalled instruction, [start, ready, end, SM] per queue position when TIMELINE.
"""
from __future__ import annotations

from typing import Optional

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from kernels.mega.instructions import (WORDS, DownResidual, Instruction, LmHead, OProjResidual, Op, RmsGateUpSilu,
                                       RmsQkvRope)
from kernels.mega.lower import GemvTile, Lowered, TileConfig, _tiles_per_instr, cdiv, seq_groups
from kernels.mega.tiles import await_counter, now, queue_entry, record_timeline, release
from kernels.attention import split_range, split_seqs
from kernels.qgemv import INT8_F16_OFFSET, int8_f16_ptx
from kernels.quant import Kind, quant_mode
from kernels.tiles import next_pow2, split_count

BN = 64  # rows of a ring slot: 4 warps x 16 rows of mma.sync
BK = 256  # columns of a ring slot (32 KB of bf16 per slot)
BOX = 32  # rows of one TMA box
BOXES = BN // BOX  # boxes per ring slot
WARPS = 4  # the compute partition
LOADER_WARPS = 1  # the loader partition: one warp issues every TMA load
LOADER_REGS = 40  # registers per thread the loader keeps (a few scalars: an entry, its successor, j)
RING_BYTES = 128 * 1024  # weight bytes in flight per program: nbuf() chunks of 32 KB (bf16), 16 KB (int8)
KV_BLOCK = 32  # keys per attention step
KV_STAGES = 3  # K and V blocks in shared memory per program: one read, two landing (_attn_partial)
# Head dims: multiples of BN (a QKV tile holds whole heads' rows), powers of two (attention's aranges), at most
# 128 (at 256 the K/V stages, 96 KB, no longer fit beside the weight ring in one SM's shared memory).
HEAD_DIMS = (64, 128)
EMBED_BLOCK = 1024
KPS = (1, 2)  # column groups per chunk a stage may use
# Attention: one (kv head, sequence group, context slice) instruction per program where the batch and the context
# allow (kernels.mega.lower.seq_groups first), but at least this many keys per slice (an AttnPartial costs a few
# dependent round trips per sequence whatever its length; the reduce reads every slice).
MIN_SPLIT_KEYS = 128
# Chunks. One ring slot [BN, BK] is one chunk, filled by BOXES TMA boxes of [BOX, BK]; its weight-stream entry is
# [which weight, (row, column) of each box] (`which` indexes the descriptors below), box i landing in slot rows
# i BOX .. (i + 1) BOX. A stage's chunk has KP column groups (KP in KPS): the slot's rows g R .. (g + 1) R
# (R = BN / KP) are the tile's R rows at columns c + g BK. Each chunk is KP products, the whole slot times x^T at
# c + g BK, of which rows g R .. (g + 1) R count; they are summed once per tile. So a stage trades tile height for
# tile count at the same bytes per slot: with KP = 2, llama8b's O and down have 128 tiles of 32 rows for 132 SMs,
# not 64 of 64. The MMA work grows KP-fold, which is free at batch 1-16.
#   gate, up, LM head   KP = 1: 64 rows; with int8 weights or B_PAD 16, a gate tile and the up tile of the same
#                       rows run together, their chunks alternating in the stream, so each x^T chunk is staged once
#                       for both (_tile's PAIR, _pairs_gate_up); otherwise gate's tile, then up's;
#   O, down             KP = 1 or 2 (pick_tiles balances tiles over the grid);
#   QKV                 KP = 1: 32 rotate-half pairs, rows i .. i + 32 in the slot's first box and their partners
#                       i + hd/2 .. in its second (the partners meet in one chunk for RoPE).
# 16-row boxes (four per slot, KP up to 4: llama1b's O and down in 128 tiles) measured slower everywhere: every GEMV
# stage lost 5-7% to the doubled TMA and stream-entry work, and KP = 4 spilled (perf notes, "16-row boxes").
# A box past K (K an odd multiple of BK) is zero-filled by the TMA unit and its x columns are masked to 0, so it
# adds exactly 0 (and nothing to the RMSNorm's sum of squares).
W_QKV, W_O, W_GATE, W_UP, W_DOWN, W_LM = range(6)
ENTRY = 1 + 2 * BOXES
assert ENTRY == 5, "_entry and _copy read (which, row, col) x 2 boxes: update them with BOX"

OP_EMBED = gl.constexpr(int(Op.EMBED))
OP_RMS_QKV_ROPE = gl.constexpr(int(Op.RMS_QKV_ROPE))
OP_ATTN_PARTIAL = gl.constexpr(int(Op.ATTN_PARTIAL))
OP_ATTN_REDUCE = gl.constexpr(int(Op.ATTN_REDUCE))
OP_OPROJ_RESIDUAL = gl.constexpr(int(Op.OPROJ_RESIDUAL))
OP_RMS_GATE_UP_SILU = gl.constexpr(int(Op.RMS_GATE_UP_SILU))
OP_DOWN_RESIDUAL = gl.constexpr(int(Op.DOWN_RESIDUAL))
OP_LM_HEAD = gl.constexpr(int(Op.LM_HEAD))
KIND_INT8_C = gl.constexpr(int(Kind.INT8))
# int8 -> fp16 operands, 4 weights per register (pack = 4: byte i of $2 is element i; element 2 h + i of the 4
# is half i of $h): the qgemv byte conversion to fp16 1152 + q (kernels/qgemv.int8_f16_ptx), then one packed
# subtraction of 1152 per two weights (exact)
_F16_BITS = int(torch.tensor(INT8_F16_OFFSET.value, dtype=torch.float16).view(torch.int16)) & 0xFFFF
_F16_1152 = f"0x{_F16_BITS:04X}{_F16_BITS:04X}"  # the offset in both halves
INT8_F16_PTX = gl.constexpr("{\n.reg .b32 u, magic, bias;\nmov.b32 magic, 0x64646464;\n"
                            f"mov.b32 bias, {_F16_1152};\n" + int8_f16_ptx("$2", "$0", "$1")
                            + "sub.rn.f16x2 $0, $0, bias;\nsub.rn.f16x2 $1, $1, bias;\n}")
WORDS_C = gl.constexpr(WORDS)
ENTRY_C = gl.constexpr(ENTRY)
BN_C, BK_C, BOX_C, BOXES_C, WARPS_C = (gl.constexpr(v) for v in (BN, BK, BOX, BOXES, WARPS))
KV_STAGES_C = gl.constexpr(KV_STAGES)
LOADER_WARPS_C, LOADER_REGS_C = gl.constexpr(LOADER_WARPS), gl.constexpr(LOADER_REGS)
W_QKV_C, W_O_C, W_GATE_C, W_UP_C, W_DOWN_C = (gl.constexpr(v) for v in (W_QKV, W_O, W_GATE, W_UP, W_DOWN))


# ----------------------------------------------------------------------------------------------
# Host side: what this backend supports, its tiles, its weight stream
# ----------------------------------------------------------------------------------------------
def problem(spec, quant: str, batch: int, device: Optional[torch.device] = None) -> Optional[str]:
    """Why megakernel.backend=gluon cannot run this configuration (one sentence), or None."""
    if quant_mode(quant).kind == Kind.INT4 or quant == "fp32":
        return (f"megakernel.backend=gluon streams bf16, fp16 or int8 weights; quant={quant} runs on "
                f"megakernel.backend=triton")
    if spec.head_dim not in HEAD_DIMS:
        return (f"megakernel.backend=gluon runs head_dim {' or '.join(map(str, HEAD_DIMS))}; {spec.name} has "
                f"{spec.head_dim} (use megakernel.backend=triton)")
    for name, k in (("dim", spec.dim), ("q_dim", spec.q_dim), ("ffn_dim", spec.ffn_dim)):
        if k % BK:
            return f"megakernel.backend=gluon needs {name} a multiple of {BK}; {spec.name} has {k}"
    if batch > 16:
        return f"megakernel.backend=gluon runs batch 1..16, not {batch}"
    if device is not None:
        if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
            return ("megakernel.backend=gluon needs a Hopper GPU (sm_90: TMA and mbarrier); "
                    "use megakernel.backend=triton")
    return None


def pick_tiles(spec, batch: int, max_len: int, n_programs: int) -> TileConfig:
    """This backend's tiles (see "Chunks" above). A GemvTile's block_n is its rows (RmsQkvRope: rotate-half pairs)
    and block_k its columns per chunk, KP x BK; O and down take the KP that balances their tiles over the grid, the
    others KP = 1; tiles per instruction as in the Triton backend."""
    b_pad = 8 if batch <= 8 else 16
    # O and down: the column groups that minimise the most loaded program's rows (plus 8 rows of per-tile
    # overhead), the fewest on ties
    o_kp = min(KPS, key=lambda kp: (cdiv(cdiv(spec.dim, BN // kp), n_programs) * (BN // kp + 8), kp))

    def gemv(n: int, kp: int) -> GemvTile:
        return GemvTile(BN // kp, kp * BK, 1, _tiles_per_instr(cdiv(n, BN // kp), n_programs))
    groups = seq_groups(batch, spec.n_kv_heads, n_programs)
    n_splits = split_count(max_len, spec.n_kv_heads * groups, n_programs, kv_block=KV_BLOCK, min_keys=MIN_SPLIT_KEYS)
    return TileConfig(b_pad=b_pad, use_dot=True, num_warps=WARPS,
                      qkv=GemvTile(BN // 2, BK, 1, 1), o=gemv(spec.dim, o_kp),
                      gate_up=gemv(spec.ffn_dim, 1), down=gemv(spec.dim, o_kp), lm_head=gemv(spec.vocab_size, 1),
                      embed_block=min(EMBED_BLOCK, next_pow2(spec.dim)), kv_block=KV_BLOCK, n_splits=n_splits,
                      seq_groups=groups)


Chunk = tuple[int, ...]  # (which, row and column of each box): a stream entry


def tile_chunks(which: int, rows: list[int], k: int, kp: int) -> list[Chunk]:
    """The chunks of one tile: its R = BN / kp rows, given as the first rows of their BOX-row boxes, at kp column
    groups per chunk (see "Chunks")."""
    assert len(rows) * BOX * kp == BN
    return [(which, *[v for g in range(kp) for r in rows for v in (r, c + g * BK)]) for c in range(0, k, kp * BK)]


def instr_chunks(prog: Lowered, ins: Instruction) -> list[Chunk]:
    """The weight chunks an instruction consumes, in the order its device function does (see "Chunks" above).
    Rows index the 2-D view of the stacked weights ([L * N, K], or [V, D] for the LM head)."""
    s = prog.spec
    t = prog.tiles

    def stage_chunks(which: int, stage: GemvTile, n: int, blk: int, base: int, k: int) -> list[Chunk]:
        rows, kp = stage.block_n, stage.block_k // BK
        first = blk * stage.tiles_per_instr * rows
        out = []
        for i in range(stage.tiles_per_instr):
            r = first + i * rows
            if r < n:
                out += tile_chunks(which, [base + r + b * BOX for b in range(rows // BOX)], k, kp)
        return out

    if isinstance(ins, RmsQkvRope):
        slot, pairs = prog.qkv_pairs(ins.row_block)
        lo = ins.layer * prog.n_slots * s.head_dim + slot * s.head_dim + pairs.start
        boxes = [r + b * BOX for r in (lo, lo + prog.half) for b in range(t.qkv.block_n // BOX)]
        return tile_chunks(W_QKV, boxes, s.dim, t.qkv.block_k // BK)
    if isinstance(ins, OProjResidual):
        return stage_chunks(W_O, t.o, s.dim, ins.row_block, ins.layer * s.dim, s.q_dim)
    if isinstance(ins, RmsGateUpSilu):  # per tile, gate's chunks then up's, or (paired) each column's in turn
        pair = _pairs_gate_up(prog.kind == Kind.INT8, t.b_pad)
        out = []
        for i in range(t.gate_up.tiles_per_instr):
            r = (ins.row_block * t.gate_up.tiles_per_instr + i) * BN
            if r < s.ffn_dim:
                rows = [ins.layer * s.ffn_dim + r + b * BOX for b in range(BOXES)]
                gate, up = tile_chunks(W_GATE, rows, s.dim, 1), tile_chunks(W_UP, rows, s.dim, 1)
                out += [c for g, u in zip(gate, up) for c in (g, u)] if pair else gate + up
        return out
    if isinstance(ins, DownResidual):
        return stage_chunks(W_DOWN, t.down, s.dim, ins.row_block, ins.layer * s.dim, s.ffn_dim)
    if isinstance(ins, LmHead):
        return stage_chunks(W_LM, t.lm_head, s.vocab_size, ins.row_block, 0, s.dim)
    return []


def weight_stream(prog: Lowered, programs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch's weight streams: ([P, max chunks + 1, ENTRY] int32 entries, [P] int32 chunk counts) for the
    programs' queues (lists of instruction indices). The extra row keeps the loader's read-ahead in bounds."""
    per_prog = [[c for i in queue for c in instr_chunks(prog, prog.instrs[i])] for queue in programs]
    width = max((len(c) for c in per_prog), default=0) + 1
    table = torch.zeros(len(programs), width, ENTRY, dtype=torch.int32)
    for p, chunks in enumerate(per_prog):
        if chunks:
            table[p, :len(chunks)] = torch.tensor(chunks, dtype=torch.int32)
    counts = torch.tensor([len(c) for c in per_prog], dtype=torch.int32)
    return table.to(device), counts.to(device)


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.int8: gl.int8}


def gl_dtype(dtype: torch.dtype):
    """The Gluon dtype of the activations (bf16 or fp16) or of the streamed weights (those, or int8)."""
    return _GL_DTYPES[dtype]


def nbuf(quant: str) -> int:
    """Chunks in the ring: RING_BYTES of this quant mode's [BN, BK] chunks (4 of bf16, 8 of int8)."""
    return RING_BYTES // (BN * BK * quant_mode(quant).weight_bits // 8)


def smem_layout(dtype: torch.dtype):
    """The ring's shared-memory layout for weights stored as `dtype` (128-byte swizzle), the same for a [BOX, BK]
    box and a [BN, BK] slot."""
    return gl.NVMMASharedLayout.get_default_for([BOX, BK], gl_dtype(dtype))


def descriptors(weights) -> list:
    """The TMA descriptors of the six weights ([BOX, BK] boxes, in the order W_QKV .. W_LM) over the 2-D views of the
    stacked weights (kernels.model.ModelWeights), in their stored dtype."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    st = weights.stacked
    layout = smem_layout(st["wqkv"].weight.dtype)

    def d(w: torch.Tensor):
        return TensorDescriptor.from_tensor(w.reshape(-1, w.shape[-1]), [BOX, BK], layout)
    return [d(st["wqkv"].weight), d(st["wo"].weight), d(st["w_gate"].weight), d(st["w_up"].weight),
            d(st["w_down"].weight), d(weights.lm_head.weight)]


# ----------------------------------------------------------------------------------------------
# The weight ring
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _copy(desc, e, bar, dst):
    """The BOXES_C TMA boxes of one chunk (entry e) into their rows of its ring slot."""
    for i in gl.static_range(BOXES_C):
        tma.async_copy_global_to_shared(desc, [e[1 + 2 * i], e[2 + 2 * i]], bar, dst.slice(i * BOX_C, BOX_C, dim=0))


@gluon.jit
def _issue(d_qkv, d_o, d_gate, d_up, d_down, d_lm, e, bar, dst):
    """Starts the TMA loads of one chunk (entry e) into ring slot dst, to arrive on bar."""
    mbarrier.expect(bar, BOXES_C * d_qkv.block_type.nbytes)
    which = e[0]
    if which == W_QKV_C:
        _copy(d_qkv, e, bar, dst)
    elif which == W_O_C:
        _copy(d_o, e, bar, dst)
    elif which == W_GATE_C:
        _copy(d_gate, e, bar, dst)
    elif which == W_UP_C:
        _copy(d_up, e, bar, dst)
    elif which == W_DOWN_C:
        _copy(d_down, e, bar, dst)
    else:
        _copy(d_lm, e, bar, dst)


@gluon.jit
def _entry(stream_ptr, j):
    """The weight stream's entry j: (which, row and column of each of the BOXES_C = 2 boxes)."""
    p = stream_ptr + j * ENTRY_C
    return gl.load(p), gl.load(p + 1), gl.load(p + 2), gl.load(p + 3), gl.load(p + 4)


@gluon.jit
def ring_slot(j, NB: gl.constexpr):
    """The ring slot of stream chunk j (j >= 0; j + NB - 1 for chunk j - 1's)."""
    return j % NB


@gluon.jit
def ring_phase(j, NB: gl.constexpr):
    """The parity of chunk j's phase of its slot's barriers: chunk j is the slot's (j // NB)-th use. An mbarrier
    wait on parity p returns once the phase of that parity has completed; a fresh barrier counts its phase -1 (parity
    1) as completed, so the loader's first pass over the ring (wait on ring_phase ^ 1 = 1) does not block."""
    return (j // NB) & 1


@gluon.jit
def _loader(d_qkv, d_o, d_gate, d_up, d_down, d_lm, ring, ready, empty, stream_ptr, n_chunks, NB: gl.constexpr):
    """The loader partition (one warp): the program's whole weight stream, chunk j into ring slot j % NB as soon as
    the compute partition has released the chunk that slot held (j - NB), whatever instruction either belongs to and
    whether or not its counter is ready. Each entry is read one chunk ahead, so its L2 round trip overlaps the wait.
    Its one wait (on `empty`) needs no bound: the compute partition releases every slot it takes, and when it stops
    early (an error) it takes and releases the rest of the stream (_drain), so this loop always ends."""
    e = _entry(stream_ptr, 0)
    for j in range(n_chunks):
        e_next = _entry(stream_ptr, j + 1)  # in bounds: the stream has a spare row (weight_stream)
        slot = ring_slot(j, NB)
        mbarrier.wait(empty.index(slot), ring_phase(j, NB) ^ 1)  # the first pass over the ring passes at once
        # the compute warps' generic-proxy reads of this slot (ordered before their arrive) before the async proxy
        # overwrites it
        fence_async_shared()
        _issue(d_qkv, d_o, d_gate, d_up, d_down, d_lm, e, ready.index(slot), ring.index(slot))
        e = e_next


@gluon.jit
def _int8_f16(q):
    """int8 weights -> the same values in fp16 (any layout: elementwise, 4 per register)."""
    return gl.inline_asm_elementwise(INT8_F16_PTX, "=r,=r,r", [q], dtype=gl.float16, is_pure=True, pack=4)


@gluon.constexpr_function
def _pairs_gate_up(i8, b_pad):
    """Whether RmsGateUpSilu runs each tile's gate and up products in one loop, their chunks alternating in the
    stream (_tile's PAIR; instr_chunks), or one after the other. Pairing stages and loads each x^T chunk once for
    both, which pays where the chunk loop is issue-bound, int8 weights or 16 batch rows (same calls on one H200,
    llama8b: int8 B1 3013 -> 2675 us, bf16 B16 6110 -> 5634 us), and measured 1.4% slower for 16-bit weights at
    B_PAD 8, whose loop streams at 87% of copy either way (bf16 B1 4095 -> 4152 us, twice; docs/perf-notes.md)."""
    return i8 or b_pad > 8


@gluon.constexpr_function
def _k_width(i8):
    """The k_width of the mma operands: 2 (16-bit weights), 4 (int8: the int8 operand order, 4 bytes a register)."""
    return 4 if i8 else 2


@gluon.constexpr_function
def _operand_dtype(i8, dt):
    """The dtype of the tensor-core operands: the activations' (dense), fp16 (int8 weights, exact as fp16)."""
    return gl.float16 if i8 else dt


@gluon.constexpr_function
def _x_slot_layout(i8):
    """The x^T slots' shared layout ([BK, B_PAD], k contiguous per sequence). bf16 operands are read with ldmatrix:
    16-byte vectors swizzled over 8 sequences, conflict-free. int8's fp16 operands (k_width 4) are read with 64-bit
    loads, a lane its sequence's 4 consecutive k, so each half-warp reads 4 sequences x 32 bytes: swizzled in
    32-byte units over 4 sequences those land in 4 different bank groups (the 16-byte swizzle put two sequences on
    one group: 2 wavefronts per half-warp instead of 1, measured with Nsight Compute)."""
    return gl.SwizzledSharedLayout(16, 1, 4, order=[0, 1]) if i8 else gl.SwizzledSharedLayout(8, 1, 8, order=[0, 1])


@gluon.constexpr_function
def _chains(b_pad):
    """Accumulator chains per product: 2 (a chunk's column halves, two interleaved chains of 8 dependent mma.sync
    instead of one of 16) at B_PAD = 8; 1 at B_PAD = 16, where the second set of accumulators spills (measured,
    docs/perf-notes.md)."""
    return 2 if b_pad == 8 else 1


@gluon.jit
def _take(ring, ready, empty, j, A_OP: gl.constexpr, NB: gl.constexpr, I8: gl.constexpr, CH: gl.constexpr):
    """Chunk j out of the ring as mma operands, its CH column parts (int8: converted to fp16; with CH = 1 the second
    is the first again, unused). It opens with the chunk's thread barrier, after the chunk's x^T stores (_step):
    every warp has then stored chunk j's x^T and finished reading chunk j - 1's ring slot and x^T slots, so chunk
    j - 1's slot goes back to the loader (one arrive: the barrier of a slot counts 1) and chunk j's x^T is readable.
    A slot is released one chunk late, so the loader runs NB - 1 chunks ahead of the chunk being multiplied."""
    W: gl.constexpr = BK_C // CH
    _release_previous(empty, j, NB)
    slot = ring_slot(j, NB)
    mbarrier.wait(ready.index(slot), ring_phase(j, NB))
    a_lo = ring.index(slot).slice(0, W, dim=1).load(A_OP)
    if I8:
        a_lo = _int8_f16(a_lo)
    a_hi = a_lo
    if CH > 1:
        a_hi = ring.index(slot).slice(W, W, dim=1).load(A_OP)
        if I8:
            a_hi = _int8_f16(a_hi)
    return a_lo, a_hi


@gluon.jit
def _release_previous(empty, j, NB: gl.constexpr):
    """Chunk j - 1's slot back to the loader (if j > 0), once every warp is past the barrier that ends its reads."""
    gl.thread_barrier()
    mbarrier.arrive(empty.index(ring_slot(j + NB - 1, NB)), pred=j > 0)


@gluon.jit
def _drain(ready, empty, j, n_chunks, NB: gl.constexpr):
    """The end of the compute partition, chunk j next: releases the slot still held and takes and releases every
    chunk left (only after an error: the normal path has consumed them all), so the loader finishes its stream and
    every TMA load has landed before the program's shared memory goes."""
    _release_previous(empty, j, NB)
    for jj in range(j, n_chunks):
        mbarrier.wait(ready.index(ring_slot(jj, NB)), ring_phase(jj, NB))
        gl.thread_barrier()  # every warp's wait done before the slot (and so its `ready` phase) can move on
        mbarrier.arrive(empty.index(ring_slot(jj, NB)))


@gluon.jit
def _x_cols(x_ptr, K, nw_ptr, c, k, n, n_ok, NORM: gl.constexpr, DT: gl.constexpr):
    """x^T [BK, B_PAD] at columns c .. c + BK (rows of x: sequences, row stride K; columns >= K read as 0): with NORM
    in fp32 (for the sum of squares), with the norm weight there; else in DT, the operand dtype (half the registers
    a prefetched tile holds) and a placeholder, unused."""
    k_ok = (c + k) < K
    x = gl.load(x_ptr + n[None, :] * K + (c + k)[:, None], mask=n_ok & k_ok[:, None], other=0.0)
    if NORM:
        nw = gl.load(nw_ptr + c + k, mask=k_ok, other=0.0).to(gl.float32)
    else:
        x = x.to(DT)
        nw = k.to(gl.float32)
    return x, nw


@gluon.jit
def _stage_x(xs, x, nw, NORM: gl.constexpr, DT: gl.constexpr):
    """x^T (times the norm weight with NORM) into its x slot, in the operand dtype DT."""
    if NORM:
        x = x * nw[:, None]
    xs.store(x.to(DT))


@gluon.jit
def _step(ring, ready, empty, xs, j, c, x_ptr, K, nw_ptr, k, n, n_ok, x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b,
          ssq, KP: gl.constexpr, NORM: gl.constexpr, OT: gl.constexpr, NB: gl.constexpr, I8: gl.constexpr,
          CH: gl.constexpr, A_OP: gl.constexpr, B_OP: gl.constexpr, PAIR: gl.constexpr):
    """Chunk j of a tile, at columns c: its x^T (x<g>n, w<g>n, loaded one chunk earlier) into the x slots xs[g], the
    next chunk's x loaded, the chunk taken from the ring, its KP x CH products. With PAIR (KP = 1), chunk j + 1 is a
    second weight's chunk at the same columns (gate, then up): it multiplies the same x^T operand, loaded from its
    slot once, into acc1. Returns the carried values."""
    W: gl.constexpr = BK_C // CH
    xs0 = xs.index(0)
    xs1 = xs.index(1)
    nxt = c + KP * BK_C
    _stage_x(xs0, x0n, w0n, NORM, OT)
    if NORM:
        ssq += x0n * x0n
    x0n, w0n = _x_cols(x_ptr, K, nw_ptr, nxt, k, n, n_ok, NORM, OT)
    if KP > 1:
        _stage_x(xs1, x1n, w1n, NORM, OT)
        if NORM:
            ssq += x1n * x1n
        x1n, w1n = _x_cols(x_ptr, K, nw_ptr, nxt + BK_C, k, n, n_ok, NORM, OT)
    a_lo, a_hi = _take(ring, ready, empty, j, A_OP, NB, I8, CH)
    b_lo = xs0.slice(0, W, dim=0).load(B_OP)
    acc0 = mma_v2(a_lo, b_lo, acc0)
    b_hi = b_lo  # CH = 1: unused
    if CH > 1:
        b_hi = xs0.slice(W, W, dim=0).load(B_OP)
        acc0b = mma_v2(a_hi, b_hi, acc0b)
    if PAIR:
        a_lo, a_hi = _take(ring, ready, empty, j + 1, A_OP, NB, I8, CH)
        acc1 = mma_v2(a_lo, b_lo, acc1)
        if CH > 1:
            acc1b = mma_v2(a_hi, b_hi, acc1b)
    if KP > 1:
        acc1 = mma_v2(a_lo, xs1.slice(0, W, dim=0).load(B_OP), acc1)
        if CH > 1:
            acc1b = mma_v2(a_hi, xs1.slice(W, W, dim=0).load(B_OP), acc1b)
    return x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b, ssq


@gluon.jit
def _tile(ring, ready, empty, xa, xb, j, x_ptr, K, nw_ptr, B, eps, KP: gl.constexpr, NORM: gl.constexpr,
          B_PAD: gl.constexpr, DT: gl.constexpr, NB: gl.constexpr, I8: gl.constexpr, PAIR: gl.constexpr = False):
    """One tile's products over K, its chunks taken from the ring in stream order from chunk j (see "Chunks": KP
    column groups per chunk; product g, accumulated in acc<g> [BN, B_PAD] (MMA layout), counts slot rows
    g R .. (g + 1) R, R = BN / KP). With PAIR (KP = 1), two weights' tiles of the same rows at once, their chunks
    alternating in the stream (gate and up: instr_chunks), each x^T chunk staged once for both; acc1 is the second
    weight's product. With NORM, x = h * norm weight, and the returned per-sequence 1 / rms(h) scales the tile's rows
    (so the norm costs no extra pass over h); without, it is 1. Returns (acc0, acc1 (KP = 2 or PAIR), that scale
    [B_PAD], the next chunk j). I8: int8 weights, so fp16 operands in the int8 operand order (module docstring); the
    per-channel scale is the caller's.

    x^T reaches the B operand through shared memory. A step is one column chunk of x^T and the ring chunk(s) it
    multiplies (two with PAIR); the tile's even steps use the x slots xa, its odd ones xb (the loop takes two steps a
    turn). A step's stores precede its first _take barrier, which orders them before every warp's reads; the step
    before it used the other slots, and the barrier of the step between ordered every read of these before the
    stores. So x costs no barrier of its own, and the two slots being separate allocations lets the compiler see it:
    a chunk runs _take's barrier and the one the compiler puts right after its arrive (Triton 3.6 orders every
    mbarrier arrive before the next shared-memory access; the warps reach it together). A tile of an odd number of
    steps ends with one barrier more (the next tile's first step stores into xa again)."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS_C, 1], instr_shape=[16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=_k_width(I8))
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=_k_width(I8))
    OT: gl.constexpr = _operand_dtype(I8, DT)
    XL: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, WARPS_C], [0, 1])
    STEP: gl.constexpr = KP * BK_C
    CPS: gl.constexpr = 2 if PAIR else 1  # ring chunks per step
    k = gl.arange(0, BK_C, layout=gl.SliceLayout(1, XL))
    n = gl.arange(0, B_PAD, layout=gl.SliceLayout(0, XL))
    n_ok = (n < B)[None, :]
    # CH accumulators per product, one per column part of a chunk (_chains)
    CH: gl.constexpr = _chains(B_PAD)
    acc0 = gl.zeros([BN_C, B_PAD], gl.float32, layout=MMA)
    acc0b = gl.zeros([BN_C, B_PAD], gl.float32, layout=MMA)
    acc1 = gl.zeros([BN_C, B_PAD], gl.float32, layout=MMA)
    acc1b = gl.zeros([BN_C, B_PAD], gl.float32, layout=MMA)
    ssq = gl.zeros([BK_C, B_PAD], gl.float32, layout=XL)
    # x (and the norm weight) of the next chunk are loaded one chunk ahead: their L2 round trip overlaps this
    # chunk's ring wait and products instead of preceding them.
    x0n, w0n = _x_cols(x_ptr, K, nw_ptr, 0, k, n, n_ok, NORM, OT)
    x1n, w1n = x0n, w0n  # KP = 1: unused
    if KP > 1:
        x1n, w1n = _x_cols(x_ptr, K, nw_ptr, BK_C, k, n, n_ok, NORM, OT)
    n_steps = gl.cdiv(K, STEP)
    for i in range(0, n_steps - 1, 2):
        x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b, ssq = _step(
            ring, ready, empty, xa, j + i * CPS, i * STEP, x_ptr, K, nw_ptr, k, n, n_ok, x0n, w0n, x1n, w1n,
            acc0, acc0b, acc1, acc1b, ssq, KP, NORM, OT, NB, I8, CH, A_OP, B_OP, PAIR)
        x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b, ssq = _step(
            ring, ready, empty, xb, j + (i + 1) * CPS, (i + 1) * STEP, x_ptr, K, nw_ptr, k, n, n_ok, x0n, w0n,
            x1n, w1n, acc0, acc0b, acc1, acc1b, ssq, KP, NORM, OT, NB, I8, CH, A_OP, B_OP, PAIR)
    if n_steps % 2 == 1:
        x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b, ssq = _step(
            ring, ready, empty, xa, j + (n_steps - 1) * CPS, (n_steps - 1) * STEP, x_ptr, K, nw_ptr, k, n, n_ok,
            x0n, w0n, x1n, w1n, acc0, acc0b, acc1, acc1b, ssq, KP, NORM, OT, NB, I8, CH, A_OP, B_OP, PAIR)
        gl.thread_barrier()
    if NORM:
        scale = gl.rsqrt(gl.sum(ssq, axis=0) / K + eps)
    else:
        scale = gl.full([B_PAD], 1.0, gl.float32, layout=gl.SliceLayout(0, XL))
    return acc0 + acc0b, acc1 + acc1b, scale, j + n_steps * CPS  # (with CH = 1 the second terms are zeros)


@gluon.jit
def _scaled(acc, scale):
    """acc [BN, B_PAD] (MMA layout) times a per-sequence scale."""
    return acc * gl.convert_layout(scale, gl.SliceLayout(0, acc.type.layout))[None, :]


@gluon.jit
def _row_scaled(y, s_ptr, rows, ok, I8: gl.constexpr):
    """y [R, B_PAD] times the int8 per-channel scale of its weight rows (s_ptr + rows, rows in y's dim-0 layout);
    y as it is for dense weights."""
    if I8:
        y = y * gl.load(s_ptr + rows, mask=ok, other=0.0).to(gl.float32)[:, None]
    return y


@gluon.jit
def _park(scratch, acc0, acc1, KP: gl.constexpr):
    """A tile's products into scratch rows 0 .. BN, product g's rows g R .. (g + 1) R (R = BN / KP), for _gather."""
    part = acc0
    if KP > 1:
        r = gl.arange(0, BN_C, layout=gl.SliceLayout(1, acc0.type.layout))
        part = gl.where((r >= BN_C // KP)[:, None], acc1, acc0)
    scratch.store(part)
    gl.thread_barrier()


@gluon.jit
def _gather(scratch, scale, off: gl.constexpr, N: gl.constexpr, KP: gl.constexpr, OUT: gl.constexpr):
    """Rows off .. off + N of the parked tile (the sum of its KP products' rows), times scale, in layout OUT."""
    R: gl.constexpr = BN_C // KP
    y = scratch.slice(off, N, dim=0).load(OUT)
    for g in gl.static_range(1, KP):
        y += scratch.slice(g * R + off, N, dim=0).load(OUT)
    return y * gl.convert_layout(scale, gl.SliceLayout(0, OUT))[None, :]


# ----------------------------------------------------------------------------------------------
# The instructions
# ----------------------------------------------------------------------------------------------
# Every GEMV instruction takes the ring's state (the ring, its `ready` and `empty` barriers, the x^T slots, the next
# chunk j) and returns the new j.
@gluon.jit
def _embed(col_block, bufs, wts, dims: gl.constexpr, tiles: gl.constexpr):
    """Embed(col_block): h[:, cols] = embed[tokens, cols]."""
    EL: gl.constexpr = gl.BlockedLayout([8], [32], [WARPS_C], [0])
    cols = col_block * tiles.EMBED_BLOCK + gl.arange(0, tiles.EMBED_BLOCK, layout=EL)
    ok = cols < dims.D
    for bb in range(dims.B):
        tok = gl.load(bufs.tokens + bb).to(gl.int64)
        e = gl.load(wts.embed + tok * dims.D + cols, mask=ok, other=0.0).to(gl.float32)
        gl.store(bufs.h + bb * dims.D + cols, e, mask=ok)


@gluon.jit
def _rms_qkv_rope(lw, row_block, ring, ready, empty, xa, xb, j, scratch, bufs, wts, cache, dims: gl.constexpr,
                  tiles: gl.constexpr, DT: gl.constexpr, NB: gl.constexpr):
    """RmsQkvRope(layer, row_block): P rotate-half pairs (rows i and i + hd/2) of one head slot of the fused wqkv,
    the partners in one column group of each chunk (see "Chunks"); RoPE, then the q store or the K / V cache
    append."""
    HALF: gl.constexpr = dims.HD // 2
    B_PAD: gl.constexpr = tiles.B_PAD
    P: gl.constexpr = tiles.QKV.BN
    KP: gl.constexpr = tiles.QKV.BK // BK_C
    EL: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [1, WARPS_C], [0, 1])
    I8: gl.constexpr = dims.KIND == KIND_INT8_C
    slot = row_block // tiles.NPB
    nw = wts.attn_norm + lw * dims.D
    acc0, acc1, scale, j = _tile(ring, ready, empty, xa, xb, j, bufs.h, dims.D, nw, dims.B, cache.eps, KP, True, B_PAD,
                                 DT, NB, I8)
    _park(scratch, acc0, acc1, KP)
    lo = _gather(scratch, scale, 0, P, KP, EL)
    hi = _gather(scratch, scale, P, P, KP, EL)
    gl.thread_barrier()  # the next tile may overwrite the scratch
    i = (row_block % tiles.NPB) * P + gl.arange(0, P, layout=gl.SliceLayout(1, EL))
    s_rows = wts.qkv.s + lw * ((dims.H + 2 * dims.KVH) * dims.HD) + slot * dims.HD  # the head slot's scales
    lo = _row_scaled(lo, s_rows, i, i >= 0, I8)
    hi = _row_scaled(hi, s_rows + HALF, i, i >= 0, I8)
    b = gl.arange(0, B_PAD, layout=gl.SliceLayout(0, EL))
    b_ok = b < dims.B
    pos = gl.load(bufs.positions + b, mask=b_ok, other=0)
    m = (b_ok & (pos >= 0) & (pos < cache.s_max))[None, :] & (i >= 0)[:, None]
    if slot < dims.H + dims.KVH:  # q or k head: rotate-half RoPE at each sequence's position
        cs = pos.to(gl.int64)[None, :] * HALF + i[:, None]
        cos = gl.load(cache.cos + cs, mask=m, other=0.0)
        sin = gl.load(cache.sin + cs, mask=m, other=0.0)
        lo, hi = lo * cos - hi * sin, hi * cos + lo * sin
    if slot < dims.H:
        dst = bufs.q + (b * (dims.H * dims.HD) + slot * dims.HD)[None, :] + i[:, None]
        gl.store(dst, lo, mask=m)
        gl.store(dst + HALF, hi, mask=m)
    else:
        g = (slot - dims.H) % dims.KVH
        off = (((lw * dims.B + b) * dims.KVH + g) * cache.s_max + pos)[None, :] * dims.HD + i[:, None]
        if slot < dims.H + dims.KVH:
            gl.store(cache.k + off, lo.to(DT), mask=m)
            gl.store(cache.k + off + HALF, hi.to(DT), mask=m)
        else:
            gl.store(cache.v + off, lo.to(DT), mask=m)
            gl.store(cache.v + off + HALF, hi.to(DT), mask=m)
    return j


@gluon.constexpr_function
def _kv_threads(hd):
    """Threads per warp of the K / V copy layout: [keys, dims], 8 elements (16 bytes) a thread along dims."""
    return [32 // (hd // 8), hd // 8]


@gluon.constexpr_function
def _kv_smem_layout():
    """The K and V blocks' shared layout ([KVB, HD], head dims contiguous, 16-byte vectors swizzled over 8 rows):
    read by ldmatrix as the B operands of both products, K^T through a permuted view and V transposed."""
    return gl.SwizzledSharedLayout(8, 1, 8, order=[1, 0])


@gluon.jit
def _kv_issue(kbuf, vbuf, stage, cache, base, n0, end, off, kr):
    """Starts the asynchronous copies (cp.async) of the key block at n0, K and V, into their stage; keys >= end are
    zero-filled without a read. One commit group per block, also when it is empty."""
    ok = ((n0 + kr) < end)[:, None] & (off >= 0)
    async_copy.async_copy_global_to_shared(kbuf.index(stage), cache.k + base + n0 * off.shape[1] + off, mask=ok)
    async_copy.async_copy_global_to_shared(vbuf.index(stage), cache.v + base + n0 * off.shape[1] + off, mask=ok)
    async_copy.commit_group()


@gluon.jit
def _attn_partial(lw, kv_head, split, bufs, cache, kbuf, vbuf, dims: gl.constexpr, tiles: gl.constexpr,
                  DT: gl.constexpr):
    """AttnPartial(layer, kv_head, split): flash-decoding partial of the kv group's query heads (padded to 16 rows
    of mma.sync) over context slice split % N_SPLITS of each sequence of group split // N_SPLITS
    (Lowered.split_seqs / split_range): S = Q K^T and O = P V on the tensor cores.

    K and V reach the tensor cores through shared memory: each key block is copied there asynchronously (cp.async,
    no registers held) two blocks ahead of the products, into a ring of KV_STAGES stages, and read back as operands
    by ldmatrix. Block i's wait and thread barrier also end every warp's reads of block i - 1, whose stage block
    i + 2 then takes. (The first version loaded K and V into registers and converted them to operand layouts through
    shared memory: 579 instructions a warp per 64 keys, 28 of them barriers; docs/perf-notes.md.)"""
    GQ: gl.constexpr = dims.H // dims.KVH
    G_PAD: gl.constexpr = tiles.G_PAD
    HD: gl.constexpr = dims.HD
    KVB: gl.constexpr = tiles.KV_BLOCK
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, WARPS_C], instr_shape=[16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    LQ: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS_C, 1], [1, 0])  # [G_PAD, HD]
    LC: gl.constexpr = gl.BlockedLayout([1, 8], _kv_threads(HD), [WARPS_C, 1], [1, 0])  # K, V copies [KVB, HD]
    gq = gl.arange(0, G_PAD, layout=gl.SliceLayout(1, LQ))
    dq = gl.arange(0, HD, layout=gl.SliceLayout(0, LQ))
    kr = gl.arange(0, KVB, layout=gl.SliceLayout(1, LC))
    off = kr[:, None] * HD + gl.arange(0, HD, layout=gl.SliceLayout(0, LC))[None, :]  # [KVB, HD] in a block
    ns = gl.arange(0, KVB, layout=gl.SliceLayout(0, MMA))
    go = gl.arange(0, G_PAD, layout=gl.SliceLayout(1, MMA))
    do = gl.arange(0, HD, layout=gl.SliceLayout(0, MMA))
    first, last, split = split_seqs(split, dims.B, tiles.N_SPLITS, tiles.SEQS_PER_GROUP)
    for bb in range(first, last):
        seq_len = gl.minimum(gl.load(bufs.positions + bb) + 1, cache.s_max)
        start, end = split_range(seq_len, split, tiles.N_SPLITS, KVB)
        base = ((lw * dims.B + bb) * dims.KVH + kv_head) * cache.s_max * HD
        _kv_issue(kbuf, vbuf, 0, cache, base, start, end, off, kr)
        _kv_issue(kbuf, vbuf, 1, cache, base, start + KVB, end, off, kr)
        q = gl.load(bufs.q + (bb * dims.H + kv_head * GQ + gq)[:, None] * HD + dq[None, :],
                    mask=(gq < GQ)[:, None] & (dq >= 0)[None, :], other=0.0)
        q = gl.convert_layout(q.to(DT), A_OP)
        m_i = gl.full([G_PAD], float("-inf"), gl.float32, layout=gl.SliceLayout(1, MMA))
        l_i = gl.zeros([G_PAD], gl.float32, layout=gl.SliceLayout(1, MMA))
        acc = gl.zeros([G_PAD, HD], gl.float32, layout=MMA)
        i = 0
        for n0 in range(start, end, KVB):
            async_copy.wait_group(1)  # this thread's copies of block i have landed (block i + 1 may be in flight)
            gl.thread_barrier()  # every thread's; and every warp is done with block i - 1's stage
            _kv_issue(kbuf, vbuf, (i + 2) % KV_STAGES_C, cache, base, n0 + 2 * KVB, end, off, kr)
            stage = i % KV_STAGES_C
            kt = kbuf.index(stage).permute((1, 0)).load(B_OP)  # K^T [HD, KVB]
            s = mma_v2(q, kt, gl.zeros([G_PAD, KVB], gl.float32, layout=MMA))
            s = gl.where(((n0 + ns) < end)[None, :], s * cache.scale_log2, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + gl.sum(p, axis=1)
            acc = mma_v2(gl.convert_layout(p.to(DT), A_OP), vbuf.index(stage).load(B_OP), acc * alpha[:, None])
            m_i = m_new
            i += 1
        # the copies still in flight (blocks past `end`, zero-filled) land, and every warp's last reads end, before
        # the next sequence's first copies reuse the stages
        async_copy.wait_group(0)
        gl.thread_barrier()
        has = l_i > 0.0
        out = acc / gl.where(has, l_i, 1.0)[:, None]
        lse2 = gl.where(has, m_i + gl.log2(gl.where(has, l_i, 1.0)), float("-inf"))
        head = bb * dims.H + kv_head * GQ + go
        gl.store(bufs.o_part + ((head * tiles.N_SPLITS + split) * tiles.HD_PAD)[:, None] + do[None, :], out,
                 mask=(go < GQ)[:, None] & (do >= 0)[None, :])
        gl.store(bufs.lse + head * tiles.N_SPLITS + split, lse2, mask=go < GQ)


@gluon.constexpr_function
def _reduce_rows(heads):
    """Rows (query heads of all sequences) the reduce combines at once: all of them up to 32 (32 x HD_PAD fp32 over
    the 4 warps: 32 registers a thread per tensor), a power of two (kernels.tiles.next_pow2, which a
    constexpr_function cannot call)."""
    rows = 1
    while rows < min(32, heads):
        rows *= 2
    return rows


@gluon.jit
def _attn_reduce(kv_head, bufs, dims: gl.constexpr, tiles: gl.constexpr):
    """AttnReduce(layer, kv_head): the log-sum-exp combine of the context slices, for the group's query heads of
    every sequence, rows (sequence, head) RR at a time: a batch costs B GQ / RR passes, not B."""
    GQ: gl.constexpr = dims.H // dims.KVH
    NS: gl.constexpr = tiles.N_SPLITS
    ROWS: gl.constexpr = dims.B * GQ
    RR: gl.constexpr = _reduce_rows(ROWS)
    HD_PAD: gl.constexpr = tiles.HD_PAD
    LR: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [WARPS_C, 1], [1, 0])
    r = gl.arange(0, RR, layout=gl.SliceLayout(1, LR))
    sp = gl.arange(0, tiles.SPLITS_PAD, layout=gl.SliceLayout(0, LR))
    d = gl.arange(0, tiles.HD_PAD, layout=gl.SliceLayout(0, LR))
    for r0 in range(0, ROWS, RR):
        row = r0 + r
        ok = row < ROWS
        bb = row // GQ
        head = bb * dims.H + kv_head * GQ + row % GQ  # index into [B, H]
        lse = gl.load(bufs.lse + head[:, None] * NS + sp[None, :], mask=ok[:, None] & (sp < NS)[None, :],
                      other=float("-inf"))
        m = gl.max(lse, axis=1)
        m = gl.where(m == float("-inf"), 0.0, m)  # no keys at all: every weight is 0, output 0
        den = gl.sum(gl.exp2(lse - m[:, None]), axis=1)
        acc = gl.zeros([RR, HD_PAD], gl.float32, layout=LR)
        for s in range(0, NS):
            w = gl.exp2(gl.load(bufs.lse + head * NS + s, mask=ok, other=float("-inf")) - m)
            o = gl.load(bufs.o_part + (head * NS + s)[:, None] * HD_PAD + d[None, :],
                        mask=ok[:, None] & (d >= 0)[None, :], other=0.0)
            acc += o * w[:, None]
        o = acc / gl.where(den > 0.0, den, 1.0)[:, None]
        gl.store(bufs.attn + head[:, None] * dims.HD + d[None, :], o, mask=ok[:, None] & (d < dims.HD)[None, :])


@gluon.jit
def _tiles_here(row_block, TPI: gl.constexpr, N, ROWS: gl.constexpr):
    """Tiles of ROWS rows of row block row_block that start below N (instr_chunks counts the same)."""
    return gl.minimum(TPI, gl.cdiv(N - row_block * (TPI * ROWS), ROWS))


@gluon.jit
def _gemv_residual(row_block, K, x_ptr, s_ptr, TPI: gl.constexpr, R: gl.constexpr, KP: gl.constexpr, ring, ready,
                   empty, xa, xb, j, scratch, bufs, dims: gl.constexpr, tiles: gl.constexpr, DT: gl.constexpr,
                   NB: gl.constexpr):
    """OProjResidual and DownResidual: h[:, rows] += x @ W[rows].T for the TPI tiles of R rows (KP column groups per
    chunk) of one row block (the weight stream says which W and which layer; s_ptr: that layer's int8 scales)."""
    I8: gl.constexpr = dims.KIND == KIND_INT8_C
    EL: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [1, WARPS_C], [0, 1])
    r = gl.arange(0, R, layout=gl.SliceLayout(1, EL))
    b = gl.arange(0, tiles.B_PAD, layout=gl.SliceLayout(0, EL))
    for t in range(_tiles_here(row_block, TPI, dims.D, R)):
        offs = (row_block * TPI + t) * R + r
        acc0, acc1, scale, j = _tile(ring, ready, empty, xa, xb, j, x_ptr, K, x_ptr, dims.B, 0.0, KP, False,
                                     tiles.B_PAD, DT, NB, I8)
        _park(scratch, acc0, acc1, KP)
        acc = _row_scaled(_gather(scratch, scale, 0, R, KP, EL), s_ptr, offs, offs < dims.D, I8)
        gl.thread_barrier()  # the next tile may overwrite the scratch
        hp = bufs.h + b[None, :] * dims.D + offs[:, None]
        hm = (b < dims.B)[None, :] & (offs < dims.D)[:, None]
        gl.store(hp, gl.load(hp, mask=hm, other=0.0) + acc, mask=hm)
    return j


@gluon.jit
def _rms_gate_up_silu(lw, row_block, ring, ready, empty, xa, xb, j, bufs, wts, eps, dims: gl.constexpr,
                      tiles: gl.constexpr, DT: gl.constexpr, NB: gl.constexpr):
    """RmsGateUpSilu(layer, row_block): act[:, rows] = silu(norm(h) @ Wg[rows].T) * (norm(h) @ Wu[rows].T)."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS_C, 1], instr_shape=[16, 8])
    I8: gl.constexpr = dims.KIND == KIND_INT8_C
    r = gl.arange(0, BN_C, layout=gl.SliceLayout(1, MMA))
    b = gl.arange(0, tiles.B_PAD, layout=gl.SliceLayout(0, MMA))
    nw = wts.mlp_norm + lw * dims.D
    PAIR: gl.constexpr = _pairs_gate_up(I8, tiles.B_PAD)
    for t in range(_tiles_here(row_block, tiles.GU.TPI, dims.F, BN_C)):
        offs = (row_block * tiles.GU.TPI + t) * BN_C + r
        if PAIR:
            gate, up, scale, j = _tile(ring, ready, empty, xa, xb, j, bufs.h, dims.D, nw, dims.B, eps, 1, True,
                                       tiles.B_PAD, DT, NB, I8, True)
        else:
            gate, unused, scale, j = _tile(ring, ready, empty, xa, xb, j, bufs.h, dims.D, nw, dims.B, eps, 1, True,
                                           tiles.B_PAD, DT, NB, I8)
            up, unused, scale, j = _tile(ring, ready, empty, xa, xb, j, bufs.h, dims.D, nw, dims.B, eps, 1, True,
                                         tiles.B_PAD, DT, NB, I8)
        gate = _row_scaled(_scaled(gate, scale), wts.gate.s + lw * dims.F, offs, offs < dims.F, I8)
        up = _row_scaled(_scaled(up, scale), wts.up.s + lw * dims.F, offs, offs < dims.F, I8)
        gl.store(bufs.act + b[None, :] * dims.F + offs[:, None], gate / (1.0 + gl.exp(-gate)) * up,
                 mask=(b < dims.B)[None, :] & (offs < dims.F)[:, None])
    return j


@gluon.jit
def _lm_head(row_block, ring, ready, empty, xa, xb, j, bufs, wts, eps, dims: gl.constexpr, tiles: gl.constexpr,
             DT: gl.constexpr, NB: gl.constexpr):
    """LmHead(row_block): logits rows of norm(h), and the block's max logit and its lowest index per sequence."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS_C, 1], instr_shape=[16, 8])
    I8: gl.constexpr = dims.KIND == KIND_INT8_C
    r = gl.arange(0, BN_C, layout=gl.SliceLayout(1, MMA))
    b = gl.arange(0, tiles.B_PAD, layout=gl.SliceLayout(0, MMA))
    B_PAD: gl.constexpr = tiles.B_PAD
    best = gl.full([B_PAD], float("-inf"), gl.float32, layout=gl.SliceLayout(0, MMA))
    best_i = gl.zeros([B_PAD], gl.int32, layout=gl.SliceLayout(0, MMA))
    for t in range(_tiles_here(row_block, tiles.LM.TPI, dims.V, BN_C)):
        offs = (row_block * tiles.LM.TPI + t) * BN_C + r
        logit, unused, scale, j = _tile(ring, ready, empty, xa, xb, j, bufs.h, dims.D, wts.final_norm, dims.B, eps,
                                        1, True, B_PAD, DT, NB, I8)
        logit = _row_scaled(_scaled(logit, scale), wts.lm.s, offs, offs < dims.V, I8)
        gl.store(bufs.logits + b[None, :] * dims.V + offs[:, None], logit,
                 mask=(b < dims.B)[None, :] & (offs < dims.V)[:, None])
        vals = gl.where((offs < dims.V)[:, None], logit, float("-inf"))
        tb = gl.max(vals, axis=0)
        ti = gl.min(gl.where(vals == tb[None, :], offs[:, None], dims.V), axis=0)
        take = tb > best  # strict: earlier tiles hold the lower indices
        best_i = gl.where(take, ti, best_i)
        best = gl.maximum(best, tb)
    gl.store(bufs.pmax + b * tiles.N_LM + row_block, best, mask=b < dims.B)
    gl.store(bufs.pidx + b * tiles.N_LM + row_block, best_i, mask=b < dims.B)
    return j


@gluon.jit
def _argmax(bufs, advance, dims: gl.constexpr, tiles: gl.constexpr):
    """Argmax: every sequence's next token (lowest index on ties; advance: written back with position + 1), then the
    counters zeroed. The step's only sink."""
    AL: gl.constexpr = gl.BlockedLayout([4], [32], [WARPS_C], [0])
    BLOCK: gl.constexpr = tiles.ARGMAX_BLOCK
    t = gl.arange(0, BLOCK, layout=AL)
    for bb in range(dims.B):
        best = gl.max(gl.full([BLOCK], float("-inf"), gl.float32, layout=AL), axis=0)
        best_idx = gl.max(gl.zeros([BLOCK], gl.int32, layout=AL), axis=0)
        for t0 in range(0, tiles.N_LM, tiles.ARGMAX_BLOCK):
            ok = t0 + t < tiles.N_LM
            m = gl.load(bufs.pmax + bb * tiles.N_LM + t0 + t, mask=ok, other=float("-inf"))
            i = gl.load(bufs.pidx + bb * tiles.N_LM + t0 + t, mask=ok, other=0)
            m_blk = gl.max(m, axis=0)
            i_blk = gl.min(gl.where(ok & (m == m_blk), i, 2147483647), axis=0)
            take = m_blk > best
            best_idx = gl.where(take, i_blk, best_idx)
            best = gl.maximum(best, m_blk)
        gl.store(bufs.next_tokens + bb, best_idx)
        if advance != 0:
            gl.store(bufs.tokens + bb, best_idx)
            gl.store(bufs.positions + bb, gl.load(bufs.positions + bb) + 1)
    c = gl.arange(0, 1024, layout=AL)
    for c0 in range(0, dims.N_COUNTERS, 1024):
        gl.store(bufs.counters + c0 + c, 0, mask=c0 + c < dims.N_COUNTERS)


# ----------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _instructions(queue, bufs, wts, cache, ring, ready, empty, xa, xb, scratch, kbuf, vbuf, n_chunks,
                  dims: gl.constexpr,
                  tiles: gl.constexpr, TIMELINE: gl.constexpr, DT: gl.constexpr, NB: gl.constexpr):
    """The compute partition (the kernel's WARPS warps): the program's instruction queue, in order, each instruction
    after its counter wait, taking its weight chunks from the ring as the loader lands them."""
    pid = gl.program_id(0)
    n_instr = gl.load(queue.lengths + pid)
    qbase = queue.queue + pid * queue.stride
    j = 0
    pc = 0
    alive = 1
    last_c = -1
    last_seen = 0
    while (pc < n_instr) & (alive != 0):
        word = qbase + pc * WORDS_C
        op, layer, a, b, wc, wn, bc = queue_entry(word)
        if TIMELINE:
            t_start = now(bufs.clock, 1)
        if (wc >= 0) & ((wc != last_c) | (wn > last_seen)):
            seen = await_counter(bufs, queue, word, pid, pc, wc, wn, WORDS_C)
            if seen < wn:
                alive = 0
            else:
                last_c = wc
                last_seen = seen
        if TIMELINE:
            t_ready = now(bufs.clock, 1)
        if alive != 0:
            lw = layer.to(gl.int64)
            if op == OP_EMBED:
                _embed(a, bufs, wts, dims, tiles)
            elif op == OP_RMS_QKV_ROPE:
                j = _rms_qkv_rope(lw, a, ring, ready, empty, xa, xb, j, scratch, bufs, wts, cache, dims, tiles, DT, NB)
            elif op == OP_ATTN_PARTIAL:
                _attn_partial(lw, a, b, bufs, cache, kbuf, vbuf, dims, tiles, DT)
            elif op == OP_ATTN_REDUCE:
                _attn_reduce(a, bufs, dims, tiles)
            elif op == OP_OPROJ_RESIDUAL:
                j = _gemv_residual(a, dims.H * dims.HD, bufs.attn, wts.o.s + lw * dims.D, tiles.O.TPI, tiles.O.BN,
                                   tiles.O.BK // BK_C, ring, ready, empty, xa, xb, j, scratch, bufs, dims, tiles, DT,
                                   NB)
            elif op == OP_RMS_GATE_UP_SILU:
                j = _rms_gate_up_silu(lw, a, ring, ready, empty, xa, xb, j, bufs, wts, cache.eps, dims, tiles, DT, NB)
            elif op == OP_DOWN_RESIDUAL:
                j = _gemv_residual(a, dims.F, bufs.act, wts.down.s + lw * dims.D, tiles.DN.TPI, tiles.DN.BN,
                                   tiles.DN.BK // BK_C, ring, ready, empty, xa, xb, j, scratch, bufs, dims, tiles, DT,
                                   NB)
            elif op == OP_LM_HEAD:
                j = _lm_head(a, ring, ready, empty, xa, xb, j, bufs, wts, cache.eps, dims, tiles, DT, NB)
            else:
                _argmax(bufs, queue.advance, dims, tiles)
            if bc >= 0:
                release(bufs.counters + bc)
        if TIMELINE:
            record_timeline(bufs, queue, pid, pc, t_start, t_ready, 1, WORDS_C)
        pc += 1
    _drain(ready, empty, j, n_chunks, NB)


@gluon.jit
def _megakernel_gluon(queue, bufs, wts, cache, d_qkv, d_o, d_gate, d_up, d_down, d_lm, stream, stream_counts,
                      stream_stride, dims: gl.constexpr, tiles: gl.constexpr, TIMELINE: gl.constexpr,
                      DT: gl.constexpr, NB: gl.constexpr):
    # queue, bufs, wts, cache: kernels/mega/args.py; d_*: TMA descriptors of the weights (descriptors());
    # stream: [P, stream_stride / ENTRY, ENTRY] int32 weight streams, stream_counts: [P] chunks per program;
    # DT: the activations' dtype (the weights' is the descriptors'), NB: chunks in the ring (nbuf()).
    pid = gl.program_id(0)
    n_chunks = gl.load(stream_counts + pid)
    ring = gl.allocate_shared_memory(d_qkv.block_type.element_ty, [NB, BN_C, BK_C], d_qkv.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())  # slot landed (TMA bytes)
    empty = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())  # slot read (compute arrives)
    B_PAD: gl.constexpr = tiles.B_PAD
    scratch = gl.allocate_shared_memory(gl.float32, [BN_C, B_PAD],
                                        gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
    # x^T slots (_tile): for a tile's even chunks (xa) and odd ones (xb), two column groups of [BK, B_PAD] each in
    # the operand dtype, columns contiguous per sequence (as x is stored), swizzled (_x_slot_layout)
    OT: gl.constexpr = _operand_dtype(dims.KIND == KIND_INT8_C, DT)
    XS: gl.constexpr = _x_slot_layout(dims.KIND == KIND_INT8_C)
    xa = gl.allocate_shared_memory(OT, [2, BK_C, B_PAD], XS)
    xb = gl.allocate_shared_memory(OT, [2, BK_C, B_PAD], XS)
    # K and V blocks of attention (_attn_partial), KV_STAGES of each
    kbuf = gl.allocate_shared_memory(cache.k.dtype.element_ty, [KV_STAGES_C, tiles.KV_BLOCK, dims.HD],
                                     _kv_smem_layout())
    vbuf = gl.allocate_shared_memory(cache.v.dtype.element_ty, [KV_STAGES_C, tiles.KV_BLOCK, dims.HD],
                                     _kv_smem_layout())
    for s in gl.static_range(NB):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    fence_async_shared()  # the initialised barriers, before the TMA unit arrives on them
    gl.warp_specialize([(_instructions, (queue, bufs, wts, cache, ring, ready, empty, xa, xb, scratch, kbuf, vbuf,
                                         n_chunks, dims, tiles, TIMELINE, DT, NB)),
                        (_loader, (d_qkv, d_o, d_gate, d_up, d_down, d_lm, ring, ready, empty,
                                   stream + pid * stream_stride, n_chunks, NB))],
                       [LOADER_WARPS_C], [LOADER_REGS_C])
    for s in gl.static_range(NB):
        mbarrier.invalidate(ready.index(s))
        mbarrier.invalidate(empty.index(s))


def compile_sm90(spec, quant: str, batch: int, max_len: int, n_programs: int, timeline: bool = False):
    """The kernel of one configuration compiled for sm_90 on any machine (nothing is read or run). Returns the
    compiled kernel (its PTX, cubin and shared memory; kernels/mega/resources.ptxas_usage for registers)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.mega.args import constexprs, placeholder_args
    from kernels.mega.lower import lower
    from kernels.mega.resources import compile_jit

    why = problem(spec, quant, batch)
    if why:
        raise ValueError(why)
    mode = quant_mode(quant)
    act = mode.act_dtype
    prog = lower(spec, quant, 0, batch, max_len, pick_tiles(spec, batch, max_len, n_programs))
    dims, tiles = constexprs(prog, act)
    w = torch.empty(BN * BK, dtype=mode.storage_dtype)  # stands in for every weight: only type and alignment matter
    desc = TensorDescriptor(w, [BN, BK], [BK, 1], [BOX, BK], smem_layout(mode.storage_dtype))
    i32 = torch.empty(ENTRY, dtype=torch.int32)
    args = placeholder_args(prog, quant, n_programs) + [desc] * 6 + [i32, i32, 2 * ENTRY]
    return compile_jit(_megakernel_gluon, args, dict(dims=dims, tiles=tiles, TIMELINE=timeline, DT=gl_dtype(act),
                                                     NB=nbuf(quant), num_warps=WARPS))
