"""`rgbdface eval`: score depth predictions against ground truth with the paper's protocol (§5.2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report
from rgbdface.cli.options import DepthFlipOpt, DepthStepsOpt, DeviceOpt, FormatOpt, JsonOpt, ThreadsOpt, QuietOpt, SeedOpt

if TYPE_CHECKING:
    from rgbdface.metrics.depth import EvalReport

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("name", "abs_rel", "delta1", "delta2", "delta3", "rmse", "rmse_units", "nearest_offset", "n_valid", "scale", "shift",
               "error")
UNITS = ("mm", "gt")

PredOpt = Annotated[Optional[Path], typer.Option("--pred", metavar="DIR", help="Folder of predicted depth (16-bit PNG or .npy; 0 = invalid), matched to --gt by file name.")]
GtOpt = Annotated[Optional[Path], typer.Option("--gt", metavar="DIR|DATASET", help="Folder of ground-truth depth (16-bit PNG or .npy; 0 = invalid); or a prep-depth dataset, whose crops of still images are paired with --pred's full-frame estimate-depth outputs by input name (PRED/STEM.png for the input STEM.jpg), each prediction cropped as the dataset was and scored inside the crop's face-skin mask.")]
MaskOpt = Annotated[Optional[Path], typer.Option("--mask", metavar="DIR", help="Folder of masks matched by name (nonzero = evaluate), e.g. the face-skin region.")]
AlignmentOpt = Annotated[str, typer.Option("--alignment", help="Per-image least-squares scale and shift: 'least_square' (depth space) or 'least_square_disparity' (the prediction is affine-invariant disparity, fitted onto 1/gt).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", metavar="DATASET", help="A prep-depth dataset: run each --method on its RGB crops and score against its depth inside its face-skin masks.")]
MethodOpt = Annotated[Optional[list[str]], typer.Option("--method", help="With --data, repeatable: model[:DIR] (default DIR: the bundled model), mesh, plane, mean-face[:TRAIN_DATASET] (the average normalised depth map of the other identities, those of the evaluated dataset or of TRAIN_DATASET; never the scored identity's own).")]
IdentityOpt = Annotated[Optional[list[str]], typer.Option("--identity", help="With --data, repeatable: evaluate only the samples of this identity (as in the manifest).")]
SourceOpt = Annotated[str, typer.Option("--source", help="With --data: evaluate 'studio' samples (exact depth), 'wild' ones (mesh-fit depth) or 'all'.")]
UnitsOpt = Annotated[Optional[str], typer.Option("--units", show_default=False, help="What RMSE is reported in: 'mm' or 'gt' (the ground truth's own units) [default: mm with a dataset (--data, --gt DATASET), whose rows record the depth step; gt with --gt DIR]. With --gt DIR, 'mm' reads the ground truth as prep-depth's: 0.1 mm per step.")]
ErrorMapsOpt = Annotated[Optional[Path], typer.Option("--error-maps", metavar="DIR", help="Also write one signed-error PNG per image here (aligned pred - gt over the valid pixels; blue -0.1 .. white 0 .. red +0.1 of the gt depth range; black = not evaluated).")]


@handle_errors
def eval_command(
    pred: PredOpt = None,
    gt: GtOpt = None,
    mask: MaskOpt = None,
    alignment: AlignmentOpt = "least_square",
    fmt: FormatOpt = None,
    units: UnitsOpt = None,
    error_maps: ErrorMapsOpt = None,
    data: DataOpt = None,
    method: MethodOpt = None,
    source: SourceOpt = "studio",
    identity: IdentityOpt = None,
    steps: DepthStepsOpt = None,
    flip: DepthFlipOpt = None,
    ensemble: Annotated[int, typer.Option("--ensemble", min=1, help="With --method model: ensemble size.")] = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score depth predictions against ground truth: AbsRel, δ1-δ3, RMSE and the nearest-point offset after per-image alignment (paper §5.2).

    Per image, over pixels with gt > 0, pred > 0 (and the mask): a least-squares scale and shift of the prediction onto the ground truth, clipped to >= 1e-6; then AbsRel = mean |p-g|/g, δk = share of max(p/g, g/p) < 1.25^k and RMSE (in mm, or in the ground truth's units: see --units; the table's header says which), each averaged over images.

    The nearest-point offset (nearest_offset; "nearest" in the table) is the distance between the centroids of the nearest 2% of the pixels (smallest depth) of the aligned prediction and of the ground truth, in % of the image width, averaged over images: on a face, how far the prediction's nearest point lies from the nose tip (a map turned around by a negative scale scores badly).

    Results go to stdout; files that cannot be scored are named on stderr and make the exit status 1. A ground truth that is constant over its valid pixels would score any prediction as perfect: it is skipped with a warning, and counted (n_degenerate).

    --json prints the command's one-line report instead of the results: `metrics` holds exactly what --format json prints (one report, or label → report with --data), `failed` the files that could not be scored, `written` the error maps. --json goes with --format json (the same) but not with table or csv.
    """
    from rgbdface.metrics.depth import ALIGNMENTS, evaluate_folders

    # 1. Check options
    if fmt is not None and fmt not in FORMATS:
        raise fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", 2)
    if as_json and fmt not in (None, "json"):
        raise fail(f"--json prints the results inside its report; it does not go with --format {fmt}", 2)
    fmt = "report" if as_json else fmt or "table"
    if units is not None and units not in UNITS:
        raise fail(f"--units {units!r}: expected one of {', '.join(UNITS)}", 2)
    if alignment not in ALIGNMENTS:
        raise fail(f"--alignment {alignment!r}: expected one of {', '.join(ALIGNMENTS)}", 2)
    if data is not None:
        if pred is not None or gt is not None or mask is not None:
            raise fail("--data compares methods on a dataset; it does not go with --pred/--gt/--mask", 2)
        if source not in ("studio", "wild", "all"):
            raise fail(f"--source {source!r}: expected studio, wild or all", 2)
        return _compare(data, method or ["model", "mesh", "plane", "mean-face"], source, identity, alignment, fmt, error_maps,
                        steps, flip, ensemble, seed, device, quiet, units or "mm")
    if method or identity:
        raise fail(f"{'--method' if method else '--identity'} needs --data DATASET", 2)
    if pred is None or gt is None:
        raise fail("--pred DIR and --gt DIR are both needed (folders of depth files matched by name), or --data DATASET", 2)

    from rgbdface.data.camera import DEPTH_UNIT_MM
    from rgbdface.data.manifest import INFO

    if (gt / INFO).is_file():
        if mask is not None:
            raise fail("--mask goes with --gt DIR; a dataset (--gt DATASET) brings its own face-skin masks", 2)
        return _pair_dataset(pred, gt, alignment, fmt, error_maps, quiet, units or "mm")

    # 2. Evaluate
    result = evaluate_folders(pred, gt, mask, alignment=alignment, error_maps_dir=error_maps, progress=_progress(quiet),
                              gt_unit_mm=DEPTH_UNIT_MM if units == "mm" else None)

    # 3. Report: data on stdout, problems on stderr
    _finish({pred.name or str(pred): result}, {pred.name or str(pred): error_maps}, fmt, quiet,
            "check that --pred and --gt hold depth files of the same names")


def _pair_dataset(pred: Path, dataset: Path, alignment, fmt, error_maps, quiet, units) -> None:
    """estimate-depth's full-frame outputs against a prep-depth dataset's crops of the same inputs."""
    from rgbdface.data.manifest import load_manifest
    from rgbdface.metrics.depth import evaluate_samples
    from rgbdface.pipelines.depth_methods import prediction_samples

    samples, failed, unmatched = prediction_samples(pred, load_manifest(dataset), in_mm=units == "mm")
    if not samples and not failed:
        raise fail(f"{dataset}: no crops of still images to pair with --pred (studio renders and video frames have no "
                   "estimate-depth output); use --data to score methods on its renders", 1)
    result = evaluate_samples(samples, alignment=alignment, error_maps_dir=error_maps, progress=_progress(quiet), units=units)
    result.failed = failed + result.failed
    result.unmatched = unmatched
    _finish({pred.name or str(pred): result}, {pred.name or str(pred): error_maps}, fmt, quiet,
            "check that --pred holds estimate-depth's outputs (STEM.png) of the dataset's input images")


def _compare(data, specs, source, identities, alignment, fmt, error_maps, steps, flip, ensemble, seed, device, quiet, units="mm") -> None:
    """Table-1-style comparison: every method on the same samples and pixels of a dataset."""
    from rgbdface.cli.common import resolve_device
    from rgbdface.data.manifest import load_manifest
    from rgbdface.metrics.depth import evaluate_samples
    from rgbdface.pipelines.depth_methods import build_methods, dataset_samples, parse_method

    for spec in specs:
        parse_method(spec)  # unknown names fail before any work
    samples = [s for s in load_manifest(data) if source == "all" or s.source == source]
    if identities:
        known = sorted({s.identity for s in samples})
        unknown = [n for n in identities if n not in known]
        if unknown:
            raise fail(f"--identity {', '.join(unknown)}: no {source} samples of it in {data}; it has: {', '.join(known) or 'none'}", 1)
        samples = [s for s in samples if s.identity in identities]
    if not samples:
        raise fail(f"{data}: no {source} samples to evaluate; run `rgbdface prep-depth` (with --studio-views for exact depth)", 1)
    methods = build_methods(specs, samples, device=resolve_device(device), steps=steps, flip=flip, ensemble=ensemble, seed=seed)
    reports, maps_dirs = {}, {}
    for m in methods:
        log(f"evaluating {m.label} on {len(samples)} {source} samples", quiet)
        maps = None if error_maps is None else Path(error_maps) / m.label.replace(":", "_").replace("/", "_")
        reports[m.label] = evaluate_samples(dataset_samples(samples, m, in_mm=units == "mm"), alignment=alignment,
                                            error_maps_dir=maps, progress=_progress(quiet), units=units)
        maps_dirs[m.label] = maps
    _finish(reports, maps_dirs, fmt, quiet, "check the dataset's depth and mask files")


def _finish(reports: dict, maps_dirs: dict, fmt: str, quiet: bool, hint: str) -> None:
    several = len(reports) > 1
    for label, result in reports.items():
        _report_problems(result, quiet, prefix=f"{label}: " if several else "")
    if fmt == "report":
        _add_to_report(reports, maps_dirs)
    else:
        write_reports(reports, fmt)
    scored = sum(r.n_images for r in reports.values())
    failed = sum(len(r.failed) for r in reports.values())
    degenerate = sum(len(r.degenerate) for r in reports.values())
    skipped = f", {degenerate} skipped (constant ground truth)" if degenerate else ""
    if scored == 0:
        raise fail(f"no image could be scored ({failed} failed{skipped}); {hint}", 1)
    log(f"scored {scored} images, {failed} failed{skipped}", quiet)
    if failed:
        raise typer.Exit(1)


def _add_to_report(reports: dict[str, "EvalReport"], maps_dirs: dict[str, Path | None]) -> None:
    """--json: the results (as --format json writes them), the files that failed and the error maps written."""
    several = len(reports) > 1
    rep = report()
    for label, result in reports.items():
        for f in result.failed:
            rep.fail_input(f"{label}: {f['name']}" if several else f["name"], f["error"])
        if maps_dirs.get(label) is not None:
            rep.wrote(*(Path(maps_dirs[label]) / f"{row['name']}.png" for row in result.images))
    rep.add(metrics=_json_object(reports))


def _json_object(reports: dict[str, "EvalReport"]) -> dict:
    """One report's object, or label → object for a comparison."""
    return next(iter(reports.values())).to_dict() if len(reports) == 1 else {k: r.to_dict() for k, r in reports.items()}


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None

    def wrap(items):
        from rich.console import Console
        from rich.progress import track

        return track(items, description="evaluating", console=Console(stderr=True), transient=True)

    return wrap


def _report_problems(report: "EvalReport", quiet: bool, prefix: str = "") -> None:
    for f in report.failed:
        print(f"rgbdface: error: {prefix}{f['name']}: {f['error']}", file=sys.stderr)
    if report.degenerate:
        shown = ", ".join(report.degenerate[:5]) + (", ..." if len(report.degenerate) > 5 else "")
        log(f"warning: {prefix}{len(report.degenerate)} ground-truth maps are constant over their valid pixels (any prediction "
            f"would score as perfect); skipped and counted as n_degenerate: {shown}", quiet)
    if report.unmatched:
        shown = ", ".join(report.unmatched[:5]) + (", ..." if len(report.unmatched) > 5 else "")
        log(f"warning: {len(report.unmatched)} predictions have no ground truth and were not scored: {shown}", quiet)


def write_reports(reports: dict[str, "EvalReport"], fmt: str) -> None:
    """Write one or more reports (label → report) to stdout as a table, JSON or CSV.

    One report: JSON is its object and CSV its per-image rows plus a mean row. Several
    (a comparison): the table has one row per label, JSON maps label → object, and CSV
    adds a `method` column.
    """
    if fmt == "table":
        _print_table(reports)
    elif fmt == "json":
        import json

        sys.stdout.write(json.dumps(_json_object(reports), indent=2) + "\n")
    else:
        _write_csv(reports)


def _print_table(reports: dict[str, "EvalReport"]) -> None:
    from rich.console import Console
    from rich.table import Table

    first = next(iter(reports.values()))
    unit = "mm" if first.units == "mm" else "gt units"
    table = Table(title=f"Depth, {first.alignment} alignment, RMSE in {unit}", title_justify="left")
    for col in ("method", "images", "failed", "AbsRel ↓", "δ1 ↑", "δ2 ↑", "δ3 ↑", f"RMSE ↓ ({unit})", "nearest ↓ (% width)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for label, report in reports.items():
        s = report.summary()
        table.add_row(
            label, str(s["n_images"]), str(s["n_failed"]),
            *(f"{s[m]:.4f}" for m in ("abs_rel", "delta1", "delta2", "delta3")), f"{s['rmse']:.4g}", f"{s['nearest_offset']:.2f}",
        )
    console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal:  # a file or a pipe has no width to fit: the whole table, never cut
        console.width = max(console.width, console.measure(table, options=console.options.update_width(1000)).maximum)
    console.print(table)


def _write_csv(reports: dict[str, "EvalReport"]) -> None:
    import csv

    several = len(reports) > 1
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow((("method",) if several else ()) + CSV_COLUMNS)
    for label, report in reports.items():
        lead = (label,) if several else ()
        for row in report.images:
            writer.writerow(lead + tuple(report.units if c == "rmse_units" else row.get(c, "") for c in CSV_COLUMNS))
        for f in report.failed:
            writer.writerow(lead + tuple(f.get(c, "") for c in CSV_COLUMNS))
        s = report.summary()
        writer.writerow(lead + tuple("mean" if c == "name" else s.get(c, "") for c in CSV_COLUMNS))


def register(app: typer.Typer) -> None:
    app.command("eval", cls=ReportingCommand)(eval_command)
