"""Entry point: python run.py model=llama3b quant=int4   (see README.md and conf/)."""
import os
import sys

if not os.environ.get("TRITON_INTERPRET"):
    # NVML-based check: does not initialise CUDA, so harness.launch can still pin a GPU per job.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"  # must precede any @triton.jit import
    except ImportError:
        pass

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import register_configs  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.launch import pin_gpu  # noqa: E402  (also registers ${visible_gpus:} for hydra/launcher=joblib_gpus)

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import run_point

    try:
        pin_gpu(cfg)  # first, before CUDA starts: one GPU per job under hydra/launcher=joblib_gpus
        run_point(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
