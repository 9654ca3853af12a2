"""The megakernel's arguments, built in one place: the runtime launches with them, and the resource report
(kernels/mega/resources.py) compiles the kernel from the same values on any machine.

The kernel takes a handful of NamedTuples instead of a hundred loose parameters (Triton passes tuples of
tensors and scalars as kernel arguments, and constexpr tuples as specialisation keys):

  Queue      the launch's per-program instruction queues and its run-time controls
  Buffers    the step's scratch (kernels/mega/state.py), counters, error record, timeline
  Weights    the model's weights, stacked over layers (one Linear(w, s, z) per linear type)
  Cache      the KV cache and the RoPE tables
  Dims       constexpr: the model's shape, the quant kind, the weights' row strides
  Tiles      constexpr: every tile size (kernels/mega/lower.TileConfig) and what follows from it
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from kernels import dot_operand_dtype
from kernels.mega.instructions import WORDS
from kernels.mega.lower import GemvTile, Lowered, TileConfig
from kernels.mega.state import State, hd_pad_of
from kernels.model import KVCache, ModelWeights
from kernels.quant import Kind, quant_mode
from kernels.tiles import next_pow2

LOG2E = 1.4426950408889634


class Queue(NamedTuple):
    queue: torch.Tensor  # [P, max_len, WORDS] int32: the launch's queues
    lengths: torch.Tensor  # [P] int32
    stride: int  # int32 words per program's queue (max_len * WORDS)
    launch_id: int  # which launch of the step (error records name it)
    spin_limit: int  # polls before a wait is declared hung
    advance: int  # 1: Argmax writes the next token and position back (generation from a CUDA graph)


class Buffers(NamedTuple):
    tokens: torch.Tensor  # [B] int32
    positions: torch.Tensor  # [B] int32
    next_tokens: torch.Tensor  # [B] int32
    h: torch.Tensor  # [B, D] fp32
    q: torch.Tensor  # [B, H, HD] fp32
    attn: torch.Tensor  # [B, H HD] fp32
    act: torch.Tensor  # [B, F] fp32
    o_part: torch.Tensor  # [B, H, N_SPLITS, HD_PAD] fp32
    lse: torch.Tensor  # [B, H, N_SPLITS] fp32
    logits: torch.Tensor  # [B, V] fp32
    pmax: torch.Tensor  # [B, N_LM] fp32
    pidx: torch.Tensor  # [B, N_LM] int32
    counters: torch.Tensor  # [N_COUNTERS] int32
    error: torch.Tensor  # [(1 + P) * ERROR_WORDS] int32
    timeline: torch.Tensor  # TIMELINE only: [P, queue length, 4] int64 of this launch
    clock: torch.Tensor  # [1] int64, the logical clock of the interpreter (CLOCK 0)


class Linear(NamedTuple):
    w: torch.Tensor  # [L, N, K] (int4: [L, N, K / 2] uint8)
    s: torch.Tensor  # int8: [L, N]; int4: [L, N, K / G]; dense: w stands in
    z: torch.Tensor  # int4: [L, N, K / G]; else w stands in


class Weights(NamedTuple):
    embed: torch.Tensor  # [V, D]
    attn_norm: torch.Tensor  # [L, D]
    mlp_norm: torch.Tensor  # [L, D]
    final_norm: torch.Tensor  # [D]
    qkv: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    lm: Linear  # [V, D] (no layer axis)


class Cache(NamedTuple):
    k: torch.Tensor  # [L, B, KVH, S_max, HD]
    v: torch.Tensor
    cos: torch.Tensor  # [S_max, HD / 2] fp32
    sin: torch.Tensor
    s_max: int
    eps: float  # RMSNorm epsilon
    scale_log2: float  # softmax scale 1 / sqrt(HD), in base 2


class Dims(NamedTuple):
    D: int
    H: int
    KVH: int
    HD: int
    F: int
    V: int
    B: int
    KIND: int  # kernels.quant.Kind
    QGROUP: int  # int4 group size (2 stands in otherwise)
    N_COUNTERS: int
    WSTR_D: int  # weight row stride (elements) for K = D, Q_DIM, F (K / 2 for packed int4)
    WSTR_Q: int
    WSTR_F: int
    SSTR_D: int  # scale / zero row stride for K = D, Q_DIM, F (K / G for int4, else 1)
    SSTR_Q: int
    SSTR_F: int


class Stage(NamedTuple):
    BN: int  # rows per tile (RmsQkvRope: pairs)
    BK: int  # input columns per K step
    GPS: int  # int4 groups per step
    TPI: int  # tiles per instruction


class Tiles(NamedTuple):
    B_PAD: int
    USE_DOT: bool
    DOT_DTYPE: Any  # tl.dtype of the tensor-core operands
    FOLD: int
    QKV: Stage
    NPB: int  # RmsQkvRope pair blocks per head slot
    O: Stage
    GU: Stage
    DN: Stage
    LM: Stage
    N_LM: int  # LM-head instructions (argmax partials per sequence)
    EMBED_BLOCK: int
    KV_BLOCK: int
    N_SPLITS: int  # context slices per sequence
    SEQS_PER_GROUP: int  # sequences per AttnPartial (its split: group x N_SPLITS + slice)
    SPLITS_PAD: int
    G_PAD: int  # query heads of a kv group, padded for tl.dot
    GR_PAD: int  # the same, padded to a power of two only
    HD_PAD: int
    ARGMAX_BLOCK: int


def _stage(t: GemvTile) -> Stage:
    return Stage(t.block_n, t.block_k, t.groups_per_step, t.tiles_per_instr)


def constexprs(prog: Lowered, act_dtype: torch.dtype) -> tuple[Dims, Tiles]:
    """The kernel's constexpr tuples for one lowering: everything that specialises it."""
    spec, t = prog.spec, prog.tiles
    kind = prog.kind
    g = max(prog.group_size, 2)

    def wstr(k):  # weight row stride (elements) for K input columns
        return k // 2 if kind == Kind.INT4 else k

    def sstr(k):  # scale / zero row stride
        return k // g if kind == Kind.INT4 else 1
    gq = spec.n_heads // spec.n_kv_heads
    dims = Dims(D=spec.dim, H=spec.n_heads, KVH=spec.n_kv_heads, HD=spec.head_dim, F=spec.ffn_dim, V=spec.vocab_size,
                B=prog.batch, KIND=int(kind), QGROUP=g, N_COUNTERS=prog.space.size,
                WSTR_D=wstr(spec.dim), WSTR_Q=wstr(spec.q_dim), WSTR_F=wstr(spec.ffn_dim),
                SSTR_D=sstr(spec.dim), SSTR_Q=sstr(spec.q_dim), SSTR_F=sstr(spec.ffn_dim))
    tiles = Tiles(B_PAD=t.b_pad, USE_DOT=t.use_dot, DOT_DTYPE=dot_operand_dtype(act_dtype), FOLD=t.k_fold,
                  QKV=_stage(t.qkv), NPB=prog.pair_blocks, O=_stage(t.o), GU=_stage(t.gate_up), DN=_stage(t.down),
                  LM=_stage(t.lm_head), N_LM=prog.n_lm, EMBED_BLOCK=t.embed_block, KV_BLOCK=t.kv_block,
                  N_SPLITS=t.n_splits, SEQS_PER_GROUP=prog.seqs_per_group, SPLITS_PAD=next_pow2(t.n_splits), G_PAD=max(next_pow2(gq), 16),
                  GR_PAD=next_pow2(gq), HD_PAD=hd_pad_of(spec.head_dim),
                  ARGMAX_BLOCK=min(t.argmax_block, next_pow2(prog.n_lm)))
    return dims, tiles


def _contig(t: torch.Tensor, what: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"megakernel: {what} must be contiguous (row-major, as kernels.model.ModelWeights stacks it)")
    return t


def weights_arg(w: ModelWeights) -> Weights:
    def lin(q, name):
        wt = _contig(q.weight, f"{name} weight")
        return Linear(wt, _contig(q.scale, f"{name} scale") if q.scale is not None else wt,
                      _contig(q.zero, f"{name} zero") if q.zero is not None else wt)
    st = w.stacked
    return Weights(_contig(w.embed, "embed"), _contig(w.stacked_norms["attn_norm"], "attn norms"),
                   _contig(w.stacked_norms["mlp_norm"], "mlp norms"), _contig(w.final_norm, "final norm"),
                   lin(st["wqkv"], "wqkv"), lin(st["wo"], "wo"), lin(st["w_gate"], "w_gate"), lin(st["w_up"], "w_up"),
                   lin(st["w_down"], "w_down"), lin(w.lm_head, "lm_head"))


def cache_arg(cache: KVCache, cos: torch.Tensor, sin: torch.Tensor, spec) -> Cache:
    return Cache(_contig(cache.k, "KV cache k"), _contig(cache.v, "KV cache v"), cos.contiguous(), sin.contiguous(),
                 cache.max_len, spec.norm_eps, spec.head_dim ** -0.5 * LOG2E)


def buffers_arg(state: State, timeline: torch.Tensor, clock: torch.Tensor) -> Buffers:
    s = state
    return Buffers(s.tokens, s.positions, s.next_tokens, s.h, s.q, s.attn, s.act, s.o_part, s.lse, s.logits, s.pmax,
                   s.pidx, s.counters, s.error, timeline, clock)


def queue_arg(queues: torch.Tensor, lengths: torch.Tensor, launch_id: int, spin_limit: int, advance: bool) -> Queue:
    return Queue(queues, lengths, queues.shape[1] * WORDS, launch_id, spin_limit, int(advance))


def placeholder_args(prog: Lowered, quant: str, n_programs: int) -> list:
    """Arguments of the right types and no memory (meta tensors): what compiling the kernel needs on any machine."""
    mode = quant_mode(prog.quant)
    act, meta = mode.act_dtype, dict(device="meta")
    w = torch.empty(0, dtype=mode.storage_dtype, **meta)
    s = torch.empty(0, dtype=act, **meta) if mode.kind != Kind.DENSE else w
    z = torch.empty(0, dtype=act, **meta) if mode.kind == Kind.INT4 else w
    a = torch.empty(0, dtype=act, **meta)
    lin = Linear(w, s, z)
    wts = Weights(a, a, a, a, lin, lin, lin, lin, lin, lin)
    f32 = torch.empty(0, dtype=torch.float32, **meta)
    i64 = torch.empty(0, dtype=torch.int64, **meta)
    cache = Cache(a, a, f32, f32, prog.max_len, prog.spec.norm_eps, 1.0)
    queues = torch.empty(n_programs, 1, WORDS, dtype=torch.int32, **meta)
    lengths = torch.empty(n_programs, dtype=torch.int32, **meta)
    return [queue_arg(queues, lengths, 0, 1, False), buffers_arg(State.alloc(prog, "meta", n_programs), i64, i64),
            wts, cache]


# ----------------------------------------------------------------------------------------------
# Compiling without a GPU: the signature Triton's JIT would derive from these values
# ----------------------------------------------------------------------------------------------
_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "i8",
               torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64"}


def signature_of(value):
    """The Triton type string of one argument value (a tuple's is the same tuple type of strings)."""
    if isinstance(value, torch.Tensor):
        return "*" + _TYPE_NAMES[value.dtype]
    if isinstance(value, tuple):
        return type(value)(*(signature_of(v) for v in value)) if hasattr(value, "_fields") else \
            tuple(signature_of(v) for v in value)
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def pointer_paths(value, path: tuple = ()) -> list[tuple]:
    """Paths (argument index, field index, ...) of every tensor in an argument list: what the JIT marks 16-byte
    aligned when the tensors are (they are, from PyTorch's allocator)."""
    if isinstance(value, torch.Tensor):
        return [path]
    if isinstance(value, (tuple, list)):
        return [p for i, v in enumerate(value) for p in pointer_paths(v, path + (i,))]
    return []
