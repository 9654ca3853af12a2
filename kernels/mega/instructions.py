"""The megakernel's instruction set: one small dataclass per fused unit of work on a tile.

Every instruction serialises to WORDS int32 words, the row of a program's queue:

    [opcode, layer, a, b, wait_counter, wait_count, bump_counter, instr_id]

`a`, `b` are the tile indices of the table below; `wait_counter` (-1: none) is the index of the
counter the instruction spins on until it reaches `wait_count`; `bump_counter` (-1: none) is the
counter it release-increments when its writes are done; `instr_id` is its index in the lowered
stream (error records and the diff tool name instructions by it).

| opcode | instruction                     | fuses                                                            | a         | b     |
|--------|---------------------------------|------------------------------------------------------------------|-----------|-------|
| 0      | Embed(col_block)                | h[:, cols] = embed[tokens, cols]                                 | col block | -     |
| 1      | RmsQkvRope(layer, row_block)    | RMSNorm prologue, QKV GEMV rows, RoPE, q store / KV-cache append | row block | -     |
| 2      | AttnPartial(layer, kv_head, split) | flash-decoding partial of all query heads of one kv head, over one context slice of one group of sequences (Lowered.split_seqs / split_range) | kv head | split |
| 3      | AttnReduce(layer, kv_head)      | log-sum-exp combine of the context slices -> attn[:, heads of the group] | kv head   | -     |
| 4      | OProjResidual(layer, row_block) | h[:, rows] += attn @ Wo[rows].T                                  | row block | -     |
| 5      | RmsGateUpSilu(layer, row_block) | RMSNorm prologue, gate and up GEMV rows, act = silu(gate) * up   | row block | -     |
| 6      | DownResidual(layer, row_block)  | h[:, rows] += act @ Wd[rows].T                                   | row block | -     |
| 7      | LmHead(row_block)               | final RMSNorm prologue, logits rows, per-block max / argmax      | row block | -     |
| 8      | Argmax()                        | argmax over the blocks; next token (+ advance); zero counters    | -         | -     |

RmsQkvRope row blocks: the fused wqkv has H + 2 KVH head slots of hd rows (q heads, k heads,
v heads). Row block r is slot r // NPB, pair block r % NPB: the rows i and i + hd/2 of that head
for i in [pb * P, (pb + 1) * P) (P pairs per block, NPB = cdiv(hd/2, P)), so every rotate-half
pair is in one block and a block never straddles two heads (or two kv groups).

Counters: one int32 tensor; counter (layer, stage, tile) has a fixed index (CounterSpace).
Per layer: QKV[kv head] (row blocks of that group done), PART[kv head] (partials done), ATTN,
OPROJ, GATE_UP, DOWN (blocks done); global (layer -1): EMBED, LM_HEAD.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import ClassVar, NamedTuple, Optional

WORDS = 8  # int32 words per serialised instruction
NO_COUNTER = -1


class Op(IntEnum):
    EMBED = 0
    RMS_QKV_ROPE = 1
    ATTN_PARTIAL = 2
    ATTN_REDUCE = 3
    OPROJ_RESIDUAL = 4
    RMS_GATE_UP_SILU = 5
    DOWN_RESIDUAL = 6
    LM_HEAD = 7
    ARGMAX = 8


class Stage(IntEnum):
    QKV = 0  # per layer, per kv head
    PART = 1  # per layer, per kv head
    ATTN = 2  # per layer
    OPROJ = 3  # per layer
    GATE_UP = 4  # per layer
    DOWN = 5  # per layer
    EMBED = 6  # global
    LM_HEAD = 7  # global


PER_KV_HEAD = (Stage.QKV, Stage.PART)
GLOBAL = (Stage.EMBED, Stage.LM_HEAD)


class CounterKey(NamedTuple):
    """A counter by meaning: (layer or -1 for global stages, stage, tile)."""

    layer: int
    stage: Stage
    tile: int = 0

    def __str__(self) -> str:
        where = "global" if self.layer < 0 else f"layer {self.layer}"
        tile = f", kv head {self.tile}" if self.stage in PER_KV_HEAD else ""
        return f"({where}, {self.stage.name}{tile})"


@dataclass(frozen=True)
class CounterSpace:
    """Maps CounterKey <-> index into the counters tensor: per layer 2 KVH + 4 counters, then 2 global."""

    n_layers: int
    n_kv_heads: int

    @property
    def per_layer(self) -> int:
        return 2 * self.n_kv_heads + 4

    @property
    def size(self) -> int:
        return self.n_layers * self.per_layer + len(GLOBAL)

    def index(self, key: CounterKey) -> int:
        if key.stage in GLOBAL:
            return self.n_layers * self.per_layer + GLOBAL.index(key.stage)
        if not 0 <= key.layer < self.n_layers:
            raise ValueError(f"counter {key}: layer out of range")
        if key.stage in PER_KV_HEAD:
            if not 0 <= key.tile < self.n_kv_heads:
                raise ValueError(f"counter {key}: kv head out of range")
            off = key.stage * self.n_kv_heads + key.tile
        else:
            off = 2 * self.n_kv_heads + (key.stage - Stage.ATTN)
        return key.layer * self.per_layer + off

    def key(self, index: int) -> CounterKey:
        if not 0 <= index < self.size:
            raise ValueError(f"counter index {index} outside [0, {self.size})")
        layer, off = divmod(index, self.per_layer)
        if layer == self.n_layers:
            return CounterKey(-1, GLOBAL[off])
        if off < 2 * self.n_kv_heads:
            return CounterKey(layer, Stage(off // self.n_kv_heads), off % self.n_kv_heads)
        return CounterKey(layer, Stage(Stage.ATTN + off - 2 * self.n_kv_heads))


class Wait(NamedTuple):
    """Spin until `counter` reaches `count`."""

    counter: CounterKey
    count: int


@dataclass(frozen=True)
class Instruction:
    """Base class: subclasses add their tile fields; the lowering fills `wait` and `bump`."""

    OP: ClassVar[Op]
    wait: Optional[Wait] = field(default=None, kw_only=True, compare=False)
    bump: Optional[CounterKey] = field(default=None, kw_only=True, compare=False)

    def tile_fields(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("wait", "bump"))

    def words(self, space: CounterSpace, instr_id: int) -> list[int]:
        """The serialised form (see the module docstring)."""
        t = dict((f.name, getattr(self, f.name)) for f in fields(self) if f.name not in ("wait", "bump"))
        layer = t.pop("layer", 0)
        ab = list(t.values()) + [0, 0]
        wc, wn = (space.index(self.wait.counter), self.wait.count) if self.wait else (NO_COUNTER, 0)
        bc = space.index(self.bump) if self.bump else NO_COUNTER
        return [int(self.OP), layer, ab[0], ab[1], wc, wn, bc, instr_id]

    def __str__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name not in ("wait", "bump"))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Embed(Instruction):
    """h[:, cols of block] = embed[tokens[b], cols] (fp32 residual stream)."""

    OP: ClassVar[Op] = Op.EMBED
    col_block: int


@dataclass(frozen=True)
class RmsQkvRope(Instruction):
    """RMSNorm(h) @ Wqkv rows of one pair block of one head slot, RoPE, q store or K/V-cache append."""

    OP: ClassVar[Op] = Op.RMS_QKV_ROPE
    layer: int
    row_block: int


@dataclass(frozen=True)
class AttnPartial(Instruction):
    """Flash-decoding partial (normalised output + log2-sum-exp) of one kv head's query group over one context slice
    of each sequence of one group: split = group x n_splits + slice."""

    OP: ClassVar[Op] = Op.ATTN_PARTIAL
    layer: int
    kv_head: int
    split: int


@dataclass(frozen=True)
class AttnReduce(Instruction):
    """Combines the context slices (n_splits partials of each sequence) of each query head of one kv group into
    attn[:, heads]."""

    OP: ClassVar[Op] = Op.ATTN_REDUCE
    layer: int
    kv_head: int


@dataclass(frozen=True)
class OProjResidual(Instruction):
    """h[:, rows] += attn @ Wo[rows].T (output projection rows plus residual)."""

    OP: ClassVar[Op] = Op.OPROJ_RESIDUAL
    layer: int
    row_block: int


@dataclass(frozen=True)
class RmsGateUpSilu(Instruction):
    """act[:, rows] = silu(RMSNorm(h) @ Wg[rows].T) * (RMSNorm(h) @ Wu[rows].T)."""

    OP: ClassVar[Op] = Op.RMS_GATE_UP_SILU
    layer: int
    row_block: int


@dataclass(frozen=True)
class DownResidual(Instruction):
    """h[:, rows] += act @ Wd[rows].T (down projection rows plus residual)."""

    OP: ClassVar[Op] = Op.DOWN_RESIDUAL
    layer: int
    row_block: int


@dataclass(frozen=True)
class LmHead(Instruction):
    """logits[:, rows] = RMSNorm(h) @ Wlm[rows].T, plus the block's max logit and its lowest index per sequence."""

    OP: ClassVar[Op] = Op.LM_HEAD
    row_block: int


@dataclass(frozen=True)
class Argmax(Instruction):
    """Greedy next token from the LM-head blocks (advance: tokens <- it, positions += 1); zeroes the counters."""

    OP: ClassVar[Op] = Op.ARGMAX


BY_OP: dict[Op, type[Instruction]] = {c.OP: c for c in (Embed, RmsQkvRope, AttnPartial, AttnReduce, OProjResidual,
                                                         RmsGateUpSilu, DownResidual, LmHead, Argmax)}


def from_words(words, space: CounterSpace) -> Instruction:
    """Inverse of Instruction.words (the instr_id word is dropped)."""
    op, layer, a, b, wc, wn, bc = (int(w) for w in list(words)[:7])
    cls = BY_OP[Op(op)]
    names = [f.name for f in fields(cls) if f.name not in ("wait", "bump")]
    vals = {"layer": layer} if "layer" in names else {}
    rest = [n for n in names if n != "layer"]
    vals.update(zip(rest, (a, b)))
    wait = Wait(space.key(wc), wn) if wc != NO_COUNTER else None
    bump = space.key(bc) if bc != NO_COUNTER else None
    return cls(**vals, wait=wait, bump=bump)
