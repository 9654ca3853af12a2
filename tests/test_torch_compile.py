"""torch-compile's choice among its builds (the part that runs without CUDA): the fastest build is kept, every
build is timed, and each build compiles its own code object."""
import pytest
import torch

from harness.impls.torch_compile import _own_code, fastest_build


def test_fastest_build_keeps_the_fastest_and_reports_every_time():
    made = []

    def build(i):
        made.append(i)
        return lambda: i

    times = {0: 4300.0, 1: 3840.0, 2: 5100.0}
    fn, us = fastest_build(3, build, lambda f: times[f()])
    assert made == [0, 1, 2]
    assert fn() == 1
    assert us == [4300.0, 3840.0, 5100.0]


@pytest.mark.parametrize("us", [7.0, float("nan")])  # nan: a single build is not timed
def test_fastest_build_of_one_is_that_build(us):
    fn, times = fastest_build(1, lambda i: (lambda: "only"), lambda f: us)
    assert fn() == "only" and len(times) == 1


def test_a_tie_keeps_the_earlier_build():
    fn, _ = fastest_build(3, lambda i: (lambda: i), lambda f: 10.0)
    assert fn() == 0


def test_each_build_has_its_own_code_object_and_the_same_behaviour():
    w = torch.arange(4.0)

    def step(x, scale=2.0):
        return (x * w).sum() * scale

    a, b = _own_code(step, 0), _own_code(step, 1)
    assert a.__code__ is not b.__code__ and a.__code__ is not step.__code__
    assert a.__code__.co_name == "step_build0" and b.__code__.co_name == "step_build1"
    x = torch.ones(4)
    assert a(x).item() == b(x).item() == step(x).item() == 12.0
    assert a(x, scale=1.0).item() == 6.0  # defaults and the closure (w) carried over
