"""scripts/ncu_loops.py on a small synthetic Nsight Compute source export."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.ncu_loops import summarise  # noqa: E402

HDR = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
       "L1 Wavefronts Shared Excessive", "L1 Wavefronts Shared", "stall_barrier", "stall_selected",
       "stall_barrier (Not Issued)"]


def _export(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "k"])
        w.writerow(HDR)
        for r in rows:
            w.writerow(r)


def test_loops_shares_stalls_and_bank_conflicts(tmp_path):
    base = 0x1000
    rows = [
        [hex(base), "MOV R1, R2", 1, 1, 0, 0, 0, 1, 0],
        # the loop: 0x1010 .. 0x1030, its back edge conditional
        [hex(base + 0x10), "LDS.64 R4, [R2]", 30, 10, 10, 20, 0, 30, 0],
        [hex(base + 0x20), "HMMA.16816.F32 R8, R4, R6, R8", 10, 10, 0, 0, 0, 10, 0],
        [hex(base + 0x30), "@P0 BRA 0x1010", 20, 10, 0, 0, 20, 0, 0],
        # an idle warp's NOP (left out of the shares) and a forward branch (no loop)
        [hex(base + 0x40), "NOP", 500, 1, 0, 0, 500, 0, 0],
        [hex(base + 0x50), "@P1 BRA 0x1070", 1, 1, 0, 0, 0, 1, 0],
        [hex(base + 0x60), "EXIT", 0, 1, 0, 0, 0, 0, 0],
    ]
    path = tmp_path / "k.csv"
    _export(path, rows)
    out = summarise(str(path), min_share=0.0)
    lines = out.splitlines()
    assert lines[0].endswith("562 samples, 500 on NOPs (idle warps), 62 others")
    loops = [ln for ln in lines if ln.startswith("loop")]
    assert len(loops) == 1
    assert "3 instructions" in loops[0] and "1 HMMA" in loops[0] and "10 iterations" in loops[0]
    assert "96.8% of samples" in loops[0]  # 60 of the 62 non-NOP samples
    assert "selected 67%" in loops[0] and "barrier 33%" in loops[0]
    assert any(ln.split()[:3] == ["LDS.64", "10", "/"] for ln in (x.strip() for x in lines))


def test_a_file_that_is_not_an_export_is_one_sentence(tmp_path):
    import pytest

    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="is not an Nsight Compute SASS source export"):
        summarise(str(path))

