"""harness.timing: CPU paths always; CUDA graph / event paths with `-m gpu` on the GPU machine."""
import time

import pytest
import torch

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


def test_cpu_sleep_step_percentiles_are_ordered():
    sleep_s = 0.002
    calls = []

    def step():
        calls.append(1)
        time.sleep(sleep_s)

    r = time_step(step, "cpu", warmup=2, repeats=10, cuda_graph=True)  # cuda_graph ignored on the CPU
    assert len(calls) == 12
    assert r.method == "cpu-wallclock" and r.repeats == 10 and len(r.samples_us) == 10
    assert r.p10_us <= r.median_us <= r.p90_us
    assert r.median_us >= sleep_s * 1e6 * 0.99
    assert r.median_us < sleep_s * 1e6 * 20  # generous: a loaded CI machine
    assert r.std_us >= 0.0


def test_time_step_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        time_step(lambda: None, "cpu", warmup=0, repeats=0, cuda_graph=False)


def test_copy_bandwidth_cpu_positive():
    tbps = measure_copy_bandwidth("cpu", nbytes=8 << 20, repeats=3)
    assert 0.0 < tbps < 10.0  # TB/s; no CPU copies 10 TB/s


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
