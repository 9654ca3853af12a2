"""Do the CPU tests catch what they claim? Plants known bugs, one at a time, in a copy of the repository and runs the
tests that should see each one.

The repository's tracked files (`git ls-files`, as they are in the working tree) are copied into a temporary
directory; for each mutation one exact snippet of one file is replaced, a small named selection of test files runs
there (`pytest -x -q`, PYTHONPATH set to the copy, this repository's .venv python), and the file is restored. Each
selection first runs on the unmutated copy (the baseline): a selection that already fails proves nothing.

    .venv/bin/python scripts/mutation_check.py                 # every mutation (several minutes on 2 cores)
    .venv/bin/python scripts/mutation_check.py --list
    .venv/bin/python scripts/mutation_check.py --only mega-argmax-tie timing-p10

Prints a table (mutation, layer, expected, result, seconds). Exit code 1 if a mutation expected to be caught was
not, or a negative control (a change that must not alter any result) was; 2 if a baseline fails or a mutation no
longer applies (its snippet is gone from the file: update the list below).

Bugs in GPU-only assembly (the inline PTX of kernels/gemv.py and kernels/qgemv.py) are caught on the CPU by a PTX
interpreter (tests/ptx_emu.py) that runs the very strings the kernels compile; the `ptx-*` entries plant them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    layer: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    caught: bool  # expected outcome: True = some selected test must fail
    tests: tuple[str, ...]  # pytest arguments: test files, node ids, -k expressions
    why: str


MUTATIONS = [
    Mutation("quant-int4-offset", "kernels/quant", "kernels/quant.py",
             "w = (qg - 8.0) * scale", "w = (qg - 7.0) * scale", True, ("tests/test_quant.py",),
             "int4 dequantisation with the wrong nibble offset (the documented layout is q - 8)"),
    Mutation("gemv-norm-eps", "kernels/gemv", "kernels/gemv.py",
             "out = out * tl.rsqrt(sumsq / K + eps)[:, None]", "out = out * tl.rsqrt(sumsq / K)[:, None]", True,
             ("tests/kernels/test_gemv.py", "-k", "fused_norm_eps"),
             "the fused RMSNorm prologue of the GEMV drops eps"),
    Mutation("mega-argmax-tie", "kernels/mega", "kernels/mega/interpreter.py",
             "take = tb > best", "take = tb >= best", True,
             ("tests/mega/test_mega_interpreter.py::test_lm_head_exact_tie_goes_to_the_lowest_index",),
             "an exact LM-head tie across tiles goes to the higher index (torch.argmax takes the lowest)"),
    Mutation("torch-int8-scale", "harness/torch_ops", "harness/torch_ops.py",
             "return F.linear(x, self.weight.to(x.dtype)) * self.scale",
             "return F.linear(x, self.weight.to(x.dtype))", True, ("tests/test_quant.py",),
             "the PyTorch int8 baseline forgets the per-channel scale"),
    Mutation("rope-theta-halved", "kernels/model", "kernels/model.py",
             "inv_freq = 1.0 / (theta ** (", "inv_freq = 1.0 / ((theta / 2) ** (", True,
             ("tests/test_reference_hf.py",),
             "RoPE frequencies from half the configured theta (kernels and reference agree; transformers does not)"),
    Mutation("reference-rms-eps", "kernels/reference", "kernels/reference.py",
             "keepdim=True) + eps)", "keepdim=True))", True, ("tests/test_reference_hf.py",),
             "the RMSNorm reference ignores eps"),
    Mutation("tiles-dot-min-batch", "kernels/tiles", "kernels/tiles.py",
             "DOT_MIN_BATCH = 4", "DOT_MIN_BATCH = 5", False,
             ("tests/mega/test_mega_interpreter.py", "-k",
              "test_interpreter_matches_vm and (fp16-4 or bf16-4 or int8-4)"),
             "negative control: batch 4 takes the FMA tile instead of the tensor-core tile, same numbers"),
    Mutation("timing-p10", "harness/timing", "harness/timing.py",
             "p10_us=percentile(xs, 10.0)", "p10_us=percentile(xs, 20.0)", True, ("tests/test_timing.py",),
             "the reported p10 latency is the 20th percentile"),
    Mutation("telemetry-last-sample", "harness/telemetry", "harness/telemetry.py",
             "                    break\n            self._take_sample()", "                    break", True,
             ("tests/test_telemetry.py",), "the sampler drops the sample it takes when the window closes"),
    Mutation("figure-drops-reference", "harness/figures", "harness/figures.py",
             "if ref_line and name == REF:", "if name == REF:", True,
             ("tests/test_notebooks.py", "-k", "line_figures or draw_their_tables"),
             "the latency figure loses the reference impl's series (a legend and a PNG are still there)"),
    Mutation("clean-ignores-dirty", "harness/results", "harness/results.py",
             'return isinstance(sha, str) and sha.strip() != "" and not sha.endswith("-dirty")',
             'return isinstance(sha, str) and sha.strip() != ""', True,
             ("tests/test_results.py", "-k", "clean"),
             "rows measured on a dirty tree pass as clean (the gate, the report and the figures trust them)"),
    Mutation("ptx-int4-unit-float-mask", "kernels/gemv", "kernels/gemv.py",
             '_unit_float_ptx("$8", ("0x00078000", "0x00780000"))', '_unit_float_ptx("$8", ("0x00070000", "0x00780000"))',
             True, ("tests/kernels/test_ptx.py",),
             "the int4 unit-float PTX keeps 3 of the low nibble's 4 bits (GPU-only assembly, run by the PTX emulator)"),
    Mutation("ptx-nibble-bias", "kernels/gemv", "kernels/gemv.py",
             'bias="0xC308C308"', 'bias="0xC307C307"', True, ("tests/kernels/test_ptx.py",),
             "the packed bf16 nibble PTX subtracts 135 instead of 136 (q - 7 instead of q - 8)"),
    Mutation("ptx-qgemv-int4-shift", "kernels/qgemv", "kernels/qgemv.py",
             'body.append(f"shr.u32 t, {w}, {4 * i};', 'body.append(f"shr.u32 t, {w}, {4 * i - (i == 3)};',
             True, ("tests/kernels/test_ptx.py",),
             "the tensor-core int4 PTX takes the fourth nibble pair from the wrong bits"),
    Mutation("ptx-qgemv-int8-selector", "kernels/qgemv", "kernels/qgemv.py",
             'prmt.b32 {hi}, u, magic, 0x4342;', 'prmt.b32 {hi}, u, magic, 0x4243;', True,
             ("tests/kernels/test_ptx.py",),
             "the tensor-core int8 PTX swaps the bytes of its second register pair"),
    Mutation("ptx-bf16-to-f16", "kernels/qgemv", "kernels/qgemv.py",
             "shl.b32 lo, $1, 16;", "shl.b32 lo, $1, 15;", True, ("tests/kernels/test_ptx.py",),
             "the bf16 -> fp16 pair conversion of x misplaces the low half"),
    Mutation("ptx-mega-int8-offset", "kernels/mega", "kernels/mega/hopper.py",
             '"sub.rn.f16x2 $0, $0, bias;', '"sub.rn.f16x2 $0, $1, bias;', True, ("tests/kernels/test_ptx.py",),
             "the Gluon megakernel's int8 operands take bytes 2-3 for bytes 0-1"),
    Mutation("gate-all-metrics", "harness/gate", "harness/gate.py",
             "verdict = REGRESSION if any(d.verdict == REGRESSION for d in deltas)",
             "verdict = REGRESSION if all(d.verdict == REGRESSION for d in deltas)", True, ("tests/test_gate.py",),
             "the gate fails a point only when every metric regressed (one slower metric passes)"),
    Mutation("gate-slack", "harness/gate", "harness/gate.py",
             "return floor + k * math.sqrt(sum(x * x for x in parts))",
             "return floor + 0.02 + k * math.sqrt(sum(x * x for x in parts))", True, ("tests/test_gate.py",),
             "the gate's threshold gets 2 points of slack beyond the measured noise"),
    Mutation("figure-missing-tag", "harness/figure_data", "harness/figure_data.py",
             "    if not (tags == tag).any():\n", "    if False:\n", True,
             ("tests/test_notebooks.py", "-k", "missing_tag"),
             "a figure asked for a tag no row carries draws an empty 'no rows yet' placeholder instead of failing"),
    Mutation("gemv-int8-scale-2pct", "kernels/gemv", "kernels/gemv.py",
             "        out = out * s[None, :]\n", "        out = out * (s * 1.02)[None, :]\n", True,
             ("tests/kernels/test_gemv.py", "-k", "planted_errors or (test_gemv and int8)"),
             "the int8 GEMV applies its per-channel scale 2% too large"),
    Mutation("attention-seq-len-stride", "kernels/attention", "kernels/attention.py",
             "seq_len = tl.load(len_ptr + b * stride_len).to(tl.int32)", "seq_len = tl.load(len_ptr + b).to(tl.int32)",
             True, ("tests/kernels/test_strides.py", "-k", "attention"),
             "decode attention reads seq_lens[b] at offset b whatever the tensor's stride"),
]


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def copy_tree(root: Path, dest: Path) -> int:
    """Copies the tracked files as they are in the working tree (uncommitted edits included) to dest."""
    n = 0
    for rel in tracked_files(root):
        src = root / rel
        if not src.is_file() and not src.is_symlink():  # deleted in the working tree, or a submodule
            continue
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
        n += 1
    return n


def run_pytest(python: str, copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    """(pytest exit code, seconds, output tail); exit code -1 on a timeout."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")  # no stale bytecode between runs
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, time.perf_counter() - t0, out[-2000:]
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-2000:]


def imports_from_copy(python: str, copy: Path) -> bool:
    """The copy's packages, not an installed or editable harness, are the ones the tests import."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    code = "import harness, kernels; print(harness.__file__); print(kernels.__file__)"
    out = subprocess.run([python, "-c", code], cwd=copy, env=env, capture_output=True, text=True).stdout.split()
    return len(out) == 2 and all(Path(p).resolve().is_relative_to(copy.resolve()) for p in out)


def outcome(rc: int) -> str:
    return {0: "not caught", 1: "caught", -1: "timeout"}.get(rc, f"error (pytest exit {rc})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/mutation_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit code: 0 every mutation as expected; 1 one was not; 2 a baseline failed "
                                       "or a mutation no longer applies.")
    p.add_argument("--list", action="store_true", help="list the mutations and their test selections, run nothing")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations (names from --list)")
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                   help="interpreter that runs pytest (default: this repository's .venv)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to one pytest run (default 900)")
    p.add_argument("--skip-baseline", action="store_true",
                   help="do not first run each selection on the unmutated copy (faster; a failure then proves less)")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy and print where it is")
    a = p.parse_args(argv)

    chosen = MUTATIONS
    if a.only:
        unknown = sorted(set(a.only) - {m.name for m in MUTATIONS})
        if unknown:
            p.error(f"unknown mutation(s) {', '.join(unknown)}; choose from {', '.join(m.name for m in MUTATIONS)}")
        chosen = [m for m in MUTATIONS if m.name in a.only]
    if a.list:
        for m in chosen:
            print(f"{m.name:24} {m.layer:18} expect {'caught' if m.caught else 'not caught (negative control)'}\n"
                  f"{'':24} {m.path}: {m.old!r} -> {m.new!r}\n{'':24} tests: {' '.join(m.tests)}\n{'':24} {m.why}")
        return 0
    if not Path(a.python).is_file():
        p.error(f"no interpreter at {a.python}; build the environment (make env) or pass --python")

    copy = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    try:
        n = copy_tree(ROOT, copy)
        print(f"copied {n} tracked files to {copy}", flush=True)
        if not imports_from_copy(a.python, copy):
            print("the copy's harness/kernels are not the ones imported (an installed package shadows them); "
                  "uninstall it or use another --python", file=sys.stderr)
            return 2
        if not a.skip_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):  # each distinct selection once, in order
                rc, secs, tail = run_pytest(a.python, copy, tests, a.timeout)
                print(f"baseline {' '.join(tests)}: {outcome(rc).replace('not caught', 'passes')} ({secs:.0f} s)",
                      flush=True)
                if rc != 0:
                    print(tail, file=sys.stderr)
                    print(f"the unmutated selection {' '.join(tests)} does not pass; fix it before trusting a "
                          "mutation", file=sys.stderr)
                    return 2
        rows, status = [], 0
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                print(f"mutation {m.name}: {m.old!r} occurs {original.count(m.old)} times in {m.path}, not once; "
                      "update MUTATIONS", file=sys.stderr)
                return 2
            target.write_text(original.replace(m.old, m.new))
            try:
                rc, secs, tail = run_pytest(a.python, copy, m.tests, a.timeout)
            finally:
                target.write_text(original)
            result = outcome(rc)
            ok = result == ("caught" if m.caught else "not caught")
            if not ok:
                status = 1
                print(f"--- {m.name}: {result}, expected {'caught' if m.caught else 'not caught'}\n{tail}",
                      file=sys.stderr)
            rows.append((m.name, m.layer, "caught" if m.caught else "not caught", result, f"{secs:.0f}",
                         "ok" if ok else "UNEXPECTED"))
            print(f"{m.name}: {result} ({secs:.0f} s)", flush=True)
        header = ("mutation", "layer", "expected", "result", "seconds", "")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        print()
        for r in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        bad = sum(r[-1] != "ok" for r in rows)
        print(f"\n{len(rows) - bad} of {len(rows)} mutations as expected")
        return status
    finally:
        if a.keep:
            print(f"kept the copy at {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
