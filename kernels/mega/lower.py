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
  AttnReduce(l, g)      PART(l, g) = seq_groups x n_splits
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
from dataclasses import dataclass, field, fields, replace
from typing import Optional

from kernels import MAX_BATCH
from kernels.errors import ConfigError
from kernels.model import ModelSpec
from kernels.mega.instructions import (Argmax, AttnPartial, AttnReduce, CounterKey, CounterSpace, DownResidual, Embed,
                                       Instruction, LmHead, OProjResidual, RmsGateUpSilu, RmsQkvRope, Stage, Wait)
from kernels.quant import Kind, quant_mode
from kernels.tiles import K_FOLDS, batch_pad, fma_cols, k_step, next_pow2, split_count, uses_tensor_cores


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class TileOptions:
    """The megakernel's tile knobs, each kept because a same-run measurement found a point where it pays
    (docs/perf-notes.md); None keeps the built-in choice. This dataclass is the Hydra schema of
    `megakernel.tiles`, so an unknown key is refused there; `problem` refuses a value the backend cannot honour."""

    num_warps: Optional[int] = None  # warps per program (built in 4: 4 x 2 programs/SM beat 8 x 1 by 1.2-1.5x)
    gemv_rows: Optional[int] = None  # rows per GEMV tile of every stage but QKV (built in 16 FMA / 64 tensor cores)
    k_fold: Optional[int] = None  # input columns per FMA accumulator, 1 or 2 (dense / int8; 2 + 8 rows won int8)
    l2_prefetch: Optional[int] = None  # K steps of its first weight tile asked of L2 before a wait (GPU; built in 2)

    def given(self) -> dict:
        """The options that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def problem(self, interpret: bool) -> Optional[str]:
        """Why these options cannot be used (one sentence), or None."""
        for name, v in self.given().items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                return f"megakernel.tiles.{name}={v!r} must be a non-negative integer"
        if self.num_warps is not None and self.num_warps not in (1, 2, 4, 8, 16):
            return f"megakernel.tiles.num_warps={self.num_warps} must be 1, 2, 4, 8 or 16"
        if self.gemv_rows is not None and (self.gemv_rows < 1 or self.gemv_rows & (self.gemv_rows - 1)):
            return f"megakernel.tiles.gemv_rows={self.gemv_rows} must be a power of two"
        if self.k_fold is not None and self.k_fold not in K_FOLDS:
            return f"megakernel.tiles.k_fold={self.k_fold} must be one of {', '.join(map(str, K_FOLDS))}"
        if interpret and self.l2_prefetch:
            return (f"megakernel.tiles.l2_prefetch={self.l2_prefetch} is GPU-only (inline PTX); the Triton interpreter "
                    f"cannot honour it: leave it unset or 0 on the CPU")
        return None


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
    use_dot: bool  # tensor-core tl.dot inner products (kernels/tiles.uses_tensor_cores)
    num_warps: int
    qkv: GemvTile
    o: GemvTile
    gate_up: GemvTile
    down: GemvTile
    lm_head: GemvTile
    embed_block: int  # columns of h per Embed
    kv_block: int  # keys per attention step
    n_splits: int  # flash-decoding context slices per kv head and sequence
    seq_groups: int = 1  # AttnPartial sequence groups per kv head (Lowered.split_seqs)
    argmax_block: int = 1024  # LM-head blocks scanned per Argmax step
    l2_prefetch: int = 0  # K steps of its first weight tile an instruction asks L2 for before a wait (GPU; 0: off)
    k_fold: int = 1  # input columns per fp32 accumulator on the dense / int8 FMA path (kernels/gemv.fold_mac)


# GPU tile heights, measured in the megakernel (two persistent programs per SM, unlike the per-op launches).
# 4 warps, so that two programs fit per SM (~245 registers each): on an H100 at batch 1, ctx 1024, 4 warps x 2
# programs per SM against 8 warps x 1 took llama1b bf16 1.567 -> 1.293 ms, llama8b bf16 8.06 -> 6.23 ms, llama8b
# int4 8.57 -> 5.78 ms (scripts/mega_tune.py, docs/perf-notes.md "Megakernel tuning 1").
_NUM_WARPS = 4
# H100, llama1b bf16 B=1: 16 x 512 gave 1.60 ms/step, 32 x 256 1.85 ms. Tensor-core path (batch >= 4): every tile
# re-reads x [B, K] in fp32, so wide tiles: llama8b bf16 B16 23.6 ms at 16 rows, 12.2 ms at 64; H200, 256 columns
# per step 12.1 ms against 128 12.3 and 512 14.8.
_GPU_BLOCK_N = 16
_DOT_BLOCK_N = 64
_DOT_BLOCK_K = 256
# An instruction about to wait on a counter first asks L2 for this many K steps of its first weight tile. H200,
# batch 1, ctx 1024, same run (results/tuning/mega_tune-h200-3/4): llama1b bf16 1.171 -> 1.140 (1 step) -> 1.133 ms
# (2), llama8b bf16 5.248 -> 5.207 ms, llama8b int4 5.249 -> 5.207 ms, llama1b int4 1.223 -> 1.194 ms.
_L2_PREFETCH_STEPS = 2
_INSTR_OVERHEAD_TILES = 0.25  # cost of one more instruction (queue read, wait, release) in tiles
# The CPU test tier's geometry: small tiles so that the tiny test model has several tiles per instruction, K steps
# per tile and splits per kv head, and every loop of the kernel runs.
_CPU_COLS, _CPU_TILES_PER_INSTR, _CPU_KV_BLOCK, _CPU_MAX_SPLITS = 64, 2, 16, 3


def l2_prefetch_problem(spec: ModelSpec, quant: str, tiles: TileConfig, n: int) -> Optional[str]:
    """Why tiles.l2_prefetch=n cannot be used with these tiles (None if it can). n K steps of each stage's first
    tile are prefetched as a power-of-two number of 128-byte lines per row (the kernel's tl.arange), never more
    than the row."""
    if not n:
        return None
    elem = quant_mode(quant).weight_bits / 8  # stored bytes per weight
    for name, tile, k in (("qkv", tiles.qkv, spec.dim), ("o", tiles.o, spec.q_dim),
                          ("gate_up", tiles.gate_up, spec.dim), ("down", tiles.down, spec.ffn_dim),
                          ("lm_head", tiles.lm_head, spec.dim)):
        lines = -(-int(n * tile.block_k * elem) // 128)
        if lines & (lines - 1) or n * tile.block_k > k:
            return (f"megakernel.tiles.l2_prefetch={n} asks for {lines} lines per row of the {name} weights ({n} x "
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


def seq_groups(batch: int, n_kv_heads: int, n_programs: int) -> int:
    """AttnPartial sequence groups per kv head: groups of equal size (the last may be smaller, none empty), as many as
    there are programs per kv head, at most one per sequence. The group size is rounded up, so the groups can fall
    short of one per program (batch 8, 8 kv heads, 48 programs: 4 groups of 2); the context slices make up the count
    (pick_tiles). A partial's sequences run one after another, each a chain of dependent loads, so a batch must not
    share one instruction while programs idle: on an H200 at llama8b bf16 batch 16, 72 partials of 16 sequences
    each took 85 us per layer, 40% of the step (docs/perf-notes.md, "Attention at batch 16")."""
    per_group = cdiv(batch, max(1, min(batch, cdiv(n_programs, n_kv_heads))))
    return cdiv(batch, per_group)


def pick_tiles(spec: ModelSpec, quant: str, group_size: int, batch: int, max_len: int, n_programs: int, *,
               interpret: bool, options: Optional[TileOptions] = None) -> TileConfig:
    """Tile sizes for this configuration: the tile rule of kernels/tiles.py with the megakernel's own tile heights,
    then `options` (TileOptions; a value the backend cannot honour raises ConfigError)."""
    opt = options or TileOptions()
    problem = opt.problem(interpret)
    if problem:
        raise ConfigError(problem)
    mode = quant_mode(quant)
    kind, act_fp32 = mode.kind, mode.act_dtype.itemsize == 4
    use_dot = uses_tensor_cores(kind, group_size, batch, act_is_fp32=act_fp32)
    b_pad = batch_pad(kind, batch, use_dot)
    fold = 1 if (use_dot or kind == Kind.INT4) else (opt.k_fold or 1)
    half = spec.head_dim // 2
    rows = opt.gemv_rows or (_DOT_BLOCK_N if use_dot and not interpret else _GPU_BLOCK_N)
    rows = max(rows, 16) if use_dot else rows

    def cols_for(rows: int) -> int:  # input columns per K step for tiles of `rows` rows
        if interpret:
            return _CPU_COLS * fold
        return _DOT_BLOCK_K if use_dot else fma_cols(b_pad, rows, fold)

    def gemv(n: int, k: int) -> GemvTile:
        bk, gps = k_step(kind, group_size, k, cols_for(rows), use_dot)
        tpi = _CPU_TILES_PER_INSTR if interpret else _tiles_per_instr(cdiv(n, rows), n_programs)
        return GemvTile(rows, bk, gps, tpi)

    # RmsQkvRope: rotate-half pairs per block; on the GPU from {8, 16, ...} (>= 16 for tl.dot), best balanced over
    # the grid.
    slots = spec.n_heads + 2 * spec.n_kv_heads
    if interpret:
        pairs = max(min(8, next_pow2(half)), 16 if use_dot else 1)
    else:
        cands = [p for p in (8, 16, 32, 64) if p <= max(8, next_pow2(half)) and (p >= 16 or not use_dot)] or [16]
        pairs = min(cands, key=lambda p: (cdiv(slots * cdiv(half, p), n_programs) * (2 * p + 8), -p))
    qbk, qgps = k_step(kind, group_size, spec.dim, cols_for(pairs), use_dot)
    # Attention: enough (kv head, sequence group, context slice) instructions for the grid (seq_groups, then
    # kernels/tiles.split_count over the sequences a group holds).
    kv_block = _CPU_KV_BLOCK if interpret else (64 if spec.head_dim <= 128 else 32)
    groups = seq_groups(batch, spec.n_kv_heads, n_programs)
    n_splits = split_count(max_len, spec.n_kv_heads * groups, n_programs, seqs_per_unit=cdiv(batch, groups),
                           kv_block=kv_block)
    if interpret:
        n_splits = max(1, min(_CPU_MAX_SPLITS, cdiv(max_len, kv_block)))
    cfg = TileConfig(b_pad=b_pad, use_dot=use_dot, num_warps=opt.num_warps or _NUM_WARPS,
                     qkv=GemvTile(pairs, qbk, qgps, 1), o=gemv(spec.dim, spec.q_dim),
                     gate_up=gemv(spec.ffn_dim, spec.dim), down=gemv(spec.dim, spec.ffn_dim),
                     lm_head=gemv(spec.vocab_size, spec.dim), embed_block=64 if interpret else min(1024, next_pow2(spec.dim)),
                     kv_block=kv_block, n_splits=n_splits, seq_groups=groups, k_fold=fold)
    if interpret:
        return cfg
    if opt.l2_prefetch is not None:
        problem = l2_prefetch_problem(spec, quant, cfg, opt.l2_prefetch)
        if problem:
            raise ConfigError(problem)
        return replace(cfg, l2_prefetch=opt.l2_prefetch)
    # L2 prefetch while waiting: the most K steps up to _L2_PREFETCH_STEPS these tiles allow (0 if none does).
    steps = next((n for n in range(_L2_PREFETCH_STEPS, 0, -1) if l2_prefetch_problem(spec, quant, cfg, n) is None), 0)
    return replace(cfg, l2_prefetch=steps)


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
    def kind(self) -> Kind:
        return quant_mode(self.quant).kind

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

    @property
    def n_partials(self) -> int:
        """AttnPartial instructions per kv head and layer: seq_groups x n_splits."""
        return self.tiles.seq_groups * self.tiles.n_splits

    @property
    def seqs_per_group(self) -> int:
        return cdiv(self.batch, self.tiles.seq_groups)

    def split_seqs(self, split: int) -> range:
        """The sequences AttnPartial split `split` covers: group split // n_splits."""
        first = split // self.tiles.n_splits * self.seqs_per_group
        return range(first, min(first + self.seqs_per_group, self.batch))

    def split_slice(self, split: int) -> int:
        """The context slice of AttnPartial split `split`: its index in o_part / lse."""
        return split % self.tiles.n_splits

    def split_range(self, seq_len: int, split: int) -> range:
        """Keys of AttnPartial split `split` in each of its sequences: context slice split % n_splits, equal slices
        rounded up to whole kv blocks (kernels/attention.split_range). The partial lands in o_part / lse at that
        slice."""
        kb = self.tiles.kv_block
        per = cdiv(cdiv(seq_len, self.tiles.n_splits), kb) * kb
        start = self.split_slice(split) * per
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
        return quant_mode(self.quant).linear_nbytes(1, k, self.group_size)

    def cost_bytes(self, ins: Instruction) -> float:
        """Bytes an instruction reads (weights + scales, activations, KV cache), at a full cache."""
        s, b = self.spec, self.batch
        cache_elem = quant_mode(self.quant).act_bytes
        if isinstance(ins, RmsQkvRope):
            return 2 * self.tiles.qkv.block_n * self.weight_row_bytes(s.dim) + 4 * b * s.dim
        if isinstance(ins, AttnPartial):
            keys = cdiv(self.max_len, self.tiles.n_splits)
            seqs = len(self.split_seqs(ins.split))
            return seqs * (2 * keys * s.head_dim * cache_elem + 4 * self.group * s.head_dim)
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
    prog = Lowered(spec, quant, quant_mode(quant).group_size(group_size), batch, max_len, tiles)
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
            for s in range(prog.n_partials):
                emit(AttnPartial(l, g, s, wait=Wait(CounterKey(l, Stage.QKV, g), (group + 2) * npb),
                                 bump=CounterKey(l, Stage.PART, g)))
        for g in range(KVH):
            emit(AttnReduce(l, g, wait=Wait(CounterKey(l, Stage.PART, g), prog.n_partials),
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
    if not 1 <= batch <= MAX_BATCH:
        return f"batch={batch} is outside 1..{MAX_BATCH}"
    return quant_mode(quant).group_problem(group_size, spec.input_dims())
