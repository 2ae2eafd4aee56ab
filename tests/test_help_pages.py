"""Every command's --help at 80 columns shows its docstring and each option's help whole, reflowed, nothing cut."""

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.cli.helptext import first_sentence, for_rich, plain, reflow

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def words(text: str) -> str:
    return " ".join(text.split())


def help_column(out: str) -> str:
    """The text of the help column of every panel (Arguments, Options): where continuation lines start."""
    text = []
    for panel in re.findall(r"╭[^\n]*\n(.*?)\n╰", out, re.S):
        lines = [line.strip("│") for line in panel.splitlines()]
        starts = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
        x = max(set(starts), key=starts.count)  # most lines of a panel continue a help text
        text += [line[x:] for line in lines]
    return words("\n".join(text))


def rendered(name: str) -> str:
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_the_docstring_and_every_option_whole(name):
    cmd = GROUP.commands[name]
    out = rendered(name)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # no word or line cut short
    doc = inspect.getdoc(cmd.callback)
    assert words(doc) in words(out.split("╭")[0])  # bracketed terms included: rich markup does not eat them
    column = help_column(out)
    for param in cmd.params:
        text = getattr(param, "help", None)
        if text:
            assert words(plain(text)) in column, f"{name} {param.opts}: help not shown whole"


@pytest.mark.parametrize("name", COMMANDS)
def test_paragraphs_are_reflowed(name):
    out = rendered(name)
    description = out.split("╭")[0]
    doc = inspect.getdoc(GROUP.commands[name].callback)
    paragraphs = [p for p in reflow(doc).split("\n\n")]
    # each paragraph starts on a line of its own and fills its lines: only a paragraph's (or list item's) last line is short
    lines = [line.strip() for line in description.splitlines()]
    for para in paragraphs:
        for item in para.splitlines():
            start = next(i for i, line in enumerate(lines) if line and words(item).startswith(line))
            shown = []
            for line in lines[start:]:
                if not line:
                    break
                shown.append(line)
                if words(" ".join(shown)) == words(item):
                    break
            assert words(" ".join(shown)) == words(item)
            assert all(len(line) >= 60 for line in shown[:-1]), f"{name}: ragged lines in {shown}"


def test_reflow_joins_paragraph_lines_and_keeps_list_items():
    doc = "Summary line\ngoes on.\n\nA paragraph\nover lines.\n\n- item one\n  continued\n- item two"
    assert reflow(doc) == "Summary line goes on.\n\nA paragraph over lines.\n\n- item one continued\n- item two"


def test_brackets_survive_rich_markup_and_come_back_plain():
    text = "loss = eq. (5) on [eps_rgb, eps_depth]; stages [0, 1] [default: 25]"
    assert plain(for_rich(text)) == text


def test_first_sentence_is_whole():
    assert first_sentence("Train stage 1: loss = paper eq. (5) on [x]. More here.") == "Train stage 1: loss = paper eq. (5) on [x]"
    assert first_sentence("One line\nbroken. Second.") == "One line broken"
