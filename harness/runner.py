"""One benchmark point: build weights and a KV cache once, then check and time every selected impl
on the same inputs, and append one tidy row per impl to the results store.

Resume (results.resume=true): an impl whose point key (harness.results.POINT_KEY_FIELDS: model content, quant,
batch, ctx, seed, cache fill, CUDA graphs, impl, fusion, megakernel options, tag, GPU) already has a done row is
skipped, impl by impl; the others are claimed in the store first (one process measures a point at a time), and
the baseline is measured again alongside them so that their speedups stay same-run.

Progress goes through Python logging (logger "harness.runner"; under Hydra to the console and the job's run.log,
conf/config.yaml): `Progress` logs each phase of a point as it ends, with its elapsed time: copy bandwidth, weights,
reference, then per impl build, correctness, warm-up, timing, telemetry. The result table is printed on stdout and
also logged to the job's log file alone (records marked `file_only`)."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import mega_backend, resolved_backend, tile_options, validate
from harness.errors import ConfigError, TooLargeForDevice, Unsupported
from harness.impls import REGISTRY, ImplContext
from harness.metrics import achieved_gbps, bytes_per_step, pct_of_copy_bw
from harness.reference import LlamaDecoder
from kernels.model import KVCache
from harness.results import ResultsStore, checkpoint_id, env_info, point_key
from harness.telemetry import TelemetrySampler
from harness.timing import GraphCaptureError, measure_copy_bandwidth, time_step
from harness.weights import build_weights, check_fits, check_hf_checkpoint
from kernels import gpu_slug
from kernels.model import ModelWeights
from kernels.quant import quant_mode

# Relative logits error (||impl - ref|| / ||ref||, ref = fp32 reference on the same quantized weights)
# under which an impl counts as correct, by activation dtype.
REL_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

log = logging.getLogger(__name__)

CPU_BANNER = ("NOTE: no CUDA device: running on the CPU (Triton kernels through the interpreter). "
              "Latencies and bandwidths printed here are NOT meaningful; they only show the pipeline works.")

HEARTBEAT_S = 20.0  # a phase still running after this long says so, then again after each doubling (20, 40, 80 s)
FILE_ONLY = {"file_only": True}  # `extra` of a record for the job's log file only (harness.run drops it on the console)


class Progress:
    """The progress of one benchmark point (or of one impl in it, `child`) as log lines.

    `begin(phase)` ... `end(detail)` logs "<tag> <phase>: <elapsed> s (<detail>)" when the phase ends; a phase
    still running after `heartbeat_s` logs "<tag> <phase>: still running after N s" (then after 2N, 4N s ...), so a
    minutes-long compile is not silence. `fail()` ends an open phase as "failed after N s". The clock is runner's
    `_clock` (read at each call, so a test's fake clock applies)."""

    def __init__(self, tag: str = "[point]", logger: logging.Logger = log, heartbeat_s: Optional[float] = None):
        self.tag = tag
        self.log = logger
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.phase: Optional[str] = None
        self.t0 = 0.0
        self.created = _clock()
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def child(self, name: str) -> "Progress":
        """The progress of one part (an impl) of this point: "[<name>]", or "[point 2/6: <name>]" in a sweep, where
        jobs running at once interleave their lines."""
        inner = self.tag.strip("[]")
        return Progress(f"[{name}]" if inner == "point" else f"[{inner}: {name}]", self.log, self.heartbeat_s)

    def info(self, msg: str) -> None:
        self.log.info(f"{self.tag} {msg}")

    def begin(self, phase: str) -> float:
        """Starts `phase` (ending an open one first); returns its start time on the clock."""
        if self.phase is not None:
            self.end()
        with self._lock:
            self.phase, self.t0 = phase, _clock()
            self._schedule(phase, self.heartbeat_s, self.heartbeat_s)
        return self.t0

    def end(self, detail: str = "") -> float:
        """Ends the open phase and logs it with its elapsed time; returns the elapsed seconds (0 if none was open)."""
        with self._lock:
            phase, elapsed = self._close()
        if phase is None:
            return 0.0
        self.log.info(f"{self.tag} {phase}: {elapsed:.2f} s" + (f" ({detail})" if detail else ""))
        return elapsed

    def fail(self) -> None:
        """Ends an open phase as failed (its exception is reported by the caller)."""
        with self._lock:
            phase, elapsed = self._close()
        if phase is not None:
            self.log.warning(f"{self.tag} {phase}: failed after {elapsed:.2f} s")

    def done(self, detail: str = "") -> float:
        """Logs the whole span since this Progress was made ("<tag> done: N s (<detail>)"); returns it."""
        self.fail()  # nothing is open after a normal end; an open phase here was cut short
        elapsed = _clock() - self.created
        self.log.info(f"{self.tag} done: {elapsed:.2f} s" + (f" ({detail})" if detail else ""))
        return elapsed

    def _close(self) -> tuple[Optional[str], float]:
        phase, self.phase = self.phase, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return phase, (_clock() - self.t0 if phase is not None else 0.0)

    def _schedule(self, phase: str, wait: float, at: float) -> None:
        """A heartbeat for `phase` in `wait` seconds, saying it has run `at` seconds."""
        if not self.heartbeat_s or self.heartbeat_s <= 0:
            return
        self._timer = threading.Timer(wait, self._beat, args=(phase, at))
        self._timer.daemon = True
        self._timer.start()

    def _beat(self, phase: str, at: float) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():  # the phase ended (or another began) meanwhile
                return
            self.log.info(f"{self.tag} {phase}: still running after {at:g} s")
            self._schedule(phase, at, 2 * at)  # the next one when the phase has run twice as long


class _PhaseWindow:
    """time_step's measurement window (opened right before the timed calls, closed right after them) as progress:
    opening it ends the warm-up phase and begins timing; closing it ends timing and begins telemetry. It opens and
    closes the telemetry sampler `tel` as time_step would."""

    def __init__(self, tel, progress: Progress, warmup_detail: str, timing_detail: str):
        self.tel, self.progress = tel, progress
        self.warmup_detail, self.timing_detail = warmup_detail, timing_detail

    def start(self):
        self.tel.start()
        self.progress.end(self.warmup_detail)
        self.progress.begin("timing")
        return self

    def stop(self):
        self.progress.end(self.timing_detail)
        self.progress.begin("telemetry")
        self.tel.stop()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _steps(n: int) -> str:
    return _count(n, "step")


def _telemetry_detail(summary: dict) -> str:
    if summary.get("telemetry") != "nvml":
        return str(summary.get("telemetry", "off"))
    frac = summary.get("tel_throttled_frac")
    clock = summary.get("tel_sm_clock_mhz_median")
    return ", ".join(filter(None, [
        f"nvml, {summary.get('tel_n_samples', 0)} samples",
        f"SM clock median {clock:.0f} MHz" if clock is not None else "",
        f"throttled {frac:.0%} of samples" if frac is not None else ""]))


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench.device=cuda but no CUDA device is visible; use bench.device=auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def impl_names(cfg) -> list[str]:
    """Selected impls, the baseline first; '*' expands to every registered impl."""
    names = list(REGISTRY) if "*" in cfg.impl.names else list(cfg.impl.names)
    return [cfg.baseline] + [n for n in names if n != cfg.baseline]


def fill_cache(cache: KVCache, cfg, weights, gen: torch.Generator) -> None:
    """The first `ctx` positions of every sequence: seeded random K/V, or a reference prefill."""
    ctx = cfg.bench.ctx
    if ctx == 0:
        return
    if cfg.bench.cache_fill == "prefill":
        prompt = torch.randint(0, weights.spec.vocab_size, (cache.k.shape[1], ctx), generator=gen, device=cache.k.device)
        LlamaDecoder(weights, max_len=cache.max_len).prefill(prompt, cache)
        return
    for t in (cache.k, cache.v):  # per layer, to keep the fp32 temporary small
        for i in range(t.shape[0]):
            t[i, :, :, :ctx].normal_(0.0, 1.0, generator=gen)


@dataclass
class Point:
    """What every impl of one benchmark point shares: weights, the filled KV cache, the step's inputs."""

    weights: ModelWeights
    cache: KVCache
    tokens: torch.Tensor  # [B]
    positions: torch.Tensor  # [B], all = bench.ctx


def prepare_point(cfg, spec, device: torch.device) -> Point:
    b = cfg.bench
    weights = build_weights(spec, cfg.quant.name, cfg.quant.group_size, device, seed=b.seed, path=cfg.model.path)
    gen = torch.Generator(device=device)
    gen.manual_seed(b.seed + 1)
    cache = KVCache.empty(spec, b.batch, b.ctx + 1, weights.dtype, device)
    fill_cache(cache, cfg, weights, gen)
    tokens = torch.randint(0, spec.vocab_size, (b.batch,), generator=gen, device=device)
    positions = torch.full((b.batch,), b.ctx, dtype=torch.long, device=device)
    return Point(weights, cache, tokens, positions)


def compare(logits: torch.Tensor, ref: torch.Tensor) -> dict:
    logits, ref = logits.float(), ref.float()
    finite = bool(torch.isfinite(logits).all())
    diff = (logits - ref).abs()
    return {
        "max_abs_err": float(diff.max()) if finite else math.inf,
        "rel_err": float(diff.norm() / ref.norm().clamp(min=1e-30)) if finite else math.inf,
        "top1_agree": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


MIN_FREE_BYTES = 64 << 20  # a point's rows are ~100 KB of parquet; a sweep's, logs and figures a few MB


def check_results_dir(root: str | os.PathLike, gpu_name: str) -> None:
    """Creates results.dir if missing and proves, by writing a hidden probe file where the rows will go
    (<root>/<gpu slug>/, else <root>), that a run's rows can be stored: otherwise an unwritable results.dir fails
    only after every impl was measured. os.access alone is not enough (root ignores modes; read-only mounts).
    A disk with less than MIN_FREE_BYTES free is refused too."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"results.dir={root} is a file, not a directory; point results.dir at a directory "
                          f"(it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"results.dir={root} cannot be created ({e.strerror or e}); "
                          f"point results.dir at a writable directory") from None
    folder = root / gpu_slug(gpu_name)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"results.dir={root} holds a file {folder.name} where this GPU's results folder goes; "
                          f"move that file or point results.dir elsewhere")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder if folder.is_dir() else root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"results.dir={root} is not writable ({e.strerror or e}); "
                          f"point results.dir at a writable directory or change its permissions") from None
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"results.dir={root} has {free / 1e6:.0f} MB free, less than the {MIN_FREE_BYTES / 1e6:.0f} "
                          f"MB a run's rows and logs may need; free some space or point results.dir elsewhere")


def unsupported_before_build(cfg, spec, device: torch.device, runs: list[Run]) -> dict:
    """{run: why} for the runs an impl's `unsupported` refuses from the configuration alone (device,
    quant, dtype, batch, shapes), asked before any weight exists, so that e.g. int4 torch-eager on a CPU is refused
    without building 8B weights. The context holds stand-ins that carry only those facts; an impl whose check needs
    more (it raises on a stand-in) is asked again, with the real context, when it is measured."""
    b, mode = cfg.bench, quant_mode(cfg.quant.name)
    weights = SimpleNamespace(spec=spec, quant=cfg.quant.name, group_size=cfg.quant.group_size, dtype=mode.act_dtype)
    k = SimpleNamespace(shape=(spec.n_layers, b.batch, spec.n_kv_heads, b.ctx + 1, spec.head_dim),
                        dtype=mode.act_dtype, device=device)
    cache = SimpleNamespace(k=k, v=k, max_len=b.ctx + 1)
    out = {}
    for run in runs:
        ctx = ImplContext(cfg=_run_cfg(cfg, run), spec=spec, weights=weights, cache=cache, device=device)
        try:
            why = REGISTRY[run.impl].unsupported(ctx)
        except Exception:  # noqa: BLE001 - the check needs real tensors: it runs again on the real context
            why = None
        if why:
            out[run] = why
    return out


def model_id(cfg, files: Optional[list[Path]] = None) -> str:
    """What the weights are, for the point key: a local checkpoint's content hash (harness.results.checkpoint_id:
    not its path, so two checkpoints in directories of one name differ and a moved copy stays the same), else the
    named model's name and a hash of its configured dimensions (an override such as model.n_layers=4 differs)."""
    if cfg.model.path:
        return "hf:" + checkpoint_id(cfg.model.path, files)
    d = OmegaConf.to_container(cfg.model, resolve=True)
    d = {k: v for k, v in d.items() if k != "path" and v is not None}  # a field added later with None keeps keys
    return f"{cfg.model.name}:" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def point_identity(cfg, spec, gpu_name: str, model: str) -> dict:
    """The key fields (harness.results.POINT_KEY_FIELDS) that every impl of one point shares."""
    b, quant = cfg.bench, cfg.quant.name
    return dict(model=spec.name, model_id=model, quant=quant, group_size=cfg.quant.group_size if quant == "int4" else 0,
                batch=b.batch, ctx=b.ctx, seed=b.seed, cache_fill=b.cache_fill, cuda_graphs=bool(b.cuda_graphs),
                tag=cfg.results.tag, gpu_name=gpu_name)


def run_identity(cfg, run: Run) -> dict:
    """The key fields of one run. mega_config only for impls with a launch granularity (the megakernel): they alone
    read megakernel.{schedule, programs_per_sm, tiles, backend}, so a tile sweep does not measure the other impls
    again. The backend is the run's resolved one (never "auto": megakernel.backend=auto and the backend it picked
    share a key); it enters mega_config only when it is not "triton", so rows from before there was a second backend
    keep their keys and match a Triton run of now. A JSON string, not a dict: the store keeps it as a column of this
    name."""
    mega = None
    cls = REGISTRY.get(run.impl)
    if cls is not None and cls.fusion != "none":
        mk = cfg.megakernel
        d = {"schedule": mk.schedule, "programs_per_sm": mk.programs_per_sm, "tiles": tile_options(cfg).given()}
        if run.backend and run.backend != "triton":
            d["backend"] = run.backend
        mega = json.dumps(d, sort_keys=True)
    return {"impl": run.impl, "fusion": run.fusion, "mega_config": mega,
            **({"mega_backend": run.backend} if run.backend else {})}


class Run(NamedTuple):
    """One measurement of a point: an impl, its fusion ("none" for impls without launch granularity) and, for the
    megakernel, the backend that runs at this point ("triton" or "gluon", never "auto"; "" for the other impls)."""

    impl: str
    fusion: str = "none"
    backend: str = ""


class Skipped(list):
    """The empty row list of a point that resume found nothing to measure at; `why` says so in a sentence."""

    def __init__(self, why: str):
        super().__init__()
        self.why = why


def run_point(cfg: DictConfig, label: str = "point") -> list[dict]:
    """Measures every selected impl at one (model, quant, batch, ctx) point; returns and stores the rows
    (Skipped, an empty list, when resume found nothing left to measure: every impl is done, or being measured by
    another process). `label` names the point in the progress lines ("point 2/6" in a sweep: harness.run).

    Everything a user can get wrong (values, the checkpoint's config and tensor headers, results.dir, a point no
    selected impl can run here) is refused in one ConfigError sentence before any weight is built. Another
    exception before any impl is measured stores a "failed" row per impl (retried on resume) and is raised."""
    spec = validate(cfg, list(REGISTRY))
    files = None
    if cfg.model.path:  # model_spec read config.json from the same path; now its tensors' names and shapes
        files = check_hf_checkpoint(cfg.model.path, spec)
    device = pick_device(cfg.bench.device)
    if device.type == "cpu":
        log.warning(CPU_BANNER)
    store = ResultsStore(cfg.results.dir)
    env = env_info(device)
    check_results_dir(cfg.results.dir, env["gpu_name"])
    env["run_id"] = uuid.uuid4().hex  # the rows of this run_point call (same-run ratios)
    gpu = env["gpu_name"]
    runs = impl_runs(cfg, spec, device)  # the baseline first; megakernel.backend=auto resolved for this point
    point = point_identity(cfg, spec, gpu, model_id(cfg, files))
    keys = {r: point_key({**point, **run_identity(cfg, r)}) for r in runs}
    progress = Progress(f"[{label}]")
    if not cfg.results.resume:
        return _measure_point(cfg, spec, device, store, env, point, keys, runs, runs, progress)

    where = f"{cfg.results.dir} under results.tag={cfg.results.tag}"
    done = store.done_keys(gpu)
    pending = [r for r in runs if keys[r] not in done]
    if not pending:
        log.info(f"skipped: every impl of this point is already in {where} "
                 f"(pass results.resume=false or a new results.tag to measure again)")
        return Skipped(f"every impl is already in {where}")
    mine, others = store.claim(gpu, [keys[r] for r in pending])
    try:
        # Again, now that the claims are held: a process that measured some of them may have stored its rows and
        # released its claims between the first look and ours.
        done = store.done_keys(gpu)
        todo = [r for r in pending if keys[r] in mine and keys[r] not in done]
        for r in runs:
            if r in todo:
                continue
            why = f"being measured by {others[keys[r]]}" if keys[r] in others else f"already in {where}"
            again = todo and r.impl == cfg.baseline
            log.info(f"impl {_run_name(r)}: {why}" + ("; measured again as this run's baseline" if again else "; skipped"))
        if not todo:
            busy = sorted({others[keys[r]] for r in pending if keys[r] in others})
            why = (f"every impl not yet in {where} is being measured by {'; '.join(busy)}" if busy
                   else f"every impl is already in {where}")
            log.info(f"skipped: {why}")
            return Skipped(why)
        # The baseline is measured with them even when it is done: speedups are over a baseline of the same run.
        measured = [r for r in runs if r in todo or r.impl == cfg.baseline]
        return _measure_point(cfg, spec, device, store, env, point, keys, measured, todo, progress)
    finally:
        store.release(gpu, mine)


def _measure_point(cfg, spec, device, store: ResultsStore, env: dict, point: dict, keys: dict,
                   runs: list[Run], todo: list[Run],
                   progress: Optional[Progress] = None) -> list[dict]:
    """Measures `runs` (`todo`, plus the baseline where it was done already) and stores one row per run."""
    b, quant, gs = cfg.bench, cfg.quant.name, cfg.quant.group_size
    progress = progress or Progress()

    def base_row(run: Run) -> dict:
        return {**env, **point, **run_identity(cfg, run), "point_key": keys[run]}

    def unsupported_rows(why: str) -> list[dict]:  # one per run still to do; an impl's own reason comes first
        return [{**base_row(r), "status": "unsupported", "note": early.get(r, why), "baseline": cfg.baseline,
                 "speedup": math.nan} for r in todo]

    early = unsupported_before_build(cfg, spec, device, runs)
    runs = [r for r in runs if r in todo or r not in early]  # a done baseline it refuses has nothing to add
    if all(r in early for r in todo):  # nothing to measure: say why per impl, build nothing, and let a sweep go on
        rows = unsupported_rows("")
        log.warning(f"every selected impl is unsupported at model={spec.name} quant={quant} batch={b.batch} "
                    f"on {device}; no weights built:")
        for r in rows:
            log.warning(f"impl {r['impl']}: unsupported: {r['note']}")
        store.append(rows)
        return rows
    try:
        check_fits(spec, quant, gs, b.batch, b.ctx + 1, device)
    except TooLargeForDevice as e:  # never fits this device: its rows say so (figures show it, a resumed sweep
        # skips it), and the run still stops with the sentence; memory that is only busy now leaves no row
        store.append(unsupported_rows(str(e)))
        raise
    resolved = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    nbytes = bytes_per_step(spec, quant, gs, b.batch, b.ctx)
    progress.info(f"{spec.name} {quant} batch={b.batch} ctx={b.ctx} on {device}: {_count(len(runs), 'run')}: "
                  + ", ".join(_run_name(r) for r in runs))
    try:
        progress.begin("copy bandwidth")
        copy_tbps = measure_copy_bandwidth(device)  # before the weights take the memory it needs
        progress.end(f"{copy_tbps:.2f} TB/s")
        t0 = time.perf_counter()
        progress.begin("weights")
        pt = prepare_point(cfg, spec, device)
        weights, cache, tokens, positions = pt.weights, pt.cache, pt.tokens, pt.positions
        progress.end(f"{(nbytes['weights'] + nbytes['lm_head']) / 1e9:.3f} GB of {quant} linear weights, "
                     f"KV cache of {b.batch} x {b.ctx + 1} positions, cache_fill={b.cache_fill}")
        ref_logits = None
        if cfg.check:
            progress.begin("reference")
            ref_logits = LlamaDecoder(weights, compute_dtype=torch.float32, max_len=cache.max_len).decode(
                tokens, positions, cache.clone())
            progress.end("fp32 logits that every impl is checked against")
        setup_s = time.perf_counter() - t0
    except ConfigError:
        progress.fail()
        raise
    except Exception as e:  # a record of the failure, then the caller decides (a sweep goes on, one run stops)
        progress.fail()
        note = f"point failed before any impl ran: {type(e).__name__}: {e}".splitlines()[0][:300]
        store.append([{**base_row(r), "status": "unsupported" if r in early else "failed",
                       "note": early.get(r, note), "config_json": resolved, "baseline": cfg.baseline,
                       "speedup": math.nan} for r in todo])
        log.error(f"{note} (a failed row per impl is stored; a resumed sweep measures them again)")
        raise

    rows = []
    for i, run in enumerate(runs, 1):
        name, run_cfg = run.impl, _run_cfg(cfg, run)
        conf = resolved if run_cfg is cfg else json.dumps(OmegaConf.to_container(run_cfg, resolve=True), sort_keys=True)
        row = {**base_row(run), "bytes_per_step": nbytes["total"], "copy_tbps": copy_tbps,
               "setup_s": setup_s, "status": "ok", "note": "", "config_json": conf}  # the run's own fusion, backend
        row.update({f"bytes_{k}": v for k, v in nbytes.items() if k != "total"})
        step = progress.child(f"{i}/{len(runs)} {_run_name(run)}")
        try:
            if run in early:
                raise Unsupported(early[run])
            row.update(_measure(name, run_cfg, spec, weights, cache, tokens, positions, ref_logits, device, step))
        except Unsupported as e:
            row.update(status="unsupported", note=str(e))
        except torch.cuda.OutOfMemoryError as e:
            row.update(status="failed", note=f"out of GPU memory: {str(e).splitlines()[0]}")
        except Exception as e:  # noqa: BLE001 - one impl's failure must not end the sweep
            row.update(status="failed", note=f"{type(e).__name__}: {e}".splitlines()[0][:300])
        finally:
            step.fail()  # a phase still open here was cut short by the exception being handled
        if row["status"] == "ok":
            row["gbps"] = achieved_gbps(nbytes["total"], row["latency_us_median"])
            row["pct_of_copy_bw"] = pct_of_copy_bw(nbytes["total"], row["latency_us_median"], copy_tbps)
            if cfg.check:
                row["correct"] = bool(row["rel_err"] <= REL_TOL[weights.dtype])
                if not row["correct"]:
                    row["status"] = "wrong"
            step.done(f"{row['status']}, median {row['latency_us_median']:.1f} µs over {_steps(row['repeats'])}")
        else:
            (log.warning if row["status"] == "failed" else log.info)(f"impl {name}: {row['status']}: {row['note']}")
        if run not in todo:
            row["note"] = "; ".join(filter(None, [row["note"], "measured again as this run's baseline"]))
        rows.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    base = next((r for r in rows if r["impl"] == cfg.baseline and r["status"] in ("ok", "wrong")), None)
    for r in rows:
        r["baseline"] = cfg.baseline
        ok = base is not None and "latency_us_median" in r
        r["speedup"] = base["latency_us_median"] / r["latency_us_median"] if ok else math.nan
    store.append(rows)
    table = format_table(rows, device)
    print(table)
    log.info("result table:\n" + table, extra=FILE_ONLY)  # the job's log file holds the run's result too
    progress.done(f"{_count(len(rows), 'run')}: " + ", ".join(f"{n} {s}" for s, n in _tally(rows).items()))
    return rows


def _tally(rows: list[dict]) -> dict:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _run_name(run: Run) -> str:
    return " ".join([run.impl] + ([f"fusion={run.fusion}"] if run.fusion != "none" else [])
                    + ([f"backend={run.backend}"] if run.backend else []))


def impl_runs(cfg, spec, device: torch.device) -> list[Run]:
    """The runs to measure at cfg's point on `device`: impls with a launch granularity (the megakernel) once per
    fusion in `megakernel.fusions` (the same-run ablation) or at `fusion`, and per backend in `megakernel.backends`
    (the same-run backend comparison, backends by name) or at `megakernel.backend` ("auto": the backend
    harness.config.resolved_backend picks here); others once, with fusion "none" and no backend."""
    runs = []
    for name in impl_names(cfg):
        cls = REGISTRY.get(name)
        if cls is not None and cls.fusion != "none":
            mk = cfg.megakernel
            backends = [resolved_backend(cfg, spec, cfg.quant.name, cfg.bench.batch, device, b)
                        for b in (list(mk.get("backends") or []) or [mega_backend(cfg)])]
            runs += [Run(name, f, b) for f in (list(mk.fusions) or [cfg.fusion]) for b in backends]
        else:
            runs.append(Run(name))
    return runs


def _run_cfg(cfg: DictConfig, run: Run) -> DictConfig:
    """cfg as one run sees it: its fusion and, for the megakernel, its resolved backend (megakernel.backend=auto
    becomes the backend that runs, so that the row's config_json says which)."""
    if run.fusion in ("none", cfg.fusion) and run.backend in ("", mega_backend(cfg)):
        return cfg
    c = cfg.copy()
    if run.fusion != "none":
        c.fusion = run.fusion
    if run.backend:
        c.megakernel.backend = run.backend
    return c


def _measure(name, cfg, spec, weights, cache, tokens, positions, ref_logits, device,
             progress: Optional[Progress] = None) -> dict:
    progress = progress or Progress(f"[{name}]")
    ctx = ImplContext(cfg=cfg, spec=spec, weights=weights, cache=cache, device=device)
    cls = REGISTRY[name]
    reason = cls.unsupported(ctx)
    if reason:
        raise Unsupported(reason)
    # Poison the position this step writes: an impl that reads it without writing it gets NaN logits.
    cache.k[:, :, :, positions[0]] = float("nan")
    cache.v[:, :, :, positions[0]] = float("nan")
    _reset_peak_memory(device)  # the peak of this impl alone (weights and cache, shared by every impl, included)
    t0 = progress.begin("build")
    impl = cls(ctx)
    try:
        out = _measure_impl(impl, cls, cfg, tokens, positions, ref_logits, device, build_t0=t0, progress=progress)
        out["peak_mem_gb"] = _peak_memory_gb(device)
        return out
    finally:
        impl.close()
        del impl


_clock = time.perf_counter  # build_s's clock (a module attribute, so that tests can replace it)


def _reset_peak_memory(device: torch.device) -> None:
    """Starts peak_mem_gb afresh (CUDA only: the CPU has no allocator statistics)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gb(device: torch.device) -> float:
    """The most GPU memory PyTorch's allocator held since _reset_peak_memory, in GB (1e9 bytes); NaN on the CPU."""
    if device.type != "cuda":
        return math.nan
    return torch.cuda.max_memory_allocated(device) / 1e9


def _measure_impl(impl, cls, cfg, tokens, positions, ref_logits, device, build_t0: Optional[float] = None,
                  progress: Optional[Progress] = None) -> dict:
    """The row's measured columns. build_s: from `build_t0` (before the impl's constructor; default: now) to the end
    of the first, checked step (what the impl compiles, tunes or captures there included; time_step's own CUDA-graph
    capture, after it, is not). `progress` reports the phases: build (begun by the caller when it gives build_t0),
    correctness, warm-up, timing, telemetry."""
    progress = progress or Progress(f"[{cls.name}]")
    out = {}
    if build_t0 is None:
        build_t0 = progress.begin("build")
    t0 = build_t0
    logits = impl.decode(tokens, positions)
    impl.check()
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["build_s"] = _clock() - t0
    progress.end("constructor and first checked step")
    progress.begin("correctness")
    if ref_logits is not None:
        out.update(compare(logits, ref_logits))
        progress.end(f"rel err {out['rel_err']:.2e}, top-1 agreement {out['top1_agree']:.2f} "
                     f"against the fp32 reference")
    else:
        progress.end("not checked: check=false")
    b = cfg.bench
    graphs = b.cuda_graphs and cls.graph_safe and device.type == "cuda"
    tel = TelemetrySampler(cfg.telemetry.mode, cfg.telemetry.get("interval_ms", 20), device=device)
    step = lambda: impl.decode(tokens, positions)  # noqa: E731

    def window(graphs: bool) -> _PhaseWindow:
        return _PhaseWindow(tel, progress, _steps(b.warmup) + (", CUDA graph captured" if graphs else ""),
                            _steps(b.repeats))

    progress.begin("warm-up")
    try:
        t = time_step(step, device, b.warmup, b.repeats, graphs, window=window(graphs))
    except GraphCaptureError as e:
        out["note"] = f"CUDA graph capture failed, timed without: {e}"[:300]
        log.warning(f"{progress.tag} CUDA graph capture failed; timing without CUDA graphs")
        t = time_step(step, device, b.warmup, b.repeats, False, window=window(False))
    impl.check()
    out.update(tel.summary())
    progress.end(_telemetry_detail(out))
    out.update(latency_us_median=t.median_us, latency_us_p10=t.p10_us, latency_us_p90=t.p90_us,
               latency_us_mean=t.mean_us, latency_us_std=t.std_us, repeats=t.repeats, timing_method=t.method)
    out.update(impl.info())
    return out


def format_table(rows: list[dict], device: Optional[torch.device] = None) -> str:
    def label(r: dict) -> str:  # the impl, with the backend that ran for the megakernel (no backend is the default)
        b = r.get("mega_backend")
        return f"{r['impl']}[{b}]" if isinstance(b, str) and b else r["impl"]
    w = max([16] + [len(label(r)) + 2 for r in rows])
    head = (f"{'impl':<{w}}{'fusion':<8}{'status':<12}{'lat µs':>10}{'GB/s':>9}{'%copy':>7}{'speedup':>9}"
            f"{'rel err':>10}{'top1':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(key: str, fmt: str) -> str:
            v, width = r.get(key), int(fmt.split(".")[0])
            return format(v, fmt) if isinstance(v, (int, float)) and not math.isnan(v) else "-".rjust(width)
        lines.append(f"{label(r):<{w}}{r['fusion']:<8}{r['status']:<12}{f('latency_us_median', '10.1f')}"
                     f"{f('gbps', '9.1f')}{f('pct_of_copy_bw', '7.1f')}{f('speedup', '9.2f')}{f('rel_err', '10.2e')}"
                     f"{f('top1_agree', '6.2f')}")
    r0 = rows[0]
    title = (f"{r0['model']} {r0['quant']} batch={r0['batch']} ctx={r0['ctx']} on {r0['gpu_name']}: "
             f"{r0['bytes_per_step'] / 1e9:.3f} GB/step, copy {r0['copy_tbps']:.2f} TB/s, baseline {r0['baseline']}")
    return "\n".join([title] + lines)
