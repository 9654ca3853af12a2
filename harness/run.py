"""The Hydra entry point: `python run.py model=llama3b quant=int4` in the repository, or `python -m harness.run ...`
(the `flashformer` command) where the package is installed. See README.md and conf/.

One run: a ConfigError is one `error:` sentence and exit status 2; any other exception ends it as Hydra reports
it. A multirun (-m): no point ends the sweep; each records ok / failed / config-error / skipped in the sweep
summary (harness.launch.record_job), printed at the end, with exit status 1 if any point failed."""
import sys
import traceback

from harness import use_interpreter_without_gpu

use_interpreter_without_gpu()  # must precede any @triton.jit import

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import register_configs  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.launch import pin_gpu, record_job, sweep_summary_path  # noqa: E402  (also registers ${visible_gpus:})
from harness.models import CONF_DIR  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    if sweep_summary_path() is not None:
        run_sweep_job(cfg)
        return
    try:
        _run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _run(cfg: DictConfig) -> list[dict]:
    from harness.runner import run_point

    pin_gpu(cfg)  # first, before CUDA starts: one GPU per job under hydra/launcher=joblib_gpus
    return run_point(cfg)


def outcome(rows: list[dict]) -> tuple[str, str]:
    """(status, reason) of a point from its rows: failed if an impl failed, skipped if nothing was measured."""
    if not rows:
        return "skipped", getattr(rows, "why", "nothing left to measure")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        return "failed", f"{tally}; " + "; ".join(f"{r['impl']}: {r['note']}" for r in failed)
    return "ok", tally


def run_sweep_job(cfg: DictConfig) -> tuple[str, str]:
    """One point of a multirun: whatever goes wrong is recorded and the sweep goes on (KeyboardInterrupt still
    stops it). Returns and records (status, reason)."""
    try:
        status, reason = outcome(_run(cfg))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        status, reason = "config-error", str(e)
    except Exception as e:  # noqa: BLE001 - the sweep goes on to its next point; the summary names this one
        traceback.print_exc()
        status, reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    record_job(status, reason)
    return status, reason


if __name__ == "__main__":
    main()
