"""The tile rules shared by the per-op launchers and the megakernel lowering: for every GEMV, when the inner
product runs on tensor cores, how far the batch is padded and how many input columns one K step covers; for
decode attention, how many context slices (flash-decoding splits) a kv head is cut into. The per-op launchers (kernels/gemv.py,
kernels/lm_head.py) and the megakernel lowering (kernels/mega/lower.py) both call these functions;
each caller adds only its tile height, a constant measured in its own context (many CTAs per SM for a
per-op launch, two persistent programs per SM for the megakernel), which it documents next to the number.

GEMV tiles (kernels/gemv.gemv_tile) have two inner products:
- FMA: one fp32 accumulator per weight of the tile, [B_PAD, BLOCK_N, BLOCK_K / k_fold], reduced over K after
  the loop. The accumulators are the register budget: FMA_ACC_ELEMS per program (64 registers a thread at 4
  warps), so the columns per step follow from the batch and the tile height.
- tensor cores (tl.dot): the batch padded to DOT_MIN_ROWS rows; dense and int8 from DOT_MIN_BATCH sequences,
  int4 (its own tile, integer nibbles on the tensor cores) from INT4_DOT_MIN_BATCH.
No Triton kernel is defined here, so the lowering can import it before TRITON_INTERPRET is decided.
"""
from __future__ import annotations

from typing import Optional

from kernels.quant import Kind

FMA_ACC_ELEMS = 8192  # fp32 FMA accumulators per program: 64 registers/thread at 4 warps
FMA_COLS_MIN, FMA_COLS_MAX = 64, 1024  # columns per FMA K step: 16-byte vectors per thread at both ends
K_FOLDS = (1, 2)  # input columns per FMA accumulator (kernels/gemv.fold_mac); 4 was slower everywhere
DOT_MIN_ROWS = 16  # smallest M / N / K of a tl.dot tile
# Tensor cores from batch 4 for dense / int8 weights: int8 llama8b wqkv at batch 4, H100, 19.5 us on tl.dot against
# >= 22 us on the best FMA tile. At batch 1 the tensor-core tile measured 1.6-2x slower (H200 megakernel, llama8b
# int8 5.58 -> 8.90 ms), at batch 16 the FMA tile 3.5x slower (llama8b bf16 42.8 vs 12.1 ms).
DOT_MIN_BATCH = 4
# int4 from batch 16. H200, llama8b int4 megakernel, tensor cores vs FMA (same run): batch 1 7.74 vs 5.25 ms,
# batch 4 13.5 vs 12.5 ms, batch 16 13.9 vs 60.1 ms.
INT4_DOT_MIN_BATCH = 16
MIN_KEYS_PER_SPLIT = 256  # below this an attention split's fixed cost (q load, partial write, reduce) dominates
MAX_SPLITS = 64


def next_pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def pow2_floor(n: int) -> int:
    return 1 << max(0, max(n, 1).bit_length() - 1)


def int4_dot_ok(group_size: int) -> bool:
    """Whether int4 weights of this group size can take the tensor-core tile: a power of two >= 32, so that each
    nibble half of a group is a tl.dot of K >= 16."""
    return group_size >= 32 and group_size & (group_size - 1) == 0


def uses_tensor_cores(kind: Kind, group_size: int, batch: int, act_is_fp32: bool = False) -> bool:
    """Whether a GEMV of this weight kind runs on tensor cores at this batch. fp32 activations stay on the FMA
    path (their tl.dot would be an exact fp32 dot, which buys nothing)."""
    if act_is_fp32:
        return False
    if kind == Kind.INT4:
        return int4_dot_ok(group_size) and batch >= INT4_DOT_MIN_BATCH
    return batch >= DOT_MIN_BATCH


def batch_pad(kind: Kind, batch: int, use_dot: bool) -> int:
    """Rows of x a tile computes: the batch padded to a power of two, and to 16 on the dense / int8 tensor-core
    path (the int4 tensor-core tile pads to 16 rows inside itself)."""
    return max(next_pow2(batch), DOT_MIN_ROWS if use_dot and kind != Kind.INT4 else 1)


def fma_cols(b_pad: int, rows: int, k_fold: int = 1) -> int:
    """Input columns per K step of an FMA tile of `rows` output rows: what the accumulator budget allows."""
    if k_fold not in K_FOLDS:
        raise ValueError(f"k_fold={k_fold} must be one of {', '.join(map(str, K_FOLDS))}")
    return k_fold * max(FMA_COLS_MIN, min(FMA_COLS_MAX, FMA_ACC_ELEMS // (b_pad * rows)))


def k_step(kind: Kind, group_size: int, k: int, cols: int, use_dot: bool) -> tuple[int, int]:
    """(block_k, groups_per_step) for K input columns and about `cols` columns per step: a power of two no wider
    than K needs; for int4 whole groups, groups_per_step of them, each padded to a power of two."""
    bk = min(pow2_floor(max(cols, DOT_MIN_ROWS)), next_pow2(k))
    gps = 1
    if kind == Kind.INT4:
        group_pad = next_pow2(group_size)
        gps = pow2_floor(min(next_pow2(k // group_size), max(1, bk // group_pad)))
        bk = gps * group_pad
    return (max(bk, DOT_MIN_ROWS) if use_dot else bk), gps


def split_count(max_len: int, units: int, target_units: int, seqs_per_unit: int = 1, kv_block: int = 1,
                min_keys: Optional[int] = None) -> int:
    """The flash-decoding split rule: context slices per unit of work (per-op: a (sequence, kv head) program;
    megakernel: a kv head over one sequence group, kernels.mega.lower.seq_groups), enough that units x slices reach
    `target_units`, but no slice
    under MIN_KEYS_PER_SPLIT keys summed over the sequences a unit covers (nor under one kv block), and at most
    MAX_SPLITS. min_keys replaces MIN_KEYS_PER_SPLIT // seqs_per_unit where a kernel measured its own floor."""
    min_keys = max(kv_block, MIN_KEYS_PER_SPLIT // seqs_per_unit if min_keys is None else min_keys)
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    return max(1, min(cdiv(target_units, units), cdiv(max(max_len, 1), min_keys), MAX_SPLITS))
