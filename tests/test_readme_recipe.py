"""The README's training recipe, as written there, at a few steps: train-vae, init-model with that codec,
stages 1, 2 and 3 (stage 3 from stage 2), then every inference command on the result through its run folder."""

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app

ROOT = Path(__file__).resolve().parent.parent

# What the test changes in the README's commands: fewer renders, clips, steps and seconds; nothing else.
SMALLER = [(r"--studio-views \d+", "--studio-views 1"), (r"--talking-clips \d+", "--talking-clips 1 --clip-seconds 0.6"),
           (r"(train-vae .*)--steps \d+", r"\1--steps 2")]
FEWER_STEPS = {"train": "--max-steps 2", "finetune-mask": "--max-steps 2", "train-motion": "--max-steps 2",
               "estimate-depth": "--steps 1", "generate": "--steps 1", "depth2img": "--steps 1", "relight": "--steps 1",
               "talk": "--steps 1 --max-seconds 0.7"}


def readme_commands(marker: str) -> list[str]:
    """The `rgbdface ...` lines of the README's code block after `<!-- marker ... -->`, continuations joined."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker}\b[^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert m, f"README.md has no block marked {marker}"
    lines = m.group(1).replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip().startswith("rgbdface ")]


def shrink(command: str) -> str:
    for pattern, repl in SMALLER:
        command = re.sub(pattern, repl, command)
    name = command.split()[1]
    extra = FEWER_STEPS.get(name, "")
    if name == "eval" and "model:" in command:
        extra = "--steps 1"
    return f"{command} {extra}".strip()


def run(command: str):
    args = []
    for token in shlex.split(command)[1:]:  # drop "rgbdface"
        matches = sorted(Path().glob(token)) if "*" in token else None
        args.extend(str(p) for p in matches) if matches else args.append(token)
    return CliRunner().invoke(app, args)


def test_readme_recipe_end_to_end(tmp_path, monkeypatch, caplog):
    train = readme_commands("training-recipe")
    use = readme_commands("training-recipe-use")
    names = [c.split()[1] for c in train]
    assert names == ["prep-depth", "train-vae", "init-model", "train", "finetune-mask", "train-motion"]
    assert "--vae runs/vae" in train[2] and "-m runs/s2" in train[5]  # the codec is used; stage 3 comes from stage 2
    inference = {c.split()[1] for c in use}
    assert {"estimate-depth", "generate", "depth2img", "relight", "talk", "eval"} <= inference
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    logs = {}
    for command in train + use:
        small = shrink(command)
        r = run(small)
        assert r.exit_code == 0, f"{small}\n{r.output}"
        assert "Traceback" not in r.output
        logs[command.split()[1]] = r.stderr
    # every generating command states its output size in its log (the recipe's model works at 64 px)
    assert "samples of 64x64 px (the model's size)" in logs["generate"]
    assert "frames of 64x64 px (the model's size)" in logs["talk"]
    assert "at the model's 64x64 px" in logs["depth2img"] and "(512x512)" in logs["depth2img"]
    assert "a full-frame depth map" in logs["depth2img"]  # estimate-depth's map of another photo, cropped around its face
    assert "each at its own size (the face estimated at the model's 64 px)" in logs["estimate-depth"]
    assert "(448x560, the image's size)" in logs["relight"]
    # a trained codec: no warning about an untrained one
    assert "untrained latent codec" not in caplog.text
    model = json.loads((tmp_path / "runs/s3/model/rgbdface.json").read_text())
    assert model["stages"] == [0, 1, 2, 3] and model["codec_trained"] is True
    for out in ("out/depth/obama.png", "out/depth/obama_preview.png", "out/samples/obama_00_rgb.png",
                "out/biden_depth2img.png", "out/obama_lit.png", "out/obama_talk.mp4"):
        assert (tmp_path / out).is_file() and (tmp_path / out).stat().st_size > 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "examples", "out", "runs"]  # nothing else written


def test_training_warns_when_starting_from_an_untrained_codec(tiny_model_dir, tmp_path, caplog):
    from train_helpers import make_dataset

    data = make_dataset(tmp_path / "data", identities=2, frames=2, size=32)
    r = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "-m", str(tiny_model_dir), "--show-config"])
    assert r.exit_code == 0, r.output
    assert f"--model {tiny_model_dir} has an untrained latent codec" in caplog.text and "rgbdface train-vae" in caplog.text
    caplog.clear()
    r = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "run2"), "--tiny", "--image-size", "32", "--show-config"])
    assert r.exit_code == 0 and "--tiny builds a model with an untrained latent codec" in caplog.text
    r = CliRunner().invoke(app, ["init-model", "--tiny", "--image-size", "32", "-o", str(tmp_path / "s0")])
    assert r.exit_code == 0 and "latent codec is untrained" in r.stderr
    assert json.loads((tmp_path / "s0/rgbdface.json").read_text())["codec_trained"] is False


def test_run_folder_is_a_model_folder(tiny_masked_model_dir, tmp_path):
    """Inference commands take a training run folder (RUN/model/ inside) wherever they take a model folder."""
    import shutil

    from rgbdface.models.folder import model_folder
    from rgbdface.models.model import load_model

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copytree(tiny_masked_model_dir, run_dir / "model")
    assert model_folder(run_dir) == run_dir / "model"
    assert load_model(run_dir).meta.stages == [0, 1, 2]
    out = tmp_path / "d.png"
    r = CliRunner().invoke(app, ["estimate-depth", str(ROOT / "examples/astronaut.jpg"), "-m", str(run_dir), "-o", str(out),
                                 "--steps", "1"])
    assert r.exit_code == 0 and out.is_file(), r.output
    r = CliRunner().invoke(app, ["estimate-depth", str(ROOT / "examples/astronaut.jpg"), "-m", str(tmp_path), "-o", str(tmp_path / "e.png")])
    assert r.exit_code == 1 and "not an rgbdface model folder" in r.stderr


def test_run_it_writes_into_out(tmp_path, monkeypatch):
    """The README's first command, its rgbdface part as written, writes only into out/ (ignored by git)."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"\*\*Run it\*\*.*?```bash\n(.*?)\n```", text, re.S).group(1)
    command = first.split("&&")[-1].strip()
    assert command.startswith("rgbdface estimate-depth examples/astronaut.jpg -o out/")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    r = run(command)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["depth.png", "depth_preview.png"]
    assert "/out/" in (ROOT / ".gitignore").read_text().splitlines()


def test_cpu_only_install_line_asks_for_the_torch_the_project_allows():
    import tomllib

    text = (ROOT / "README.md").read_text()
    line = re.search(r'pip install "(torch[^"]*)" --index-url https://download.pytorch.org/whl/cpu', text)
    assert line, "README: no CPU-only torch install line"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert line.group(1) in deps  # the same range as the project's, so `pip install -e .` keeps the CPU build
