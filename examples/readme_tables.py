"""Regenerate the README's depth tables from `rgbdface eval`'s own output (its --format json).

    python examples/readme_tables.py WORKDIR            # both tables
    python examples/readme_tables.py WORKDIR --check    # only say whether the README is up to date

WORKDIR is the work folder of `examples/train_bundled_model.sh` (its data/ and heldout/ datasets);
the cross-validation table's fold rows need `examples/crossval_identities.sh WORKDIR` to have run (its
WORKDIR/crossval/NAME-no-flip.json files; without them only its held-out row is rewritten).

The held-out table runs `rgbdface eval --data WORKDIR/heldout --method model --method mesh --method
plane --method mean-face:WORKDIR/data --format json` on the bundled model (saved as
WORKDIR/heldout.json) and writes it between `<!-- table:heldout -->` and `<!-- /table -->` in README.md;
the cross-validation table goes between `<!-- table:crossval -->` and `<!-- /table -->`. RMSE is in mm,
as eval reports it (`rmse_units`), never converted here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LABELS = {"model": "bundled model (1 step)", "mesh": "MediaPipe mesh fit", "plane": "constant plane",
          "mean-face": "mean face of the training data"}


def run_eval(workdir: Path) -> dict:
    """eval's JSON for the held-out table (label → report), saved beside the datasets."""
    cmd = [sys.executable, "-m", "rgbdface.cli.app", "eval", "--data", str(workdir / "heldout"), "--method", "model",
           "--method", "mesh", "--method", "plane", "--method", f"mean-face:{workdir / 'data'}", "--format", "json"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    (workdir / "heldout.json").write_text(out)
    return json.loads(out)


def _mm(report: dict) -> float:
    if report.get("rmse_units") != "mm":
        raise SystemExit(f"eval reported RMSE in {report.get('rmse_units')!r}, not mm; run it without --units gt")
    return report["rmse"]


def heldout_table(reports: dict) -> str:
    rows = ["| method | images | AbsRel ↓ | δ1 ↑ | RMSE ↓ (mm) |", "|---|---:|---:|---:|---:|"]
    for label, r in reports.items():
        name = LABELS.get(label.split(":")[0].split(" ")[0], label)
        rows.append(f"| {name} | {r['n_images']} | {r['abs_rel']:.4f} | {r['delta1']:.3f} | {_mm(r):.1f} |")
    return "\n".join(rows)


def _pick(reports: dict, prefix: str) -> dict:
    return next(v for k, v in reports.items() if k.startswith(prefix))


def _row(name: str, reports: dict) -> str:
    model, mean, plane = _pick(reports, "model"), _pick(reports, "mean-face"), reports["plane"]
    return f"| {name} | {model['n_images']} | **{_mm(model):.2f}** | {_mm(mean):.2f} | {_mm(plane):.2f} |"


def crossval_table(folder: Path, heldout: dict, current: str | None = None) -> str | None:
    """One row per held-out training identity (its crossval JSON), then the bundled model's held-out row.

    Without fold JSONs, the `current` table (the README's) keeps its fold rows and gets the held-out row anew."""
    files = sorted(folder.glob("*-no-flip.json"))
    obama = _row("obama (the bundled model, above)", heldout)
    if not files:
        if current is None:
            return None
        return "\n".join(obama if line.startswith("| obama") else line for line in current.splitlines())
    rows = ["| held out | images | model | mean face of the other three | constant plane |", "|---|---:|---:|---:|---:|"]
    rows += [_row(f.name[: -len("-no-flip.json")], json.loads(f.read_text())) for f in files]
    return "\n".join(rows + [obama])


def current_block(text: str, name: str) -> str | None:
    m = re.search(rf"<!-- table:{name} -->\n(.*?)\n<!-- /table -->", text, re.S)
    return m.group(1) if m else None


def replace_block(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- table:{name} --> ... <!-- /table --> block")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables differ from eval's output")
    parser.add_argument("--from-json", action="store_true", help="use WORKDIR/heldout.json from an earlier run instead of eval")
    args = parser.parse_args()
    heldout = json.loads((args.workdir / "heldout.json").read_text()) if args.from_json else run_eval(args.workdir)
    text = README.read_text()
    new = replace_block(text, "heldout", heldout_table(heldout))
    cross = crossval_table(args.workdir / "crossval", heldout, current_block(text, "crossval"))
    if cross is not None:
        new = replace_block(new, "crossval", cross)
    if args.check:
        print("README tables are up to date" if new == text else "README tables differ from eval's output", file=sys.stderr)
        raise SystemExit(0 if new == text else 1)
    README.write_text(new)
    print(heldout_table(heldout) + ("\n\n" + cross if cross else ""))
    print("README.md: held-out table and the cross-validation table's rows written from eval's output", file=sys.stderr)


if __name__ == "__main__":
    main()
