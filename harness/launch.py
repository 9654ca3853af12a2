"""One GPU per job when Hydra runs several jobs at once on one node (joblib launcher).

    python run.py -m hydra/launcher=joblib_gpus +experiment=speedup_vs_context    # one job per GPU
    python run.py -m hydra/launcher=slurm_gpus hydra.launcher.partition=gpu ...   # SLURM: 1 GPU per job

The joblib launcher runs jobs in a pool of n_jobs worker processes (loky) and REUSES them: job k
does not land on worker k, and a worker runs many jobs. So "GPU = job_num % n_gpus" would put two
concurrent jobs on one GPU as soon as one worker finishes early. Instead each worker process claims
one GPU *slot* the first time `pin_gpu` runs in it (an exclusive flock on a per-GPU lock file, held
until the process exits) and keeps it for every later job: with n_jobs = number of GPUs (what
conf/hydra/launcher/joblib_gpus.yaml sets through the `${visible_gpus:}` resolver), each GPU has
exactly one worker. The first slot tried is job_num % n_gpus, so jobs 0..n-1 get GPUs 0..n-1.

Pinning sets CUDA_VISIBLE_DEVICES to that one GPU, which only works before CUDA is initialised in
the process: call `pin_gpu(cfg)` first thing in the Hydra task function. Under SLURM (submitit),
SLURM gives each job its own GPU already: one visible GPU means nothing to do.

Option `launch.pin_gpu`: "auto" (pin only under a parallel launcher: joblib), true (pin whenever
more than one GPU is visible), false (never). Lock files: $HARNESS_GPU_LOCK_DIR, default
<tmp>/harness-gpu-slots-<uid>; node-wide, so a second sweep on a busy node fails at once with one
sentence instead of sharing a GPU.

Sweep summary: in a multirun every job appends one line (its overrides, ok / failed / config-error / skipped
and why) to <hydra.sweep.dir>/sweep_summary.jsonl (`record_job`, called by harness.run for each point, which
never lets a bad point end the sweep). The `SweepSummary` callback (conf/config.yaml, hydra.callbacks) prints
the lines when the multirun ends, in the process that launched it, and exits 1 if any point failed. That works
for every launcher whose jobs can write to the sweep directory: in the same process (basic), in joblib's worker
processes, on SLURM nodes sharing the filesystem. A joblib worker that dies outright (segfault, OOM killer)
makes joblib end the sweep with its own error (exit 1, no summary); the rows already stored stay, and the
claims of the dead worker are taken over when the sweep is run again.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

PARALLEL_LAUNCHERS = ("hydra_plugins.hydra_joblib_launcher",)  # run several jobs at once on THIS node
LOCK_DIR_ENV = "HARNESS_GPU_LOCK_DIR"

_held: dict[str, Any] = {}  # this process's slot: {"device": str, "fh": open lock file}


@dataclass(frozen=True)
class Pinning:
    device: str  # the entry of the parent's visible-device list this process now sees as cuda:0
    slot: int  # index in that list
    n_visible: int
    job_num: Optional[int]


def visible_devices(env: Optional[dict] = None, nvml_count: Optional[int] = None) -> list[str]:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES entries if set, else NVML's count (never inits CUDA)."""
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        out = []
        for d in cvd.split(","):
            d = d.strip()
            if not d or d.startswith("-"):  # CUDA stops at the first invalid (e.g. -1) entry
                break
            out.append(d)
        return out
    n = _nvml_device_count() if nvml_count is None else nvml_count
    return [str(i) for i in range(n)]


def _nvml_device_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no GPU
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def visible_gpu_count() -> int:
    """The `${visible_gpus:}` resolver: GPUs visible on this node, at least 1 (a job count)."""
    return max(1, len(visible_devices()))


def pin_mode(value: Any) -> str:
    """launch.pin_gpu -> "auto" | "on" | "off" (accepts booleans and their usual spellings)."""
    if value is None:
        return "auto"
    s = str(value).strip().lower()
    if s in ("auto",):
        return "auto"
    if s in ("true", "on", "1", "yes"):
        return "on"
    if s in ("false", "off", "0", "no"):
        return "off"
    raise ConfigError(f"launch.pin_gpu={value} is not allowed; choose auto, true or false")


def should_pin(mode: str, launcher_target: Optional[str], multirun: bool, n_visible: int) -> bool:
    """Whether this job pins itself to one GPU (pure: see the module docstring)."""
    if mode == "off" or n_visible <= 1:
        return False
    if mode == "on":
        return True
    return bool(multirun and launcher_target and launcher_target.startswith(PARALLEL_LAUNCHERS))


def default_lock_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"harness-gpu-slots-{uid}")


def _lock_name(device: str) -> str:
    return "gpu-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in device) + ".lock"


def claim_slot(devices: list[str], first: int = 0, lock_dir: Optional[Path] = None) -> int:
    """Index of a device no other live process holds, trying `first` then the others; held until exit.

    Idempotent within a process: a process that holds a slot gets the same one back.
    """
    if "device" in _held:
        if _held["device"] in devices:
            return devices.index(_held["device"])
        raise RuntimeError(f"this process already holds GPU {_held['device']}, which is not among {devices}")
    import fcntl

    lock_dir = Path(lock_dir) if lock_dir else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    n = len(devices)
    for k in range(n):
        i = (first + k) % n
        fh = open(lock_dir / _lock_name(devices[i]), "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        _held.update(device=devices[i], fh=fh)
        return i
    raise ConfigError(f"every visible GPU ({', '.join(devices)}) is held by another job on this node (locks in "
                       f"{lock_dir}); run at most {n} jobs at once: hydra.launcher.n_jobs={n}")


def release_slot() -> None:
    """Gives this process's slot back (tests; a worker otherwise holds it until it exits)."""
    fh = _held.pop("fh", None)
    _held.pop("device", None)
    if fh is not None:
        fh.close()


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001
        return False


def _hydra_job() -> tuple[Optional[str], bool, Optional[int]]:
    """(launcher _target_, multirun?, job number) of the running Hydra job; (None, False, None) outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, False, None
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001
        return None, False, None
    target = OmegaConf.select(hc, "launcher._target_", default=None)
    num = OmegaConf.select(hc, "job.num", default=None)
    return target, hc.mode == RunMode.MULTIRUN, (int(num) if num is not None else None)


def pin_gpu(cfg: Any = None, env: Optional[dict] = None, lock_dir: Optional[Path] = None) -> Optional[Pinning]:
    """Pins this process to one GPU when `launch.pin_gpu` says so; returns what it did (None: nothing).

    Call it first in the Hydra task function, before anything initialises CUDA.
    """
    env = os.environ if env is None else env
    mode = pin_mode(OmegaConf.select(cfg, "launch.pin_gpu", default="auto") if cfg is not None else "auto")
    target, multirun, job_num = _hydra_job()
    devices = visible_devices(env) if "device" not in _held else _held.get("devices", visible_devices(env))
    if not should_pin(mode, target, multirun, len(devices)):
        return None
    slot = claim_slot(devices, first=(job_num or 0) % len(devices), lock_dir=lock_dir)
    _held["devices"] = devices
    device = devices[slot]
    if env.get("CUDA_VISIBLE_DEVICES") != device:
        if _cuda_initialised():
            raise RuntimeError("launch.pin_gpu: CUDA is already initialised in this process; call "
                               "harness.launch.pin_gpu(cfg) first in the task function, before any CUDA use")
        env["CUDA_VISIBLE_DEVICES"] = device
    print(f"launch: job {job_num} (pid {os.getpid()}) pinned to GPU {device} "
          f"(slot {slot} of {len(devices)}: CUDA_VISIBLE_DEVICES={device})")
    return Pinning(device, slot, len(devices), job_num)


SWEEP_SUMMARY = "sweep_summary.jsonl"
FAILED_STATUSES = ("failed", "config-error")  # what makes a sweep exit non-zero


def sweep_summary_path() -> Optional[Path]:
    """<hydra.sweep.dir>/sweep_summary.jsonl of the running multirun job; None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        return Path(str(HydraConfig.get().sweep.dir)) / SWEEP_SUMMARY
    except Exception:  # noqa: BLE001 - not in a Hydra job
        return None


def record_job(status: str, reason: str, path: Optional[Path] = None) -> Optional[Path]:
    """Appends this multirun job's outcome to the sweep summary; returns the file (None outside a multirun).
    One short line per job, written with O_APPEND in one call, so parallel jobs' lines never interleave."""
    path = path or sweep_summary_path()
    if path is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    num = OmegaConf.select(hc, "job.num", default=None) if hc is not None else None
    overrides = list(OmegaConf.select(hc, "overrides.task", default=[]) or []) if hc is not None else []
    line = json.dumps({"job": num, "overrides": overrides, "status": status, "reason": reason[:500],
                       "pid": os.getpid(), "host": socket.gethostname()}) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path


def read_summary(path: Path) -> list[dict]:
    """The jobs' lines of a sweep summary, by job number (an unreadable line is skipped)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return sorted(out, key=lambda e: (e.get("job") is None, e.get("job") or 0))


def format_summary(entries: list[dict], path: Optional[Path] = None) -> str:
    """"sweep: 3 points: 2 ok, 1 failed, 0 skipped" and one line per point."""
    failed = sum(e.get("status") in FAILED_STATUSES for e in entries)
    ok = sum(e.get("status") == "ok" for e in entries)
    skipped = sum(e.get("status") == "skipped" for e in entries)
    head = f"sweep: {len(entries)} points: {ok} ok, {failed} failed, {skipped} skipped"
    lines = [head + (f" ({path})" if path else "")]
    # Name each point by what the sweep varies: the overrides every point shares say nothing about one of them.
    shared = set.intersection(*(set(e.get("overrides") or []) for e in entries)) if len(entries) > 1 else set()
    for e in entries:
        what = " ".join(o for o in e.get("overrides") or [] if o not in shared) or "(no overrides)"
        lines.append(f"  #{e.get('job')} {e.get('status', '?'):<12} {what}: {e.get('reason', '')}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints the sweep summary when a multirun ends and exits 1 if a point failed (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A fixed hydra.sweep.dir used again must not report the previous sweep's points.
        path = Path(str(config.hydra.sweep.dir)) / SWEEP_SUMMARY
        if path.is_file():
            path.unlink()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(str(config.hydra.sweep.dir)) / SWEEP_SUMMARY
        entries = read_summary(path)
        if not entries:  # a task function that records nothing (not run.py's): nothing to say
            return
        print(format_summary(entries, path), flush=True)
        failed = [e for e in entries if e.get("status") in FAILED_STATUSES]
        if failed:
            print(f"error: {len(failed)} of {len(entries)} sweep points failed (listed above); fix them and run the "
                  f"sweep again: points already measured are skipped", file=sys.stderr, flush=True)
            sys.exit(1)  # SystemExit passes through Hydra's callback wrapper, which only catches Exception


def register_resolvers() -> None:
    """`${visible_gpus:}` for the launcher configs (n_jobs = one worker per GPU)."""
    if not OmegaConf.has_resolver("visible_gpus"):
        OmegaConf.register_new_resolver("visible_gpus", visible_gpu_count)


register_resolvers()

__all__ = ["Pinning", "SweepSummary", "claim_slot", "format_summary", "pin_gpu", "pin_mode", "read_summary",
           "record_job", "register_resolvers", "release_slot", "should_pin", "sweep_summary_path", "visible_devices",
           "visible_gpu_count"]
