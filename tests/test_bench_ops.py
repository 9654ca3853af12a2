"""harness/bench_ops.py: importable on the CPU; on the GPU, one small run returns tidy rows."""
import inspect

import pytest
import torch

from harness.bench_ops import bench_ops


def test_bench_ops_signature():
    assert list(inspect.signature(bench_ops).parameters)[:5] == ["model_dims", "quant", "batch", "ctx", "device"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_ops_rows():
    rows = bench_ops("llama1b", "int4", 1, 256, "cuda")
    assert {r["impl"] for r in rows} == {"triton", "torch"}
    for r in rows:
        assert {"op", "impl", "shape", "bytes", "latency_us", "gbps"} <= set(r) and r["latency_us"] > 0
