"""The bundled model's commands on CUDA against the same commands on the CPU, as users run them.

Each command runs as its own process twice, `--device cpu --dtype fp32` and `--device cuda` (its
default: 16-bit weights and autocast), on the same inputs and seed; the table gives exit codes,
wall seconds and how far the CUDA outputs are from the CPU's:

    python benchmarks/gpu_commands.py                       # on a machine with CUDA
    python benchmarks/gpu_commands.py --device cpu --dtype bf16 --only estimate-depth,relight
                                                            # the same comparison without a GPU (the tests)

Outputs compared: depth PNGs in units of their 16-bit range over the pixels both call valid (mean
and 99th percentile of |a - b| / 65535), RGB PNGs in levels (mean |a - b|, 0..255). Bounds, fixed
before the first run: depth mean <= 0.01 (1 % of the range), RGB mean <= 4 levels for the
deterministic commands (estimate-depth, relight); the sampled ones (generate, depth2img) follow a
different noise path in 16 bits and are reported, not judged. Writes benchmarks/results/gpu_commands.md
(or --out). Exit status 1 when a run failed or a bound was broken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "astronaut.jpg"
DEPTH_BOUND, RGB_BOUND = 0.01, 4.0


def run(args: list[str], device: str, dtype: str) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "rgbdface.cli.app", *args, "--device", device, "--dtype", dtype, "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return p.returncode, time.perf_counter() - t, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def depth_diff(a: Path, b: Path) -> tuple[float, str]:
    """(mean |a - b| as a share of the 16-bit range over the pixels both call valid, or NaN; the table's text)."""
    x, y = (np.asarray(Image.open(p)).astype(np.float64) for p in (a, b))
    valid = (x > 0) & (y > 0)
    if x.shape != y.shape or not valid.any():
        return float("nan"), "no common valid pixels"
    d = np.abs(x - y)[valid] / 65535
    return d.mean(), f"depth {d.mean():.4f} mean, {np.percentile(d, 99):.4f} p99 (of the range), {valid.mean():.2f} valid"


def rgb_diff(a: Path, b: Path) -> tuple[float, str]:
    """(mean |a - b| in 8-bit levels, or NaN; the table's text)."""
    x, y = (np.asarray(Image.open(p).convert("RGB")).astype(np.float64) for p in (a, b))
    if x.shape != y.shape:
        return float("nan"), "shapes differ"
    return np.abs(x - y).mean(), f"rgb {np.abs(x - y).mean():.2f} levels mean"


JUDGED = ("estimate-depth", "relight")  # deterministic: held to the bounds; the sampled commands are reported only


def commands(work: Path) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """name -> (arguments with {out} for the output folder, [(output file, kind)])."""
    depth = work / "given_depth.png"
    return {
        "estimate-depth": (["estimate-depth", str(EXAMPLE), "-o", "{out}/d.png"], [("d.png", "depth")]),
        "relight": (["relight", str(EXAMPLE), "--light", "1,0.3,1", "-o", "{out}/lit.png"],  # depth from the model
                    [("lit.png", "rgb")]),
        "generate": (["generate", str(EXAMPLE), "-n", "2", "--steps", "25", "--seed", "0", "-o", "{out}/gen"],
                     [("gen/astronaut_00_rgb.png", "rgb"), ("gen/astronaut_00_depth.png", "depth")]),
        "depth2img": (["depth2img", str(depth), "--reference", str(EXAMPLE), "--seed", "0", "-o", "{out}/di.png"],
                      [("di.png", "rgb")]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU in float32 (default cuda)")
    ap.add_argument("--dtype", default="auto", help="its --dtype (default auto: fp16 on CUDA)")
    ap.add_argument("--only", default="", help="comma-separated commands (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_commands.md")
    args = ap.parse_args()
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = commands(work)
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(table)
        if any(n not in table for n in names):
            ap.error(f"--only takes commands from {','.join(table)}, got {args.only!r}")
        if "depth2img" in names:  # its input depth, made once on the CPU
            code, _, err = run(["estimate-depth", str(EXAMPLE), "-o", str(work / "given_depth.png")], "cpu", "fp32")
            if code:
                sys.exit(f"gpu_commands: the input depth could not be made: {err}")
        for name in names:
            argv, outputs = table[name]
            result = {}
            for label, device, dtype in (("cpu", "cpu", "fp32"), ("dev", args.device, args.dtype)):
                out = work / f"{name}-{label}"
                out.mkdir()
                result[label] = run([a.replace("{out}", str(out)) for a in argv], device, dtype)
            diffs = []
            if result["cpu"][0] == 0 and result["dev"][0] == 0:
                for rel, kind in outputs:
                    a, b = work / f"{name}-cpu" / rel, work / f"{name}-dev" / rel
                    mean, text = depth_diff(a, b) if kind == "depth" else rgb_diff(a, b)
                    diffs.append(text)
                    if name in JUDGED and not mean <= (DEPTH_BOUND if kind == "depth" else RGB_BOUND):  # NaN fails too
                        failed.append(f"{name}: {text}")
            else:
                failed.append(f"{name}: exit {result['cpu'][0]} / {result['dev'][0]}: {result['dev'][2] or result['cpu'][2]}")
            rows.append(f"| {name} | {result['cpu'][0]} / {result['dev'][0]} | {result['cpu'][1]:.1f} / {result['dev'][1]:.1f} | "
                        f"{'; '.join(diffs) or result['dev'][2] or result['cpu'][2]} |")
            print(rows[-1], file=sys.stderr, flush=True)
    import torch

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else args.device
    text = "\n".join([
        f"# The bundled model's commands: {args.device} ({args.dtype}) against the CPU (fp32)", "",
        f"Device: {device}; torch {torch.__version__}. Reproduce: `python benchmarks/gpu_commands.py"
        f"{'' if args.device == 'cuda' else f' --device {args.device} --dtype {args.dtype}'}"
        f"{f' --only {args.only}' if args.only else ''}`.",
        f"Whole processes on examples/astronaut.jpg, seed 0. Bounds for {' and '.join(JUDGED)}: depth mean "
        f"<= {DEPTH_BOUND} of the range, RGB mean <= {RGB_BOUND:g} levels; generate and depth2img are reported only.", "",
        "| command | exit (cpu / device) | wall s (cpu / device) | device output against the CPU's |", "|---|---|---|---|",
        *rows, "",
        "Broken: " + "; ".join(failed) if failed else "Every run finished and the deterministic outputs agree within the bounds.", "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
