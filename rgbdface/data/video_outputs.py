"""The outputs of a generated RGB + depth video (talk): checked up front, written frame by frame, appearing together.

    check_outputs(output, depth_video, ...)    every path writable, video suffixes, no two the same
    with VideoOutputs(output, ...) as out:     temporary paths until the block ends without an error
        out.write(frame)                       frame: .index, .rgb uint8 [S, S, 3], .depth float32 [S, S]
                                               (relative, [-1, 1], larger = farther), .valid bool [S, S]

- `output`: the RGB video (or RGB | depth side by side), H.264 with the audio;
- `depth_video`: the depth colour-mapped, with the audio;
- `rgb_frames`, `depth_frames`: one PNG per frame (000000.png, ...), depth as 16-bit;
- `mesh_frames`: one coloured PLY mesh per frame (the depth-mesh camera of
  `rgbdface.data.surface`; a frame without valid depth gets none).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from rgbdface.utils import UsageError, atomic_dir, atomic_path, exists

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv"}


def check_outputs(output: Path, depth_video: Path | None = None, rgb_frames: Path | None = None,
                  depth_frames: Path | None = None, mesh_frames: Path | None = None, inputs: tuple = ()) -> None:
    """Every output has a video suffix or is a folder, no two are the same, none is (or holds) one of `inputs`,
    and each can be written (`rgbdface.data.outputs.OutputPlan`); raises UsageError / InputError naming the first that cannot."""
    from rgbdface.data.outputs import OutputPlan

    plan = OutputPlan()
    for path in inputs:
        if exists(path):
            plan.input(path)
    for opt, path in (("--output", output), ("--depth-video", depth_video)):
        if exists(path):
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise UsageError(f"{opt} {path}: expected a video file ending in {', '.join(sorted(VIDEO_SUFFIXES))}")
            plan.file(path, opt)
    for opt, path in (("--rgb-frames", rgb_frames), ("--depth-frames", depth_frames), ("--mesh-frames", mesh_frames)):
        if exists(path):
            plan.folder(path, opt)
    plan.check()


class VideoOutputs:
    """Every requested output of one video, written as frames come (see the module doc).

    audio: the file whose audio is muxed into the videos, for `seconds`. Outputs go to
    temporary paths and are renamed only after the last frame, all of them or none.
    """

    def __init__(self, output: str | Path, fps: int = 25, audio: str | Path | None = None, seconds: float | None = None,
                 depth_video: str | Path | None = None, side_by_side: bool = False, rgb_frames: str | Path | None = None,
                 depth_frames: str | Path | None = None, mesh_frames: str | Path | None = None):
        self.output = Path(output)
        self.depth_video, self.rgb_frames, self.depth_frames, self.mesh_frames = (
            Path(p) if exists(p) else None for p in (depth_video, rgb_frames, depth_frames, mesh_frames))
        self.fps, self.audio, self.seconds, self.side_by_side = fps, audio, seconds, side_by_side
        check_outputs(self.output, self.depth_video, self.rgb_frames, self.depth_frames, self.mesh_frames)
        self.frames = 0
        self._stack = contextlib.ExitStack()  # the open outputs, from __enter__ on

    @property
    def paths(self) -> list[Path]:
        """The outputs, in the order: output, depth video, RGB frames, depth frames, meshes."""
        return [p for p in (self.output, self.depth_video, self.rgb_frames, self.depth_frames, self.mesh_frames) if exists(p)]

    def __enter__(self) -> "VideoOutputs":
        from rgbdface.data.video import VideoWriter

        with contextlib.ExitStack() as stack:  # a failure while opening undoes what was opened
            # Every output at a temporary path first, the video writers last: on exit (LIFO) every writer is
            # closed (ffmpeg finishes, or fails on a full disk) before any output is renamed into place.
            videos = [p for p in (self.output, self.depth_video) if exists(p)]
            temporary = [stack.enter_context(atomic_path(p)) for p in videos]
            self._rgb_dir, self._depth_dir, self._mesh_dir = (
                stack.enter_context(atomic_dir(p)) if exists(p) else None for p in (self.rgb_frames, self.depth_frames, self.mesh_frames))
            self._videos = [stack.enter_context(VideoWriter(tmp, self.fps, self.audio, self.seconds, name=path))
                            for tmp, path in zip(temporary, videos)]
            self._stack = stack.pop_all()
        return self

    def write(self, frame) -> None:
        from rgbdface.data.io import colorize_depth, relative_depth_to_u16, save_depth16, save_image

        preview = colorize_depth(frame.depth, frame.valid) if self.side_by_side or exists(self.depth_video) else None
        self._videos[0].write(np.concatenate([frame.rgb, preview], axis=1) if self.side_by_side else frame.rgb)
        if exists(self.depth_video):
            self._videos[1].write(preview)
        if exists(self._rgb_dir):
            save_image(self._rgb_dir / f"{frame.index:06d}.png", frame.rgb)
        if exists(self._depth_dir):
            save_depth16(self._depth_dir / f"{frame.index:06d}.png", relative_depth_to_u16(frame.depth, frame.valid))
        if exists(self._mesh_dir) and frame.valid.any():
            from rgbdface.data.surface import depth_to_mesh, save_mesh

            # depth + 2 > 0: the mesh builder wants positive depth, larger = farther
            save_mesh(self._mesh_dir / f"{frame.index:06d}.ply", depth_to_mesh(frame.depth + 2.0, frame.valid, frame.rgb))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._stack.__exit__(exc_type, exc, tb)
