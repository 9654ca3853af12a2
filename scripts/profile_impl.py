"""Where a decode step's time goes: runs one impl at one point under torch.profiler and prints the
kernels by total GPU time (and writes a Chrome trace when OUT is set).
  python scripts/profile_impl.py torch-compile model=llama1b quant=bf16 [bench.ctx=...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from harness.cli import compose  # noqa: E402
from harness.config import validate  # noqa: E402
from harness.impls import REGISTRY, ImplContext  # noqa: E402
from harness.runner import pick_device, prepare_point  # noqa: E402
from harness.timing import capture_graph  # noqa: E402


def main(impl_name: str, overrides: list[str], steps: int = 20) -> None:
    cfg = compose(overrides, __doc__)
    spec = validate(cfg, list(REGISTRY))
    device = pick_device(cfg.bench.device)
    pt = prepare_point(cfg, spec, device)
    impl = REGISTRY[impl_name](ImplContext(cfg, spec, pt.weights, pt.cache, device))
    step = lambda: impl.decode(pt.tokens, pt.positions)  # noqa: E731
    graph = capture_graph(step, device, 3) if REGISTRY[impl_name].graph_safe else None
    run = graph.replay if graph is not None else step
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    print(f"{impl_name} {' '.join(overrides)}: {steps} steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    if os.environ.get("OUT"):
        prof.export_chrome_trace(os.path.join(os.environ["OUT"], f"trace-{impl_name}.json"))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    main(sys.argv[1], sys.argv[2:])
