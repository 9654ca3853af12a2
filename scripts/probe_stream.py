"""Probe: how fast one persistent program per SM streams a weight matrix through a TMA ring, by chunk shape.

The Gluon megakernel moves its weights in chunks of [64 rows, 256 columns]: 64 segments of 512 bytes at bf16, of
256 bytes at int8 (the same chunk count per step in both modes). This measures the memory side alone: a program
owns row blocks of BN rows (round robin over the grid), walks each one's columns in chunks of BN x KB bytes, each
chunk BN / BOX TMA boxes of [BOX, KB] bytes into a ring of RING bytes, and consumes a chunk by waiting on its
barrier and (with --touch) reading it from shared memory into registers, as the compute warps do, before the slot
is refilled. Nothing is multiplied, so the rate is the DRAM pattern's and the ring's, not the arithmetic's.

    python scripts/probe_stream.py --row-bytes 4096 8192 --chunks 64x256 64x512 32x512 128x128 --touch

Each row: % of the copy bandwidth measured in the same process (device-to-device copy of 1 GiB). GPU only (Hopper:
TMA and mbarrier); --compile-only compiles every variant for sm_90 on any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import torch  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from scripts.probe_chain import _copy_tbps, _time  # noqa: E402

BOX = 32  # rows of one TMA box, as in the megakernel


@gluon.jit
def _issue(desc, ring, bars, j, n_chunks, p, P, KC, BN: gl.constexpr, KB: gl.constexpr, NBUF: gl.constexpr):
    """The TMA loads of this program's chunk j (if it exists: its tile j // KC, column chunk j % KC) into slot
    j % NBUF, one box (the descriptor's rows) at a time."""
    ok = j < n_chunks
    row = (p + (j // KC) * P) * BN
    col = (j % KC) * KB
    slot = j % NBUF
    R: gl.constexpr = desc.block_type.shape[0]
    mbarrier.expect(bars.index(slot), (BN // R) * desc.block_type.nbytes, pred=ok)
    for b in gl.static_range(BN // R):
        tma.async_copy_global_to_shared(desc, [row + b * R, col], bars.index(slot),
                                        ring.index(slot).slice(b * R, R, dim=0), pred=ok)


@gluon.jit
def _stream_kernel(desc, sink_ptr, n_tiles, KC, BN: gl.constexpr, KB: gl.constexpr, NBUF: gl.constexpr,
                   TOUCH: gl.constexpr):
    # desc: W [n_tiles BN, KC KB] int8 in [BOX, KB] boxes; sink: [P] int32 (TOUCH: a checksum, so the reads stay)
    WARPS: gl.constexpr = gl.num_warps()
    LW: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [WARPS, 1], [1, 0])  # 16 B a thread, a row a warp
    p = gl.program_id(0)
    P = gl.num_programs(0)
    n_chunks = ((n_tiles - p + P - 1) // P) * KC
    ring = gl.allocate_shared_memory(desc.dtype, [NBUF, BN, KB], desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NBUF):
        mbarrier.init(bars.index(s), count=1)
    for s in gl.static_range(NBUF):
        _issue(desc, ring, bars, s, n_chunks, p, P, KC, BN, KB, NBUF)
    acc = gl.zeros([8, KB], gl.int32, layout=LW)
    for j in range(0, n_chunks):
        slot = j % NBUF
        mbarrier.wait(bars.index(slot), (j // NBUF) & 1)
        if TOUCH:
            for r in gl.static_range(BN // 8):
                acc += ring.index(slot).slice(r * 8, 8, dim=0).load(LW).to(gl.int32)
        gl.thread_barrier()  # every warp is done with the slot ...
        fence_async_shared()  # ... before the async proxy overwrites it
        _issue(desc, ring, bars, j + NBUF, n_chunks, p, P, KC, BN, KB, NBUF)
    if TOUCH:
        gl.store(sink_ptr + p, gl.sum(gl.sum(acc, axis=1), axis=0))
    for s in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(s))


class Stream:
    """The descriptor and launch of one (BN, KB, ring) configuration over the int8 matrix w."""

    def __init__(self, w: torch.Tensor, bn: int, kb: int, ring: int, programs: int, touch: bool, warps: int = 4):
        n, k = w.shape
        if bn % BOX or n % bn or k % kb:
            raise ValueError(f"chunk {bn}x{kb}: BN must be a multiple of {BOX} and divide {n} rows; KB must divide "
                             f"the row's {k} bytes")
        self.bn, self.kb, self.touch, self.warps = bn, kb, touch, warps
        self.nbuf = max(2, ring // (bn * kb))
        layout = gl.NVMMASharedLayout.get_default_for([BOX, kb], gl.int8)
        self.desc = TensorDescriptor.from_tensor(w, [BOX, kb], layout)
        self.n_tiles, self.kc = n // bn, k // kb
        self.P = min(programs, self.n_tiles)
        self.sink = torch.zeros(self.P, dtype=torch.int32, device=w.device)

    def args(self):
        return ((self.desc, self.sink, self.n_tiles, self.kc),
                dict(BN=self.bn, KB=self.kb, NBUF=self.nbuf, TOUCH=self.touch, num_warps=self.warps))

    def run(self) -> None:
        args, kw = self.args()
        _stream_kernel[(self.P,)](*args, **kw)


def compile_sm90(s: Stream):
    """The kernel compiled for sm_90 on any machine (the JIT's own argument specialisation)."""
    from kernels.mega.resources import compile_jit

    args, kw = s.args()
    return compile_jit(_stream_kernel, args, kw)


def _rows(total: int, row_bytes: int) -> int:
    """Rows of the probed matrix: about `total` bytes of `row_bytes`-byte rows, a multiple of 128."""
    n = total // row_bytes
    return n - n % 128


def problem(row_bytes: list[int], chunks: list[tuple[int, int]], total: int) -> str | None:
    """Why these arguments cannot be probed (one sentence), or None: checked before any GPU work."""
    for rb in row_bytes:
        if _rows(total, rb) == 0:
            return f"--total {total} holds fewer than 128 rows of {rb} bytes: raise --total or lower --row-bytes"
        for bn, kb in chunks:
            if bn % BOX or _rows(total, rb) % bn or rb % kb:
                return (f"chunk {bn}x{kb} does not tile {rb}-byte rows: its rows must be a multiple of {BOX} "
                        f"dividing {_rows(total, rb)}, and its bytes must divide {rb}")
    return None


def _shape(text: str) -> tuple[int, int]:
    bn, kb = text.lower().split("x")
    return int(bn), int(kb)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row-bytes", type=int, nargs="+", default=[4096, 8192],
                    help="bytes per weight row (int8 K, or 2 K at bf16)")
    ap.add_argument("--chunks", type=_shape, nargs="+", default=[(64, 256), (64, 512), (32, 512), (128, 128)],
                    help="chunk shapes, rows x bytes per row (rows a multiple of 32)")
    ap.add_argument("--ring", type=int, nargs="+", default=[128 * 1024], help="ring bytes per program")
    ap.add_argument("--total", type=int, default=1 << 30, help="bytes of the matrix")
    ap.add_argument("--touch", action="store_true", help="also read every chunk into registers (as compute does)")
    ap.add_argument("--programs-per-sm", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="", help="append one JSON line per measured row to this file")
    ap.add_argument("--compile-only", action="store_true", help="compile each variant for sm_90 (no GPU needed)")
    a = ap.parse_args(argv)
    why = problem(a.row_bytes, a.chunks, a.total)
    if why:
        sys.exit(f"error: {why}")
    device = "cuda" if not a.compile_only else "cpu"
    if not a.compile_only and not torch.cuda.is_available():
        sys.exit("probe_stream needs a GPU (Hopper); --compile-only compiles for sm_90 without one")
    sms = torch.cuda.get_device_properties(0).multi_processor_count if not a.compile_only else 132
    copy = 0.0 if a.compile_only else _copy_tbps(device)
    gpu = torch.cuda.get_device_name(0) if not a.compile_only else "sm_90 (compile only)"
    print(f"{gpu}: copy {copy:.2f} TB/s, {sms} SMs x {a.programs_per_sm} programs")
    print(f"{'row B':>6} {'chunk':>8} {'ring':>7} {'nbuf':>4} {'touch':>5} {'us':>9} {'TB/s':>6} {'%copy':>6}")
    for row_bytes in a.row_bytes:
        n = _rows(a.total, row_bytes)
        w = torch.randint(-128, 127, (n, row_bytes), dtype=torch.int8, device=device)
        for (bn, kb) in a.chunks:
            for ring in a.ring:
                for touch in ([False, True] if a.touch else [False]):
                    s = Stream(w, bn, kb, ring, sms * a.programs_per_sm, touch)
                    if a.compile_only:
                        k = compile_sm90(s)
                        print(f"{row_bytes:6d} {bn:>3}x{kb:<4} {ring // 1024:>5}KB {s.nbuf:4d} {str(touch):>5}  "
                              f"compiled, {k.metadata.shared} B shared")
                        continue
                    us = statistics.median(_time(s.run, a.reps))
                    if touch:  # every chunk read once: the programs' checksums add up to the matrix's (mod 2^32)
                        s.sink.zero_()
                        s.run()
                        diff = int(s.sink.to(torch.int64).sum().item()) - int(w.to(torch.int64).sum().item())
                        if diff % (1 << 32):
                            sys.exit(f"chunk {bn}x{kb}: the streamed bytes do not add up to the matrix's")
                    tbps = w.numel() / (us * 1e-6) / 1e12
                    print(f"{row_bytes:6d} {bn:>3}x{kb:<4} {ring // 1024:>5}KB {s.nbuf:4d} {str(touch):>5} "
                          f"{us:9.1f} {tbps:6.2f} {100 * tbps / copy:6.1f}")
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(dict(gpu=gpu, copy_tbps=copy, row_bytes=row_bytes, bn=bn, kb=kb,
                                                    ring=ring, nbuf=s.nbuf, touch=touch, us=us, tbps=tbps,
                                                    programs=s.P)) + "\n")
        del w


if __name__ == "__main__":
    main()
