"""What a megakernel configuration costs the SM, compiled for sm_90 on any machine (ptxas ships with Triton):
registers per thread, spills, shared memory and programs per SM (kernels/mega/resources.py).

    python -m harness.resources model=llama8b quant=int4 bench.batch=1 bench.ctx=1024 [megakernel.tiles.gemv_rows=8]

The grid is megakernel.programs_per_sm x 132 SMs (H100 and H200 both have 132); the tiles are the built-in choice
plus megakernel.tiles (the tuned-tile cache of a GPU is not applied: there is no GPU here).
"""
from __future__ import annotations

from typing import Optional

from harness.cli import compose

HOPPER_SMS = 132  # streaming multiprocessors of an H100 SXM and an H200
ARCH = 90


def main(argv: Optional[list[str]] = None) -> dict:
    cfg = compose(argv, __doc__)
    from harness.config import tile_options, validate
    from harness.errors import ConfigError
    from kernels.mega.resources import report

    try:
        spec = validate(cfg)
        use = report(spec, cfg.quant.name, cfg.quant.group_size, cfg.bench.batch, cfg.bench.ctx + 1,
                     cfg.megakernel.programs_per_sm * HOPPER_SMS, ARCH, options=tile_options(cfg))
    except ConfigError as e:
        raise SystemExit(f"error: {e}")
    print(" ".join(f"{k}={v}" for k, v in use.items()))
    return use


if __name__ == "__main__":  # compiles for sm_90 and runs nothing: no interpreter, on any machine
    main()
