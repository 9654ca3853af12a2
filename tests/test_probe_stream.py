"""scripts/probe_stream.py on the CPU: its argument check (the kernel itself needs a Hopper GPU)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_probe_stream_refuses_chunks_that_do_not_tile_before_any_gpu_work():
    """scripts/probe_stream.py checks its chunk shapes against the matrix (problem) before it touches a GPU."""
    from scripts.probe_stream import problem  # noqa: E402

    assert problem([4096, 8192], [(64, 256), (32, 512)], 1 << 30) is None
    assert "multiple of 32" in problem([4096], [(48, 256)], 1 << 30)
    assert "must divide 4096" in problem([4096], [(64, 384)], 1 << 30)
    assert "fewer than 128 rows" in problem([4096], [(64, 256)], 4096)
