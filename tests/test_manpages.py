"""man/ holds one roff page per command, generated from the app; it must not go stale."""

from pathlib import Path

from rgbdface.cli.manpages import render_all

MAN = Path(__file__).resolve().parent.parent / "man"


def test_man_pages_are_up_to_date():
    pages = render_all()
    on_disk = {p.name for p in MAN.glob("rgbdface*.1")}
    assert on_disk == set(pages), "man/ is stale: run `python -m rgbdface.cli.manpages man`"
    for name, text in pages.items():
        assert (MAN / name).read_text() == text, f"man/{name} is stale: run `python -m rgbdface.cli.manpages man`"


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
