"""benchmarks/gpu_commands.py without a GPU: the bundled model's estimate-depth in bf16 against fp32, as processes."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_commands_compares_outputs_of_two_settings(tmp_path):
    out = tmp_path / "gpu_commands.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_commands.py"), "--device", "cpu", "--dtype", "bf16",
                        "--only", "estimate-depth", "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| estimate-depth |"))
    assert "| 0 / 0 |" in row
    mean = float(row.split("| depth ")[1].split()[0])
    assert 0 < mean <= 0.01  # bf16 weights move the map a little, not by more than the bound


def test_gpu_commands_refuses_an_unknown_command(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_commands.py"), "--device", "cpu", "--only", "talk",
                        "--out", str(tmp_path / "x.md")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--only takes commands from" in p.stderr
    assert not (tmp_path / "x.md").exists()
