"""GPU telemetry sampled in the background while a measurement runs (NVML, through pynvml).

    with TelemetrySampler("nvml", interval_ms=20, device=dev) as tel:
        timing = time_step(...)
    row.update(tel.summary())          # flat tel_* columns, units in the names
    samples = tel.samples(row_id)      # one row per sample, for a telemetry table

A background thread reads clocks, power, temperature, utilisation and clock-event (throttle)
reasons every `interval_ms`; it makes NVML calls only, never torch calls, so it does not touch the
CUDA stream being timed. Where the GPU supports GPM (Hopper does), one GPM sample is taken when the
window opens and one when it closes, giving DRAM bandwidth utilisation, SM utilisation and SM
occupancy averaged over the window.

Telemetry never stops a run: without pynvml, without a GPU, or when NVML fails, `summary()` is
{"telemetry": "unavailable: <reason>"}. All NVML access goes through `NvmlAdapter`, so tests can
inject a fake module with pynvml's function names (harness.nvml).
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from typing import Any, Optional

import pandas as pd

from harness.errors import ConfigError
from harness.nvml import (  # re-exported: harness.telemetry stays the one import for telemetry
    GPM_METRICS, INFO_ONLY_REASONS, REASON_BITS, THROTTLING_REASONS, NvmlAdapter, Unavailable, decode_reasons,
)

MODES = ("off", "nvml")

SAMPLE_COLUMNS = ["sample_idx", "t_s", "sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c",
                  "gpu_util_pct", "mem_util_pct", "clock_event_reasons", "throttle_reasons", "throttled"]
JOIN_TIMEOUT_S = 5.0


def _cuda_location(device: Any) -> dict:
    """Where the torch CUDA device lives, for NVML: PCI bus id, UUID, NVML index (caller's thread)."""
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU visible to torch")
    dev = torch.device("cuda") if device in (None, "auto") else (
        torch.device("cuda", device) if isinstance(device, int) else torch.device(device))
    if dev.type != "cuda":
        raise Unavailable(f"device {dev} is not a CUDA GPU")
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    loc: dict = {"cuda_index": idx}
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        loc["pci_bus_id"] = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    if getattr(props, "uuid", None) is not None:
        loc["uuid"] = f"GPU-{props.uuid}"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        loc["nvml_index"] = idx  # right when CUDA and NVML order agree (CUDA_DEVICE_ORDER=PCI_BUS_ID)
    elif idx < len(visible) and visible[idx].isdigit():
        loc["nvml_index"] = int(visible[idx])
    elif idx < len(visible) and visible[idx].startswith("GPU-"):
        loc.setdefault("uuid", visible[idx])
    return loc


def _median(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _min(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return float(min(xs)) if xs else None


def _max(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return float(max(xs)) if xs else None


_log = logging.getLogger(__name__)
_WARNED: set = set()  # reasons already reported in this process


def _warn_once(reason: str) -> None:
    """telemetry=nvml asked for samples that NVML cannot give: said once per process and reason (each row also
    records it in its `telemetry` column)."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        _log.warning("telemetry=nvml: no GPU telemetry on this machine (%s); rows record telemetry=unavailable", reason)


class TelemetrySampler:
    """Context manager sampling NVML in a background thread over a measurement window.

    mode: "off" (nothing) or "nvml". device: the torch CUDA device being measured (its NVML device
    is found by PCI bus id, then UUID, then index with CUDA_VISIBLE_DEVICES applied). nvml_index /
    pci_bus_id name the NVML device directly instead (no torch needed). nvml: a pynvml-like module
    or an NvmlAdapter, for tests. gpm: also take GPM metrics when the GPU supports them.
    """

    def __init__(self, mode: Any = "off", interval_ms: float = 20.0, device: Any = None, *,
                 nvml: Any = None, nvml_index: Optional[int] = None, pci_bus_id: Optional[str] = None,
                 gpm: bool = True):
        if mode is False or mode is None:  # YAML 1.1 reads an unquoted `off` as False
            mode = "off"
        if mode not in MODES:
            raise ConfigError(f"telemetry.mode={mode!r} is not one of {list(MODES)}")
        if not interval_ms or interval_ms <= 0:
            raise ConfigError(f"telemetry.interval_ms={interval_ms} must be positive")
        self.mode = mode
        self.interval_s = float(interval_ms) / 1e3
        self.device = device
        self._nvml = nvml
        self._nvml_index = nvml_index
        self._pci_bus_id = pci_bus_id
        self._use_gpm = gpm
        self._status = "off" if mode == "off" else "not started"
        self._adapter: Optional[NvmlAdapter] = None
        self._inited = False
        self._handle: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._samples: list[dict] = []
        self._static: dict = {}
        self._gpm_status = "off"
        self._gpm_start: Any = None
        self._gpm_values: dict = {}
        self._t0 = self._t1 = None
        self._thread_error: Optional[str] = None

    # context manager
    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "TelemetrySampler":
        """Opens the window: NVML init, device lookup, first GPM sample, sampler thread. Never raises."""
        if self.mode == "off" or self._thread is not None:
            return self
        try:
            self._adapter = self._nvml if isinstance(self._nvml, NvmlAdapter) else NvmlAdapter(self._nvml)
            try:
                self._adapter.init()
            except Exception as exc:
                raise Unavailable(f"NVML init failed ({type(exc).__name__}: {exc})") from exc
            self._inited = True
            self._handle = self._find_handle()
            self._read_static()
            self._gpm_open()
            self._t0 = time.perf_counter()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="telemetry-nvml", daemon=True)
            self._thread.start()
            self._status = "nvml"
        except Exception as exc:
            msg = str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"
            self._status = f"unavailable: {msg}"
            _warn_once(msg)
            self._release()
        return self

    def stop(self) -> None:
        """Closes the window: stops the thread, takes the last GPM sample, releases NVML. Never raises."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT_S)
        self._t1 = time.perf_counter()
        self._thread = None
        self._gpm_close()
        self._release()

    def _release(self) -> None:
        if self._gpm_start is not None:
            try:
                self._adapter.gpm_free(self._gpm_start)
            except Exception:
                pass
            self._gpm_start = None
        if self._inited:
            try:
                self._adapter.shutdown()
            except Exception:
                pass
            self._inited = False
        self._handle = None

    # setup
    def _find_handle(self) -> Any:
        a = self._adapter
        if self._pci_bus_id is not None:
            return a.handle_by_pci_bus_id(self._pci_bus_id)
        if self._nvml_index is not None:
            return a.handle_by_index(self._nvml_index)
        loc = _cuda_location(self.device)
        tried = []
        for key, lookup in (("pci_bus_id", a.handle_by_pci_bus_id), ("uuid", a.handle_by_uuid),
                            ("nvml_index", a.handle_by_index)):
            if key in loc:
                try:
                    return lookup(loc[key])
                except Exception as exc:
                    tried.append(f"{key}={loc[key]}: {type(exc).__name__}")
        raise Unavailable(f"no NVML device matches CUDA device {loc['cuda_index']} ({'; '.join(tried) or 'no locator'})")

    def _read_static(self) -> None:
        a, h = self._adapter, self._handle
        self._static = {
            "tel_device_name": self._try(a.name, h),
            "tel_pci_bus_id": self._try(a.pci_bus_id, h),
            "tel_sm_clock_max_mhz": self._try(a.max_sm_clock_mhz, h),
            "tel_mem_clock_max_mhz": self._try(a.max_mem_clock_mhz, h),
            "tel_power_limit_w": self._try(a.power_limit_w, h),
        }

    @staticmethod
    def _try(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return None

    # GPM
    def _gpm_open(self) -> None:
        if not self._use_gpm:
            self._gpm_status = "off"
            return
        try:
            if not self._adapter.gpm_supported(self._handle):
                self._gpm_status = "unsupported"
                return
            self._gpm_start = self._adapter.gpm_sample(self._handle)
            self._gpm_status = "started"
        except Exception as exc:
            self._gpm_status = f"error: {type(exc).__name__}: {exc}"

    def _gpm_close(self) -> None:
        if self._gpm_start is None:
            return
        a, end = self._adapter, None
        try:
            end = a.gpm_sample(self._handle)
            ids = [self._adapter._const(name, default) for name, default in GPM_METRICS.values()]
            values = a.gpm_metrics(self._gpm_start, end, ids)
            failed = []
            for col, (value, rc) in zip(GPM_METRICS, values):
                self._gpm_values[col] = value
                if rc != 0:
                    failed.append(f"{col} rc={rc}")
            self._gpm_status = "ok" if not failed else "error: " + ", ".join(failed)
        except Exception as exc:
            self._gpm_status = f"error: {type(exc).__name__}: {exc}"
        finally:
            if end is not None:
                try:
                    a.gpm_free(end)
                except Exception:
                    pass

    # sampling thread: NVML calls only, no torch
    def _run(self) -> None:
        try:
            while True:
                self._take_sample()
                if self._stop.wait(self.interval_s):
                    break
            self._take_sample()
        except Exception as exc:  # keep what was sampled; say why it ended
            self._thread_error = f"{type(exc).__name__}: {exc}"

    def _take_sample(self) -> None:
        a, h, t = self._adapter, self._handle, self._try
        util = t(a.utilization_pct, h) or (None, None)
        reasons = t(a.clock_event_reasons, h)
        names = decode_reasons(reasons)
        self._samples.append({
            "sample_idx": len(self._samples),
            "t_s": time.perf_counter() - self._t0,
            "sm_clock_mhz": t(a.sm_clock_mhz, h),
            "mem_clock_mhz": t(a.mem_clock_mhz, h),
            "power_w": t(a.power_w, h),
            "temp_c": t(a.temp_c, h),
            "gpu_util_pct": util[0],
            "mem_util_pct": util[1],
            "clock_event_reasons": reasons,
            "throttle_reasons": ",".join(names),
            "throttled": any(n in THROTTLING_REASONS for n in names),
        })

    # results
    def summary(self) -> dict:
        """Flat tel_* columns over the window (so far, if still running). Never raises."""
        if self._status != "nvml":
            return {"telemetry": self._status}
        try:
            return self._summarise()
        except Exception as exc:
            return {"telemetry": f"unavailable: summary failed ({type(exc).__name__}: {exc})"}

    def _summarise(self) -> dict:
        s = list(self._samples)
        col = lambda k: [x[k] for x in s]  # noqa: E731
        seen_set = {n for x in s for n in x["throttle_reasons"].split(",") if n}
        seen = [n for n in REASON_BITS.values() if n in seen_set] + sorted(seen_set - set(REASON_BITS.values()))
        n_throttled = sum(bool(x["throttled"]) for x in s)
        end = self._t1 if self._t1 is not None else time.perf_counter()
        out = {
            "telemetry": "nvml",
            "tel_n_samples": len(s),
            "tel_interval_ms": self.interval_s * 1e3,
            "tel_window_s": end - self._t0,
            **self._static,
            "tel_sm_clock_mhz_median": _median(col("sm_clock_mhz")),
            "tel_sm_clock_mhz_min": _min(col("sm_clock_mhz")),
            "tel_mem_clock_mhz_median": _median(col("mem_clock_mhz")),
            "tel_mem_clock_mhz_min": _min(col("mem_clock_mhz")),
            "tel_power_w_median": _median(col("power_w")),
            "tel_power_w_max": _max(col("power_w")),
            "tel_temp_c_max": _max(col("temp_c")),
            "tel_gpu_util_pct_median": _median(col("gpu_util_pct")),
            "tel_mem_util_pct_median": _median(col("mem_util_pct")),
            "tel_throttled": n_throttled > 0,
            "tel_throttled_frac": n_throttled / len(s) if s else None,
            "tel_throttle_reasons": ",".join(n for n in seen if n not in INFO_ONLY_REASONS),
            "tel_gpm": self._gpm_status,
        }
        for c in GPM_METRICS:
            out[c] = self._gpm_values.get(c)
        if self._thread_error:
            out["tel_error"] = self._thread_error
        return out

    def samples(self, row_id: Optional[str] = None) -> pd.DataFrame:
        """One row per sample (SAMPLE_COLUMNS), with a row_id column first when given."""
        df = pd.DataFrame(list(self._samples), columns=SAMPLE_COLUMNS)
        if row_id is not None:
            df.insert(0, "row_id", row_id)
        return df
