"""Scheduling: the lowered instruction DAG -> per-program queues, cut into launches by the fusion level.

Fusion granularity = where the one instruction stream is cut into kernel launches; the instructions,
their math and their counters are the same at every level, only launch boundaries differ:
  model   one launch per decode step
  layer   one launch per transformer layer (Embed joins layer 0, LmHead + Argmax the last layer)
  block   one per attention block and per MLP block (Embed joins the first, LmHead + Argmax form the last)
  op      one per instruction type of each layer (Embed, LmHead, Argmax each alone)
A wait on a counter bumped in an earlier launch is already satisfied when the launch starts (stream
order); Argmax, the last instruction of the last launch, zeroes every counter for the next step.

Policies (each program's queue is a subsequence of the lowering's topological order, which is what
makes any policy deadlock-free when a launch's programs are co-resident):
  round-robin    the i-th instruction of a launch goes to program i mod P
  cost-balanced  list scheduling: each instruction goes to the program that can finish it first in a
                 simulation where an instruction costs the bytes it reads (Lowered.cost_bytes) and may
                 start once the producers of its wait counter have finished
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from kernels.mega.instructions import WORDS, Argmax, Embed, Instruction, LmHead, Op
from kernels.mega.lower import Lowered

FUSIONS = ("op", "block", "layer", "model")
_ATTN_OPS = (Op.EMBED, Op.RMS_QKV_ROPE, Op.ATTN_PARTIAL, Op.ATTN_REDUCE, Op.OPROJ_RESIDUAL)
_INSTR_OVERHEAD_BYTES = 16384  # queue read + wait + release of one instruction, in bytes-read equivalents


def segment_key(ins: Instruction, fusion: str, n_layers: int):
    """Instructions with equal keys (and adjacent in the stream) share a launch."""
    layer = getattr(ins, "layer", 0 if isinstance(ins, Embed) else n_layers - 1)
    head = isinstance(ins, (LmHead, Argmax))
    if fusion == "model":
        return 0
    if fusion == "layer":
        return layer
    if fusion == "block":
        return "head" if head else (layer, ins.OP in _ATTN_OPS)
    if fusion == "op":
        return (layer, int(ins.OP))
    raise ValueError(f"fusion={fusion!r} is not one of {FUSIONS}")


def round_robin(prog: Lowered, ids: list[int], n_programs: int, start: float) -> tuple[list[list[int]], float]:
    queues: list[list[int]] = [[] for _ in range(n_programs)]
    for j, i in enumerate(ids):
        queues[j % n_programs].append(i)
    return queues, start


def cost_balanced(prog: Lowered, ids: list[int], n_programs: int, start: float,
                  _finish: Optional[dict] = None) -> tuple[list[list[int]], float]:
    queues: list[list[int]] = [[] for _ in range(n_programs)]
    free = [(start, p) for p in range(n_programs)]  # min-heap of (time the program is free, program)
    counter_done: dict = {} if _finish is None else _finish  # counter -> latest finish of its producers so far
    end = start
    for i in ids:
        ins = prog.instrs[i]
        ready = max(start, counter_done.get(ins.wait.counter, start)) if ins.wait else start
        t_free, p = heapq.heappop(free)
        finish = max(t_free, ready) + prog.cost_bytes(ins) + _INSTR_OVERHEAD_BYTES
        heapq.heappush(free, (finish, p))
        queues[p].append(i)
        if ins.bump is not None:
            counter_done[ins.bump] = max(counter_done.get(ins.bump, start), finish)
        end = max(end, finish)
    return queues, end


POLICIES: dict[str, Callable] = {"round-robin": round_robin, "cost-balanced": cost_balanced}


@dataclass
class Launch:
    """One kernel launch: grid = len(programs); queues [P, max_len, WORDS] int32, lengths [P] int32."""

    programs: list[list[int]]  # instruction indices of each program's queue, in order
    queues: torch.Tensor
    lengths: torch.Tensor

    @property
    def grid(self) -> int:
        return len(self.programs)


@dataclass
class Schedule:
    lowered: Lowered
    fusion: str
    policy: str
    n_programs: int
    launches: list[Launch]

    @property
    def n_counters(self) -> int:
        return self.lowered.space.size

    def locate(self, instr_id: int) -> tuple[int, int, int]:
        """(launch, program, queue position) of an instruction."""
        for li, la in enumerate(self.launches):
            for p, q in enumerate(la.programs):
                if instr_id in q:
                    return li, p, q.index(instr_id)
        raise KeyError(instr_id)


def simulate(schedule: Schedule) -> float:
    """Makespan of a schedule in the cost model (bytes read + a per-instruction overhead): programs run their
    queues in order, an instruction starts when its program is free and its wait counter's producers are done."""
    prog = schedule.lowered
    t0, finish = 0.0, {}
    for la in schedule.launches:
        owner = {i: p for p, q in enumerate(la.programs) for i in q}
        free = [t0] * la.grid
        counter_done: dict = {}
        for i in sorted(owner):
            ins, p = prog.instrs[i], owner[i]
            ready = max(t0, counter_done.get(ins.wait.counter, t0)) if ins.wait else t0
            finish[i] = max(free[p], ready) + prog.cost_bytes(ins) + _INSTR_OVERHEAD_BYTES
            free[p] = finish[i]
            if ins.bump is not None:
                counter_done[ins.bump] = max(counter_done.get(ins.bump, t0), finish[i])
        t0 = max(free)  # the next launch starts when this one has ended
    return t0


def segments(prog: Lowered, fusion: str, limit: Optional[int] = None) -> list[list[int]]:
    """Instruction indices of each launch, in stream order (the first `limit` instructions only)."""
    n = len(prog.instrs) if limit is None else limit
    out: list[list[int]] = []
    last = object()
    for i in range(n):
        key = segment_key(prog.instrs[i], fusion, prog.spec.n_layers)
        if not out or key != last:
            out.append([])
        out[-1].append(i)
        last = key
    return out


def build_schedule(prog: Lowered, n_programs: int, policy: str = "round-robin", fusion: str = "model",
                   device: torch.device | str = "cpu", limit: Optional[int] = None) -> Schedule:
    """Queues for `n_programs` persistent programs per launch. `limit`: schedule only a prefix of the
    stream (a prefix of a topological order is closed under dependencies; the diff tool uses it)."""
    if policy not in POLICIES:
        raise ValueError(f"megakernel.schedule={policy!r} is not one of {sorted(POLICIES)}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
    if n_programs < 1:
        raise ValueError(f"n_programs={n_programs} must be >= 1")
    launches = []
    t = 0.0
    finish: dict = {}
    for ids in segments(prog, fusion, limit):
        if policy == "cost-balanced":
            queues, t = cost_balanced(prog, ids, n_programs, t, finish)
        else:
            queues, t = POLICIES[policy](prog, ids, n_programs, t)
        queues = [q for q in queues if q]  # programs with nothing to do are not launched
        max_len = max(len(q) for q in queues)
        words = torch.zeros(len(queues), max_len, WORDS, dtype=torch.int32)
        for p, q in enumerate(queues):
            if q:
                words[p, :len(q)] = torch.tensor([prog.instrs[i].words(prog.space, i) for i in q], dtype=torch.int32)
        lengths = torch.tensor([len(q) for q in queues], dtype=torch.int32)
        launches.append(Launch(queues, words.to(device), lengths.to(device)))
    return Schedule(prog, fusion, policy, n_programs, launches)
