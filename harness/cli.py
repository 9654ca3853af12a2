"""Module commands that take the run configuration (`python -m harness.timeline ...`, `python -m harness.resources
...`): Hydra overrides composed like run.py's, `--help`, a bad value ending in one sentence, and the harness's
logging on stderr (quiet=true: warnings and errors only)."""
from __future__ import annotations

import logging
import sys
from typing import Optional

from harness.errors import ConfigError

from harness.models import CONF_DIR


def compose(argv: Optional[list[str]], usage: str):
    """The run configuration with `argv`'s Hydra overrides (conf/config.yaml first). `-h` / `--help` prints `usage`
    and exits 0; a Hydra error (an unknown key, a bad type) exits 2 with its message."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.config import register_configs

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        print("\nOverrides are Hydra's, as for run.py: model=..., quant=..., bench.batch=..., megakernel.tiles.*=...; "
              "the groups and keys are listed in README.md and conf/.")
        raise SystemExit(0)
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=argv)
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        raise SystemExit(f"error: {str(e).splitlines()[0]}")
    # The harness's progress lines on stderr, as a plain message each (a no-op where logging is set up already);
    # quiet=true: warnings and errors only, as for run.py.
    logging.basicConfig(level=logging.WARNING if cfg.get("quiet", False) else logging.INFO, format="%(message)s")
    return cfg
