"""The benchmark scripts still run against the current code (a few steps, tiny sizes, in this process)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"bench_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bench_train_runs_each_stage(stage):
    """Its synthetic batches carry every key the objectives read, for all three stages."""
    bench = load_bench("train")
    row = bench.run_one(stage, "tiny", 32, steps=1)
    assert row["stage"] == stage and row["s_per_step"] > 0
    assert math.isfinite(row["loss"])
    assert 0 < row["trainable_m"] <= row["params_m"]


def test_bench_train_cached_pixels_compares_both_streams(tmp_path):
    from train_helpers import make_dataset

    bench = load_bench("train")
    text = bench.cached_pixels_ab(make_dataset(tmp_path / "d", identities=2, frames=2), steps=1, rounds=1)
    assert "every sample's pixels decoded |" in text and "pixels of cached samples skipped |" in text
