"""One MediaPipe pass per image for prep-depth: the crop framing, depth and time it would give.

prep-depth fits a face in two MediaPipe passes: face detection on the image, the crop box
from the detector's box (`square_box`), then the face mesh on the crop (whose graph detects
the face again). The minimal MediaPipe process of bench_commands.py makes one face-mesh call
on the whole image. This measures what one pass would give instead: the face mesh on the
whole image, the crop box derived from its landmarks by a mapping calibrated to the
detector's box, and the landmarks carried into the crop (no second mesh).

    PYTHONPATH=. python benchmarks/bench_single_pass.py [--variants 12] [--video PATH [--video-identity NAME]]

Inputs: the example portraits the face mesh fits (astronaut, biden, grace_hopper, obama),
each as shipped, mirrored, and at a random scale (0.5-1.6), rotation (within 12 degrees)
and place on a canvas up to 2.2 times larger (`--variants` images each, seed 0); and the
frames of a 10 s 25 fps 1280x720 close-up of obama.jpg drifting sideways (the video
bench_commands.py makes; `--video` to pass one).

The mapping: the detector box's centre = the landmarks' centre (mean of the 468 mesh points)
+ an offset, its width and height = factors times the landmarks' size (the root of the
squared eye distance plus the squared eye-to-mouth distance; rotation-invariant), the
offset and factors the median over the calibration images. Portraits are scored leaving
their own identity out of the calibration; video frames leaving the video's portrait out
(`--video-identity`; obama.jpg for the default video).

Measures, against the current crop:
- framing: the crop box's centre shift (in face widths, the detector box's width) and its
  side's relative difference; for scale, the detector's own consistency on the same
  portraits (mirrored, and at 0.8x and 1.25x);
- misses: images where the detector finds the face and the whole-image face mesh does not
  (one pass would need the two-pass path as a fallback there);
- depth: the depth map from the carried landmarks against the current one, both in the
  current crop (so only the landmarks differ): median |difference| in mm inside both masks,
  as is and after removing the median difference (the face's distance, set by its eye
  distance), and the share of mask pixels on which the masks disagree;
- CPU ms per image (`time.process_time`, one thread): detection + crop + mesh on the crop
  against mesh on the whole image + crop; and the work every prep-depth sample does beyond
  MediaPipe (depth raster, encoding and writing its four files) for the floor;
- video: the face mesh in tracking mode (`static_image_mode=False`) on the crops against
  static mode: CPU ms per frame and the depth difference.

Prints Markdown and writes benchmarks/results/single_pass.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "single_pass.md"
PORTRAITS = ["astronaut.jpg", "biden.jpg", "grace_hopper.jpg", "obama.jpg"]
SIZE = 512
ROUGH = (np.zeros(2), np.full(2, 1.0))  # a mapping for timing only: the cost does not depend on it


def mesh_landmarks(image: np.ndarray, static: bool = True, mesh=None) -> np.ndarray | None:
    """The face mesh on an image (MediaPipe's solution, as rgbdface configures it): [478, 3] in its pixels."""
    from rgbdface.data import face as F

    if mesh is None:
        mesh = F._mp_object("mesh", static_image_mode=static, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5)
    h, w = image.shape[:2]
    found = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
    if not found:
        return None
    faces = [np.array([(p.x, p.y, p.z) for p in f.landmark], np.float64) * (w, h, w) for f in found]
    return max(faces, key=lambda lm: np.ptp(lm[:, 0]))  # the largest face


def landmark_frame(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (mean of the 468 mesh points) and rotation-invariant size of a face's landmarks."""
    eyes = (lm[468, :2] + lm[473, :2]) / 2  # iris centres
    mouth = (lm[13, :2] + lm[14, :2]) / 2
    size = float(np.hypot(np.linalg.norm(lm[473, :2] - lm[468, :2]), np.linalg.norm(mouth - eyes)))
    return lm[:468, :2].mean(0), size


def box_params(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def calibrate(samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Median offset of the detector box's centre and median width/height factors, in landmark sizes."""
    offs, scales = [], []
    for s in samples:
        c, z = landmark_frame(s["lm"])
        d = box_params(s["det"])
        offs.append((d[:2] - c) / z)
        scales.append(d[2:] / z)
    return np.median(offs, 0), np.median(scales, 0)


def mapped_box(lm: np.ndarray, calib) -> tuple[float, float, float, float]:
    off, scale = calib
    c, z = landmark_frame(lm)
    cx, cy = c + off * z
    w, h = scale * z
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def framing(det_box, other_box) -> tuple[float, float]:
    """Crop boxes (`square_box`) of two face boxes: centre shift in face widths, relative side difference."""
    from rgbdface.data.face import FaceBox, square_box

    a = np.array(square_box(FaceBox(*det_box, 1.0)))
    b = np.array(square_box(FaceBox(*other_box, 1.0)))
    shift = float(np.hypot(*((a[:2] + a[2:]) - (b[:2] + b[2:])) / 2)) / (det_box[2] - det_box[0])
    side = abs((a[2] - a[0]) - (b[2] - b[0])) / (a[2] - a[0])
    return shift, float(side)


def depth_difference(lm_a: np.ndarray, lm_b: np.ndarray) -> tuple[float, float, float]:
    from rgbdface.data.depth import render_face_depth

    a, b = render_face_depth(lm_a.astype(np.float32), SIZE), render_face_depth(lm_b.astype(np.float32), SIZE)
    both = a.mask & b.mask
    diff = a.depth[both].astype(np.float64) - b.depth[both]
    return float(np.median(np.abs(diff))), float(np.median(np.abs(diff - np.median(diff)))), float((a.mask ^ b.mask).sum() / max(a.mask.sum(), 1))


def variants(n: int, rng: np.random.Generator):
    import cv2

    from rgbdface.data.io import load_image

    for name in PORTRAITS:
        base = load_image(ROOT / "examples" / name)
        for k in range(n):
            img = base[:, ::-1] if k % 2 else base
            if k >= 2:
                s, angle = rng.uniform(0.5, 1.6), rng.uniform(-12, 12)
                H, W = int(rng.uniform(1.0, 2.2) * img.shape[0]), int(rng.uniform(1.0, 2.2) * img.shape[1])
                m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), angle, s)
                m[:, 2] += (W / 2 - img.shape[1] / 2 + rng.uniform(-0.2, 0.2) * W, H / 2 - img.shape[0] / 2 + rng.uniform(-0.2, 0.2) * H)
                img = cv2.warpAffine(np.ascontiguousarray(img), m, (W, H), borderMode=cv2.BORDER_REPLICATE)
            yield name, k, np.ascontiguousarray(img)


def two_pass(img: np.ndarray):
    """prep-depth now: detection, crop box, crop, mesh on the crop."""
    from rgbdface.data import face as F

    faces = F.detect_faces(img)
    if not faces:
        return None
    box = F.square_box(faces[0])
    crop = F.crop_box_to(img, box, SIZE)
    try:
        return faces[0], box, crop, F.crop_landmarks(crop)
    except F.NoFaceError:
        return None


def one_pass(img: np.ndarray, calib):
    """The alternative: mesh on the whole image, crop box from its landmarks, landmarks carried into the crop."""
    from rgbdface.data import face as F

    lm = mesh_landmarks(img)
    if lm is None:
        return None
    box = F.square_box(F.FaceBox(*mapped_box(lm, calib), 1.0))
    crop = F.crop_box_to(img, box, SIZE)
    return lm, crop, F.box_to_crop_coords(lm, box, SIZE)


def timed(fn, *args):
    t = time.process_time()
    out = fn(*args)
    return out, 1000 * (time.process_time() - t)


def q(values, p):
    return float(np.quantile(values, p)) if len(values) else float("nan")


def summary_row(label: str, values: list[float], pct: bool = True) -> str:
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f"| {label} | {len(values)} | {f(q(values, .5))} | {f(q(values, .9))} | {f(max(values))} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=12, help="images per portrait (as shipped, mirrored, then random placements)")
    ap.add_argument("--video", type=Path, default=None, help="a video to score frame by frame (default: bench_commands.py's 10 s 720p close-up)")
    ap.add_argument("--video-identity", default=None, help="the example portrait the video shows, left out of its calibration (default video: obama.jpg)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    video = args.video or Path(tempfile.gettempdir()) / "rgbdface-bench-commands" / "closeup10s.mp4"
    if not video.exists():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_commands import make_inputs

        video = make_inputs(video.parent)["video"]
    text = measure(args.variants, video, args.video_identity or (None if args.video else "obama.jpg"), " ".join(sys.argv[1:]))
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


def measure(n_variants: int, video: Path, identity: str | None, options: str = "") -> str:
    """Every measure, as the Markdown text of the results; `identity`: the example portrait the video shows."""
    from rgbdface.data import face as F
    from rgbdface.data import video as V
    from rgbdface.data.depth import render_face_depth
    from rgbdface.data.prep import write_sample

    rng = np.random.default_rng(0)
    F._mp_object("detection", model_selection=1, min_detection_confidence=0.5)  # graphs built before any timing
    mesh_landmarks(np.zeros((64, 64, 3), np.uint8))

    # 1. Portraits: both paths on every variant, timed.
    samples, misses, t_two, t_one, t_rest = [], [], [], [], []
    out_dir = Path(tempfile.mkdtemp(prefix="rgbdface-single-pass-"))
    for name, k, img in variants(n_variants, rng):
        two, ms_two = timed(two_pass, img)
        if two is None:
            continue  # the current path fails too: not a framing question
        one, ms_one = timed(one_pass, img, ROUGH)  # timed here, scored below with the calibrated mapping
        t_two.append(ms_two)
        if one is None:
            misses.append(f"{name} #{k}")
            continue
        t_one.append(ms_one)
        lm_full = one[0]
        face, box, crop, lm_crop = two
        samples.append({"name": name, "k": k, "det": (face.x0, face.y0, face.x1, face.y1), "lm": lm_full,
                        "carried": F.box_to_crop_coords(lm_full, box, SIZE), "lm_crop": lm_crop})
        t0 = time.process_time()  # the rest of a sample: raster, encode and write its four files
        fd = render_face_depth(lm_crop.astype(np.float32), SIZE)
        write_sample(out_dir, "c", len(samples), crop, fd.depth, fd.mask, lm_crop, "jpg")
        t_rest.append(1000 * (time.process_time() - t0))
    ids = sorted({s["name"] for s in samples})
    shift, side, dz, dz_rel, dmask = [], [], [], [], []
    for s in samples:
        calib = calibrate([o for o in samples if o["name"] != s["name"]])
        a, b = framing(s["det"], mapped_box(s["lm"], calib))
        shift.append(a)
        side.append(b)
        z = depth_difference(s["lm_crop"], s["carried"])
        dz.append(z[0]), dz_rel.append(z[1]), dmask.append(z[2])

    # 2. The detector's own consistency on the shipped portraits.
    import cv2

    from rgbdface.data.io import load_image

    own_shift, own_side = [], []
    for name in ids:
        img = load_image(ROOT / "examples" / name)
        d0 = F.detect_faces(img)[0]
        ref = (d0.x0, d0.y0, d0.x1, d0.y1)
        w = img.shape[1]
        d1 = F.detect_faces(np.ascontiguousarray(img[:, ::-1]))[0]
        others = [(w - d1.x1, d1.y0, w - d1.x0, d1.y1)]
        for s in (0.8, 1.25):
            d2 = F.detect_faces(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR))[0]
            others.append((d2.x0 / s, d2.y0 / s, d2.x1 / s, d2.y1 / s))
        for o in others:
            a, b = framing(ref, o)
            own_shift.append(a)
            own_side.append(b)

    # 3. Video frames: framing of the one-pass box against prep-depth's per-frame detection (before
    #    smoothing), and tracking against static mode on prep-depth's smoothed crops.
    calib = calibrate([s for s in samples if s["name"] != identity])
    w, _ = V.video_size(video)
    det_boxes = []
    for small in V.read_frames(video, 25.0, width=V.DETECT_WIDTH):
        faces = F.detect_faces(small)
        k = w / small.shape[1]
        det_boxes.append(tuple(v * k for v in (faces[0].x0, faces[0].y0, faces[0].x1, faces[0].y1)) if faces else None)
    crops = V.smooth_boxes([F.square_box(F.FaceBox(*b, 1.0)) if b else None for b in det_boxes])
    import mediapipe as mp

    with F._quiet_native_stderr():
        static = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5)
        tracking = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5)
    v_shift, v_side, v_miss, t_static, t_track, v_dz, v_dz_rel, v_mask = [], [], 0, [], [], [], [], []
    for f, frame in enumerate(V.read_frames(video, 25.0)):
        if f >= len(det_boxes):
            break
        lm_full = mesh_landmarks(frame)
        if det_boxes[f] is not None:
            if lm_full is None:
                v_miss += 1
            else:
                a, b = framing(det_boxes[f], mapped_box(lm_full, calib))
                v_shift.append(a)
                v_side.append(b)
        crop = F.crop_box_to(frame, crops[f], SIZE)
        lm_s, ms_s = timed(mesh_landmarks, crop, True, static)
        lm_t, ms_t = timed(mesh_landmarks, crop, False, tracking)
        t_static.append(ms_s)
        t_track.append(ms_t)
        if lm_s is not None and lm_t is not None:
            z = depth_difference(lm_s, lm_t)
            v_dz.append(z[0]), v_dz_rel.append(z[1]), v_mask.append(z[2])
    vrows = len(det_boxes)

    med = statistics.median
    lines = [
        "# One MediaPipe pass per image for prep-depth: framing, depth and time",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end. CPU ms from `time.process_time`, one thread.",
        "",
        "    " + " ".join(["python benchmarks/bench_single_pass.py", options]).rstrip(),
        "",
        f"Portraits: {len(ids)} identities x {n_variants} images (as shipped, mirrored, then random scale, rotation and place); "
        f"{len(samples)} fitted both ways, {len(misses)} where the whole-image face mesh finds no face but the detector "
        f"and the mesh on its crop do ({', '.join(misses) or 'none'}). Video: {vrows} frames of {video.name}, "
        f"{v_miss} with no whole-image mesh; its calibration leaves out {identity or 'no portrait'}.",
        "",
        "## Crop framing against the detector's (the crop models are trained and run on)",
        "",
        "| boxes | n | median | 90th pct | max |",
        "|---|---:|---:|---:|---:|",
        summary_row("one pass, portraits: centre shift (face widths)", shift),
        summary_row("one pass, portraits: side difference", side),
        summary_row("one pass, video frames: centre shift (face widths)", v_shift),
        summary_row("one pass, video frames: side difference", v_side),
        summary_row("the detector itself (mirrored, 0.8x, 1.25x): centre shift", own_shift),
        summary_row("the detector itself (mirrored, 0.8x, 1.25x): side difference", own_side),
        "",
        "## Depth from the whole-image mesh's landmarks, carried into the same crop, against the mesh on the crop",
        "",
        "| measure | n | median | 90th pct | max |",
        "|---|---:|---:|---:|---:|",
        summary_row("median abs depth difference (mm)", dz, pct=False),
        summary_row("... after removing the median difference (mm)", dz_rel, pct=False),
        summary_row("mask pixels that disagree (share of the mask)", dmask),
        summary_row("video, tracking against static mode: median abs depth difference (mm)", v_dz, pct=False),
        summary_row("... after removing the median difference (mm)", v_dz_rel, pct=False),
        summary_row("... mask pixels that disagree", v_mask),
        "",
        "## CPU per image (ms, median)",
        "",
        "| part | ms |",
        "|---|---:|",
        f"| detection + crop + face mesh on the crop (prep-depth now) | {med(t_two):.1f} |",
        f"| face mesh on the whole image + crop (one pass) | {med(t_one):.1f} |",
        f"| depth raster + encoding and writing the sample's four files (every sample, either way) | {med(t_rest):.1f} |",
        f"| video crop: face mesh, static mode | {med(t_static):.1f} |",
        f"| video crop: face mesh, tracking mode | {med(t_track):.1f} |",
    ]
    shutil.rmtree(out_dir, ignore_errors=True)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
