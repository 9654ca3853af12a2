"""Lowering: (ModelSpec, quant, batch, max_len, TileConfig) -> the instruction DAG, as one list in a
topological order, with tile-level dependencies through counters (kernels/mega/instructions.py).

Device buffers of one step (every layer reuses the same scratch):
  h [B, D] fp32 residual stream   q [B, H, hd] fp32 roped queries   attn [B, H hd] fp32
  act [B, F] fp32   o_part [B, H, n_splits, hd_pad] / lse [B, H, n_splits] fp32 attention partials
  logits [B, V] fp32, pmax / pidx [B, n_lm] per LM-head block   KV cache [L, B, KVH, S, hd] (shared)

Each instruction waits on ONE counter, for ALL producers of what it reads (read-after-write):
  Embed(c)              none (reads tokens)
  RmsQkvRope(l, r)      l = 0: EMBED = n_embed; else DOWN(l-1) = n_down   (the norm reads every column of h)
  AttnPartial(l, g, s)  QKV(l, g) = (GROUP + 2) NPB: only the row blocks of g's q heads, k head, v head
  AttnReduce(l, g)      PART(l, g) = n_splits
  OProjResidual(l, r)   ATTN(l) = KVH          (its GEMV reads every head of attn)
  RmsGateUpSilu(l, r)   OPROJ(l) = n_o         (the norm reads every column of h)
  DownResidual(l, r)    GATE_UP(l) = n_gu      (its GEMV reads every column of act)
  LmHead(r)             DOWN(L-1) = n_down
  Argmax                LM_HEAD = n_lm

Write-after-read / write-after-write hazards, each covered transitively by the waits above:
  - OProjResidual(l) updates h rows that every RmsQkvRope(l) read for its norm: ATTN(l) = KVH implies
    every partial of every group, hence every QKV row block (each block belongs to exactly one group).
  - DownResidual(l) updates h rows that every RmsGateUpSilu(l) read: it waits for all of them, and
    they waited for every OProjResidual(l) (so the two residual writes to h never race).
  - Scratch reused across layers (q, o_part/lse, attn, act): its writer in layer l+1 transitively waits
    for DOWN(l), which implies every reader of layer l (attention, reduce, O-proj, down).
  - KV cache: RmsQkvRope(l) writes position positions[b] of its kv head; AttnPartial(l, g) reads keys
    < positions[b] + 1 only after QKV(l, g); nothing else touches the cache.
  - Argmax (advance) rewrites tokens / positions and zeroes every counter: it is the DAG's only sink, so
    LM_HEAD = n_lm implies every other instruction of the step has finished reading them.
  - Across steps and across launch cuts (fusion): stream order of the launches.
Deadlock freedom: each program's queue is a subsequence of this topological order and all programs of
a launch are co-resident, so the earliest unfinished instruction heads some queue with its producers done.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from harness.models import ModelSpec
from kernels.gemv import check_k_fold, dot_by_default, int4_dot_ok
from kernels.mega.instructions import (Argmax, AttnPartial, AttnReduce, CounterKey, CounterSpace, DownResidual, Embed,
                                       Instruction, LmHead, OProjResidual, RmsGateUpSilu, RmsQkvRope, Stage, Wait)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def pow2_floor(n: int) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1)))))


@dataclass(frozen=True)
class GemvTile:
    """Block sizes of one GEMV stage (constexprs of the kernel)."""

    block_n: int  # rows per tile (RmsQkvRope: rotate-half pairs per tile, i.e. 2 block_n rows)
    block_k: int  # input columns per step (int4: groups_per_step groups, each padded to a power of two)
    groups_per_step: int = 1  # int4 only
    tiles_per_instr: int = 1  # tiles one instruction loops over (not RmsQkvRope)


@dataclass(frozen=True)
class TileConfig:
    """Every tile size of one (model, quant, batch, context, grid) configuration."""

    b_pad: int  # batch padded to a power of two (16 for tl.dot)
    use_dot: bool  # tensor-core tl.dot inner products (batch >= 4, half activations, GPU)
    num_warps: int
    qkv: GemvTile
    o: GemvTile
    gate_up: GemvTile
    down: GemvTile
    lm_head: GemvTile
    embed_block: int  # columns of h per Embed
    kv_block: int  # keys per attention step
    n_splits: int  # flash-decoding context slices per kv head
    argmax_block: int = 1024  # LM-head blocks scanned per Argmax step
    prefetch: bool = False  # double-buffered weight loads in the GEMV K loops (dense / int8)
    max_regs: int = 0  # registers per thread the compiler may use (0: its own choice), to fit more programs per SM
    l2_prefetch: int = 0  # K steps of its first weight tile an instruction asks L2 for before a wait (GPU; 0: off)
    int8_unit_floats: bool = False  # int8 GEMVs through kernels/gemv.int8_unit_floats (FMA path)
    k_fold: int = 1  # input columns per fp32 accumulator on the dense / int8 FMA path (kernels/gemv.fold_mac)


# GPU defaults. FACTS.md probe (H200): 8-16 rows x 512 columns, 8 warps streamed best (GEMV chain).
_FMA_ACC_ELEMS = 8192  # fp32 FMA accumulators per program: 64 registers/thread at 4 warps
# 4 warps, so that two programs fit per SM (~245 registers each): on an H100 at batch 1, ctx 1024, 4 warps x 2
# programs per SM against 8 warps x 1 took llama1b bf16 1.567 -> 1.293 ms, llama8b bf16 8.06 -> 6.23 ms, llama8b
# int4 8.57 -> 5.78 ms (scripts/mega_tune.py, docs/perf-notes.md "Megakernel tuning 1").
_NUM_WARPS = 4
_GPU_BLOCK_N = 16
_DOT_BLOCK_K = 256
_DOT_BLOCK_N = 64
_MIN_KEYS_PER_SPLIT = 256
_MAX_SPLITS = 64
# An instruction about to wait on a counter first asks L2 for this many K steps of its first weight tile. H200,
# batch 1, ctx 1024, same run (results/tuning/mega_tune-h200-3/4): llama1b bf16 1.171 -> 1.140 (1 step) -> 1.133 ms
# (2), llama8b bf16 5.248 -> 5.207 ms, llama8b int4 5.249 -> 5.207 ms, llama1b int4 1.223 -> 1.194 ms.
_L2_PREFETCH_STEPS = 2
# Input columns per FMA accumulator of dense / int8 weights (kernels/gemv.fold_mac); 1 until measured otherwise.
_K_FOLD = 1
_INSTR_OVERHEAD_TILES = 0.25  # cost of one more instruction (queue read, wait, release) in tiles


def _k_tile(k: int, cols: int, quant: str, group_size: int, use_dot: bool) -> tuple[int, int]:
    """(block_k, groups_per_step) of a GEMV with K input columns and about `cols` columns per step, in the
    meaning kernels/gemv.gemv_tile gives them (its pick_config's rules): input columns per step, for int4
    groups_per_step whole groups each padded to a power of two."""
    bk = min(pow2_floor(max(cols, 16)), next_pow2(k))
    gps = 1
    if quant == "int4":
        group_pad = next_pow2(group_size)
        gps = pow2_floor(min(next_pow2(k // group_size), max(1, bk // group_pad)))
        bk = gps * group_pad
    return (max(bk, 16) if use_dot else bk), gps


def l2_prefetch_problem(spec: ModelSpec, quant: str, tiles: TileConfig, n: int) -> Optional[str]:
    """Why tiles.l2_prefetch=n cannot be used with these tiles (None if it can). n K steps of each stage's first
    tile are prefetched as a power-of-two number of 128-byte lines per row (the kernel's tl.arange), never more
    than the row."""
    if not n:
        return None
    elem = {"int4": 0.5, "int8": 1, "fp32": 4}.get(quant, 2)  # stored bytes per weight
    for name, tile, k in (("qkv", tiles.qkv, spec.dim), ("o", tiles.o, spec.q_dim),
                          ("gate_up", tiles.gate_up, spec.dim), ("down", tiles.down, spec.ffn_dim),
                          ("lm_head", tiles.lm_head, spec.dim)):
        lines = -(-int(n * tile.block_k * elem) // 128)
        if lines & (lines - 1) or n * tile.block_k > k:
            return (f"tiles.l2_prefetch={n} asks for {lines} lines per row of the {name} weights ({n} x "
                    f"{tile.block_k} of {k} columns); choose a value that gives a power of two lines within the "
                    f"row, or 0")
    return None


def _tiles_per_instr(n_tiles: int, n_programs: int) -> int:
    """Tiles per instruction minimising the most loaded program's work (plus per-instruction overhead)."""
    best, best_cost = 1, math.inf
    for t in range(1, cdiv(n_tiles, n_programs) + 1):
        rounds = cdiv(cdiv(n_tiles, t), n_programs)
        cost = rounds * (t + _INSTR_OVERHEAD_TILES)
        if cost < best_cost - 1e-9:
            best, best_cost = t, cost
    return best


def pick_tiles(spec: ModelSpec, quant: str, group_size: int, batch: int, max_len: int, n_programs: int, *,
               interpret: bool, gemv_rows: Optional[int] = None, gemv_elems: Optional[int] = None,
               dot_block_k: Optional[int] = None, int4_dot: Optional[bool] = None, dot: Optional[bool] = None,
               k_fold: Optional[int] = None, **overrides) -> TileConfig:
    """Tile sizes for this configuration; `overrides` replace TileConfig fields (tests, tuning).
    gemv_rows / gemv_elems (GPU only) re-derive every GEMV stage from another tile height / another number of
    fp32 FMA accumulators per program (block_k = gemv_elems / (b_pad * rows)), keeping the balancing rules;
    dot_block_k sets the columns per step of the tensor-core path (dense batch >= 4, int4 every batch);
    int4_dot puts int4 weights on the tensor cores (kernels/gemv._int4_dot_tile) or not (default: from batch
    kernels.gemv.INT4_DOT_MIN_BATCH on the GPU, never in the interpreter unless asked); dot puts dense and int8
    weights on the tensor cores (the batch padded to 16 rows) or not, at any batch (GPU; default: from batch 4);
    k_fold (1, 2, 4) sums that many neighbouring input columns into each FMA accumulator of dense / int8 weights
    (kernels/gemv.fold_mac), so the GPU's GEMV tiles grow k_fold x wider along K for the same registers."""
    if k_fold is not None:
        check_k_fold(k_fold)
    int4_tc = quant == "int4" and int4_dot_ok(group_size)
    half = spec.head_dim // 2
    if interpret:
        # Small tiles so the tiny test model still has several tiles, K steps and splits per stage.
        b_pad = next_pow2(batch)

        def g(k, bn, tpi, cols=64):
            bk, gps = _k_tile(k, cols, quant, group_size, False)
            return GemvTile(bn, bk, gps, tpi)
        cfg = TileConfig(b_pad=b_pad, use_dot=int4_tc and bool(int4_dot), num_warps=4,
                         qkv=g(spec.dim, min(8, next_pow2(half)), 1), o=g(spec.q_dim, 16, 2),
                         gate_up=g(spec.dim, 16, 2), down=g(spec.ffn_dim, 16, 2),
                         lm_head=g(spec.dim, 16, 2), embed_block=64, kv_block=16,
                         n_splits=max(1, min(3, cdiv(max_len, 16))))
        return replace(cfg, **({"k_fold": k_fold} if k_fold else {}), **overrides)

    kind = {"int4": "int4", "int8": "int8"}.get(quant, "dense")
    use_dot = quant != "fp32" and dot_by_default(kind, group_size, batch)
    if quant == "int4" and int4_dot is not None:
        use_dot = int4_tc and bool(int4_dot)
    if quant in ("bf16", "fp16", "int8") and dot is not None:
        use_dot = bool(dot)
    # the int4 tile pads the batch to 16 rows itself; the dense tensor-core path needs 16 rows
    b_pad = max(next_pow2(batch), 16 if use_dot and quant != "int4" else 1)

    acc_elems = gemv_elems or _FMA_ACC_ELEMS
    fold = 1 if (use_dot or quant == "int4") else (k_fold or _K_FOLD)
    dot_bk = dot_block_k or _DOT_BLOCK_K

    def gemv(n: int, k: int) -> GemvTile:
        # H100, llama1b bf16 B=1: 16 x 512 gave 1.60 ms/step, 32 x 256 1.85 ms. Tensor-core path (batch >= 4): every
        # tile re-reads x [B, K] in fp32, so wide tiles: llama8b bf16 B16 23.6 ms at 16 rows, 12.2 ms at 64.
        bn = gemv_rows or (_DOT_BLOCK_N if use_dot else _GPU_BLOCK_N)
        cols = dot_bk if use_dot else acc_elems * fold // (b_pad * bn)
        bk, gps = _k_tile(k, cols, quant, group_size, use_dot)
        return GemvTile(bn, bk, gps, _tiles_per_instr(cdiv(n, bn), n_programs))

    # RmsQkvRope: pairs per block, from {8, 16, ...} (>= 16 for tl.dot), best balanced over the grid.
    slots = spec.n_heads + 2 * spec.n_kv_heads
    cands = [p for p in (8, 16, 32, 64) if p <= max(8, next_pow2(half)) and (p >= 16 or not use_dot)] or [16]
    p_best = min(cands, key=lambda p: (cdiv(slots * cdiv(half, p), n_programs) * (2 * p + 8), -p))
    qkv_cols = dot_bk if use_dot else acc_elems * fold // (b_pad * p_best)
    qbk, qgps = _k_tile(spec.dim, qkv_cols, quant, group_size, use_dot)
    # Enough (kv head, split) instructions for the grid, but at least _MIN_KEYS_PER_SPLIT keys summed over the
    # batch (each AttnPartial covers every sequence) and one kv block per sequence in a split.
    kv_block = 64 if spec.head_dim <= 128 else 32
    min_keys = max(kv_block, _MIN_KEYS_PER_SPLIT // batch)
    n_splits = max(1, min(cdiv(max_len, min_keys), cdiv(n_programs, spec.n_kv_heads), _MAX_SPLITS))
    cfg = TileConfig(b_pad=b_pad, use_dot=use_dot, num_warps=_NUM_WARPS, qkv=GemvTile(p_best, qbk, qgps, 1),
                     o=gemv(spec.dim, spec.q_dim), gate_up=gemv(spec.ffn_dim, spec.dim),
                     down=gemv(spec.dim, spec.ffn_dim), lm_head=gemv(spec.vocab_size, spec.dim),
                     embed_block=min(1024, next_pow2(spec.dim)), kv_block=kv_block,
                     n_splits=n_splits, k_fold=fold)
    # L2 prefetch while waiting: the most K steps up to _L2_PREFETCH_STEPS these tiles allow (0 if none does).
    steps = next((n for n in range(_L2_PREFETCH_STEPS, 0, -1) if l2_prefetch_problem(spec, quant, cfg, n) is None), 0)
    return replace(cfg, **{"l2_prefetch": steps, **overrides})


@dataclass
class Lowered:
    """The lowered decode step: instructions in one topological order, and what they mean."""

    spec: ModelSpec
    quant: str
    group_size: int
    batch: int
    max_len: int  # KV-cache capacity S (positions 0 .. S-1)
    tiles: TileConfig
    instrs: list[Instruction] = field(default_factory=list)

    def __post_init__(self):
        self.space = CounterSpace(self.spec.n_layers, self.spec.n_kv_heads)

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def group(self) -> int:
        return self.spec.n_heads // self.spec.n_kv_heads

    @property
    def half(self) -> int:
        return self.spec.head_dim // 2

    @property
    def pair_blocks(self) -> int:  # NPB: pair blocks per head slot
        return cdiv(self.half, self.tiles.qkv.block_n)

    @property
    def n_slots(self) -> int:
        return self.spec.n_heads + 2 * self.spec.n_kv_heads

    def rows_per_instr(self, t: GemvTile) -> int:
        return t.block_n * t.tiles_per_instr

    @property
    def n_embed(self) -> int:
        return cdiv(self.spec.dim, self.tiles.embed_block)

    @property
    def n_o(self) -> int:
        return cdiv(self.spec.dim, self.rows_per_instr(self.tiles.o))

    @property
    def n_gate_up(self) -> int:
        return cdiv(self.spec.ffn_dim, self.rows_per_instr(self.tiles.gate_up))

    @property
    def n_down(self) -> int:
        return cdiv(self.spec.dim, self.rows_per_instr(self.tiles.down))

    @property
    def n_lm(self) -> int:
        return cdiv(self.spec.vocab_size, self.rows_per_instr(self.tiles.lm_head))

    # ---- tile geometry (shared by the VM, the tests and the cost model) ----------------------
    def slot_group(self, slot: int) -> int:
        """kv group of head slot `slot` of the fused wqkv (q heads, then k heads, then v heads)."""
        h, kvh = self.spec.n_heads, self.spec.n_kv_heads
        return slot // self.group if slot < h else (slot - h) % kvh

    def qkv_pairs(self, row_block: int) -> tuple[int, range]:
        """(head slot, pair indices i: rows slot*hd + i and slot*hd + i + hd/2) of a RmsQkvRope row block."""
        slot, pb = divmod(row_block, self.pair_blocks)
        p = self.tiles.qkv.block_n
        return slot, range(pb * p, min((pb + 1) * p, self.half))

    def gemv_rows(self, instr: Instruction) -> range:
        """Output rows of an OProjResidual / RmsGateUpSilu / DownResidual / LmHead / Embed (columns) block."""
        t = self.tiles
        tile, n = {OProjResidual: (t.o, self.spec.dim), RmsGateUpSilu: (t.gate_up, self.spec.ffn_dim),
                   DownResidual: (t.down, self.spec.dim), LmHead: (t.lm_head, self.spec.vocab_size)}.get(
            type(instr), (None, self.spec.dim))
        r = self.rows_per_instr(tile) if tile else t.embed_block
        blk = instr.col_block if isinstance(instr, Embed) else instr.row_block
        return range(blk * r, min((blk + 1) * r, n))

    def split_range(self, seq_len: int, split: int) -> range:
        """Keys of one split: equal slices rounded up to whole kv blocks (kernels/attention.split_range)."""
        kb = self.tiles.kv_block
        per = cdiv(cdiv(seq_len, self.tiles.n_splits), kb) * kb
        start = split * per
        return range(start, min(start + per, seq_len))

    # ---- dependencies --------------------------------------------------------------------
    def producers(self) -> dict[CounterKey, list[int]]:
        """Counter -> indices of the instructions that bump it."""
        out: dict[CounterKey, list[int]] = {}
        for i, ins in enumerate(self.instrs):
            if ins.bump is not None:
                out.setdefault(ins.bump, []).append(i)
        return out

    def dependencies(self) -> list[list[int]]:
        """Instruction -> indices of the instructions it waits for (all producers of its wait counter)."""
        prod = self.producers()
        return [prod.get(ins.wait.counter, []) if ins.wait else [] for ins in self.instrs]

    # ---- cost model (bytes read, for the cost-balanced schedule) ----------------------------
    def weight_row_bytes(self, k: int) -> float:
        q, g = self.quant, self.group_size
        act = 4 if q == "fp32" else 2
        if q == "int4":
            return k / 2 + 2 * act * k / g
        return {"fp32": 4.0 * k, "bf16": 2.0 * k, "fp16": 2.0 * k, "int8": k + act}[q]

    def cost_bytes(self, ins: Instruction) -> float:
        """Bytes an instruction reads (weights + scales, activations, KV cache), at a full cache."""
        s, b = self.spec, self.batch
        cache_elem = 4 if self.quant == "fp32" else 2
        if isinstance(ins, RmsQkvRope):
            return 2 * self.tiles.qkv.block_n * self.weight_row_bytes(s.dim) + 4 * b * s.dim
        if isinstance(ins, AttnPartial):
            keys = cdiv(self.max_len, self.tiles.n_splits)
            return b * (2 * keys * s.head_dim * cache_elem + 4 * self.group * s.head_dim)
        if isinstance(ins, AttnReduce):
            return 4 * b * self.group * self.tiles.n_splits * (s.head_dim + 1)
        if isinstance(ins, (Embed,)):
            return len(self.gemv_rows(ins)) * b * 2
        if isinstance(ins, Argmax):
            return 8 * b * self.n_lm
        k = {OProjResidual: s.q_dim, RmsGateUpSilu: s.dim, DownResidual: s.ffn_dim, LmHead: s.dim}[type(ins)]
        mats = 2 if isinstance(ins, RmsGateUpSilu) else 1
        return len(self.gemv_rows(ins)) * mats * self.weight_row_bytes(k) + 4 * b * k


def lower(spec: ModelSpec, quant: str, group_size: int, batch: int, max_len: int, tiles: TileConfig) -> Lowered:
    """The decode step as instructions in a topological order, with their waits and bumps (see the docstring)."""
    prog = Lowered(spec, quant, group_size if quant == "int4" else 0, batch, max_len, tiles)
    L, H, KVH = spec.n_layers, spec.n_heads, spec.n_kv_heads
    npb, group = prog.pair_blocks, prog.group
    out: list[Instruction] = []
    emit = out.append

    for c in range(prog.n_embed):
        emit(Embed(c, bump=CounterKey(-1, Stage.EMBED)))
    for l in range(L):
        after = Wait(CounterKey(-1, Stage.EMBED), prog.n_embed) if l == 0 else \
            Wait(CounterKey(l - 1, Stage.DOWN), prog.n_down)
        # Group-major: the q heads, k head and v head of group 0 first, so its attention can start early.
        for g in range(KVH):
            for slot in [g * group + j for j in range(group)] + [H + g, H + KVH + g]:
                for pb in range(npb):
                    emit(RmsQkvRope(l, slot * npb + pb, wait=after, bump=CounterKey(l, Stage.QKV, g)))
        for g in range(KVH):
            for s in range(tiles.n_splits):
                emit(AttnPartial(l, g, s, wait=Wait(CounterKey(l, Stage.QKV, g), (group + 2) * npb),
                                 bump=CounterKey(l, Stage.PART, g)))
        for g in range(KVH):
            emit(AttnReduce(l, g, wait=Wait(CounterKey(l, Stage.PART, g), tiles.n_splits),
                            bump=CounterKey(l, Stage.ATTN)))
        for r in range(prog.n_o):
            emit(OProjResidual(l, r, wait=Wait(CounterKey(l, Stage.ATTN), KVH), bump=CounterKey(l, Stage.OPROJ)))
        for r in range(prog.n_gate_up):
            emit(RmsGateUpSilu(l, r, wait=Wait(CounterKey(l, Stage.OPROJ), prog.n_o),
                               bump=CounterKey(l, Stage.GATE_UP)))
        for r in range(prog.n_down):
            emit(DownResidual(l, r, wait=Wait(CounterKey(l, Stage.GATE_UP), prog.n_gate_up),
                              bump=CounterKey(l, Stage.DOWN)))
    for r in range(prog.n_lm):
        emit(LmHead(r, wait=Wait(CounterKey(L - 1, Stage.DOWN), prog.n_down), bump=CounterKey(-1, Stage.LM_HEAD)))
    emit(Argmax(wait=Wait(CounterKey(-1, Stage.LM_HEAD), prog.n_lm)))
    prog.instrs = out
    return prog


def check_config(spec: ModelSpec, quant: str, group_size: int, batch: int) -> Optional[str]:
    """Why the megakernel cannot lower this configuration (one sentence), or None."""
    if not 1 <= batch <= 16:
        return f"batch={batch} is outside 1..16"
    if quant == "int4":
        for name, k in (("dim", spec.dim), ("ffn_dim", spec.ffn_dim), ("q_dim", spec.q_dim)):
            if group_size <= 0 or group_size % 2 or k % group_size:
                return f"int4 group_size={group_size} must be even and divide {name}={k}"
    return None
