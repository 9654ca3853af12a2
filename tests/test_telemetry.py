"""harness.telemetry with mode off, without NVML, and with a fake NVML module (no GPU needed)."""
import itertools
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from harness.errors import ConfigError
from harness.telemetry import NvmlAdapter, TelemetrySampler, decode_reasons

SW_POWER_CAP, GPU_IDLE, HW_THERMAL = 0x4, 0x1, 0x40


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """Just enough of pynvml's surface: two devices, GPM on device 1 (by PCI bus id)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_GPM_METRIC_SM_UTIL, NVML_GPM_METRIC_SM_OCCUPANCY, NVML_GPM_METRIC_DRAM_BW_UTIL = 2, 3, 10
    NVML_GPM_METRICS_GET_VERSION = 1
    BUS_IDS = ["00000000:19:00.0", "00000000:3B:00.0"]

    def __init__(self, reasons=SW_POWER_CAP | GPU_IDLE, gpm=True, event_reasons_api=True, fail_init=False):
        self.reasons, self.gpm, self.fail_init = reasons, gpm, fail_init
        self.inits = self.shutdowns = 0
        self.calls_by_thread = set()
        self.samples_alive = 0
        self.n_clock_reads = 0
        self._gpm_ticks = itertools.count(1)  # GPM sample times: ordered without reading a clock
        if event_reasons_api:
            self.nvmlDeviceGetCurrentClocksEventReasons = lambda h: self._note() or self.reasons

    def _note(self):
        self.calls_by_thread.add(threading.current_thread().name)

    def nvmlInit(self):
        if self.fail_init:
            raise FakeNvmlError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("dev", i)

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        return ("dev", self.BUS_IDS.index(bus))

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=self.BUS_IDS[h[1]].encode())

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._note()
        self.n_clock_reads += 1
        return {1: 1980 - 10 * (self.n_clock_reads % 3), 2: 3201}[kind]

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return {1: 1980, 2: 3201}[kind]

    def nvmlDeviceGetPowerUsage(self, h):
        return 650_000  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=100, memory=87)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        self._note()
        return self.reasons

    def nvmlGpmQueryDeviceSupport(self, h):
        return SimpleNamespace(isSupportedDevice=int(self.gpm))

    def nvmlGpmSampleAlloc(self):
        self.samples_alive += 1
        return SimpleNamespace(t=None)

    def nvmlGpmSampleGet(self, h, s):
        s.t = next(self._gpm_ticks)
        return s

    def nvmlGpmSampleFree(self, s):
        self.samples_alive -= 1

    def c_nvmlGpmMetricsGet_t(self):
        return SimpleNamespace(version=0, numMetrics=0, sample1=None, sample2=None,
                               metrics=[SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)])

    def nvmlGpmMetricsGet(self, mg):
        assert mg.version == 1 and mg.sample2.t > mg.sample1.t
        values = {10: 87.9, 2: 98.8, 3: 40.5}
        for m in mg.metrics[:mg.numMetrics]:
            m.value = values[m.metricId]
        return mg


class PacedStop:
    """Replaces a sampler's stop event: its first `free` waits return at once (the interval "passed"), the next
    blocks until stop() sets it. A window then holds exactly free + 2 samples (one per wait that returned, one
    before the blocking wait, one after stop), however slowly the machine runs the sampler thread."""

    def __init__(self, free: int):
        self.free = free
        self.event = threading.Event()
        self.blocking = threading.Event()  # the thread has used its free waits and now waits for stop()
        self.timeouts = []  # what the sampler asked to wait: its interval

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        if self.free > 0 and not self.event.is_set():
            self.free -= 1
            return False
        self.blocking.set()
        return self.event.wait()

    def set(self):
        self.event.set()

    def clear(self):
        self.event.clear()

    def is_set(self):
        return self.event.is_set()


def sample_window(tel: TelemetrySampler, n_samples: int) -> TelemetrySampler:
    """Runs tel's window until it has taken exactly n_samples (>= 2) samples, then closes it. The sampler must wait
    its interval between samples."""
    paced = PacedStop(n_samples - 2)
    tel._stop = paced
    with tel:
        # 60 s only guards against a hang; no outcome depends on how fast the thread gets there.
        assert paced.blocking.wait(60.0), "the sampler thread never reached its last interval"
    assert paced.timeouts == [tel.interval_s] * (n_samples - 1), "the sampler waits its interval between samples"
    return tel


def test_decode_reasons():
    assert decode_reasons(0) == []
    assert decode_reasons(SW_POWER_CAP | GPU_IDLE) == ["gpu_idle", "sw_power_cap"]
    assert decode_reasons(1 << 20) == ["bit_0x100000"]


def test_off_does_nothing():
    with TelemetrySampler("off") as tel:
        pass
    assert tel.summary() == {"telemetry": "off"}
    assert tel.samples().empty
    assert TelemetrySampler(False).summary() == {"telemetry": "off"}  # YAML's unquoted off


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="telemetry.mode"):
        TelemetrySampler("dcgm")
    with pytest.raises(ConfigError, match="interval_ms"):
        TelemetrySampler("nvml", interval_ms=0)


def test_no_pynvml_gives_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with TelemetrySampler("nvml", interval_ms=5) as tel:
        pass
    s = tel.summary()
    assert set(s) == {"telemetry"} and s["telemetry"].startswith("unavailable: pynvml not installed")


def test_nvml_init_failure_gives_unavailable():
    with TelemetrySampler("nvml", interval_ms=5, nvml=FakeNvml(fail_init=True), nvml_index=0) as tel:
        pass
    assert tel.summary()["telemetry"].startswith("unavailable: NVML init failed")


def test_nvml_that_cannot_start_is_said_once(monkeypatch, caplog):
    """telemetry=nvml where NVML cannot start warns once per process and reason, not once per row."""
    import harness.telemetry as T

    monkeypatch.setattr(T, "_WARNED", set())
    with caplog.at_level("WARNING", logger="harness.telemetry"):
        for _ in range(3):
            with TelemetrySampler("nvml", interval_ms=5, nvml=FakeNvml(fail_init=True), nvml_index=0):
                pass
        with TelemetrySampler("off"):
            pass
    said = [r.getMessage() for r in caplog.records if r.name == "harness.telemetry"]
    assert len(said) == 1 and "no GPU telemetry" in said[0] and "NVML init failed" in said[0], said


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_gpu_gives_unavailable():
    fake = FakeNvml()
    with TelemetrySampler("nvml", interval_ms=5, device="cpu", nvml=fake) as tel:
        pass
    assert tel.summary() == {"telemetry": "unavailable: no CUDA GPU visible to torch"}
    assert fake.inits == fake.shutdowns == 1  # NVML released again


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_real_pynvml_without_gpu_never_raises():
    pytest.importorskip("pynvml")
    with TelemetrySampler("nvml", interval_ms=5, device="cuda") as tel:
        pass
    assert tel.summary()["telemetry"].startswith("unavailable: ")


def test_fake_nvml_summary_and_throttling():
    fake = FakeNvml(reasons=SW_POWER_CAP | GPU_IDLE)
    tel = sample_window(TelemetrySampler("nvml", interval_ms=5, nvml=fake, pci_bus_id=FakeNvml.BUS_IDS[1]), 4)
    s = tel.summary()
    assert s["telemetry"] == "nvml"
    assert s["tel_n_samples"] == 4
    assert s["tel_device_name"] == "NVIDIA H200" and s["tel_pci_bus_id"] == FakeNvml.BUS_IDS[1]
    # Clock reads 1, 3, 5, 7 are the SM clock (2, 4, 6, 8 the memory clock): 1970, 1980, 1960, 1970 MHz.
    assert (s["tel_sm_clock_mhz_min"], s["tel_sm_clock_mhz_median"]) == (1960, 1970)
    assert s["tel_sm_clock_max_mhz"] == 1980
    assert s["tel_mem_clock_mhz_median"] == 3201
    assert s["tel_power_w_median"] == 650.0 and s["tel_power_limit_w"] == 700.0
    assert s["tel_temp_c_max"] == 61
    assert s["tel_gpu_util_pct_median"] == 100 and s["tel_mem_util_pct_median"] == 87
    assert s["tel_throttled"] is True and s["tel_throttled_frac"] == 1.0
    assert s["tel_throttle_reasons"] == "sw_power_cap"  # gpu_idle is not throttling
    assert s["tel_gpm"] == "ok"
    assert s["tel_dram_bw_util_pct"] == 87.9
    assert s["tel_sm_util_pct"] == 98.8
    assert s["tel_sm_occupancy_pct"] == 40.5
    assert fake.samples_alive == 0  # GPM samples freed
    assert fake.inits == fake.shutdowns == 1
    assert "telemetry-nvml" in fake.calls_by_thread  # sampled in the background thread

    df = tel.samples(row_id="r1")
    assert len(df) == s["tel_n_samples"]
    assert list(df.columns[:3]) == ["row_id", "sample_idx", "t_s"]
    assert (df["row_id"] == "r1").all() and df["t_s"].is_monotonic_increasing
    assert df["throttled"].all() and (df["throttle_reasons"] == "gpu_idle,sw_power_cap").all()


def test_idle_only_is_not_throttled_and_no_gpm():
    fake = FakeNvml(reasons=GPU_IDLE, gpm=False, event_reasons_api=False)  # old driver API name
    tel = sample_window(TelemetrySampler("nvml", interval_ms=5, nvml=NvmlAdapter(fake), nvml_index=0), 2)
    s = tel.summary()
    assert s["telemetry"] == "nvml" and s["tel_n_samples"] == 2
    assert s["tel_throttled"] is False and s["tel_throttle_reasons"] == ""
    assert s["tel_gpm"] == "unsupported" and s["tel_dram_bw_util_pct"] is None


def test_thermal_throttle_flagged():
    fake = FakeNvml(reasons=HW_THERMAL)
    tel = sample_window(TelemetrySampler("nvml", interval_ms=5, nvml=fake, nvml_index=0, gpm=False), 3)
    s = tel.summary()
    assert s["tel_n_samples"] == 3 and s["tel_throttled_frac"] == 1.0
    assert s["tel_throttled"] is True and s["tel_throttle_reasons"] == "hw_thermal_slowdown"
    assert s["tel_gpm"] == "off"


def test_failing_fields_become_none_not_errors():
    fake = FakeNvml()

    def broken(h):
        raise FakeNvmlError("Not Supported")

    fake.nvmlDeviceGetPowerUsage = broken
    fake.nvmlDeviceGetEnforcedPowerLimit = broken
    fake.nvmlDeviceGetPowerManagementLimit = broken
    tel = sample_window(TelemetrySampler("nvml", interval_ms=5, nvml=fake, nvml_index=0), 2)
    s = tel.summary()
    assert s["telemetry"] == "nvml" and s["tel_n_samples"] == 2
    assert s["tel_power_w_median"] is None and s["tel_power_limit_w"] is None
    assert s["tel_sm_clock_mhz_median"] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_nvml_on_gpu():
    pytest.importorskip("pynvml")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)  # not the default one: another test aborts a graph capture
    src = torch.randint(1, 256, (1 << 30,), dtype=torch.uint8, device=dev, generator=gen)
    dst = torch.empty_like(src)
    # Smoke check on real hardware: about 50 samples in 1 s at 20 ms; the bound only catches a sampler that stalls.
    with TelemetrySampler("nvml", interval_ms=20, device=dev) as tel:
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            for _ in range(20):
                dst.copy_(src)
            torch.cuda.synchronize()
    s = tel.summary()
    assert s["telemetry"] == "nvml", s
    assert s["tel_device_name"] == torch.cuda.get_device_name(dev)
    assert s["tel_n_samples"] >= 10
    assert s["tel_sm_clock_mhz_median"] > 0 and s["tel_power_w_median"] > 0
    if s["tel_gpm"] == "ok":
        assert s["tel_dram_bw_util_pct"] > 30.0
