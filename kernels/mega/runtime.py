"""Host side of the megakernel: lowering + schedule + device buffers + launches + error reporting.

`Megakernel(weights, cache, fusion=..., policy=..., programs_per_sm=...)` builds everything once;
`decode(tokens, positions)` copies the inputs into its device buffers and launches the step's kernels
(one per fusion segment) with no host synchronisation, so it can be captured in a CUDA graph.
`launch(advance=True)` instead takes tokens / positions from the device buffers and lets Argmax write
the next token and position there: replaying one captured graph generates token after token.

Errors (a bounded spin-wait that timed out) are reported without a sync inside decode: each
non-captured launch copies the error record to pinned host memory asynchronously, and the next
non-captured call raises if it was set; `check()` synchronises and raises at once.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from kernels import interpreting, sm_count
from kernels.mega import gluon_problem, hopper, resolve_backend
from kernels.mega.args import buffers_arg, cache_arg, constexprs, queue_arg, weights_arg
from kernels.mega.interpreter import _megakernel
from kernels.mega.lower import TileOptions, check_config, lower, pick_tiles
from kernels.mega.resources import MAX_THREADS_PER_SM, REGS_PER_SM, SMEM_PER_SM, programs_per_sm
from kernels.mega.schedule import Schedule, build_schedule
from kernels.mega.state import ERROR_WORDS, State
from kernels.mega.tiles import ERR_TIMEOUT
from kernels.mega.tuned import lookup as tuned_lookup
from kernels.model import KVCache, ModelWeights

SPIN_LIMIT_GPU = 1 << 22  # polls (~1 us each) before a wait is declared hung: seconds, never forever
SPIN_LIMIT_CPU = 1 << 10


class MegakernelError(RuntimeError):
    """A megakernel launch stopped on a timed-out wait; the message names the instruction and counter."""


def occupancy(compiled, device: torch.device) -> tuple[int, int]:
    """(registers per thread, programs of this compiled kernel that fit on one SM at once). The register count
    exists only once the kernel is loaded (_init_handles)."""
    compiled._init_handles()
    props = torch.cuda.get_device_properties(device)
    regs = int(compiled.n_regs)
    return regs, programs_per_sm(regs, compiled.metadata.num_warps, compiled.metadata.shared,
                                 getattr(props, "regs_per_multiprocessor", REGS_PER_SM),
                                 getattr(props, "max_threads_per_multi_processor", MAX_THREADS_PER_SM),
                                 getattr(props, "shared_memory_per_multiprocessor", SMEM_PER_SM))


class Megakernel:
    """The whole decode step of one (weights, KV cache) pair as persistent-kernel launches. backend: "triton" (the
    default of this class), "gluon", or "auto" (kernels.mega.resolve_backend picks one for these weights, batch and
    device); `self.backend` and info()["mega_backend"] name the one that runs."""

    def __init__(self, weights: ModelWeights, cache: KVCache, *, fusion: str = "model", policy: str = "round-robin",
                 programs_per_sm: int = 2, n_programs: Optional[int] = None, tiles: Optional[TileOptions] = None,
                 spin_limit: Optional[int] = None, timeline: bool = False, tuned: bool = True,
                 backend: str = "triton"):
        if not isinstance(cache.k, torch.Tensor):
            raise ValueError("megakernel needs the stacked KV cache [n_layers, B, KVH, S_max, hd], not per-layer buffers")
        self.w, self.cache = weights, cache
        spec, device = weights.spec, weights.device
        self.device = device
        self.batch = cache.k.shape[1]
        why = check_config(spec, weights.quant, weights.group_size, self.batch)
        if why:
            raise ValueError(f"megakernel: {why}")
        self.interpret = device.type != "cuda"
        # "auto" becomes the backend that runs here (kernels.mega.resolve_backend; it picks gluon only where
        # gluon_problem finds nothing); an explicit gluon that cannot run is refused with the reason
        tiles_given = bool(tiles is not None and tiles.given())
        why = gluon_problem(spec, weights.quant, self.batch, device, tiles_given) if backend == "gluon" else None
        if why:
            raise ValueError(why)
        self.backend = backend = resolve_backend(backend, spec, weights.quant, self.batch, device, tiles_given)
        if self.interpret and not interpreting():
            raise RuntimeError("megakernel on the CPU needs TRITON_INTERPRET=1, set before kernels are imported")
        self.fusion, self.policy = fusion, policy
        self.timeline = timeline  # per-instruction clocks (harness/timeline.py); a separately compiled kernel
        self.programs_per_sm_requested = programs_per_sm
        self.spin_limit = spin_limit or (SPIN_LIMIT_CPU if self.interpret else SPIN_LIMIT_GPU)
        # Tiles: the built-in choice (lower.pick_tiles), then this GPU's cached tuning winner for the point
        # (kernels/mega/tuned.json, unless tuned=False), then the caller's explicit options.
        self.tuned_tiles = {} if (self.interpret or not tuned or backend != "triton") else \
            tuned_lookup(torch.cuda.get_device_name(device), spec.name, weights.quant, self.batch)
        self.options = replace(TileOptions(**self.tuned_tiles), **(tiles or TileOptions()).given())
        cos, sin = spec.rope_tables(cache.max_len, device)
        self._weights_arg, self._cache_arg = weights_arg(weights), cache_arg(cache, cos, sin, spec)
        if n_programs is None:
            n_programs = 1 if self.interpret else sm_count(device) * programs_per_sm
        self.programs_per_sm = programs_per_sm
        self._descs = None  # gluon: the weights' TMA descriptors, made at the first launch
        self._build(n_programs)
        self.n_regs: Optional[int] = None  # registers per thread of the compiled kernel (GPU)
        if not self.interpret:  # size the grid from what is co-resident: a grid larger than that hangs on its waits
            for _ in range(3):
                self.n_regs, per_sm = occupancy(self._compile(), device)
                fit = per_sm * sm_count(device)
                if fit >= self.n_programs:
                    break
                if fit == 0:
                    raise RuntimeError("megakernel: the compiled kernel does not fit on one SM")
                self.programs_per_sm = fit // sm_count(device)
                self._build(fit)
            else:
                raise RuntimeError("megakernel: could not find a co-resident grid size")
        self._pinned_error = None
        self._error_event = None

    # ---- building ------------------------------------------------------------------------
    def _build(self, n_programs: int) -> None:
        spec, w = self.w.spec, self.w
        self.n_programs = n_programs
        if self.backend == "gluon":
            self.tiles = hopper.pick_tiles(spec, self.batch, self.cache.max_len, n_programs)
        else:
            self.tiles = pick_tiles(spec, w.quant, w.group_size, self.batch, self.cache.max_len, n_programs,
                                    interpret=self.interpret, options=self.options)
        self.prog = lower(spec, w.quant, w.group_size, self.batch, self.cache.max_len, self.tiles)
        self.schedule = build_schedule(self.prog, n_programs, self.policy, self.fusion, self.device)
        self.state = State.alloc(self.prog, self.device, n_programs)
        self._dims, self._tiles = constexprs(self.prog, w.dtype)
        q_max = max(la.queues.shape[1] for la in self.schedule.launches)
        n_rec = len(self.schedule.launches) * n_programs * q_max * 4 if self.timeline else 1
        self.timeline_buf = torch.zeros(n_rec, dtype=torch.int64, device=self.device)
        self.clock = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._streams: dict = {}  # gluon: launch index -> its weight stream (hopper.weight_stream) under self.schedule

    def reschedule(self, schedule: Schedule) -> None:
        """Runs `schedule` (of this lowering) from now on (tests, the diff tool)."""
        if schedule.lowered is not self.prog:
            raise ValueError("the schedule belongs to another lowering")
        self.schedule = schedule
        self._streams = {}

    def _timeline_slice(self, li: int) -> torch.Tensor:
        """Launch li's records [n_programs, its queue length, 4] in the timeline buffer."""
        if not self.timeline:
            return self.timeline_buf
        la = self.schedule.launches[li]
        start = sum(self.n_programs * x.queues.shape[1] * 4 for x in self.schedule.launches[:li])
        return self.timeline_buf[start:start + self.n_programs * la.queues.shape[1] * 4]

    def timeline_records(self) -> list[tuple[int, int, int, int, int, int, int]]:
        """(launch, program, queue position, instr id, t_start, t_ready, t_end, sm) of every instruction of the
        last step, read back from the timeline buffer (synchronises). Needs timeline=True."""
        if not self.timeline:
            raise RuntimeError("megakernel: build it with timeline=True to record a timeline")
        out = []
        for li, la in enumerate(self.schedule.launches):
            rec = self._timeline_slice(li).view(self.n_programs, la.queues.shape[1], 4).cpu().tolist()
            for p, queue in enumerate(la.programs):
                for pos, instr in enumerate(queue):
                    out.append((li, p, pos, instr, *rec[p][pos]))
        return out

    def _args(self, li: int, advance: bool) -> tuple[list, dict]:
        """(arguments, keyword arguments) of launch li (kernels/mega/args.py)."""
        la = self.schedule.launches[li]
        args = [queue_arg(la.queues, la.lengths, li, self.spin_limit, advance),
                buffers_arg(self.state, self._timeline_slice(li), self.clock), self._weights_arg, self._cache_arg]
        if self.backend == "gluon":
            if li not in self._streams:
                self._streams[li] = hopper.weight_stream(self.prog, la.programs, self.device)
            table, counts = self._streams[li]
            if self._descs is None:
                self._descs = hopper.descriptors(self.w)
            args += [*self._descs, table, counts, table.shape[1] * hopper.ENTRY]
            return args, dict(dims=self._dims, tiles=self._tiles, TIMELINE=self.timeline, DT=hopper.gl_dtype(self.w.dtype),
                              NB=hopper.nbuf(self.w.quant), num_warps=self.tiles.num_warps)
        kwargs = dict(dims=self._dims, tiles=self._tiles, TIMELINE=self.timeline, CLOCK=0 if self.interpret else 1,
                      L2_PREFETCH=self.tiles.l2_prefetch, num_warps=self.tiles.num_warps)
        return args, kwargs

    @property
    def _kernel(self):
        return hopper._megakernel_gluon if self.backend == "gluon" else _megakernel

    def _compile(self):
        """The compiled kernel of launch 0's signature (for its register / shared-memory footprint)."""
        args, kwargs = self._args(0, False)
        return self._kernel.warmup(*args, grid=(1,), **kwargs)

    # ---- running -------------------------------------------------------------------------
    def set_inputs(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        self.state.tokens.copy_(tokens)
        self.state.positions.copy_(positions)

    def launch(self, advance: bool = False) -> torch.Tensor:
        """Runs one decode step from the device buffers; returns logits [B, V] fp32 (a persistent buffer)."""
        self._poll_error()
        for li, la in enumerate(self.schedule.launches):
            args, kwargs = self._args(li, advance)
            self._kernel[(la.grid,)](*args, **kwargs)
        self._record_error()
        return self.state.logits

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B] at positions [B] -> logits [B, V] fp32; appends K/V at positions in the shared cache."""
        self.set_inputs(tokens, positions)
        return self.launch(advance=False)

    # ---- errors --------------------------------------------------------------------------
    def _capturing(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

    def _record_error(self) -> None:
        if self.interpret:
            return
        if self._capturing():
            return
        if self._pinned_error is None:
            self._pinned_error = torch.zeros(self.state.error.numel(), dtype=torch.int32, pin_memory=True)
            self._error_event = torch.cuda.Event()
        self._pinned_error.copy_(self.state.error, non_blocking=True)
        self._error_event.record()

    def _poll_error(self) -> None:
        """Raises for an error of an earlier launch whose record has arrived, without waiting."""
        if self.interpret:
            self._raise_if(self.state.error)
        elif not self._capturing() and self._error_event is not None and self._error_event.query():
            self._raise_if(self._pinned_error)

    def check(self) -> None:
        """Synchronises and raises MegakernelError if any launch so far timed out."""
        if not self.interpret:
            torch.cuda.synchronize(self.device)
        self._raise_if(self.state.error)

    def _raise_if(self, error: torch.Tensor) -> None:
        words = [int(x) for x in error.tolist()]
        if words[0] == 0:
            return
        records = [words[i:i + ERROR_WORDS] for i in range(ERROR_WORDS, len(words), ERROR_WORDS)]
        records = [r for r in records if r[0] != 0]
        # The most upstream stall (earliest launch, then earliest instruction) is the cause; the others
        # stopped because of it.
        first = min(records, key=lambda r: (r[7], r[3])) if records else [words[0]] + [-1] * (ERROR_WORDS - 1)
        msg = self.describe_error(first) + (f" ({len(records) - 1} other programs stopped after it)"
                                            if len(records) > 1 else "")
        self.state.error.zero_()  # usable again after the caller handles the error
        self.state.counters.zero_()
        if self._pinned_error is not None:
            self._pinned_error.zero_()
        raise MegakernelError(msg)

    def describe_error(self, e: list[int]) -> str:
        code, program, pos, instr_id, counter, seen, target, launch = e
        if code != ERR_TIMEOUT:
            return f"megakernel: unknown error code {code} (record {e})"
        ins = self.prog.instrs[instr_id] if 0 <= instr_id < len(self.prog.instrs) else f"#{instr_id}"
        try:
            key = str(self.prog.space.key(counter))
        except ValueError:
            key = "(invalid)"
        return (f"megakernel timed out: instruction #{instr_id} {ins} (launch {launch}, program {program}, queue "
                f"position {pos}) waited on counter {counter} {key} for {target} but saw {seen} after "
                f"{self.spin_limit} polls; a producer never released it (lowering/schedule bug) or the programs "
                f"were not all co-resident (lower megakernel.programs_per_sm)")

    def info(self) -> dict:
        return {"mega_backend": self.backend, "mega_programs": self.n_programs, "mega_programs_per_sm": self.programs_per_sm,
                "mega_launches": len(self.schedule.launches), "mega_instructions": len(self.prog.instrs),
                "mega_schedule": self.policy, "mega_regs": self.n_regs, "mega_tiles": self.tiles_summary()}

    def tiles_summary(self) -> str:
        """The tile configuration in one line (rows x columns per step [x tiles per instruction] per GEMV stage)."""
        t = self.tiles
        g = lambda name, x: f"{name}={x.block_n}x{x.block_k}" + (f"x{x.tiles_per_instr}" if x.tiles_per_instr > 1 else "")  # noqa: E731
        parts = [f"warps={t.num_warps}", g("qkv", t.qkv), g("o", t.o), g("gu", t.gate_up), g("down", t.down),
                 g("lm", t.lm_head), f"kv_block={t.kv_block}", f"splits={t.n_splits}", f"dot={int(t.use_dot)}"]
        if t.seq_groups > 1:
            parts.append(f"seq_groups={t.seq_groups}")
        if t.k_fold > 1:
            parts.append(f"k_fold={t.k_fold}")
        if t.l2_prefetch:
            parts.append(f"l2_prefetch={t.l2_prefetch}")
        if self.tuned_tiles:
            parts.append("tuned(" + ",".join(f"{k}={v}" for k, v in sorted(self.tuned_tiles.items())) + ")")
        return " ".join(parts)
