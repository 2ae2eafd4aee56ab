"""benchmarks/measure_codec_colour.py: the four colourings of a face and a table per model (tiny models, a real portrait)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from tests_helpers import load_script

ROOT = Path(__file__).resolve().parent.parent


def bench():
    return load_script(ROOT / "benchmarks" / "measure_codec_colour.py")


def test_colourings_are_what_they_say(astronaut):
    c = bench().colourings(astronaut)
    assert list(c) == ["colour", "black and white", "cold", "hues turned 120°"]
    assert np.array_equal(c["colour"], astronaut)
    bw = c["black and white"].astype(int)
    assert (bw[..., 0] == bw[..., 1]).all() and (bw[..., 1] == bw[..., 2]).all()
    assert c["cold"][..., 2].mean() > astronaut[..., 2].mean() and c["cold"][..., 0].mean() < astronaut[..., 0].mean()
    turned, src = c["hues turned 120°"].astype(float), astronaut.astype(float)
    assert abs(turned[..., 1].mean() - src[..., 0].mean()) < 6  # red became green (clipping aside)


def test_table_for_two_models(portrait_dataset, tiny_model_dir, tmp_path):
    out = ROOT / "benchmarks" / "results" / "codec_colour_pytest.md"
    try:
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "measure_codec_colour.py"), "--heldout", str(portrait_dataset),
                            "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--label", "pytest"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""})
        assert r.returncode == 0, r.stderr[-2000:]
        rows = [line for line in out.read_text().splitlines() if line.startswith(f"| {tiny_model_dir} |")]
        assert len(rows) == 2 and rows[0] == rows[1]  # the same codec measures the same
        cells = rows[0].strip("|").split("|")
        assert len(cells) == 6 and len(cells[1].split("/")) == 4 and float(cells[2]) >= 0 and float(cells[3]) > 0
        assert 0 < float(cells[4]) < 2 and 0 < float(cells[5]) < 2  # an untrained codec: errors, within [-1, 1] units
    finally:
        out.unlink(missing_ok=True)
