"""The tuned-tile cache (kernels/mega/tuned.py): what a same-run comparison writes, what the megakernel reads."""
import json

import pytest

from harness.models import named_spec
from kernels.mega.lower import TileOptions, pick_tiles
from kernels.mega.tuned import CACHE, MIN_GAIN, load, lookup, parse_variant, update_from_rows


def _rows(gpu, point, times):
    return [dict(gpu=gpu, point=point, ctx=1024, spec=spec, ms=ms) for spec, ms in times]


def test_parse_variant_splits_runtime_arguments_from_tiles():
    assert parse_variant("x:gemv_rows=8,programs_per_sm=1,k_fold=2,fusion=layer") == (
        "x", {"programs_per_sm": 1, "fusion": "layer"}, {"gemv_rows": 8, "k_fold": 2})
    assert parse_variant("base:") == ("base", {}, {})
    with pytest.raises(ValueError, match="'prefetch' is not one of"):
        parse_variant("pf:prefetch=1")


def test_winner_is_cached_only_beyond_the_noise_margin_and_removed_when_the_default_wins(tmp_path):
    path = tmp_path / "tuned.json"
    gpu = "NVIDIA H200"
    notes = update_from_rows(_rows(gpu, "llama1b:int4:1", [("base:", 1.0), ("r8:gemv_rows=8", 0.9),
                                                           ("pps1:programs_per_sm=1", 0.5)]), path)
    assert len(notes) == 1 and "r8:gemv_rows=8" in notes[0]  # runtime-argument variants are not tiles: ignored
    assert lookup(gpu, "llama1b", "int4", 1, path) == {"gemv_rows": 8}
    assert lookup("NVIDIA H100 80GB HBM3", "llama1b", "int4", 1, path) == {}  # another GPU: nothing
    assert lookup(gpu, "llama1b", "int4", 4, path) == {}  # another batch: nothing
    # a later run where the gain is inside the margin, then one where the built-in tiles win
    update_from_rows(_rows(gpu, "llama8b:bf16:1", [("base:", 1.0), ("r8:gemv_rows=8", 1.0 - MIN_GAIN / 2)]), path)
    assert lookup(gpu, "llama8b", "bf16", 1, path) == {}
    notes = update_from_rows(_rows(gpu, "llama1b:int4:1", [("base:", 1.0), ("r8:gemv_rows=8", 1.05)]), path)
    assert "entry removed" in notes[0] and lookup(gpu, "llama1b", "int4", 1, path) == {}
    assert json.loads(path.read_text()) == {}


def test_committed_cache_entries_are_valid_tile_overrides():
    """Every entry of kernels/mega/tuned.json names a built-in model and overrides pick_tiles accepts."""
    for gpu, entries in load(CACHE).items():
        for point, entry in entries.items():
            model, quant, batch = point.split(":")
            assert entry["ms"] < entry["base_ms"] * (1 - MIN_GAIN), (gpu, point)
            pick_tiles(named_spec(model), quant, 128, int(batch), entry["ctx"] + 1, 264, interpret=False,
                       options=TileOptions(**entry["tiles"]))
