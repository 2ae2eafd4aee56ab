"""`rgbdface prep-depth`: face depth, masks and datasets from images and videos."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, expand_inputs, handle_errors, log, parse_shard, report, take_shard
from rgbdface.cli.options import JsonOpt, OverwriteOpt, QuietOpt, ShardOpt


def prep_depth(
    inputs: Annotated[list[str], typer.Argument(help="Images, videos, folders (recursive), globs, or '-' for paths on stdin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write (created if needed).")],
    size: Annotated[int, typer.Option("--size", help="Side of the square face crop in pixels; adding to an existing dataset needs the size it was made with (another is a usage error, exit 2).")] = 512,
    margin: Annotated[Optional[float], typer.Option("--margin", help="Crop margin on each side, in face-box sizes (default 0.6); recorded in dataset.json, and models trained on the dataset crop their inputs with it. An existing dataset keeps its margin.")] = None,
    studio_views: Annotated[int, typer.Option("--studio-views", help="Studio-like renders with exact depth per fitted portrait (new pose, jaw, light, background). Run again with more to add the missing ones to finished inputs.")] = 0,
    studio_mix: Annotated[int, typer.Option("--studio-mix", help="Studio-like renders of mixed identities: for each ordered pair of fitted portraits of different identities, the face shape of one under the skin of the other, with a skin tone of its own (and each portrait under a new skin tone); identity 'SHAPE+TEXTURE'. Mixes every portrait in the dataset; after sharded runs, run once more unsharded.")] = 0,
    shape_blends: Annotated[int, typer.Option("--shape-blends", help="New face shapes no portrait has, drawn from the space the dataset's fitted portraits span (their mean plus random multiples of each one's difference from it, after aligning them), each under the skin of one portrait in turn with a skin tone of its own; identity 'blendK+TEXTURE'. Needs two or more fitted portraits; after sharded runs, run once more unsharded.")] = 0,
    blend_views: Annotated[int, typer.Option("--blend-views", help="Studio-like renders of each --shape-blends shape.")] = 40,
    talking_clips: Annotated[int, typer.Option("--talking-clips", help="Synthetic talking clips per fitted portrait: 25 fps renders whose jaw follows speech-like synthetic audio (audio.wav), exact depth. Run again with more to add the missing ones to finished inputs.")] = 0,
    clip_seconds: Annotated[float, typer.Option("--clip-seconds", help="Length of each talking clip in seconds.")] = 2.4,
    talk_jaw: Annotated[float, typer.Option("--talk-jaw", help="Widest jaw opening of a talking clip, in degrees (each clip draws its own from 0.8 to 1.2 times this; the jaw follows the speech envelope up to it). At small crop sizes a wider jaw makes the mouth's motion visible to training.")] = 15.0,
    all_faces: Annotated[bool, typer.Option("--all-faces", help="Every face of an image (default: the largest only).")] = False,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Worker processes (0 = in this process).")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Background threads (per worker) that rasterise, encode and write a frame while MediaPipe fits the next; 0 = all in one thread. More than one pays off only with cores to spare beside MediaPipe's.")] = 1,
    shard: ShardOpt = None,
    export_mesh: Annotated[Optional[str], typer.Option("--export-mesh", help="Also write the fitted mesh with vertex colours: ply, obj or glb.")] = None,
    wav2vec: Annotated[Optional[Path], typer.Option("--wav2vec", help="Local wav2vec2 model folder (safetensors) for per-frame audio features of videos.")] = None,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate videos are sampled at.")] = 25.0,
    rgb_format: Annotated[str, typer.Option("--rgb-format", help="RGB crops as 'jpg' (quality 95) or 'png'.")] = "jpg",
    identity_from: Annotated[str, typer.Option("--identity-from", help="Identity of a sample: 'stem' (file name) or 'parent' (folder name).")] = "stem",
    seed: Annotated[int, typer.Option("--seed", help="Seed for the studio views.")] = 0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Crop faces, fit the face mesh and write depth, masks and a dataset manifest (paper §5.1, supp. §7.3).

    Depth is camera-space Z under an assumed camera, as 16-bit PNG in 0.1 mm steps (0 = no depth).
    Bad inputs are reported one per line and skipped; the exit status is 1 if any failed.
    --json adds to the common keys: done, samples, frames (counts), output, shard.
    """
    from rgbdface.data.face import DEFAULT_MARGIN
    from rgbdface.data.prep import PrepConfig, input_suffixes, prepare_dataset

    features = None
    if wav2vec is not None and wav2vec.is_dir():  # the encoder lives with the models; prep-depth stores its features
        from functools import partial

        from rgbdface.models.audio import wav2vec_features

        features = partial(wav2vec_features, wav2vec)
    cfg = PrepConfig(size=size, margin=DEFAULT_MARGIN if margin is None else margin, studio_views=studio_views, studio_mix=studio_mix, shape_blends=shape_blends,
                     blend_views=blend_views, talking_clips=talking_clips, talk_jaw=talk_jaw,
                     clip_seconds=clip_seconds, all_faces=all_faces,
                     export_mesh=export_mesh, wav2vec=wav2vec, audio_features=features, fps=fps, rgb_format=rgb_format, identity_from=identity_from, seed=seed, threads=threads)
    cfg.check()
    index, count = parse_shard(shard)
    paths = take_shard(expand_inputs(inputs, input_suffixes(), exclude=output), index, count)  # never the dataset's own crops
    if not paths:
        log(f"prep-depth: no inputs in shard {index}/{count}", quiet)
    progress = _Progress(len(paths), quiet)
    summary = prepare_dataset(paths, output, cfg, workers=workers, overwrite=overwrite, on_result=progress)
    line = f"prep-depth: {summary.done} done, {summary.skipped} skipped, {len(summary.failed)} failed; {summary.samples} samples in {summary.seconds:.1f} s -> {output}"
    print(line, file=sys.stderr) if summary.failed or not quiet else None
    rep = report()
    rep.wrote(output)  # the dataset folder: its manifest is rewritten on every run
    for path, error in summary.failed:
        rep.fail_input(path, error)
    rep.add(done=summary.done, samples=summary.samples, frames=summary.frames, output=str(output), shard=f"{index}/{count}")
    if summary.failed:
        raise typer.Exit(1)


class _Progress:
    """One stderr line per input; failures always, the rest unless quiet."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.n = total, quiet, 0

    def __call__(self, r) -> None:
        self.n += 1
        if r.status == "skipped":
            report().skip(r.path)
        if r.status == "failed":
            print(f"rgbdface: error: {r.error}", file=sys.stderr)
        elif r.status == "skipped" and r.changed:  # asked-for work that is not done: said even with --quiet
            print(f"rgbdface: warning: {r.path}: already done with {r.changed}; pass --overwrite to redo it with this run's options",
                  file=sys.stderr)
        elif not self.quiet:
            what = f"{r.samples} samples, {r.seconds:.1f} s" if r.status == "done" else "already done"
            tag = f"{self.n}/{self.total}" if self.n <= self.total else "mix"  # mixed identities come after the inputs
            print(f"[{tag}] {r.path}: {what}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("prep-depth", cls=ReportingCommand)(handle_errors(prep_depth))
