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

Importing this package imports no Triton kernel (TRITON_INTERPRET must be set before those are).
"""

# megakernel.backend: "triton", the persistent Triton kernel (any GPU, and the CPU interpreter: interpreter.py), or
# "gluon", the Hopper kernel whose weights stream by TMA into a shared-memory ring ahead of every dependency
# (hopper.py).
BACKENDS = ("triton", "gluon")
