"""benchmarks/gpu_check.sh in its CPU mode: every check of the GPU run, at the tiny size."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_a_cpu_and_passes(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    text = out.read_text()
    assert "CPU mode: the tiny size, not GPU figures" in text and "Every check passed." in text
    for section in ("1. estimate-depth against Marigold", "2. talk", "3. one training step per stage", "4. fp16 resume"):
        assert f"## {section}" in text, section
    assert "FAILED" not in text and "NOT met" not in text
    assert "| rgbdface estimate-depth |" in text and "| diffusers MarigoldDepthPipeline |" in text
    assert text.count("- met: stage") == 3  # autocast dtypes of every stage
    assert "- met: talk memory flat" in text and "- met: resumed weights equal" in text


def test_gpu_check_only_refuses_an_unknown_section(tmp_path):
    out = tmp_path / "gpu_check.md"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--only", "1,9",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--only takes section numbers from 1,2,3,4" in p.stderr
    assert not out.exists()
