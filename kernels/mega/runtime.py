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

from typing import Optional

import torch

from harness.reference import KVCache, rope_tables
from harness.weights import ModelWeights
from kernels import dot_operand_dtype, interpreting, sm_count
from kernels.gemv import KIND_CODES, KIND_INT8_UNIT
from kernels.mega.instructions import WORDS
from kernels.mega.interpreter import ERR_TIMEOUT, _megakernel
from kernels.mega.lower import check_config, l2_prefetch_problem, lower, next_pow2, pick_tiles
from kernels.mega.tuned import lookup as tuned_lookup
from kernels.mega.resources import MAX_THREADS_PER_SM, REGS_PER_SM, SMEM_PER_SM, programs_per_sm
from kernels.mega.schedule import Schedule, build_schedule
from kernels.mega.state import ERROR_WORDS, State, hd_pad_of

SPIN_LIMIT_GPU = 1 << 22  # polls (~1 us each) before a wait is declared hung: seconds, never forever
SPIN_LIMIT_CPU = 1 << 10


class MegakernelError(RuntimeError):
    """A megakernel launch stopped on a timed-out wait; the message names the instruction and counter."""


def _contig(t: torch.Tensor, what: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"megakernel: {what} must be contiguous (row-major, as harness/weights.py builds it)")
    return t


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


def constexpr_args(spec, kind_name: str, group_size: int, act_dtype: torch.dtype, batch: int, t, prog) -> dict:
    """The interpreter kernel's constexprs (and num_warps) for one lowering: everything that specialises it."""
    kind = KIND_CODES[kind_name]
    g = max(group_size, 2)

    def wstr(k):  # weight row stride (elements) for K input columns
        return k // 2 if kind == 2 else k

    def sstr(k):  # scale / zero row stride
        return k // g if kind == 2 else 1
    gq = spec.n_heads // spec.n_kv_heads
    return dict(
        D=spec.dim, H=spec.n_heads, KVH=spec.n_kv_heads, HD=spec.head_dim, F=spec.ffn_dim, V=spec.vocab_size,
        B=batch, KIND=KIND_INT8_UNIT if (kind_name == "int8" and t.int8_unit_floats) else kind, QGROUP=g,
        N_COUNTERS=prog.space.size,
        WSTR_D=wstr(spec.dim), WSTR_Q=wstr(spec.q_dim), WSTR_F=wstr(spec.ffn_dim),
        SSTR_D=sstr(spec.dim), SSTR_Q=sstr(spec.q_dim), SSTR_F=sstr(spec.ffn_dim),
        B_PAD=t.b_pad, USE_DOT=t.use_dot, DOT_DTYPE=dot_operand_dtype(act_dtype), PREFETCH=t.prefetch,
        FOLD=t.k_fold,
        QKV_P=t.qkv.block_n, QKV_BK=t.qkv.block_k, QKV_GPS=t.qkv.groups_per_step,
        O_BN=t.o.block_n, O_BK=t.o.block_k, O_GPS=t.o.groups_per_step, O_TPI=t.o.tiles_per_instr,
        GU_BN=t.gate_up.block_n, GU_BK=t.gate_up.block_k, GU_GPS=t.gate_up.groups_per_step,
        GU_TPI=t.gate_up.tiles_per_instr,
        DN_BN=t.down.block_n, DN_BK=t.down.block_k, DN_GPS=t.down.groups_per_step, DN_TPI=t.down.tiles_per_instr,
        LM_BN=t.lm_head.block_n, LM_BK=t.lm_head.block_k, LM_GPS=t.lm_head.groups_per_step,
        LM_TPI=t.lm_head.tiles_per_instr, N_LM=prog.n_lm,
        EMBED_BLOCK=t.embed_block, KV_BLOCK=t.kv_block, N_SPLITS=t.n_splits, SPLITS_PAD=next_pow2(t.n_splits),
        G_PAD=max(next_pow2(gq), 16), GR_PAD=next_pow2(gq), HD_PAD=hd_pad_of(spec.head_dim),
        ARGMAX_BLOCK=min(t.argmax_block, next_pow2(prog.n_lm)), W=WORDS, num_warps=t.num_warps,
        **({"maxnreg": t.max_regs} if t.max_regs else {}))


class Megakernel:
    """The whole decode step of one (weights, KV cache) pair as persistent-kernel launches."""

    def __init__(self, weights: ModelWeights, cache: KVCache, *, fusion: str = "model", policy: str = "round-robin",
                 programs_per_sm: int = 2, n_programs: Optional[int] = None, tiles: Optional[dict] = None,
                 spin_limit: Optional[int] = None, timeline: bool = False, tuned: bool = True):
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
        if self.interpret and not interpreting():
            raise RuntimeError("megakernel on the CPU needs TRITON_INTERPRET=1, set before kernels are imported")
        self.fusion, self.policy = fusion, policy
        self.timeline = timeline  # per-instruction clocks (harness/timeline.py); a separately compiled kernel
        self.programs_per_sm_requested = programs_per_sm
        self.spin_limit = spin_limit or (SPIN_LIMIT_CPU if self.interpret else SPIN_LIMIT_GPU)
        # Tiles: the built-in choice (lower.pick_tiles), then this GPU's cached tuning winner for the point
        # (kernels/mega/tuned.json, unless tuned=False), then the caller's explicit overrides.
        self.tuned_tiles = {} if (self.interpret or not tuned) else \
            tuned_lookup(torch.cuda.get_device_name(device), spec.name, weights.quant, self.batch)
        self._tile_overrides = {**self.tuned_tiles, **(tiles or {})}
        self.cos, self.sin = rope_tables(spec, cache.max_len, device)
        self._static = self._static_args()
        if n_programs is None:
            n_programs = 1 if self.interpret else sm_count(device) * programs_per_sm
        self.programs_per_sm = programs_per_sm
        self._build(n_programs)
        self.n_regs: Optional[int] = None  # registers per thread of the compiled kernel (GPU)
        if not self.interpret:  # size the grid from what is co-resident (FACTS.md: the hang lesson)
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
        self.tiles = pick_tiles(spec, w.quant, w.group_size, self.batch, self.cache.max_len, n_programs,
                                interpret=self.interpret, **self._tile_overrides)
        self.prog = lower(spec, w.quant, w.group_size, self.batch, self.cache.max_len, self.tiles)
        self.schedule = build_schedule(self.prog, n_programs, self.policy, self.fusion, self.device)
        self.state = State.alloc(self.prog, self.device, n_programs)
        self._check_l2_prefetch()
        self._constexprs = self._constexpr_args()
        q_max = max(la.queues.shape[1] for la in self.schedule.launches)
        n_rec = len(self.schedule.launches) * n_programs * q_max * 4 if self.timeline else 1
        self.timeline_buf = torch.zeros(n_rec, dtype=torch.int64, device=self.device)
        self.clock = torch.zeros(1, dtype=torch.int64, device=self.device)

    def reschedule(self, schedule: Schedule) -> None:
        """Runs `schedule` (of this lowering) from now on (tests, the diff tool)."""
        if schedule.lowered is not self.prog:
            raise ValueError("the schedule belongs to another lowering")
        self.schedule = schedule

    def _static_args(self) -> list:
        w, c = self.w, self.cache
        lin = []
        for name in ("wqkv", "wo", "w_gate", "w_up", "w_down"):
            ql = w.stacked[name]
            wt = _contig(ql.weight, f"stacked {name} weight")
            lin += [wt, _contig(ql.scale, f"{name} scale") if ql.scale is not None else wt,
                    _contig(ql.zero, f"{name} zero") if ql.zero is not None else wt]
        lm = w.lm_head
        lin_lm = [_contig(lm.weight, "lm_head weight"), lm.scale if lm.scale is not None else lm.weight,
                  lm.zero if lm.zero is not None else lm.weight]
        norms = [_contig(w.embed, "embed"), _contig(w.stacked_norms["attn_norm"], "attn norms"),
                 _contig(w.stacked_norms["mlp_norm"], "mlp norms"), _contig(w.final_norm, "final norm")]
        qkv, o, gate, up, down = (lin[i:i + 3] for i in range(0, 15, 3))
        return norms + qkv + o + gate + up + down + lin_lm + [_contig(c.k, "KV cache k"), _contig(c.v, "KV cache v"),
                                                              self.cos.contiguous(), self.sin.contiguous()]

    def _constexpr_args(self) -> dict:
        cx = constexpr_args(self.w.spec, self.w.lm_head.kind, self.w.group_size, self.w.dtype, self.batch,
                            self.tiles, self.prog)
        return dict(cx, TIMELINE=self.timeline, CLOCK=0 if self.interpret else 1,
                    L2_PREFETCH=0 if self.interpret else self.tiles.l2_prefetch)  # inline PTX: GPU only

    def _check_l2_prefetch(self) -> None:
        problem = l2_prefetch_problem(self.w.spec, self.w.quant, self.tiles, self.tiles.l2_prefetch)
        if problem:
            raise ValueError(f"megakernel: {problem}")

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

    def _args(self, li: int, advance: bool) -> list:
        la, st, spec = self.schedule.launches[li], self.state, self.w.spec
        return ([la.queues, la.lengths, la.queues.shape[1] * WORDS, st.counters, st.error, li, self.spin_limit,
                 int(advance), st.tokens, st.positions, st.next_tokens, st.h, st.q, st.attn, st.act, st.o_part, st.lse,
                 st.logits, st.pmax, st.pidx] + self._static
                + [self.cache.max_len, spec.norm_eps, spec.head_dim ** -0.5 * 1.4426950408889634,
                   self._timeline_slice(li), self.clock])

    def _compile(self):
        """The compiled kernel of launch 0's signature (for its register / shared-memory footprint)."""
        return _megakernel.warmup(*self._args(0, False), grid=(1,), **self._constexprs)

    # ---- running -------------------------------------------------------------------------
    def set_inputs(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        self.state.tokens.copy_(tokens)
        self.state.positions.copy_(positions)

    def launch(self, advance: bool = False) -> torch.Tensor:
        """Runs one decode step from the device buffers; returns logits [B, V] fp32 (a persistent buffer)."""
        self._poll_error()
        for li, la in enumerate(self.schedule.launches):
            _megakernel[(la.grid,)](*self._args(li, advance), **self._constexprs)
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
        return {"mega_programs": self.n_programs, "mega_programs_per_sm": self.programs_per_sm,
                "mega_launches": len(self.schedule.launches), "mega_instructions": len(self.prog.instrs),
                "mega_schedule": self.policy, "mega_regs": self.n_regs, "mega_tiles": self.tiles_summary()}

    def tiles_summary(self) -> str:
        """The tile configuration in one line (rows x columns per step [x tiles per instruction] per GEMV stage)."""
        t = self.tiles
        g = lambda name, x: f"{name}={x.block_n}x{x.block_k}" + (f"x{x.tiles_per_instr}" if x.tiles_per_instr > 1 else "")  # noqa: E731
        parts = [f"warps={t.num_warps}", g("qkv", t.qkv), g("o", t.o), g("gu", t.gate_up), g("down", t.down),
                 g("lm", t.lm_head), f"kv_block={t.kv_block}", f"splits={t.n_splits}", f"dot={int(t.use_dot)}"]
        if t.prefetch:
            parts.append("prefetch")
        if t.max_regs:
            parts.append(f"max_regs={t.max_regs}")
        if t.l2_prefetch:
            parts.append(f"l2_prefetch={t.l2_prefetch}")
        if t.int8_unit_floats:
            parts.append("int8_unit_floats")
        if self.tuned_tiles:
            parts.append("tuned(" + ",".join(f"{k}={v}" for k, v in sorted(self.tuned_tiles.items())) + ")")
        return " ".join(parts)
