"""man/man1/ holds one roff page per command, generated from the app; it must not go stale, and pip installs it."""

import inspect
import tomllib
from pathlib import Path

from rgbdface.cli.helptext import first_sentence
from rgbdface.cli.manpages import render_all

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man" / "man1"
REGENERATE = "run `python -m rgbdface.cli.manpages`"


def test_man_pages_are_up_to_date():
    pages = render_all()
    on_disk = {p.name for p in MAN.glob("rgbdface*.1")}
    assert on_disk == set(pages), f"man/man1/ is stale: {REGENERATE}"
    for name, text in pages.items():
        assert (MAN / name).read_text() == text, f"man/man1/{name} is stale: {REGENERATE}"
    assert not list((ROOT / "man").glob("*.1")), f"pages belong in man/man1/ (for MANPATH): {REGENERATE}"


def test_every_command_has_a_page_with_its_options():
    import typer

    from rgbdface.cli.app import app

    group = typer.main.get_command(app)
    pages = render_all()
    for name, cmd in group.commands.items():
        text = pages[f"rgbdface-{name}.1"]
        assert text.startswith(f".TH RGBDFACE-{name.upper()} 1")
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option":
                assert p.opts[0].replace("-", "\\-") in text, (name, p.opts)
        assert f"rgbdface {name.replace('-', chr(92) + '-')}" in pages["rgbdface.1"]


def test_name_lines_hold_the_whole_first_sentence():
    import typer

    from rgbdface.cli.app import app

    group = typer.main.get_command(app)
    pages = render_all()
    for name, cmd in group.commands.items():
        line = pages[f"rgbdface-{name}.1"].split(".SH NAME\n")[1].splitlines()[0]
        summary = first_sentence(inspect.getdoc(cmd.callback))
        assert line == f"rgbdface\\-{name.replace('-', chr(92) + '-')} \\- {summary}", name
        assert summary.count("(") == summary.count(")"), f"{name}: NAME cut inside a parenthesis: {summary}"


def test_the_package_installs_every_page():
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {p.name for pattern in data_files["share/man/man1"] for p in ROOT.glob(pattern)}
    assert installed == set(render_all())
