"""Triton kernels, one launch per operation (the `layerwise` impl), and their reusable tile helpers.

Each op family lives in its own file: `@triton.jit` helpers with the per-tile math (reused by the
megakernel), a private `_op_kernel`, and a public launcher that picks block sizes and the grid.
`kernels.reference` is the pure-PyTorch oracle of every op.

On a machine without a GPU, set TRITON_INTERPRET=1 before importing these modules (tests/conftest.py
does); tensors then live on the CPU.
"""
from __future__ import annotations

import functools
import os

import torch
import triton.language as tl

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


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def tl_dtype(dtype: torch.dtype):
    """The Triton dtype of a torch floating dtype."""
    if dtype not in _TL_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported by the kernels; use one of {list(_TL_DTYPES)}")
    return _TL_DTYPES[dtype]


def dot_operand_dtype(act_dtype: torch.dtype):
    """Operand dtype of tl.dot for activations of `act_dtype` (fp32 accumulation always).

    On the GPU: the activation dtype itself (bf16/fp16 tensor cores; fp32 activations use fp32
    operands with exact 'ieee' products). In the interpreter: fp32, because bf16 dot is wrong there.
    """
    return tl.float32 if interpreting() else tl_dtype(act_dtype)


def check_act(x: torch.Tensor, name: str) -> None:
    """Raises a clear error for activations the kernels cannot take."""
    if x.dtype not in _TL_DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; the kernels take bf16, fp16 or fp32 activations")
    if interpreting() and x.is_cuda:
        raise ValueError(f"{name} is on {x.device} but TRITON_INTERPRET=1 runs kernels on the CPU; move it to the CPU")
