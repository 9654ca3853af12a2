"""Progress and logging of a run: the phases of a point logged in order with their elapsed times (console and the
Hydra job's run.log), `quiet=true` silencing them on the console only, the result table printed as before, a
sweep's points numbered k/N, and a long phase saying it is still running."""
import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["model=tiny", "bench=quick", "bench.ctx=8", "impl.names=[torch-eager]"]
POINT_PHASES = ["copy bandwidth", "weights", "reference"]
IMPL_PHASES = ["build", "correctness", "warm-up", "timing", "telemetry"]
# "[tag] phase: 1.23 s", optionally "(detail)"; Hydra's file format puts "[time][logger][LEVEL] - " before it
PHASE_LINE = re.compile(r"(?:^|\] - )\[(?P<tag>[^\]]+)\] (?P<phase>[a-z][a-z -]*): (?P<s>\d+\.\d\d) s(?: \(|$)")
# The result table's column header, as run.py has printed it since the first release: scripts may parse it.
TABLE_HEAD = "impl            fusion  status          lat µs     GB/s  %copy  speedup   rel err  top1"


def _run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    """run.py on the tiny model: (process, the job's run.log, results.dir)."""
    results, hydra = tmp / "results", tmp / "hydra"
    r = subprocess.run([sys.executable, "run.py", *ARGS, *args, f"results.dir={results}", f"hydra.run.dir={hydra}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = hydra / "run.log"
    assert log.is_file(), sorted(p.name for p in hydra.iterdir())
    return r, log.read_text(), results


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("loud"))


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("quiet"), "quiet=true")


def _phases(text: str) -> list[tuple[str, str, float]]:
    return [(m["tag"], m["phase"], float(m["s"])) for m in map(PHASE_LINE.search, text.splitlines()) if m]


EXPECTED = ([("point", p) for p in POINT_PHASES] + [("1/1 torch-eager", p) for p in IMPL_PHASES + ["done"]]
            + [("point", "done")])


def test_phases_of_a_point_are_logged_in_order_with_elapsed_times(loud):
    r, _, _ = loud
    phases = _phases(r.stdout)
    assert [(tag, phase) for tag, phase, _ in phases] == EXPECTED, r.stdout
    assert all(s >= 0 for _, _, s in phases)
    impl_sum = sum(s for tag, phase, s in phases if tag == "1/1 torch-eager" and phase != "done")
    impl_done = next(s for tag, phase, s in phases if (tag, phase) == ("1/1 torch-eager", "done"))
    assert impl_done >= impl_sum - 0.05  # the impl's span holds its phases (each rounded to 0.01 s)
    # the point's header line names what runs, before its first phase
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("[point] tiny bf16 batch=1 ctx=8 on cpu: 1 run"))
    assert head < next(i for i, line in enumerate(lines) if line.startswith("[point] copy bandwidth: "))


def test_the_hydra_job_log_holds_the_progress_and_the_table(loud):
    r, log, results = loud
    assert [(tag, phase) for tag, phase, _ in _phases(log)] == EXPECTED, log
    assert "[harness.runner][WARNING] - NOTE: no CUDA device" in log  # levels and loggers are in the file
    assert _table(results) in log


def test_quiet_silences_the_progress_on_the_console_but_not_in_the_job_log(loud, quiet):
    r, log, results = quiet
    assert _phases(r.stdout) == [] and "[point]" not in r.stdout, r.stdout
    assert "NOT meaningful" in r.stdout  # a warning still shows
    assert [(tag, phase) for tag, phase, _ in _phases(log)] == EXPECTED, log
    assert _table(results) in r.stdout
    # the loud run's console has what the quiet one left out
    assert len(loud[0].stdout.splitlines()) > len(r.stdout.splitlines()) + len(EXPECTED) - 1


def _table(results: Path) -> str:
    """The result table of the rows the run stored, as format_table writes it."""
    from harness.results import load_results
    from harness.runner import format_table

    return format_table(load_results(results).to_dict("records"))


@pytest.mark.parametrize("which", ["loud", "quiet"])
def test_the_result_table_on_stdout_is_unchanged(which, request):
    """The table is printed once, in one piece (no log line inside it), with the same header as before."""
    r, _, results = request.getfixturevalue(which)
    table = _table(results)
    assert table.splitlines()[1] == TABLE_HEAD
    assert table in r.stdout
    assert r.stdout.count(TABLE_HEAD) == 1 and "result table:" not in r.stdout
    assert r.stdout.splitlines()[r.stdout.splitlines().index(TABLE_HEAD) + 2].startswith("torch-eager     none    ok")


def test_a_sweep_numbers_its_points(tmp_path):
    """Each job of a multirun is "point k/N" in its progress lines and its run.log; a bad point says so in its line."""
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "run.py", "-m", *ARGS, "bench.batch=1,0", f"results.dir={tmp_path / 'r'}",
                        f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]  # the bad point fails the sweep
    assert [(t, p) for t, p, _ in _phases(r.stdout)] == (
        [("point 1/2", p) for p in POINT_PHASES] + [("point 1/2: 1/1 torch-eager", p) for p in IMPL_PHASES + ["done"]]
        + [("point 1/2", "done")])
    assert re.search(r"^\[point 1/2\] ok in \d+\.\d s; 1 of 2 points done$", r.stdout, re.M), r.stdout
    assert re.search(r"^\[point 2/2\] config-error in \d+\.\d s; 2 of 2 points done$", r.stdout, re.M), r.stdout
    assert "[point 1/2] copy bandwidth: " in (sweep / "0" / "run.log").read_text()
    assert "error: bench.batch=0 is out of range" in (sweep / "1" / "run.log").read_text()


# ---------------------------------------------------------------------------------------------- in process

class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_phase_times_on_a_fake_clock(monkeypatch, caplog):
    """Through runner._measure with an impl that moves a fake clock: 2 s building + 0.25 s per step (quick bench:
    1 warm-up step, 3 timed steps)."""
    import torch
    from hydra import compose, initialize_config_dir

    import harness.runner as runner
    from harness.config import register_configs, validate
    from harness.impls import REGISTRY, DecodeImpl

    clock = _Clock()

    class Fake(DecodeImpl):
        name = "fake"

        def __init__(self, ctx):
            super().__init__(ctx)
            clock.t += 2.0
            self.vocab = ctx.spec.vocab_size

        def decode(self, tokens, positions):
            clock.t += 0.25
            return torch.zeros(tokens.shape[0], self.vocab)

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ARGS + ["bench.device=cpu"])
    spec = validate(cfg, list(REGISTRY))
    pt = runner.prepare_point(cfg, spec, torch.device("cpu"))
    monkeypatch.setitem(REGISTRY, "fake", Fake)
    monkeypatch.setattr(runner, "_clock", clock)
    caplog.set_level(logging.INFO, logger="harness.runner")
    runner._measure("fake", cfg, spec, pt.weights, pt.cache, pt.tokens, pt.positions, None, torch.device("cpu"),
                    runner.Progress("[1/1 fake]"))
    assert [r.getMessage() for r in caplog.records] == [
        "[1/1 fake] build: 2.25 s (constructor and first checked step)",
        "[1/1 fake] correctness: 0.00 s (not checked: check=false)",
        "[1/1 fake] warm-up: 0.25 s (1 step)",
        "[1/1 fake] timing: 0.75 s (3 steps)",
        "[1/1 fake] telemetry: 0.00 s (off)",
    ]


def test_a_long_phase_says_it_is_still_running(caplog):
    from harness.runner import Progress

    caplog.set_level(logging.INFO, logger="harness.runner")
    p = Progress("[x]", heartbeat_s=0.05)
    p.begin("build")
    time.sleep(0.4)  # heartbeats at 0.05, 0.1 and 0.2 s (the next at 0.4 s may or may not come first)
    p.end()
    msgs = [r.getMessage() for r in caplog.records]
    beats = [m for m in msgs if "still running" in m]
    assert beats[:3] == ["[x] build: still running after 0.05 s", "[x] build: still running after 0.1 s",
                         "[x] build: still running after 0.2 s"], msgs
    assert msgs[-1].startswith("[x] build: 0.")
    time.sleep(0.3)
    assert len(caplog.records) == len(msgs)  # nothing after the phase ended
    p.begin("timing")
    p.fail()
    assert caplog.records[-1].getMessage().startswith("[x] timing: failed after ")


def test_configure_console_quiet_and_file_only(tmp_path):
    """quiet: the console handler shows warnings only, the file handler everything; a file_only record (the result
    table) never reaches the console."""
    from harness.run import configure_console

    for quiet in (False, True):
        logger = logging.getLogger(f"test_progress.{quiet}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        console, path = io.StringIO(), tmp_path / f"{quiet}.log"
        logger.handlers = [logging.StreamHandler(console), logging.FileHandler(path)]
        configure_console(quiet, root=logger)
        logger.info("progress")
        logger.warning("a warning")
        logger.info("the table", extra={"file_only": True})
        for h in logger.handlers:
            h.close()
        assert console.getvalue().splitlines() == (["a warning"] if quiet else ["progress", "a warning"])
        assert path.read_text().splitlines() == ["progress", "a warning", "the table"]


def test_sweep_size_counts_the_basic_sweepers_points():
    from omegaconf import OmegaConf

    from harness.run import sweep_size

    def cfg(target="hydra._internal.core_plugins.basic_sweeper.BasicSweeper", params=None, task=()):
        return OmegaConf.create({"hydra": {"sweeper": {"_target_": target, "params": params},
                                           "overrides": {"task": list(task)}}})

    assert sweep_size(cfg(params={"bench.ctx": "8,16"}, task=["bench.batch=1,2,4", "model=tiny"])) == 6
    assert sweep_size(cfg(task=["model=tiny"])) == 1
    assert sweep_size(cfg(task=["bench.ctx=range(0,40,8)"])) == 5
    assert sweep_size(cfg(target="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")) is None


def test_quiet_sweep_quiets_hydras_launch_lines():
    from omegaconf import OmegaConf

    from harness.run import SWEEP_POINTS_ENV, SweepProgress

    hydra_log = logging.getLogger("hydra")
    before = hydra_log.level
    try:
        SweepProgress().on_multirun_start(OmegaConf.create({"quiet": True, "hydra": {"overrides": {"task": []}}}))
        assert hydra_log.level == logging.WARNING
        assert SWEEP_POINTS_ENV not in os.environ  # no sweeper named: the total is unknown
    finally:
        hydra_log.setLevel(before)
