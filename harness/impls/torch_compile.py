"""torch-compile: the gpt-fast recipe. The decode step (same decoder, same quantized linears: int8
weight-only as gpt-fast, int4 through tinygemm) compiled with torch.compile(fullgraph=True) and
Inductor's coordinate-descent tuning, then replayed from a CUDA graph by the timer.

Inductor autotunes each generated kernel by timing a few configurations, and two builds of the same
step pick differently: on an H200 at llama8b int8 four builds took 3.84 to 5.10 ms of kernel time per step, the
fused gate/up GEMV alone 36 to 79 µs (docs/perf-notes.md). A single build is one draw from that spread, so
the impl makes `impl.compile_builds` builds, each in a fresh Inductor and Triton cache, times each (from a CUDA
graph where bench.cuda_graphs allows and the step captures, else call by call) and keeps the fastest; the row
lists every build's time (`compile_builds_us`). For the gemlite impl only the compiled graph around GemLite's
kernels is drawn again: GemLite's own kernel configs come from its shipped file or its own autotune cache."""
from __future__ import annotations

import shutil
import tempfile
import types
from typing import Callable

import torch

from harness.impls.base import ImplContext, register
from harness.impls.torch_eager import TorchEager

BUILD_TIMING = (3, 20)  # (warm-up, timed) CUDA-graph replays per build when choosing the fastest


def fastest_build(n: int, build: Callable[[int], Callable],
                  time_us: Callable[[Callable], float]) -> tuple[Callable, list[float]]:
    """Makes `n` builds (`build(i)`), times each (`time_us`) and returns the fastest with every build's time.
    A build that is not the fastest so far is dropped at once, so at most two are alive."""
    best, best_us, times = None, float("inf"), []
    for i in range(n):
        fn = build(i)
        us = time_us(fn)
        times.append(us)
        if best is None or us < best_us:
            best, best_us = fn, us
        del fn
    return best, times


def _own_code(fn: Callable, i: int) -> Callable:
    """`fn` with a code object of its own: TorchDynamo caches compiled code per code object, so each build
    gets its own cache entry instead of a recompile guarded against the previous build's."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_build{i}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


@register("torch-compile")
class TorchCompile(TorchEager):
    graph_safe = True
    cuda_only = "torch.compile's reference recipe is CUDA-only here (Inductor on the CPU is not the reference)"

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
        inductor_config.triton.unique_kernel_names = True
        inductor_config.fx_graph_cache = True
        cache = ctx.cache.per_layer()  # separate per-layer buffers, as gpt-fast keeps them
        model = self.model

        def step(tokens, positions):
            return model.decode(tokens, positions, cache)

        self._eager_step = step
        self._step = None  # compiled on the first decode(), where the step's inputs are known
        self._builds_us: list[float] = []
        self._n_builds = ctx.cfg.impl.compile_builds if ctx.cfg is not None else 1  # no run config: one build
        self._graphs = ctx.cfg.bench.cuda_graphs if ctx.cfg is not None else True
        self._cache_root = None  # the builds' caches (more than one build), removed by close()

    def _compile(self, i: int):
        # CUDA graphs come from the timer's capture (as for every graph-safe impl), not from
        # mode="reduce-overhead", so that all impls are replayed the same way.
        return torch.compile(_own_code(self._eager_step, i), fullgraph=True, dynamic=False)

    def _build(self, tokens, positions):
        if self._n_builds == 1:  # one draw, nothing to choose between: a plain torch.compile (shared caches)
            step = self._compile(0)
            step(tokens, positions)
            return step
        from harness.timing import GraphCaptureError, time_step

        try:
            from torch._inductor.utils import fresh_cache
        except ImportError:  # torch < 2.8 names it fresh_inductor_cache
            from torch._inductor.utils import fresh_inductor_cache as fresh_cache

        self._cache_root = tempfile.mkdtemp(prefix="torch-compile-builds-")

        def build(i: int):
            fn = self._compile(i)
            with fresh_cache(dir=self._cache_root, delete=False):  # autotune afresh: a new draw
                fn(tokens, positions)
            return fn

        def time_us(fn) -> float:
            call = lambda: fn(tokens, positions)  # noqa: E731
            try:
                return time_step(call, self.ctx.device, *BUILD_TIMING, self._graphs).median_us
            except GraphCaptureError:  # the runner times this step without a graph too (its row says so)
                return time_step(call, self.ctx.device, *BUILD_TIMING, False).median_us

        step, self._builds_us = fastest_build(self._n_builds, build, time_us)
        return step

    def decode(self, tokens, positions):
        if self._step is None:
            self._step = self._build(tokens, positions)
        return self._step(tokens, positions)

    def info(self) -> dict:
        out = super().info()
        if self._builds_us:  # more than one build (a single build is not timed here)
            out["compile_builds_us"] = "/".join(f"{us:.0f}" for us in self._builds_us)
        return out

    def close(self) -> None:
        super().close()
        self._step = None
        if self._cache_root is not None:
            shutil.rmtree(self._cache_root, ignore_errors=True)
