"""The whole-model megakernel: one instruction set, cut into launches at any fusion granularity.

  instructions.py  opcodes, instruction dataclasses, their int32 word form, the counter space
  lower.py         (model, quant, batch, context, tiles) -> instruction DAG with tile-level counters
  schedule.py      DAG -> per-program queues (round-robin | cost-balanced), cut at fusion boundaries
  interpreter.py   the persistent @triton.jit kernel that walks the queues (megakernel.backend=triton)
  hopper.py        the same stream as a Gluon kernel for Hopper, weights on a TMA ring (megakernel.backend=gluon)
  tiles.py         its device helpers (bounded acquire waits, release, error record, group reduce)
  state.py         the device buffers of one step (shared with the VM)
  runtime.py       host side: build, size the grid from co-residency, launch, report errors
  pyvm.py          Python VM executing the same stream in fp32 with counter checks (the oracle)
  diff.py          VM vs interpreter: the first instruction whose outputs differ (`python -m kernels.mega.diff`)

megakernel.backend=auto, the default, picks one of the two backends per point (resolve_backend below).
Importing this package imports no Triton kernel (TRITON_INTERPRET must be set before those are).
"""

from __future__ import annotations

from typing import Optional

# The megakernel's backends: "triton", the persistent Triton kernel (any GPU, and the CPU interpreter:
# interpreter.py), and "gluon", the Hopper kernel whose weights stream by TMA into a shared-memory ring ahead of every
# dependency (hopper.py).
BACKENDS = ("triton", "gluon")
# megakernel.backend also takes AUTO, the default: per point, the Gluon backend wherever it runs, else the Triton
# backend (resolve_backend). Gluon was faster than Triton at every point measured on an H200 (llama1b / llama8b, bf16
# and int8, batch 1 and 16: 1.14-1.51x, docs/perf-notes.md); int4, fp32, batch > 16, other GPUs and the CPU
# interpreter run only the Triton backend.
AUTO = "auto"
BACKEND_CHOICES = (AUTO, *BACKENDS)

GLUON_TILES = ("megakernel.backend=gluon chooses its own tiles; drop the megakernel.tiles options or use "
               "megakernel.backend=triton")


def gluon_problem(spec, quant: str, batch: int, device, tiles_given: bool = False) -> Optional[str]:
    """Why the Gluon backend cannot run this point on `device` (one sentence), or None: hopper.problem (weight
    format, shapes, batch, a Hopper GPU), or explicit megakernel.tiles options (those are the Triton backend's)."""
    from kernels.mega import hopper  # imports Gluon kernels: only when asked (TRITON_INTERPRET is decided by then)

    return hopper.problem(spec, quant, batch, device) or (GLUON_TILES if tiles_given else None)


def resolve_backend(name: str, spec, quant: str, batch: int, device, tiles_given: bool = False) -> str:
    """The backend that runs: `name` itself for "triton" or "gluon"; for "auto", "gluon" where gluon_problem is
    None for this point on `device` (a torch.device or its name, never None: the device decides) and "triton"
    otherwise. The one rule the runtime and the harness apply. Raises ValueError for another name."""
    if name not in BACKEND_CHOICES:
        raise ValueError(f"megakernel.backend={name!r} is not a backend; choose one of {', '.join(BACKEND_CHOICES)}")
    if name != AUTO:
        return name
    if device is None:
        raise ValueError("megakernel.backend=auto is resolved on a device; none was given")
    import torch

    return "gluon" if gluon_problem(spec, quant, batch, torch.device(device), tiles_given) is None else "triton"
