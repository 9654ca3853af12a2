"""harness.timing: CPU paths always; CUDA graph / event paths with `-m gpu` on the GPU machine."""
import time

import pytest
import torch

from harness import timing
from harness.timing import GraphCaptureError, TimingResult, measure_copy_bandwidth, percentile, time_step

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_percentile_matches_linear_interpolation():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 10) == pytest.approx(1.4)
    assert percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_timing_result_from_samples():
    r = TimingResult.from_samples([3.0, 1.0, 2.0], "cpu-wallclock")
    assert (r.median_us, r.mean_us, r.repeats, r.method) == (2.0, 2.0, 3, "cpu-wallclock")
    assert r.std_us == pytest.approx(1.0)


class FakeClock:
    """Stands in for harness.timing's `time` module: perf_counter() reads a clock that only `advance` moves, so
    what time_step and measure_copy_bandwidth compute from it is exact and the machine's load cannot change it."""

    def __init__(self, tick_s: float = 0.0):
        self.now = 1000.0
        self.tick_s = tick_s  # added on every read: a copy timed between two reads takes exactly tick_s

    def perf_counter(self) -> float:
        t = self.now
        self.now += self.tick_s
        return t

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Window:
    """A telemetry window that records when it was opened and closed, in calls of the step."""

    def __init__(self, calls: list):
        self.calls, self.events = calls, []

    def start(self):
        self.events.append(("start", len(self.calls)))
        return self

    def stop(self):
        self.events.append(("stop", len(self.calls)))


def test_cpu_step_times_come_from_the_clock_around_each_timed_call(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    durations_us = [50.0, 10.0, 40.0, 20.0, 30.0]  # the timed calls; the two warm-up calls take 1 s each
    calls = []

    def step():
        calls.append(1)
        clock.advance(1.0 if len(calls) <= 2 else durations_us[len(calls) - 3] * 1e-6)

    window = Window(calls)
    r = time_step(step, "cpu", warmup=2, repeats=5, cuda_graph=True, window=window)  # cuda_graph: ignored on a CPU
    assert len(calls) == 7
    assert window.events == [("start", 2), ("stop", 7)]  # the window covers the timed calls only
    assert r.method == "cpu-wallclock" and r.repeats == 5
    assert r.samples_us == pytest.approx(durations_us, abs=1e-3)  # in call order, warm-up excluded
    assert (r.p10_us, r.median_us, r.p90_us) == pytest.approx((14.0, 30.0, 46.0), abs=1e-3)
    assert r.mean_us == pytest.approx(30.0, abs=1e-3)


def test_time_step_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        time_step(lambda: None, "cpu", warmup=0, repeats=0, cuda_graph=False)


@pytest.mark.parametrize("nbytes,copied", [(1 << 20, 1 << 20), (1 << 30, timing.CPU_COPY_NBYTES)],
                         ids=["1MiB", "capped-at-64MiB"])
def test_copy_bandwidth_cpu_is_bytes_read_and_written_over_the_median_copy(monkeypatch, nbytes, copied):
    """Each timed copy lies between two clock reads 1 ms apart: read + written bytes / 1 ms, and a CPU buffer is
    capped at CPU_COPY_NBYTES whatever was asked."""
    monkeypatch.setattr(timing, "time", FakeClock(tick_s=1e-3))
    assert measure_copy_bandwidth("cpu", nbytes=nbytes, repeats=3) == pytest.approx(2 * copied / 1e-3 / 1e12)


# ---------------------------------------------------------------- GPU (pytest -m gpu)

def _matmul_chain(n=1024, layers=8):
    dev = torch.device("cuda")
    ws = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) / n**0.5 for _ in range(layers)]
    x = torch.randn(4, n, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(x)

    def step():
        h = x
        for w in ws:
            h = h @ w
        out.copy_(h)
        return out

    return step, out


@pytest.mark.gpu
@needs_cuda
def test_graph_replay_timing_matmul_chain():
    step, out = _matmul_chain()
    graph = time_step(step, "cuda", warmup=3, repeats=50, cuda_graph=True)
    events = time_step(step, "cuda", warmup=3, repeats=50, cuda_graph=False)
    assert graph.method == "cuda-graph" and events.method == "cuda-events"
    for r in (graph, events):
        assert r.repeats == 50
        assert 0.0 < r.p10_us <= r.median_us <= r.p90_us < 1e5
    ref = out.clone()
    step()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, ref)  # the replayed graph computed the same thing


@pytest.mark.gpu
@needs_cuda
def test_uncapturable_step_raises_graph_capture_error():
    x = torch.randn(16, device="cuda")

    def step():
        return float(x.sum().item())  # host sync: not capturable

    with pytest.raises(GraphCaptureError) as info:
        time_step(step, "cuda", warmup=1, repeats=5, cuda_graph=True)
    assert info.value.__cause__ is not None
    # the fallback the caller takes still works afterwards
    r = time_step(step, "cuda", warmup=1, repeats=5, cuda_graph=False)
    assert r.method == "cuda-events" and r.median_us > 0


@pytest.mark.gpu
@needs_cuda
def test_copy_bandwidth_gpu_above_half_tbps():
    assert measure_copy_bandwidth("cuda", nbytes=1 << 30, repeats=10) > 0.5


@pytest.mark.gpu
def test_smoke_real_cpu_clock():
    """Smoke check of the real clock (the CPU tests above use a fake one): a 2 ms sleep times as at least 2 ms and
    not absurdly long, and a CPU copy reports a plausible bandwidth. Under the gpu mark because its bounds are wall
    time, which a shared CI machine cannot promise; the bounds are generous, only a broken clock fails them."""
    r = time_step(lambda: time.sleep(0.002), "cpu", warmup=1, repeats=10, cuda_graph=False)
    assert 0.0 < r.p10_us <= r.median_us <= r.p90_us
    assert 2000.0 <= r.median_us < 2000.0 * 50
    assert 0.0 < measure_copy_bandwidth("cpu", nbytes=8 << 20, repeats=3) < 10.0  # TB/s; no CPU copies 10 TB/s
