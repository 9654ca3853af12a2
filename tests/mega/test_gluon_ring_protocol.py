"""The Gluon megakernel's weight-ring handshake (kernels/mega/hopper.py: _loader, _take, _drain) as a model on the
CPU, with the kernel's own slot and phase functions (hopper.ring_slot, hopper.ring_phase, called as Python).

The model runs a one-warp loader and WARPS compute warps interleaved at random. Its mbarriers complete a phase per
arrive (count 1) or per landed TMA load and answer parity waits as the hardware does: a barrier two phases past
the one a warp expects reads the same as the one it expects, which is the hazard a ring protocol must rule out.
TMA loads land after a random delay. For ring depths, stream lengths and stop points (an error stops the compute
warps early, and _drain takes the rest), every run must:
- end: no agent waits forever;
- land every load before the program ends (its shared memory goes then);
- give each compute warp chunk j's bytes when it reads slot j % NB (a slot is never refilled while a warp may
  still read it);
- refill a slot only after the compute warps handed its previous chunk back.

A variant without _drain's thread barrier (the ordering a review found missing) must fail, so the model can."""
import random

import pytest

from kernels.mega import hopper as H

WARPS = H.WARPS


def _slot(j, nb):
    return H.ring_slot.fn(j, nb)


def _phase(j, nb):
    return H.ring_phase.fn(j, nb)


class _Barrier:
    """An mbarrier of count 1: `done` phases completed; a wait on parity p passes once the phase of parity p has
    completed, i.e. while the phase in progress (number `done`) has the other parity."""

    def __init__(self):
        self.done = 0

    def passes(self, parity: int) -> bool:
        return (self.done & 1) != parity


def _run(nb: int, n: int, stop: int, seed: int, drain_barrier: bool = True) -> None:
    rng = random.Random(seed)
    ready = [_Barrier() for _ in range(nb)]
    empty = [_Barrier() for _ in range(nb)]
    content = [None] * nb  # the chunk a slot holds (None: a load is in flight)
    in_flight = {}  # slot -> chunk of the TMA load not yet landed
    released = set()
    sync = {"count": 0, "gen": 0}  # the compute warps' thread barrier

    def thread_barrier():
        gen = sync["gen"]
        sync["count"] += 1
        if sync["count"] == WARPS:
            sync["count"], sync["gen"] = 0, gen + 1
        while sync["gen"] == gen:
            yield

    def wait(bar, parity):
        while not bar.passes(parity):
            yield

    def release(j):  # warp 0's arrive on the slot of chunk j (thread 0 of the partition)
        assert j not in released, f"chunk {j} handed back twice"
        released.add(j)
        empty[_slot(j, nb)].done += 1

    def loader():
        for j in range(n):
            s = _slot(j, nb)
            yield from wait(empty[s], _phase(j, nb) ^ 1)
            assert j < nb or (j - nb) in released, f"slot {s} refilled with chunk {j} before chunk {j - nb} was read"
            assert s not in in_flight
            content[s], in_flight[s] = None, j

    def warp(w):
        for j in range(stop):  # _take, chunk by chunk
            yield from thread_barrier()
            if w == 0 and j > 0:
                release(j - 1)
            yield from wait(ready[_slot(j, nb)], _phase(j, nb))
            yield  # the read may come any time after the wait
            assert content[_slot(j, nb)] == j, f"warp {w} read {content[_slot(j, nb)]} for chunk {j}"
        # _drain
        yield from thread_barrier()
        if w == 0 and stop > 0:
            release(stop - 1)
        for jj in range(stop, n):
            yield from wait(ready[_slot(jj, nb)], _phase(jj, nb))
            if drain_barrier:
                yield from thread_barrier()
            if w == 0:
                release(jj)

    agents = [loader()] + [warp(w) for w in range(WARPS)]
    for _ in range(200 * (n + 1) * (WARPS + 2)):
        landing = list(in_flight)
        choices = len(agents) + len(landing)
        if not choices:
            break
        pick = rng.randrange(choices)
        if pick >= len(agents):  # a TMA load lands and completes its slot's `ready` phase
            s = landing[pick - len(agents)]
            content[s] = in_flight.pop(s)
            ready[s].done += 1
            continue
        try:
            next(agents[pick])
        except StopIteration:
            agents.pop(pick)
    else:
        raise AssertionError(f"no progress: {len(agents)} agents still waiting, loads in flight {in_flight} "
                             f"(nb={nb}, n={n}, stop={stop}, seed={seed})")
    assert not in_flight, "a load was still in flight when the program ended"
    assert released == set(range(n)), f"chunks never handed back: {sorted(set(range(n)) - released)}"


@pytest.mark.parametrize("nb", [2, H.nbuf("bf16"), H.nbuf("int8")])
@pytest.mark.parametrize("n", [0, 1, 3, 8, 17])
def test_ring_handshake_ends_and_never_overwrites_a_chunk_being_read(nb, n):
    for seed in range(60):
        stop = n if seed % 2 else random.Random(seed).randrange(n + 1)  # half the runs stop early (an error)
        _run(nb, n, stop, seed)


def test_drain_without_its_barrier_can_hang_or_misread():
    """Without the barrier between every warp's `ready` wait and warp 0's arrive, a fast warp 0 lets the loader refill
    the slot while a slower warp has not yet seen the first load, and that warp then waits on a phase that never
    comes (or passes on the wrong one)."""
    failures = 0
    for seed in range(300):
        try:
            _run(2, 9, 0, seed, drain_barrier=False)
        except AssertionError:
            failures += 1
    assert failures > 0
