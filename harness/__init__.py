"""Everything that is not a GPU kernel: configuration, reference model, weights, impls, timing, telemetry,
results, figures and the regression gate. It imports `kernels`, never the reverse."""
import os


def use_interpreter_without_gpu() -> None:
    """Selects the Triton interpreter when there is no CUDA device. Entry points call it first: Triton must not be
    imported before TRITON_INTERPRET is decided (importing it earlier breaks the interpreter)."""
    if os.environ.get("TRITON_INTERPRET"):
        return
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # does not initialise CUDA (GPU pinning comes later)
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
