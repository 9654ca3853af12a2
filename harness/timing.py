"""Timing of one decode step and of the device-to-device copy ceiling.

`time_step` replays ONE captured call of a step from a CUDA graph and times each replay with its
own pair of CUDA events (all recorded first, one synchronize, then read), so the numbers are GPU
time per step without host launch overhead. Without a graph it times direct calls with events;
on the CPU it uses `time.perf_counter` per call (CPU latencies mean nothing for the paper's
question; they exist so that everything runs and is tested without a GPU).

`measure_copy_bandwidth` is the same-process ceiling that `pct_of_copy_bw` divides by: bytes read
+ bytes written of a large device-to-device copy, median over repeats.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

CPU_COPY_NBYTES = 64 << 20  # 64 MiB: a CPU copy big enough to leave the caches, small enough for tests
COPY_WARMUP = 3             # untimed copies before the timed ones (first-touch, clocks ramping up)


class GraphCaptureError(RuntimeError):
    """The step could not be captured into a CUDA graph; `__cause__` holds the original error.

    The caller can fall back to `time_step(..., cuda_graph=False)` and record that it did.
    """


@dataclass(frozen=True)
class TimingResult:
    """Latency statistics of one step over `repeats` timed calls, in microseconds."""

    median_us: float
    p10_us: float
    p90_us: float
    mean_us: float
    std_us: float
    repeats: int
    method: str  # "cuda-graph" | "cuda-events" | "cpu-wallclock"
    samples_us: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples_us: Sequence[float], method: str) -> "TimingResult":
        if not samples_us:
            raise ValueError("no timing samples: repeats must be at least 1")
        xs = sorted(float(x) for x in samples_us)
        return cls(
            median_us=percentile(xs, 50.0),
            p10_us=percentile(xs, 10.0),
            p90_us=percentile(xs, 90.0),
            mean_us=statistics.fmean(xs),
            std_us=statistics.stdev(xs) if len(xs) > 1 else 0.0,
            repeats=len(xs),
            method=method,
            samples_us=tuple(float(x) for x in samples_us),
        )


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} must lie in [0, 100]")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _as_device(device: Any) -> torch.device:
    """torch.device from a device, a string ("cuda", "cuda:1", "cpu", "auto") or an int (CUDA index)."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, int):
        dev = torch.device("cuda", device)
    elif device is None or device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for CUDA but torch sees no CUDA GPU; use device=cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _elapsed_us(pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> list[float]:
    return [start.elapsed_time(end) * 1e3 for start, end in pairs]  # elapsed_time is in ms


# ----------------------------------------------------------------------------------------------
# Copy bandwidth
# ----------------------------------------------------------------------------------------------

def measure_copy_bandwidth(device: Any, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in TB/s (1e12 B/s), counting bytes read + written.

    Returns 2 * nbytes / median(copy time). On CUDA each copy is timed with a pair of CUDA events
    after a warm-up; on the CPU the buffer is capped at 64 MiB and timed with perf_counter.
    The source holds random non-zero bytes (no all-zero pages or compressible data).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    dev = _as_device(device)
    if dev.type == "cpu":
        nbytes = min(nbytes, CPU_COPY_NBYTES)
    if nbytes < 1:
        raise ValueError(f"nbytes={nbytes} must be positive")
    gen = torch.Generator(device=dev).manual_seed(0)
    src = torch.randint(1, 256, (nbytes,), dtype=torch.uint8, device=dev, generator=gen)  # src: [nbytes]
    dst = torch.empty_like(src)
    try:
        if dev.type == "cuda":
            times_s = _copy_times_cuda(dev, src, dst, repeats)
        else:
            times_s = _copy_times_cpu(src, dst, repeats)
    finally:
        del src, dst
    return 2.0 * nbytes / percentile(times_s, 50.0) / 1e12


def _copy_times_cuda(dev: torch.device, src: torch.Tensor, dst: torch.Tensor, repeats: int) -> list[float]:
    with torch.cuda.device(dev):
        for _ in range(COPY_WARMUP):
            dst.copy_(src)
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        torch.cuda.synchronize(dev)
        for start, end in pairs:
            start.record()
            dst.copy_(src)
            end.record()
        torch.cuda.synchronize(dev)
        return [us * 1e-6 for us in _elapsed_us(pairs)]


def _copy_times_cpu(src: torch.Tensor, dst: torch.Tensor, repeats: int) -> list[float]:
    for _ in range(COPY_WARMUP):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------------------------
# Step timing
# ----------------------------------------------------------------------------------------------

def time_step(step: Callable[[], Any], device: Any, warmup: int, repeats: int, cuda_graph: bool,
              window: Any = None) -> TimingResult:
    """Times `step()` `repeats` times after `warmup` untimed calls; statistics in microseconds.

    CUDA + cuda_graph: warm-up on a side stream, capture ONE call into a CUDA graph on that stream,
    replay it (warm-up replays untimed), then one event pair per timed replay -> "cuda-graph".
    Raises GraphCaptureError if the step cannot be captured (e.g. it synchronises or copies to the
    host); the caller may then retry with cuda_graph=False and record the fallback.
    CUDA without graph: one event pair per direct call -> "cuda-events".
    CPU: perf_counter per call -> "cpu-wallclock" (cuda_graph is ignored there).
    `window`, if given, is started right before the timed calls and stopped right after them (a
    TelemetrySampler: its summary then covers exactly the measured window, not warm-up or capture).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    dev = _as_device(device)
    window = window if window is not None else _NoWindow()
    if dev.type == "cpu":
        return _time_cpu(step, warmup, repeats, window)
    with torch.cuda.device(dev):
        if cuda_graph:
            return _time_cuda_graph(step, dev, warmup, repeats, window)
        return _time_cuda_events(step, dev, warmup, repeats, window)


class _NoWindow:
    def start(self):
        return self

    def stop(self):
        pass


def _time_cpu(step: Callable[[], Any], warmup: int, repeats: int, window: Any) -> TimingResult:
    for _ in range(warmup):
        step()
    samples = []
    window.start()
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e6)
    window.stop()
    return TimingResult.from_samples(samples, "cpu-wallclock")


def _time_cuda_events(step: Callable[[], Any], dev: torch.device, warmup: int, repeats: int,
                      window: Any) -> TimingResult:
    for _ in range(warmup):
        step()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize(dev)
    window.start()
    for start, end in pairs:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(dev)
    window.stop()
    return TimingResult.from_samples(_elapsed_us(pairs), "cuda-events")


def capture_graph(step: Callable[[], Any], dev: torch.device, warmup: int) -> torch.cuda.CUDAGraph:
    """Warms `step` up on a side stream, then captures one call of it into a CUDA graph.

    At least one warm-up call is made even if warmup == 0 (lazy initialisation such as cuBLAS
    handles or Triton compilation must not happen during capture). Raises GraphCaptureError.
    """
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            step()
    side.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        # thread_local: only this thread's unsafe calls invalidate the capture (other threads,
        # e.g. a telemetry sampler, make no CUDA calls anyway).
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            step()
    except Exception as exc:  # any failure during capture means "not capturable"
        del graph
        try:
            torch.cuda.synchronize(dev)
        except Exception:
            pass
        raise GraphCaptureError(
            f"the step could not be captured into a CUDA graph ({type(exc).__name__}: {exc}); "
            "time it with cuda_graph=False (bench.cuda_graphs=false) or make the step capturable "
            "(no host synchronisation, no CPU-GPU copies, static shapes and buffers)"
        ) from exc
    torch.cuda.current_stream(dev).wait_stream(side)
    return graph


def _time_cuda_graph(step: Callable[[], Any], dev: torch.device, warmup: int, repeats: int,
                     window: Any) -> TimingResult:
    graph = capture_graph(step, dev, warmup)
    try:
        for _ in range(max(warmup, 1)):
            graph.replay()
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        torch.cuda.synchronize(dev)
        window.start()
        for start, end in pairs:
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize(dev)
        window.stop()
        return TimingResult.from_samples(_elapsed_us(pairs), "cuda-graph")
    finally:
        del graph
