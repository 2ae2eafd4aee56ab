"""examples/readme_tables.py: the README's depth tables are written from eval's own JSON, in mm."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from tests_helpers import load_script

ROOT = Path(__file__).resolve().parent.parent


def tables():
    return load_script(ROOT / "examples" / "readme_tables.py")


def test_tables_come_from_eval_json_in_mm(portrait_dataset, tmp_path):
    r = CliRunner().invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "plane", "--method", "mesh",
                                 "--source", "all", "--format", "json"])
    assert r.exit_code == 0, r.output
    reports = json.loads(r.stdout)
    t = tables()
    table = t.heldout_table(reports)
    assert "| constant plane | 3 |" in table and "| MediaPipe mesh fit | 3 |" in table
    assert f"| {reports['plane']['rmse']:.1f} |" in table.splitlines()[2]
    # a README block is replaced whole, and nothing else moves
    text = "intro\n<!-- table:heldout -->\nold\n<!-- /table -->\nrest\n"
    assert t.replace_block(text, "heldout", table) == f"intro\n<!-- table:heldout -->\n{table}\n<!-- /table -->\nrest\n"
    # the crossval table: one row per fold JSON, then the held-out row
    folder = tmp_path / "crossval"
    folder.mkdir()
    fold = {"model:x": reports["mesh"], "mean-face:y": reports["plane"], "plane": reports["plane"]}
    (folder / "biden-no-flip.json").write_text(json.dumps(fold))
    cross = t.crossval_table(folder, fold)
    assert cross.splitlines()[2].startswith("| biden | 3 | **") and cross.splitlines()[3].startswith("| obama")
    # without fold results, the README's fold rows stay and the held-out (obama) row is rewritten
    current = "| held out | x |\n|---|\n| astronaut | 380 | **9.38** | 12.30 | 16.97 |\n| obama (old) | 32 | **1.00** | 2.00 | 3.00 |"
    kept = t.crossval_table(tmp_path / "none", fold, current).splitlines()
    assert kept[2] == "| astronaut | 380 | **9.38** | 12.30 | 16.97 |"
    assert kept[3] == f"| obama (the bundled model, above) | 3 | **{reports['mesh']['rmse']:.2f}** | {reports['plane']['rmse']:.2f} | {reports['plane']['rmse']:.2f} |"
    # eval in the ground truth's units is refused, never silently converted
    gt_units = json.loads(CliRunner().invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "plane", "--source", "all",
                                                   "--units", "gt", "--format", "json"]).stdout)
    with pytest.raises(SystemExit, match="not mm"):
        t.heldout_table({"plane": gt_units})


def test_readme_has_both_table_blocks():
    text = (ROOT / "README.md").read_text()
    for name in ("heldout", "crossval"):
        assert text.count(f"<!-- table:{name} -->") == 1
