"""Test set-up. Without CUDA, Triton kernels run through the interpreter; TRITON_INTERPRET must be
set before any module defining @triton.jit kernels is imported, hence at the very top here."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gc  # noqa: E402
import time  # noqa: E402

if torch.cuda.is_available() and torch.cuda.device_count() > 1 and os.environ.get("PYTEST_XDIST_WORKER", "gw")[2:]:
    # `pytest -n N` on a machine with several GPUs: worker i works on GPU i mod count ("cuda" means the current
    # device everywhere in the tests and kernels), so memory and SMs are shared by N / count workers, not N.
    torch.cuda.set_device(int(os.environ["PYTEST_XDIST_WORKER"][2:]) % torch.cuda.device_count())

import pytest  # noqa: E402

GPU_MEMORY_WAIT_S = 240  # under `pytest -n N`, other workers free their memory when their tests end


def big_memory(heavy: bool) -> list:
    """Marks for a GPU test that needs 30-70 GB: under `pytest -n N --dist loadgroup` (the GPU command in README.md)
    all such tests run in one worker, one after another, so that they never coincide. (Grouping every 3B / 8B test
    by model instead serialised so much that the suite outran a 10-minute call on an H200.)"""
    return [pytest.mark.xdist_group("big-memory")] if heavy else []


def wait_for_gpu_memory(nbytes: int, what: str, timeout_s: float = GPU_MEMORY_WAIT_S, skip: bool = True) -> bool:
    """Waits until the GPU has `nbytes` free (other test processes finishing) and returns True; if that never
    happens within timeout_s, skips the test naming what it needed (skip=False: returns False instead)."""
    deadline = time.time() + timeout_s
    while torch.cuda.mem_get_info()[0] < nbytes:
        if time.time() > deadline:
            if not skip:
                return False
            pytest.skip(f"{what} needs ~{nbytes / 1e9:.0f} GB of GPU memory; it was not free within {timeout_s:.0f} s")
        time.sleep(2.0)
    return True


@pytest.fixture(autouse=True)
def _gpu_headroom(request):
    """Every GPU test starts with a few GB free: with several test processes on one GPU, a small allocation must
    not fail because a big test elsewhere holds the rest for a moment."""
    gpu = "gpu" in request.keywords and torch.cuda.is_available()
    if gpu:
        wait_for_gpu_memory(4 << 30, request.node.name)
    yield
    if gpu:  # hand this process's freed blocks back to the driver, for the other test processes on the GPU
        gc.collect()
        torch.cuda.empty_cache()


GPU_OOM_RETRIES = 2  # under `pytest -n N`, a GPU test that ran out of memory is run again this many times


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Under `pytest -n N` on one GPU, two workers can both see enough free memory and then both allocate it: the
    later one's out-of-memory error says nothing about the code under test. Such a GPU test is run again, after its
    process returns its blocks and waits (up to GPU_MEMORY_WAIT_S, never skipping) for a quarter of the GPU to be
    free; the last try's error, out of memory or not, is the test's. Without xdist an out-of-memory error is the
    test's own and is not retried."""
    if "gpu" not in pyfuncitem.keywords or not torch.cuda.is_available() or "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
    for attempt in range(GPU_OOM_RETRIES + 1):
        try:
            pyfuncitem.obj(**args)
            return True
        except torch.OutOfMemoryError:
            if attempt == GPU_OOM_RETRIES:
                raise
        gc.collect()  # outside the except block: the traceback no longer holds the test's tensors
        torch.cuda.empty_cache()
        time.sleep(5.0 * (attempt + 1))
        wait_for_gpu_memory(torch.cuda.mem_get_info()[1] // 4, pyfuncitem.name, skip=False)
    return True


def pytest_runtest_logreport(report):
    """With GPU_TEST_LOG=PATH, one line per test phase as it ends (worker, outcome, seconds, test): a run cut short
    by a time limit still shows where its time went."""
    path = os.environ.get("GPU_TEST_LOG")
    if path and (report.when == "call" or report.outcome != "passed"):
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', '-')} {report.when} {report.outcome} "
                    f"{report.duration:.1f} {report.nodeid}\n")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with a reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
