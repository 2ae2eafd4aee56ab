"""The commands as users run them: whole processes, interleaved and repeated in one run.

    PYTHONPATH=. python benchmarks/bench_commands.py [--repeats 3] [--groups startup,estimate,prep,talk,train]
                                                     [--talk-steps N] [--scratch DIR]

Every figure is the wall time of a whole `rgbdface ...` process (or of a minimal
reference process), so imports, model loading and MediaPipe start-up count as they
do for a user. Within a group the cases run in turn, round after round, so a
machine whose load changes during the run slows them alike; the table gives the
median round and the ratios are taken between cases of the same rounds. The
1-minute load average is recorded before every process.

Groups:

- startup: `--help`; a missing input for estimate-depth, talk and train (the
  error before any heavy import); estimate-depth on one portrait; the floors:
  `import torch`, then diffusers' UNet and VAE classes, then MediaPipe (what
  estimate-depth must import), and `--help` of a two-command typer app.
- estimate: estimate-depth on a folder of 50 portraits against one portrait:
  per-image time = (t50 - t1) / 49, start-up = t1 - per-image; a minimal
  MediaPipe process on the same 50 files (decode + one face-mesh call each).
- prep: prep-depth on 300 single portraits and on a 10 s 25 fps 720p video
  (a close-up: the face about half the frame's height, so that one face-mesh
  call per frame finds it), each against a minimal MediaPipe process on the same input (decode + one
  `FaceMesh(static_image_mode=True, refine_landmarks=True)` call per image/frame).
- talk: seconds per frame for 4 s and 16 s of speech (bundled model).
- train: seconds per step of stage 1 (tiny recipe), from the run's own log.
- busy: estimate-depth on the 50 portraits and stage-1 training while a
  neighbour process keeps one core busy (a CPU-bound Python loop), at the
  default thread setting and at --threads 1 and 2.

Results: a Markdown table per group on stdout and in benchmarks/results/commands.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "commands.md"
PORTRAITS = ["astronaut.jpg", "biden.jpg", "grace_hopper.jpg", "obama.jpg"]  # cameraman.png: MediaPipe finds no mesh
CLI = [sys.executable, "-m", "rgbdface.cli.app"]

MINIMAL_MEDIAPIPE = r"""
import sys, imageio.v3 as iio, imageio_ffmpeg, numpy as np, mediapipe as mp
mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)


def video_frames(path):
    reader = imageio_ffmpeg.read_frames(path)
    w, h = next(reader)["size"]
    for buf in reader:
        yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)


paths = sys.argv[1:]
frames = video_frames(paths[0]) if paths[0].endswith(".mp4") else (iio.imread(p) for p in paths)
found = sum(bool(mesh.process(np.ascontiguousarray(f[..., :3])).multi_face_landmarks) for f in frames)
print(found, "faces", file=sys.stderr)
"""

# the floor of `rgbdface --help`: typer with rich help pages, two commands
MINIMAL_TYPER = r"""
import typer
app = typer.Typer()


@app.command()
def first(x: int = 1):
    "The first command."


@app.command()
def second(y: int = 1):
    "The second command."


app()
"""


def load() -> float:
    return os.getloadavg()[0]


class Timer:
    """Runs whole processes and keeps, per case, their wall times, their CPU times (user + system, all
    threads; name + " cpu") and the load average before each."""

    def __init__(self, env: dict):
        self.env = env
        self.times: dict[str, list[float]] = {}
        self.loads: list[float] = []

    def run(self, name: str, cmd: list[str], env: dict | None = None, ok=(0,), cwd=None) -> float:
        self.loads.append(load())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, cwd=cwd)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode not in ok:
            raise SystemExit(f"{name}: exit {p.returncode}: {p.stderr.strip().splitlines()[-3:]}")
        self.times.setdefault(name, []).append(wall)
        self.stderr = p.stderr
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.times.setdefault(f"{name} cpu", []).append(cpu)
        return wall

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def paired(self, a: str, b: str, f=lambda x, y: x / y) -> float:
        """Median over rounds of f(a, b), each round's two processes run side by side."""
        return statistics.median(f(x, y) for x, y in zip(self.times[a], self.times[b]))


# ----------------------------------------------------------------------------- inputs
def make_inputs(scratch: Path) -> dict:
    import imageio.v3 as iio
    import numpy as np

    scratch.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in (1, 50, 300):
        d = scratch / f"portraits{n}"
        if not d.exists():
            d.mkdir()
            for i in range(n):
                src = ROOT / "examples" / PORTRAITS[i % len(PORTRAITS)]
                shutil.copy(src, d / f"{i:03d}_{src.name}")
        out[n] = d
    video = scratch / "closeup10s.mp4"
    if not video.exists():  # 10 s at 25 fps, 1280 x 720: a close-up (the face about half the frame's height) drifting sideways
        import cv2

        img = iio.imread(ROOT / "examples" / "obama.jpg")[..., :3]
        img = cv2.resize(img, None, fx=2.6, fy=2.6, interpolation=cv2.INTER_LINEAR)[:720]
        frames = []
        for f in range(250):
            canvas = np.full((720, 1280, 3), 128, np.uint8)
            x = 57 + int(50 * np.sin(f / 40))
            canvas[:, x : x + img.shape[1]] = img
            frames.append(canvas)
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(str(video), (1280, 720), fps=25, codec="libx264", macro_block_size=8)
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    out["video"] = video
    from rgbdface.data.audio import write_wav
    from rgbdface.data.speech import synthesize

    speech = synthesize(16.0, np.random.default_rng(0))
    for s in (4, 16):
        path = scratch / f"speech{s}.wav"
        if not path.exists():
            write_wav(path, speech.audio[: s * speech.sample_rate])
        out[f"speech{s}"] = path
    data = scratch / "dataset"
    if not (data / "dataset.json").exists():  # stage-1 training data: the portraits, 3 studio views each, 64 px
        subprocess.run([*CLI, "prep-depth", *(str(ROOT / "examples" / p) for p in PORTRAITS), "-o", str(data),
                        "--size", "64", "--studio-views", "3", "-q"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out["dataset"] = data
    return out


class Busy:
    """A neighbour process holding one core: a CPU-bound Python loop."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


# ----------------------------------------------------------------------------- groups
def group_startup(t: Timer, inp: dict, rounds: int, scratch: Path) -> list[str]:
    one = next(inp[1].iterdir())
    cases = {
        "rgbdface --help": [*CLI, "--help"],
        "estimate-depth, missing input": ([*CLI, "estimate-depth", "nope.jpg", "-o", str(scratch / "n.png")], (1,)),
        "talk, missing audio": ([*CLI, "talk", str(one), "nope.wav", "-o", str(scratch / "n.mp4")], (1,)),
        "train, missing dataset": ([*CLI, "train", "nope", "-o", str(scratch / "nrun"), "--tiny"], (1,)),
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "import torch + diffusers UNet and VAE classes": [sys.executable, "-c", "import torch; from diffusers import UNet2DConditionModel, AutoencoderKL"],
        "import torch + diffusers UNet and VAE classes + mediapipe": [sys.executable, "-c", "import torch; from diffusers import UNet2DConditionModel, AutoencoderKL; import mediapipe"],
        "a two-command typer app, --help": [sys.executable, "-c", MINIMAL_TYPER, "--help"],
        "estimate-depth, one portrait": [*CLI, "estimate-depth", str(one), "-o", str(scratch / "one.png"), "--overwrite", "-q"],
    }
    for _ in range(rounds):
        for name, c in cases.items():
            cmd, ok = c if isinstance(c, tuple) else (c, (0,))
            t.run(name, cmd, ok=ok)
    lines = ["| process | wall s (median) | CPU s (median) | goal |", "|---|---:|---:|---|"]
    goals = {"rgbdface --help": "< 0.3 s on a quiet machine", "estimate-depth, missing input": "< 1 s",
             "talk, missing audio": "< 1 s", "train, missing dataset": "< 1 s",
             "estimate-depth, one portrait": "first unit of work < 2 s on a quiet machine"}
    for name in cases:
        lines.append(f"| {name} | {t.median(name):.2f} | {t.median(name + ' cpu'):.2f} | {goals.get(name, 'floor (reference)')} |")
    return lines


def group_estimate(t: Timer, inp: dict, rounds: int, scratch: Path) -> list[str]:
    for _ in range(rounds):
        t.run("est1", [*CLI, "estimate-depth", str(inp[1]), "-o", str(scratch / "e1"), "--overwrite", "-q"])
        t.run("est50", [*CLI, "estimate-depth", str(inp[50]), "-o", str(scratch / "e50"), "--overwrite", "-q"])
        t.run("mp50", [sys.executable, "-c", MINIMAL_MEDIAPIPE, *map(str, sorted(inp[50].iterdir()))])
        t.run("mp1", [sys.executable, "-c", MINIMAL_MEDIAPIPE, *map(str, sorted(inp[1].iterdir()))])
    per = t.paired("est50", "est1", lambda a, b: (a - b) / 49)
    per_cpu = t.paired("est50 cpu", "est1 cpu", lambda a, b: (a - b) / 49)
    mp_cpu = t.paired("mp50 cpu", "mp1 cpu", lambda a, b: (a - b) / 49)
    mp_per = t.paired("mp50", "mp1", lambda a, b: (a - b) / 49)
    startup = statistics.median(b - (a - b) / 49 for a, b in zip(t.times["est50"], t.times["est1"]))
    return ["| measure | value |", "|---|---:|",
            f"| estimate-depth, 50 portraits (s) | {t.median('est50'):.2f} |",
            f"| estimate-depth, 1 portrait (s) | {t.median('est1'):.2f} |",
            f"| per image, (t50 - t1) / 49 (ms) | {1000 * per:.0f} |",
            f"| images/s on the folder of 50 | {50 / t.median('est50'):.2f} |",
            f"| fixed cost: t1 - per image (s) | {startup:.2f} |",
            f"| share of the 50-image run spent on the fixed cost | {startup / t.median('est50'):.0%} |",
            f"| per image, CPU (ms) | {1000 * per_cpu:.0f} |",
            f"| minimal MediaPipe process, per image (ms) | {1000 * mp_per:.1f} |",
            f"| minimal MediaPipe process, per image, CPU (ms) | {1000 * mp_cpu:.1f} |"]


def group_prep(t: Timer, inp: dict, rounds: int, scratch: Path) -> list[str]:
    cases = {"300": (inp[300], [str(p) for p in sorted(inp[300].iterdir())]), "vid": (inp["video"], [str(inp["video"])])}
    found = {}  # samples prep-depth wrote; faces the minimal process fitted (it prints "N faces")
    for _ in range(rounds):
        for key, (source, files) in cases.items():
            out = scratch / f"prep{key}"
            shutil.rmtree(out, ignore_errors=True)
            t.run(f"prep{key}", [*CLI, "prep-depth", str(source), "-o", str(out), "-q"])
            found[f"prep{key}"] = sum(1 for _ in out.glob("*/rgb_*"))
            t.run(f"mp{key}", [sys.executable, "-c", MINIMAL_MEDIAPIPE, *files])
            found[f"mp{key}"] = int(t.stderr.split(" faces")[0].split()[-1])
    rows = ["| input | prep-depth (s) | minimal MediaPipe (s) | ratio, wall | ratio, CPU | faces fitted (prep-depth, minimal) | goal |",
            "|---|---:|---:|---:|---:|---|---|"]
    for label, key in (("300 single portraits", "300"), ("10 s video, 25 fps, 1280x720 close-up", "vid")):
        a, b = f"prep{key}", f"mp{key}"
        rows.append(f"| {label} | {t.median(a):.2f} | {t.median(b):.2f} | {t.paired(a, b):.2f}x | {t.paired(a + ' cpu', b + ' cpu'):.2f}x "
                    f"| {found[a]}, {found[b]} | <= 1.25x (wall) |")
    return rows


def group_talk(t: Timer, inp: dict, rounds: int, scratch: Path, steps: int | None) -> list[str]:
    one = ROOT / "examples" / "obama.jpg"
    extra = ["--steps", str(steps)] if steps else []
    for _ in range(rounds):
        for s in (4, 16):
            t.run(f"talk{s}", [*CLI, "talk", str(one), str(inp[f"speech{s}"]), "-o", str(scratch / f"talk{s}.mp4"), "-q", *extra])
    per4, per16 = t.median("talk4") / 100, t.median("talk16") / 400
    ratio = t.paired("talk16", "talk4", lambda a, b: (a / 400) / (b / 100))
    return ["| speech | wall s | s/frame (whole process) |", "|---|---:|---:|",
            f"| 4 s (100 frames) | {t.median('talk4'):.1f} | {per4:.3f} |",
            f"| 16 s (400 frames) | {t.median('talk16'):.1f} | {per16:.3f} |",
            "", f"16 s against 4 s, s/frame: {ratio:.2f}x (goal: within 1.10x; start-up weighs more on the short run)"
            + (f"; --steps {steps}" if steps else "; default steps")]


def train_steps(t: Timer, name: str, inp: dict, scratch: Path, steps: int, env: dict | None = None, extra=()) -> None:
    run = scratch / f"run-{name.replace(' ', '_')}"
    shutil.rmtree(run, ignore_errors=True)
    t.run(name, [*CLI, "train", str(inp["dataset"]), "-o", str(run), "--tiny", "--max-steps", str(steps), "-q",
                 "--set", "log.sample_every=0", "--set", "log.checkpoint_every=0", "--set", "log.log_every=1", *extra], env=env)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]  # the first step warms up
    batch = json.loads((run / "config.json").read_text())["optim"]["batch_size"]
    t.times.setdefault(f"{name} s/step", []).append(statistics.median(batch / r for r in rates))


def group_train(t: Timer, inp: dict, rounds: int, scratch: Path) -> list[str]:
    for _ in range(rounds):
        train_steps(t, "train", inp, scratch, 12)
    return ["| stage | s/step (median of steps 2-12, median of rounds) | whole process, 12 steps (s) |", "|---|---:|---:|",
            f"| 1 (tiny recipe, 64 px) | {t.median('train s/step'):.3f} | {t.median('train'):.1f} |"]


def group_busy(t: Timer, inp: dict, rounds: int, scratch: Path) -> list[str]:
    settings = {"default": [], "--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}
    env = None  # OMP_NUM_THREADS unset (see main): the command's own default decides
    from rgbdface.utils import default_threads

    chosen = []  # the threads the default chose: its rule, applied just before each default process
    for _ in range(rounds):
        with Busy():
            for label, extra in settings.items():
                if label == "default":
                    chosen.append(default_threads()[0])
                t.run(f"busy est {label}", [*CLI, "estimate-depth", str(inp[50]), "-o", str(scratch / "b50"), "--overwrite", "-q", *extra], env=env)
                if label == "default":
                    chosen.append(default_threads()[0])
                train_steps(t, f"busy train {label}", inp, scratch, 8, env=env, extra=extra)
    lines = ["| with a busy neighbour | estimate-depth, 50 portraits (s) | train stage 1, s/step |", "|---|---:|---:|"]
    for label in settings:
        lines.append(f"| {label} | {t.median(f'busy est {label}'):.2f} | {t.median(f'busy train {label} s/step'):.3f} |")
    best_est = min(settings, key=lambda s: t.median(f"busy est {s}"))
    best_train = min(settings, key=lambda s: t.median(f"busy train {s} s/step"))
    lines += ["", f"default against the best setting: estimate-depth {t.paired('busy est default', f'busy est {best_est}'):.2f}x "
              f"(best: {best_est}), training {t.paired('busy train default s/step', f'busy train {best_train} s/step'):.2f}x "
              f"(best: {best_train}); goal: within 1.25x", "",
              f"threads the default chose (CPUs the load average leaves idle, at least 1), per default process (estimate-depth, training, round by round): {', '.join(map(str, chosen))}"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every group (each round runs each case once)")
    ap.add_argument("--groups", default="startup,estimate,prep,talk,train,busy")
    ap.add_argument("--talk-steps", type=int, default=None, help="denoising steps for talk (default: the command's)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/rgbdface-bench-commands"))
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # as a user runs them: each command picks its own threads
    os.environ.pop("OMP_NUM_THREADS", None)  # and the default's rule, applied here too (group_busy), sees what they see
    t = Timer(env)
    inp = make_inputs(args.scratch)
    load_before = load()
    started = time.perf_counter()
    sections = []
    titles = {"startup": "Start-up and early errors", "estimate": "estimate-depth on a folder",
              "prep": "prep-depth against a minimal MediaPipe process", "talk": "talk", "train": "Training",
              "busy": "A busy neighbour (one core held by a CPU-bound loop) and thread settings"}
    for g in args.groups.split(","):
        print(f"{g} ...", file=sys.stderr, flush=True)
        before = len(t.loads)
        if g == "talk":
            body = group_talk(t, inp, args.repeats, args.scratch, args.talk_steps)
        else:
            body = globals()[f"group_{g}"](t, inp, args.repeats, args.scratch)
        loads = t.loads[before:]
        sections += [f"## {titles[g]}", "", *body, "",
                     f"1-minute load average before its processes: median {statistics.median(loads):.1f}, "
                     f"range {min(loads):.1f}-{max(loads):.1f}.", ""]
    lines = ["# The commands as users run them (whole processes)", "",
             f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, "
             f"no GPU used. {args.repeats} interleaved rounds per group; medians. 1-minute load average {load_before:.1f} "
             f"when the run started, {load():.1f} when it ended ({(time.perf_counter() - started) / 60:.0f} min). "
             "A load above the core count means other processes held the cores during the run: absolute times are then "
             "slower than on a quiet machine, and only ratios between processes of the same rounds compare.", "",
             "    " + " ".join(["python benchmarks/bench_commands.py", *sys.argv[1:]]), "", *sections]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
