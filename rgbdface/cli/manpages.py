"""Man pages (roff) generated from the Typer app: `python -m rgbdface.cli.manpages` writes man/man1/.

One page per command (`rgbdface-CMD.1`) and `rgbdface.1`. Pages carry no date, so
regenerating an unchanged app gives identical files; a test fails when `man/man1/` is stale.
The text is the help's own (`rgbdface.cli.helptext`), and NAME is its whole first sentence.
`pip install .` puts the pages in <prefix>/share/man/man1 (pyproject's data-files); from a
clone (or an editable install), `MANPATH="$PWD/man:" man rgbdface` reads them in place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rgbdface import __version__
from rgbdface.cli.helptext import first_sentence, plain

EXIT_STATUS = [
    ("0", "everything asked for was done."),
    ("1", "bad input, or some inputs of a batch failed (each is named on stderr); the others were done."),
    ("2", "usage error: an unknown option, a bad option value, or options that do not go together."),
]
ENVIRONMENT = [
    ("RGBDFACE_DEBUG", "set to 1 to print the traceback of an error instead of its one-line message."),
    ("RANK, WORLD_SIZE", "set by launchers (torchrun, accelerate, SLURM wrappers): the default shard of batch commands."),
    ("OMP_NUM_THREADS, SLURM_CPUS_PER_TASK", "CPU threads for the math when --threads is not given (the first that is set); "
     "without either, the CPUs the process may use that the 1-minute load average leaves idle, at least one."),
]


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, leading dots/quotes, and hyphens in option names."""
    text = text.replace("\\", "\\e")
    lines = []
    for line in text.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _opt(name: str) -> str:
    return name.replace("-", "\\-")


def _paragraphs(text: str) -> list[str]:
    """The help's paragraphs as roff: one line each, list items joined by line breaks (.br)."""
    text = re.sub(r"\x08", "", plain(text))
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return ["\n.br\n".join(_esc(" ".join(line.split())) for line in p.splitlines() if line.strip()) for p in paragraphs]


def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _item(param, ctx) -> list[str]:
    """One .TP entry from the parameter's own help record: 'opts <metavar>' and its help with defaults."""
    record = param.get_help_record(ctx)
    if record is None:  # hidden
        return []
    head, text = record
    names, _, metavar = head.partition(" <")
    head = ", ".join(f"\\fB{_opt(n.strip())}\\fR" for n in names.split(","))
    if metavar:
        head += f" \\fI<{_esc(metavar)}\\fR"
    return [".TP", head, _esc(" ".join(plain(text).split()))]


def command_page(name: str, cmd) -> str:
    ctx = cmd.context_class(cmd, info_name=name)
    title = f"rgbdface-{name}"
    paragraphs = _paragraphs(cmd.help or "")
    summary = first_sentence(plain(cmd.help)) or name
    args = " ".join(p.name.upper() if p.required else f"[{p.name.upper()}]" for p in cmd.params if _is_argument(p))
    out = [
        f'.TH {title.upper()} 1 "" "rgbdface {__version__}" "rgbdface manual"',
        ".SH NAME",
        f"{_opt(title)} \\- {_esc(summary)}",
        ".SH SYNOPSIS",
        f".B rgbdface {name}",
        f"[\\fIOPTIONS\\fR] {_esc(args)}".rstrip(),
        ".SH DESCRIPTION",
    ]
    for p in paragraphs:
        out += [p, ".PP"]
    out.pop()
    arguments = [p for p in cmd.params if _is_argument(p)]
    if arguments:
        out.append(".SH ARGUMENTS")
        for a in arguments:
            out += _item(a, ctx)
    out.append(".SH OPTIONS")
    for p in cmd.params:
        if not _is_argument(p):
            out += _item(p, ctx)
    out += _common_sections()
    out += [".SH SEE ALSO", "\\fBrgbdface\\fR(1)"]
    return "\n".join(out) + "\n"


JSON_REPORT = ("With --json, one line on stdout when the command ends, also when it fails: a JSON object with command, "
               "exit_code, error (null, or the one-line message when the command as a whole failed), seconds (wall time), "
               "written (paths produced), failed ({input, error} for each bad input of a batch), skipped (inputs whose "
               "outputs existed), and the command's own keys named in DESCRIPTION. Nothing else goes to stdout.")


def _common_sections() -> list[str]:
    out = [".SH JSON REPORT", _esc(JSON_REPORT), ".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _esc(text)]
    out.append(".SH ENVIRONMENT")
    for var, text in ENVIRONMENT:
        out += [".TP", f"\\fB{var}\\fR", _esc(text)]
    return out


def main_page(group) -> str:
    out = [
        f'.TH RGBDFACE 1 "" "rgbdface {__version__}" "rgbdface manual"',
        ".SH NAME",
        "rgbdface \\- portraits that move with depth: joint RGB + depth diffusion for faces",
        ".SH SYNOPSIS",
        ".B rgbdface",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        _esc("A toolkit of composable commands over one model: a Stable-Diffusion UNet widened to denoise RGB and "
             "depth latents together, conditioned on a ReferenceNet. stdout carries data or nothing; progress, logs "
             "and errors go to stderr."),
        ".SH COMMANDS",
    ]
    for name, cmd in group.commands.items():
        summary = first_sentence(plain(cmd.help))
        out += [".TP", f"\\fBrgbdface {_opt(name)}\\fR(1)", _esc(summary)]
    out += _common_sections()
    out += [".SH SEE ALSO", ", ".join(f"\\fBrgbdface\\-{_opt(n)}\\fR(1)" for n in group.commands)]
    return "\n".join(out) + "\n"


def render_all() -> dict[str, str]:
    """File name → roff text, for the whole app."""
    import typer

    from rgbdface.cli.app import app

    group = typer.main.get_command(app)
    pages = {"rgbdface.1": main_page(group)}
    for name, cmd in group.commands.items():
        pages[f"rgbdface-{name}.1"] = command_page(name, cmd)
    return pages


def write_all(folder: str | Path) -> list[Path]:
    from rgbdface.utils import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    pages = render_all()
    for old in folder.glob("rgbdface*.1"):
        if old.name not in pages:
            old.unlink()
    for fname, text in pages.items():
        with atomic_path(folder / fname) as tmp:
            tmp.write_text(text)
        written.append(folder / fname)
    return written


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "man" / "man1"):
        print(p)
