"""The Hydra entry point: `python run.py model=llama3b quant=int4` in the repository, or `python -m harness.run ...`
(the `flashformer` command) where the package is installed. See README.md and conf/."""
import sys

from harness import use_interpreter_without_gpu

use_interpreter_without_gpu()  # must precede any @triton.jit import

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import register_configs  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.launch import pin_gpu  # noqa: E402  (also registers ${visible_gpus:} for hydra/launcher=joblib_gpus)
from harness.models import CONF_DIR  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
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
