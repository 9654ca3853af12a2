"""Probe for the Gluon megakernel's one bet: weights streamed by TMA into a shared-memory ring that runs ahead of
every dependency. A chain of L dependent GEMVs y_{l+1} = W_l y_l (D x D, bf16 weights, fp32 activations) runs in ONE
persistent Gluon kernel, one program per SM. A program owns row blocks of BN rows; each layer's row block walks K in
chunks of BK columns that a TMA ring of NBUF buffers delivers; the ring's cursor walks the program's whole chunk
sequence (all layers), so weight loads never wait on a dependency, only the activations do: a row block of layer l
waits (bounded spin) until every row block of layer l - 1 has been released on a grid-wide counter.

Variants (same run, same weights, % of the copy bandwidth measured in the process):
  wait     the real dependency chain (checked against PyTorch)
  nowait   the same kernel with the waits skipped: wrong numbers, the time of the streaming alone
  stream   wait, with the loader reading each chunk's coordinates from a host-built table (the weight stream of
           docs/megakernel-v2.md) instead of computing them
  cublas   F.linear per layer inside one CUDA graph (the reference a megakernel must beat)
With --timeline, the wait variant records per program and layer the global timer before its wait, after it, and
after its last row block: where a boundary's time goes (waiting, or refilling the ring after the wait).

    python scripts/probe_chain.py --dim 4096 --layers 32 --bn 32 64 --bk 256 --nbuf 4 8 --timeline

GPU only (Hopper: TMA and mbarrier); it also compiles for sm_90 on any machine with --compile-only.
"""
from __future__ import annotations

import argparse
import itertools
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

from kernels.mega.tiles import ERR_TIMEOUT, now, wait_until  # noqa: E402  (the megakernel's timer, bounded wait)


@gluon.jit
def _issue(desc, ring, bars, j, n_chunks, p, P, n_p, R, D, stream_ptr, max_chunks, BN: gl.constexpr,
           BK: gl.constexpr, NBUF: gl.constexpr, STREAM: gl.constexpr):
    """Starts the TMA load of this program's chunk j (if it exists) into ring slot j % NBUF. Chunk j is K chunk
    j % KC of the program's tile j // KC, tile i being layer i // n_p, row block p + (i % n_p) P: computed here, or
    (STREAM) read from the host's table stream[p, j] = (row, column), as a loader that follows a weight stream
    built beside the instruction queues would."""
    ok = j < n_chunks
    if STREAM:
        entry = stream_ptr + (p * max_chunks + j) * 2
        row = gl.load(entry, mask=ok, other=0)
        col = gl.load(entry + 1, mask=ok, other=0)
    else:
        KC = D // BK
        i = j // KC
        row = (i // n_p) * D + (p + (i % n_p) * P) * BN
        col = (j % KC) * BK
    slot = j % NBUF
    mbarrier.expect(bars.index(slot), desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(desc, [row, col], bars.index(slot), ring.index(slot), pred=ok)


@gluon.jit
def _chain_kernel(desc, y_ptr, cnt_ptr, err_ptr, tl_ptr, stream_ptr, max_chunks, D, L, epoch, spin_limit,
                  BN: gl.constexpr, BK: gl.constexpr, NBUF: gl.constexpr, WAIT: gl.constexpr, TIMELINE: gl.constexpr,
                  STREAM: gl.constexpr):
    # desc: W [L D, D] bf16 in [BN, BK] blocks; y: [L + 1, D] fp32 (y[0] = x); cnt: [L] int32 (row blocks of layer l
    # released, over all runs: run `epoch` (1, 2, ...) waits for epoch R, so nothing is reset between runs);
    # err: [1] int32; tl: [P, L, 3] int64 (TIMELINE); stream: [P, max_chunks, 2] int32 (STREAM).
    WARPS: gl.constexpr = gl.num_warps()
    LW: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [WARPS, 1], [1, 0])  # 16 B of a row per thread
    LK: gl.constexpr = gl.SliceLayout(0, LW)
    LN: gl.constexpr = gl.SliceLayout(1, LW)
    p = gl.program_id(0)
    P = gl.num_programs(0)
    R = D // BN
    KC = D // BK
    n_p = (R - p + P - 1) // P  # row blocks of each layer this program owns
    n_chunks = L * n_p * KC
    ring = gl.allocate_shared_memory(desc.dtype, [NBUF, BN, BK], desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NBUF):
        mbarrier.init(bars.index(s), count=1)
    for s in gl.static_range(NBUF):  # the ring starts full: the first NBUF chunks, whatever layer they belong to
        _issue(desc, ring, bars, s, n_chunks, p, P, n_p, R, D, stream_ptr, max_chunks, BN, BK, NBUF, STREAM)
    k_idx = gl.arange(0, BK, layout=LK)
    n_idx = gl.arange(0, BN, layout=LN)
    j = 0
    for l in range(0, L):
        if TIMELINE:
            t0 = now(err_ptr, 1)  # the GPU timer (CLOCK 1 reads no pointer)
        if WAIT:
            if l > 0:
                seen = wait_until(cnt_ptr + l - 1, epoch * R, err_ptr, spin_limit)
                if seen < epoch * R:  # later waits see the flag and return at once: the kernel ends, wrong
                    gl.atomic_xchg(err_ptr, ERR_TIMEOUT, sem="release", scope="gpu")
        if TIMELINE:
            t1 = now(err_ptr, 1)
        for t in range(0, n_p):
            r = p + t * P
            acc = gl.zeros([BN, BK], gl.float32, layout=LW)
            for kc in range(0, KC):
                x = gl.load(y_ptr + l * D + kc * BK + k_idx)
                slot = j % NBUF
                mbarrier.wait(bars.index(slot), (j // NBUF) & 1)
                w = ring.index(slot).load(LW)
                acc += w.to(gl.float32) * x[None, :]
                gl.thread_barrier()  # every warp has read the slot ...
                fence_async_shared()  # ... before the async proxy overwrites it
                _issue(desc, ring, bars, j + NBUF, n_chunks, p, P, n_p, R, D, stream_ptr, max_chunks, BN, BK, NBUF,
                       STREAM)
                j += 1
            out = gl.sum(acc, axis=1)
            gl.store(y_ptr + (l + 1) * D + r * BN + n_idx, out)
            gl.thread_barrier()
            gl.atomic_add(cnt_ptr + l, 1, sem="release", scope="gpu")
        if TIMELINE:
            base = tl_ptr + (p * L + l) * 3
            gl.store(base, t0)
            gl.store(base + 1, t1)
            gl.store(base + 2, now(err_ptr, 1))
    for s in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(s))


SMEM_PER_SM = 227 * 1024  # the most shared memory one program of an H100 / H200 may allocate


def ring_bytes(bn: int, bk: int, nbuf: int) -> int:
    """Shared memory of the ring (bf16 chunks) and its barriers."""
    return nbuf * (bn * bk * 2 + 8)


class Chain:
    """The weights, buffers and launch of one (D, L, BN, BK, NBUF) configuration."""

    def __init__(self, w: torch.Tensor, x: torch.Tensor, n_layers: int, bn: int, bk: int, nbuf: int, warps: int,
                 programs: int, spin_limit: int = 1 << 22):
        d = x.numel()
        if d % bn or d % bk:
            raise ValueError(f"--bn {bn} and --bk {bk} must divide --dim {d}")
        self.d, self.L, self.bn, self.bk, self.nbuf, self.warps = d, n_layers, bn, bk, nbuf, warps
        self.P = min(programs, d // bn)  # a program owns at least one row block; never more than co-resident
        layout = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.bfloat16)
        self.desc = TensorDescriptor.from_tensor(w, [bn, bk], layout)
        self.x = x
        self.y = torch.zeros(n_layers + 1, d, dtype=torch.float32, device=x.device)
        self.cnt = torch.zeros(n_layers, dtype=torch.int32, device=x.device)
        self.err = torch.zeros(1, dtype=torch.int32, device=x.device)
        self.timeline = torch.zeros(self.P, n_layers, 3, dtype=torch.int64, device=x.device)
        self.spin_limit = spin_limit
        self.epoch = 0
        self.stream = self.weight_stream().to(x.device)
        self.y[0].copy_(x)

    def weight_stream(self) -> torch.Tensor:
        """[P, max_chunks, 2] int32: each program's chunks (row, column of W) in the order it reads them."""
        rows_blocks, kc = self.d // self.bn, self.d // self.bk
        per_prog = [[(l * self.d + r * self.bn, c * self.bk) for l in range(self.L)
                     for r in range(p, rows_blocks, self.P) for c in range(kc)] for p in range(self.P)]
        out = torch.zeros(self.P, max(len(c) for c in per_prog), 2, dtype=torch.int32)
        for p, chunks in enumerate(per_prog):
            out[p, :len(chunks)] = torch.tensor(chunks, dtype=torch.int32)
        return out

    def args(self, wait: bool, timeline: bool, stream: bool = False):
        return ((self.desc, self.y, self.cnt, self.err, self.timeline, self.stream, self.stream.shape[1], self.d,
                 self.L, self.epoch, self.spin_limit),
                dict(BN=self.bn, BK=self.bk, NBUF=self.nbuf, WAIT=wait, TIMELINE=timeline, STREAM=stream,
                     num_warps=self.warps))

    def run(self, wait: bool = True, timeline: bool = False, stream: bool = False) -> None:
        """One launch and nothing else (no reset kernels in the timed region)."""
        self.epoch += 1
        args, kw = self.args(wait, timeline, stream)
        _chain_kernel[(self.P,)](*args, **kw)


def compile_sm90(chain: Chain, wait: bool = True, timeline: bool = False, stream: bool = False):
    """The kernel compiled for sm_90 on any machine (the JIT's own argument specialisation)."""
    from kernels.mega.resources import compile_jit

    args, kw = chain.args(wait, timeline, stream)
    return compile_jit(_chain_kernel, args, kw)


def _time(fn, reps: int) -> list[float]:
    """Microseconds per call of fn, each call timed alone by CUDA events after two warm-up calls."""
    fn()
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3)
    return out


def _copy_tbps(device) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = statistics.median(_time(lambda: dst.copy_(src), 20))
    return 2 * src.numel() / (us * 1e-6) / 1e12


def _timeline_summary(tl: torch.Tensor) -> dict:
    """Per layer boundary (l >= 1), over programs: mean us spent waiting, and the spread of the times programs
    became ready; per layer, the mean us from ready to the last row block released."""
    t = tl.double()
    wait = (t[:, 1:, 1] - t[:, 1:, 0]) / 1e3
    work = (t[:, :, 2] - t[:, :, 1]) / 1e3
    ready_spread = (t[:, 1:, 1].max(dim=0).values - t[:, 1:, 1].min(dim=0).values) / 1e3
    span = (t[:, :, 2].max() - t[:, :, 0].min()).item() / 1e3
    return {"wait_us_mean": wait.mean().item(), "work_us_mean": work.mean().item(),
            "ready_spread_us_mean": ready_spread.mean().item(), "span_us": span}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--bn", type=int, nargs="+", default=[32], help="rows per row block")
    ap.add_argument("--bk", type=int, nargs="+", default=[256], help="columns per TMA chunk")
    ap.add_argument("--nbuf", type=int, nargs="+", default=[8], help="ring depth in chunks")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--programs-per-sm", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--timeline", action="store_true", help="also run the wait variant with timestamps")
    ap.add_argument("--out", default="", help="append one JSON line per measured row to this file")
    ap.add_argument("--compile-only", action="store_true", help="compile each variant for sm_90 (no GPU needed)")
    a = ap.parse_args(argv)

    dev = torch.device("cpu" if a.compile_only else "cuda")
    d, n_layers = a.dim, a.layers
    gen = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(n_layers * d, d, generator=gen, device=dev) * d ** -0.5).to(torch.bfloat16)
    x = torch.randn(d, generator=gen, device=dev)
    sms = 132 if a.compile_only else torch.cuda.get_device_properties(dev).multi_processor_count
    configs = []
    for bn, bk, nbuf in itertools.product(a.bn, a.bk, a.nbuf):
        if ring_bytes(bn, bk, nbuf) > SMEM_PER_SM:
            print(f"BN {bn} BK {bk} NBUF {nbuf}: a ring of {ring_bytes(bn, bk, nbuf)} B does not fit in the "
                  f"{SMEM_PER_SM} B of shared memory of an SM; skipped")
        else:
            configs.append((bn, bk, nbuf))
    if a.compile_only:
        for bn, bk, nbuf in configs:
            chain = Chain(w, x, n_layers, bn, bk, nbuf, a.warps, sms * a.programs_per_sm)
            for wait, timeline, stream in ((True, False, False), (False, False, False), (True, True, False),
                                           (True, False, True)):
                c = compile_sm90(chain, wait, timeline, stream)
                print(f"BN {bn} BK {bk} NBUF {nbuf} wait={wait} timeline={timeline} stream={stream}: compiled, "
                      f"shared {c.metadata.shared} B")
        return

    gpu = torch.cuda.get_device_name(dev)
    copy = _copy_tbps(dev)
    nbytes = w.numel() * 2 + (n_layers + 1) * d * 4
    rows = []

    def row(variant, us_list, **extra):
        us = statistics.median(us_list)
        r = dict(gpu=gpu, dim=d, layers=n_layers, variant=variant, us=us, p10=sorted(us_list)[len(us_list) // 10],
                 pct_copy=100 * nbytes / (us * 1e-6) / (copy * 1e12), copy_tbps=copy, **extra)
        rows.append(r)
        print(f"{variant:8} {extra.get('bn', '-'):>4} {extra.get('bk', '-'):>4} {extra.get('nbuf', '-'):>4} "
              f"{us:10.1f} us {r['pct_copy']:6.1f}% of copy  " +
              " ".join(f"{k}={v:.3g}" for k, v in extra.items() if isinstance(v, float)), flush=True)

    # cuBLAS per layer, one CUDA graph (bf16 activations, as a GEMV library would run the chain)
    wl = [w[i * d:(i + 1) * d] for i in range(n_layers)]
    xb = x.to(torch.bfloat16)[None, :]

    def cublas_chain():
        h = xb
        for m in wl:
            h = torch.nn.functional.linear(h, m)
        return h

    cublas_chain()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cublas_chain()
    row("cublas", _time(g.replay, a.reps))

    ref = x.double()
    for m in wl:
        ref = m.double() @ ref
    for bn, bk, nbuf in configs:
        chain = Chain(w, x, n_layers, bn, bk, nbuf, a.warps, sms * a.programs_per_sm)
        try:
            chain.run(True)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a configuration that does not compile or fit is a row, not the end
            print(f"BN {bn} BK {bk} NBUF {nbuf}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if chain.err.item():
            print(f"BN {bn} BK {bk} NBUF {nbuf}: a wait timed out")
            continue
        err = ((chain.y[-1].double() - ref).norm() / ref.norm()).item()
        row("wait", _time(lambda: chain.run(True), a.reps), bn=bn, bk=bk, nbuf=nbuf, rel_err=err)
        row("nowait", _time(lambda: chain.run(False), a.reps), bn=bn, bk=bk, nbuf=nbuf)
        chain.run(True, stream=True)
        torch.cuda.synchronize()
        err_s = ((chain.y[-1].double() - ref).norm() / ref.norm()).item()
        row("stream", _time(lambda: chain.run(True, stream=True), a.reps), bn=bn, bk=bk, nbuf=nbuf, rel_err=err_s)
        if a.timeline:
            chain.run(True, True)
            torch.cuda.synchronize()
            row("timeline", _time(lambda: chain.run(True, True), 5), bn=bn, bk=bk, nbuf=nbuf,
                **_timeline_summary(chain.timeline))
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    sys.exit(main())
