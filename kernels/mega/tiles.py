"""Device functions of the megakernel that kernels/*.py does not provide.

The per-tile math comes from the per-op kernels (kernels/gemv.gemv_tile, kernels/attention,
kernels/lm_head, kernels/elementwise); here are the synchronisation helpers, measured on Hopper:
acquire / release atomics at gpu scope with tl.debug_barrier() on both sides, every spin bounded,
and a bf16 store that rounds to nearest-even also in the Triton interpreter (whose fp32 -> bf16
cast truncates).
"""
from __future__ import annotations

import triton
import triton.language as tl

ERR_TIMEOUT = tl.constexpr(1)  # the error record code of a timed-out wait (report_error; runtime reads it back)



@triton.jit
def wait_until(counter_ptr, target, error_ptr, spin_limit):
    """Acquire-spins until *counter_ptr >= target, another program reported an error, or spin_limit
    polls passed. Returns the last value seen (>= target on success)."""
    tl.debug_barrier()
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    failed = 0
    while (seen < target) & (spins < spin_limit) & (failed == 0):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        failed = tl.load(error_ptr, volatile=True)
        spins += 1
    tl.debug_barrier()
    return seen


@triton.jit
def release(counter_ptr):
    """Makes this program's writes visible, then increments the counter (release, gpu scope)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def report_error(error_ptr, code, program, position, instr_id, counter, seen, target, launch, WORDS: tl.constexpr):
    """Raises the error flag error[0] (other programs' spins watch it and stop) and writes this program's
    record error[WORDS (1 + program) ...] = [code, program, queue position, instr id, counter, value seen,
    target, launch] unless it already holds one. The host reports the most upstream record."""
    tl.atomic_xchg(error_ptr, code, sem="release", scope="gpu")
    rec = error_ptr + WORDS * (1 + program)
    old = tl.atomic_cas(rec, 0, code, sem="acq_rel", scope="gpu")
    if old == 0:
        tl.store(rec + 1, program)
        tl.store(rec + 2, position)
        tl.store(rec + 3, instr_id)
        tl.store(rec + 4, counter)
        tl.store(rec + 5, seen)
        tl.store(rec + 6, target)
        tl.store(rec + 7, launch)


@triton.jit
def prefetch_l2(w_ptr, row0, N, ROW_STRIDE: tl.constexpr, K: tl.constexpr, ROWS: tl.constexpr,
                COLS: tl.constexpr):
    """Asks L2 for the first COLS input columns of rows row0 .. row0 + ROWS (those < N) of a weight W [N, K] stored
    with ROW_STRIDE elements per row (K, or K / 2 for packed int4): one `prefetch.global.L2` per 128-byte line,
    no registers held, nothing waited for. Issued before a counter wait, it lets the weights of the instruction
    about to run stream while it waits (weights never depend on a counter). GPU only (inline PTX)."""
    ELEM: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
    LINE: tl.constexpr = 128 // ELEM  # stored elements per 128-byte line
    LINES: tl.constexpr = (COLS * ROW_STRIDE // K + LINE - 1) // LINE
    r = tl.arange(0, ROWS)
    ln = tl.arange(0, LINES)
    ptrs = w_ptr + (row0 + r).to(tl.int64)[:, None] * ROW_STRIDE + (ln * LINE)[None, :]
    ok = (row0 + r < N)[:, None] & (ln >= 0)[None, :]
    ptrs = tl.where(ok, ptrs, w_ptr)  # rows past the matrix: re-prefetch its first line (harmless)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def now(clock_ptr, CLOCK: tl.constexpr):
    """A timestamp (int64): the GPU's global nanosecond timer (CLOCK 1), or a logical clock (CLOCK 0: the int64
    counter at clock_ptr, bumped atomically by every reader, for the CPU interpreter where there is no timer)."""
    if CLOCK == 1:
        t = tl.extra.cuda.globaltimer()
    else:
        t = tl.atomic_add(clock_ptr, 1)
    return t


@triton.jit
def sm_id(CLOCK: tl.constexpr):
    """The SM this program runs on (GPU), else -1."""
    if CLOCK == 1:
        s = tl.extra.cuda.smid().to(tl.int64)
    else:
        s = tl.full([], -1, tl.int64)
    return s


# The persistent loop's steps that both backends share (kernels/mega/interpreter._megakernel, hopper._instructions):
# a queue row's words, the bounded wait with its error record, and the timeline record.
@triton.jit
def queue_entry(word):
    """The words of one queue row (kernels/mega/instructions.py): (opcode, layer, a, b, wait counter, wait count,
    bump counter). The eighth, the instruction id, is read only for an error record (await_counter)."""
    return (tl.load(word), tl.load(word + 1), tl.load(word + 2), tl.load(word + 3), tl.load(word + 4),
            tl.load(word + 5), tl.load(word + 6))


@triton.jit
def await_counter(bufs, queue, word, pid, pc, wc, wn, WORDS: tl.constexpr):
    """The instruction at queue position pc (row `word`) waits until counter wc reaches wn, bounded by the queue's
    spin limit (wait_until); on a timeout it writes this program's error record (report_error). Returns the value
    seen: >= wn unless it timed out or another program reported an error."""
    seen = wait_until(bufs.counters + wc, wn, bufs.error, queue.spin_limit)
    if seen < wn:
        report_error(bufs.error, ERR_TIMEOUT, pid, pc, tl.load(word + 7), wc, seen, wn, queue.launch_id, WORDS)
    return seen


@triton.jit
def record_timeline(bufs, queue, pid, pc, t_start, t_ready, CLOCK: tl.constexpr, WORDS: tl.constexpr):
    """Queue position pc's timeline record [start, ready, end, SM] (int64; the end is now)."""
    rec = bufs.timeline + ((pid * (queue.stride // WORDS) + pc) * 4).to(tl.int64)
    tl.store(rec, t_start)
    tl.store(rec + 1, t_ready)
    tl.store(rec + 2, now(bufs.clock, CLOCK))
    tl.store(rec + 3, sm_id(CLOCK))


@triton.jit
def round_for_store(x, dst_ptr):
    """fp32 x rounded to dst's element type, to nearest-even (the interpreter's own bf16 cast truncates)."""
    if dst_ptr.dtype.element_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        x = u.to(tl.float32, bitcast=True)
    return x.to(dst_ptr.dtype.element_ty)


@triton.jit
def combine_group(o_part_ptr, lse_ptr, n_splits, GQ: tl.constexpr, G_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
                  HD_PAD: tl.constexpr):
    """kernels/attention.combine_splits for GQ consecutive heads at once. o_part_ptr: [GQ, n_splits, HD_PAD],
    lse_ptr: [GQ, n_splits] (base-2 log-sum-exp, -inf for empty splits) -> [G_PAD, HD_PAD] fp32."""
    g = tl.arange(0, G_PAD)
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HD_PAD)
    g_ok = g < GQ
    lse = tl.load(lse_ptr + g[:, None] * n_splits + sp[None, :], mask=g_ok[:, None] & (sp < n_splits)[None, :],
                  other=float("-inf"))
    m = tl.max(lse, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # no keys at all: every weight is 0, output 0
    den = tl.sum(tl.exp2(lse - m[:, None]), axis=1)
    acc = tl.zeros([G_PAD, HD_PAD], dtype=tl.float32)
    for s in range(0, n_splits):
        w = tl.exp2(tl.load(lse_ptr + g * n_splits + s, mask=g_ok, other=float("-inf")) - m)
        o = tl.load(o_part_ptr + (g * n_splits + s)[:, None] * HD_PAD + d[None, :], mask=g_ok[:, None], other=0.0)
        acc += o * w[:, None]
    return acc / tl.where(den > 0.0, den, 1.0)[:, None]
