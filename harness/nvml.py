"""The NVML access layer of telemetry: the few NVML calls it needs, and what NVML's bits mean.

    nv = NvmlAdapter()                 # pynvml, or raises Unavailable("pynvml not installed ...")
    nv.init(); h = nv.handle_by_index(0)
    decode_reasons(nv.clock_event_reasons(h))   # ["sw_power_cap", ...]

`NvmlAdapter` wraps a pynvml-like module (real or fake: tests inject one with pynvml's function
names); the reason-bit tables say which clock-event reasons count as throttling; GPM_METRICS names
the GPM metric ids behind the tel_* GPM columns. harness.telemetry samples through this module.
"""
from __future__ import annotations

from typing import Any, Optional

# Clock-event ("throttle") reason bits, as in nvml.h (nvmlClocksEventReason* / nvmlClocksThrottleReason*).
REASON_BITS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that lower clocks below what the workload asked for: these flag a row as throttled.
THROTTLING_REASONS = frozenset({
    "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
    "hw_power_brake_slowdown", "board_limit", "reliability",
})
# Reasons that say nothing about throttling; left out of tel_throttle_reasons.
INFO_ONLY_REASONS = frozenset({"gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"})

GPM_METRICS = {  # summary column -> pynvml constant name (value used if the module lacks it)
    "tel_dram_bw_util_pct": ("NVML_GPM_METRIC_DRAM_BW_UTIL", 10),
    "tel_sm_util_pct": ("NVML_GPM_METRIC_SM_UTIL", 2),
    "tel_sm_occupancy_pct": ("NVML_GPM_METRIC_SM_OCCUPANCY", 3),
}


def decode_reasons(bits: Optional[int]) -> list[str]:
    """Names of the set clock-event reason bits (unknown bits as "bit_0x...")."""
    if not bits:
        return []
    names = [name for bit, name in REASON_BITS.items() if bits & bit]
    rest = bits & ~sum(REASON_BITS)
    names += [f"bit_{1 << i:#x}" for i in range(64) if rest >> i & 1]
    return names


class Unavailable(RuntimeError):
    """Telemetry cannot run here; the message is the reason written into the row."""


class NvmlAdapter:
    """The few NVML calls telemetry needs, on top of a pynvml-like module (real or fake)."""

    def __init__(self, module: Any = None):
        if module is None:
            try:
                import pynvml as module
            except ImportError as exc:
                raise Unavailable("pynvml not installed (pip install nvidia-ml-py)") from exc
        self.nv = module

    def _const(self, name: str, default: int) -> int:
        return getattr(self.nv, name, default)

    def init(self) -> None:
        self.nv.nvmlInit()

    def shutdown(self) -> None:
        self.nv.nvmlShutdown()

    # device lookup
    def handle_by_pci_bus_id(self, bus_id: str) -> Any:
        return self.nv.nvmlDeviceGetHandleByPciBusId(bus_id)

    def handle_by_uuid(self, uuid: str) -> Any:
        return self.nv.nvmlDeviceGetHandleByUUID(uuid)

    def handle_by_index(self, index: int) -> Any:
        return self.nv.nvmlDeviceGetHandleByIndex(index)

    def name(self, h: Any) -> str:
        n = self.nv.nvmlDeviceGetName(h)
        return n.decode() if isinstance(n, bytes) else str(n)

    def pci_bus_id(self, h: Any) -> str:
        b = self.nv.nvmlDeviceGetPciInfo(h).busId
        return b.decode() if isinstance(b, bytes) else str(b)

    # sampled values
    def sm_clock_mhz(self, h: Any) -> float:
        return float(self.nv.nvmlDeviceGetClockInfo(h, self._const("NVML_CLOCK_SM", 1)))

    def mem_clock_mhz(self, h: Any) -> float:
        return float(self.nv.nvmlDeviceGetClockInfo(h, self._const("NVML_CLOCK_MEM", 2)))

    def max_sm_clock_mhz(self, h: Any) -> float:
        return float(self.nv.nvmlDeviceGetMaxClockInfo(h, self._const("NVML_CLOCK_SM", 1)))

    def max_mem_clock_mhz(self, h: Any) -> float:
        return float(self.nv.nvmlDeviceGetMaxClockInfo(h, self._const("NVML_CLOCK_MEM", 2)))

    def power_w(self, h: Any) -> float:
        return self.nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # mW

    def power_limit_w(self, h: Any) -> float:
        try:
            return self.nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
        except Exception:
            return self.nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0

    def temp_c(self, h: Any) -> float:
        return float(self.nv.nvmlDeviceGetTemperature(h, self._const("NVML_TEMPERATURE_GPU", 0)))

    def utilization_pct(self, h: Any) -> tuple[float, float]:
        u = self.nv.nvmlDeviceGetUtilizationRates(h)
        return float(u.gpu), float(u.memory)

    def clock_event_reasons(self, h: Any) -> int:
        fn = getattr(self.nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is not None:
            try:
                return int(fn(h))
            except Exception:
                pass  # older driver: fall back to the deprecated name
        return int(self.nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))

    # GPM
    def gpm_supported(self, h: Any) -> bool:
        fn = getattr(self.nv, "nvmlGpmQueryDeviceSupport", None)
        return bool(fn is not None and fn(h).isSupportedDevice)

    def gpm_sample(self, h: Any) -> Any:
        s = self.nv.nvmlGpmSampleAlloc()
        try:
            self.nv.nvmlGpmSampleGet(h, s)
        except Exception:
            self.nv.nvmlGpmSampleFree(s)
            raise
        return s

    def gpm_free(self, s: Any) -> None:
        self.nv.nvmlGpmSampleFree(s)

    def gpm_metrics(self, s1: Any, s2: Any, metric_ids: list[int]) -> list[tuple[Optional[float], int]]:
        """(value, nvml return code) per metric id, over the window between samples s1 and s2."""
        mg = self.nv.c_nvmlGpmMetricsGet_t()
        mg.version = self._const("NVML_GPM_METRICS_GET_VERSION", 1)
        mg.numMetrics = len(metric_ids)
        mg.sample1 = s1
        mg.sample2 = s2
        for i, mid in enumerate(metric_ids):
            mg.metrics[i].metricId = mid
        self.nv.nvmlGpmMetricsGet(mg)
        out = []
        for i in range(len(metric_ids)):
            m = mg.metrics[i]
            rc = int(m.nvmlReturn)
            out.append((float(m.value) if rc == 0 else None, rc))
        return out
