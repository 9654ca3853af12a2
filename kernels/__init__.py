"""The ground floor: Triton kernels, one launch per operation (the `layerwise` impl), their reusable tile
helpers, the data they read, and the whole-model megakernel (kernels/mega/). Nothing here imports `harness`.

  quant.py      the quant-mode table, QLinear layouts and their PyTorch (de)quantisers
  model.py      ModelSpec, ModelWeights, KVCache, RoPE tables: what every kernel computes on
  tiles.py      the one tile rule of every GEMV (per-op launchers and the megakernel lowering)
  reference.py  the pure-PyTorch oracle of every op
  fragments.py  int4 / int8 weights in the register order of the tensor cores' MMA operands (+ an emulator)
  qgemv.py      the quantized GEMV on tensor cores that reads them (Gluon, GPU only; batch <= 16; gemv.py's
                launcher routes to it a weight whose fragments were made)
  gemv.py, attention.py, rope.py, lm_head.py, norm.py, elementwise.py, embedding.py: one op family each:
                `@triton.jit` helpers with the per-tile math (reused by the megakernel), a private
                `_op_kernel`, and a public launcher that picks block sizes and the grid.

On a machine without a GPU, set TRITON_INTERPRET=1 before importing any module that imports Triton (tests/conftest.py
and harness.use_interpreter_without_gpu do); tensors then live on the CPU. This package file, quant.py, model.py,
tiles.py, errors.py and mega/{instructions, lower, schedule} import no Triton, so configuration code may use them first.
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import Optional

import torch

MAX_BATCH = 16  # sequences per decode step the kernels take (the tensor-core tiles pad the batch to 16 rows)

# Stand-in SM count when no GPU is present (Triton interpreter): small, so launchers still pick
# several attention splits and the split/reduce path is exercised on the CPU.
_CPU_SM_COUNT = 4


def interpreting() -> bool:
    """True when kernels run in the Triton interpreter (CPU tensors, no bf16 arithmetic, no bf16 dot)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device | str) -> int:
    """Streaming multiprocessors of `device` (a stand-in on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _CPU_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # activation dtypes the kernels take


def tl_dtype(dtype: torch.dtype):
    """The Triton dtype of a torch floating dtype. (Triton is imported here, not at the top: importing it before
    TRITON_INTERPRET is decided breaks the interpreter, and modules without kernels must not decide that early.)"""
    import triton.language as tl

    table = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
    if dtype not in table:
        raise ValueError(f"dtype {dtype} is not supported by the kernels; use one of {list(table)}")
    return table[dtype]


def dot_operand_dtype(act_dtype: torch.dtype):
    """Operand dtype of tl.dot for activations of `act_dtype` (fp32 accumulation always).

    On the GPU: the activation dtype itself (bf16/fp16 tensor cores; fp32 activations use fp32
    operands with exact 'ieee' products). In the interpreter: fp32, because bf16 dot is wrong there.
    """
    return tl_dtype(torch.float32 if interpreting() else act_dtype)


def check_act(x: torch.Tensor, name: str) -> None:
    """Raises a clear error for activations the kernels cannot take."""
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; the kernels take bf16, fp16 or fp32 activations")
    if interpreting() and x.is_cuda:
        raise ValueError(f"{name} is on {x.device} but TRITON_INTERPRET=1 runs kernels on the CPU; move it to the CPU")


def check_out(out: torch.Tensor, shape: tuple, name: str) -> None:
    """Raises a clear error unless an out= buffer has `shape` and unit stride along its last dimension. The kernels
    write each row as one contiguous run and honour the other strides, so a slice of a wider buffer is fine; a
    column-major or otherwise transposed out= is not (it is written in place, so it cannot be copied first)."""
    shape = tuple(shape)
    if tuple(out.shape) != shape or (len(shape) and shape[-1] > 1 and out.stride(-1) != 1):
        raise ValueError(f"{name}: out= must be {list(shape)} with unit stride along its last dimension (rows may be "
                         f"strided); got shape {list(out.shape)}, strides {list(out.stride())}")


def gpu_slug(name: Optional[str]) -> str:
    """Folder / key name of a GPU: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"; any CPU -> "cpu"."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return "unknown"
    s = str(name).strip().lower()
    if s == "cpu" or s.startswith("cpu:"):
        return "cpu"
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown"
