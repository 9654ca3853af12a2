"""Entry point: python run.py model=llama3b quant=int4   (see README.md and conf/)."""
import os
import sys

if not os.environ.get("TRITON_INTERPRET"):
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

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import run_point

    try:
        run_point(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
