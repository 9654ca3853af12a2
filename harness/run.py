"""The Hydra entry point: `python run.py model=llama3b quant=int4` in the repository, or `python -m harness.run ...`
(the `flashformer` command) where the package is installed. See README.md and conf/.

One run: a ConfigError is one `error:` sentence and exit status 2; any other exception ends it as Hydra reports
it. A multirun (-m): no point ends the sweep; each records ok / failed / config-error / skipped in the sweep
summary (harness.launch.record_job), printed at the end, with exit status 1 if any point failed.

Progress is logged (Python logging): Hydra's job logging (conf/config.yaml, hydra.job_logging) sends it to the
console and to the job's log file, <hydra.run.dir>/run.log (<hydra.sweep.dir>/<job>/run.log in a multirun).
`quiet=true` keeps the console to warnings, errors, the result table and the sweep summary; the log file still
holds everything. In a multirun each job is "point k/N" (N counted by `SweepProgress` when the sweep starts)."""
import logging
import os
import sys
import time
import traceback
from typing import Any, Optional

from harness import use_interpreter_without_gpu

use_interpreter_without_gpu()  # must precede any @triton.jit import

import hydra  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from harness.config import register_configs  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.launch import pin_gpu, record_job, sweep_summary_path  # noqa: E402  (also registers ${visible_gpus:})
from harness.models import CONF_DIR  # noqa: E402

register_configs()

log = logging.getLogger(__name__)
SWEEP_POINTS_ENV = "HARNESS_SWEEP_POINTS"  # the number of points of the running multirun (SweepProgress sets it)


def _console_only(record: logging.LogRecord) -> bool:
    """Filter of the console handlers: records marked file_only (the result table, already printed) are not shown."""
    return not getattr(record, "file_only", False)


def configure_console(quiet: bool, root: Optional[logging.Logger] = None) -> None:
    """Applies `quiet` to the console handlers Hydra's job logging set up on the root logger (not to the job's log
    file): quiet shows warnings and errors only. Every console handler also drops file_only records."""
    root = root or logging.getLogger()
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) or not isinstance(h, logging.StreamHandler):
            continue
        h.setLevel(logging.WARNING if quiet else logging.NOTSET)
        if _console_only not in h.filters:
            h.addFilter(_console_only)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    configure_console(bool(cfg.get("quiet", False)))
    if sweep_summary_path() is not None:
        run_sweep_job(cfg)
        return
    try:
        _run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        log.error(f"error: {e}", extra={"file_only": True})  # the job's log file says why too
        sys.exit(2)


def _run(cfg: DictConfig) -> list[dict]:
    from harness.runner import run_point

    pin_gpu(cfg)  # first, before CUDA starts: one GPU per job under hydra/launcher=joblib_gpus
    return run_point(cfg, label=point_label())


def _sweep_job() -> tuple[Optional[int], list[str]]:
    """(job number, overrides) of the running multirun job; (None, []) outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not in a Hydra job
        return None, []
    num = OmegaConf.select(hc, "job.num", default=None)
    return (int(num) if num is not None else None), list(OmegaConf.select(hc, "overrides.task", default=[]) or [])


def point_label() -> str:
    """"point" in a single run; "point k/N" for job k-1 of a multirun of N points ("point k" when N is unknown)."""
    if sweep_summary_path() is None:
        return "point"
    num, _ = _sweep_job()
    if num is None:
        return "point"
    total = os.environ.get(SWEEP_POINTS_ENV, "")
    return f"point {num + 1}" + (f"/{total}" if total.isdigit() else "")


def sweep_size(config: DictConfig) -> Optional[int]:
    """The number of jobs the basic sweeper makes of this multirun configuration (hydra.sweeper.params and the
    command line's sweeps, as BasicSweeper.sweep expands them); None for another sweeper or what cannot be
    expanded here (a glob over a config group)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        target = OmegaConf.select(config, "hydra.sweeper._target_", default="")
        if not str(target).endswith("BasicSweeper"):
            return None
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        args = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(config, "hydra.overrides.task",
                                                                                  default=[]) or [])
        overrides = OverridesParser.create().parse_overrides(args)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # noqa: BLE001 - progress only: the points are then numbered without a total
        return None


class SweepProgress(Callback):
    """When a multirun starts: counts its points for the jobs' "point k/N" (SWEEP_POINTS_ENV, which the basic
    launcher's jobs and joblib's worker processes inherit), and with quiet=true quiets Hydra's own launch lines."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        quiet = bool(OmegaConf.select(config, "quiet", default=False))
        if quiet:
            logging.getLogger("hydra").setLevel(logging.WARNING)
        n = sweep_size(config)
        if n is None:
            os.environ.pop(SWEEP_POINTS_ENV, None)
        else:
            os.environ[SWEEP_POINTS_ENV] = str(n)
            if not quiet:
                log.info(f"sweep: {n} points")


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
    label, (_, overrides) = point_label(), _sweep_job()
    log.info(f"[{label}] {' '.join(overrides) or '(no overrides)'}")
    t0 = time.perf_counter()
    try:
        status, reason = outcome(_run(cfg))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        log.error(f"error: {e}", extra={"file_only": True})  # the job's log file says why too
        status, reason = "config-error", str(e)
    except Exception as e:  # noqa: BLE001 - the sweep goes on to its next point; the summary names this one
        traceback.print_exc()
        log.error(traceback.format_exc().rstrip(), extra={"file_only": True})
        status, reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    path = record_job(status, reason)
    done = ""
    if path is not None:
        from harness.launch import read_summary

        total = os.environ.get(SWEEP_POINTS_ENV, "")
        done = f"; {len(read_summary(path))}" + (f" of {total}" if total.isdigit() else "") + " points done"
    log.info(f"[{label}] {status} in {time.perf_counter() - t0:.1f} s{done}")
    return status, reason


if __name__ == "__main__":
    main()
