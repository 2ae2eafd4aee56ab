"""A missing input or a bad option is reported before the heavy libraries (torch, diffusers, MediaPipe) load.

Each command runs in one fresh interpreter that records, after every call, which heavy
modules are loaded; so the check does not depend on the machine's speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "rgbdface" / "weights" / "rgbdface-tiny"
HEAVY = ("torch", "diffusers", "transformers", "mediapipe", "cv2", "scipy", "matplotlib")

CASES = {
    "estimate-depth, missing image": (["estimate-depth", "nope.jpg", "-o", "out.png"], 1, "nope.jpg: no such file"),
    "estimate-depth, missing images of a batch": (["estimate-depth", "a.jpg", "b.jpg", "-o", "out"], 1, "2 of 2 inputs failed"),
    "estimate-depth, bad option": (["estimate-depth", "nope.jpg", "--uncertainty", "-o", "out.png"], 2, "--uncertainty needs"),
    "generate, missing reference": (["generate", "nope.jpg", "-o", "out"], 1, "nope.jpg: no such file"),
    "depth2img, missing depth": (["depth2img", "nope.png", "-r", "nope.jpg", "-o", "out.png"], 1, "nope.png: no such file"),
    "depth2img, no reference": (["depth2img", "nope.png", "-o", "out.png"], 2, "--reference REF.jpg is needed"),
    "relight, missing image": (["relight", "nope.jpg", "--light", "1,0,1", "-o", "out.png"], 1, "nope.jpg: no such file"),
    "talk, missing audio": (["talk", str(ROOT / "examples" / "obama.jpg"), "nope.wav", "-o", "out.mp4"], 1, "nope.wav: no such file"),
    "talk, bad output": (["talk", "nope.jpg", "nope.wav", "-o", "out.avi"], 2, "expected a video file"),
    "train, missing dataset": (["train", "nope", "-o", "run", "--tiny"], 1, "nope: no such dataset folder"),
    "finetune-mask, missing model": (["finetune-mask", "nope", "-o", "run", "-m", "nomodel"], 1, "--model nomodel: no such folder"),
    "train-motion, missing dataset": (["train-motion", "nope", "-o", "run", "-m", str(BUNDLED)], 1, "nope: no such dataset folder"),
    "train-vae, missing dataset": (["train-vae", "nope", "-o", "vae"], 1, "nope: no such dataset folder"),
    "init-model, missing codec": (["init-model", "--tiny", "--vae", "novae", "-o", "m"], 1, "--vae novae: no such folder"),
    "init-model, bad option": (["init-model", "--tiny", "--prediction-type", "x0", "-o", "m"], 2, "--prediction-type x0"),
    "prep-depth, missing image": (["prep-depth", "nope.jpg", "-o", "ds"], 1, "nope.jpg"),
    "eval, missing dataset": (["eval", "--data", "nope"], 1, "not an rgbdface dataset"),
}

SCRIPT = """
import json, sys
from typer.testing import CliRunner
from rgbdface.cli.app import app
out = {}
for name, args in json.loads(sys.argv[1]).items():
    r = CliRunner().invoke(app, args)
    out[name] = {"code": r.exit_code, "output": r.output,
                 "heavy": sorted(m for m in %r if m in sys.modules)}
print(json.dumps(out))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("fast")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps({k: v[0] for k, v in CASES.items()})],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_fails_before_heavy_imports(outcomes, case):
    _, code, message = CASES[case]
    got = outcomes[case]
    assert got["code"] == code, got["output"]
    assert message in got["output"]
    assert got["heavy"] == [], f"{case}: {', '.join(got['heavy'])} imported before the error"
