"""The `rgbdface` Typer app: it only assembles the commands, each defined in its own file."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from rgbdface import __version__


class RGBDFaceGroup(TyperGroup):
    """The app's group: a usage error (unknown option or command, bad value, missing argument) is one line on
    stderr and exit 2, where click draws a box; help pages keep their rich layout. A library's warning is
    one line too ('rgbdface: warning: ...')."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import warnings

        from rgbdface.cli.common import one_line_warning, usage_error_line

        shown, warnings.showwarning = warnings.showwarning, one_line_warning
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's usage errors, as typer runs click
            usage_error_line(e)
            rv = getattr(e, "exit_code", 2)
        except typer.Abort:  # end of input at a prompt
            rv = 1
        finally:
            warnings.showwarning = shown
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(
    cls=RGBDFaceGroup,
    name="rgbdface",
    help="Portraits that move with depth: joint RGB + depth diffusion for faces.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"rgbdface {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Portraits that move with depth: joint RGB + depth diffusion for faces."""


# Command modules, in the order `--help` lists them. Each defines `register(app)`.
COMMANDS: list[str] = ["prep_depth", "train_vae", "init_model", "generate", "estimate_depth", "depth2img", "relight", "eval", "score", "talk",
                       "train", "finetune_mask", "train_motion"]


def _register() -> None:
    # Each command module defines `register(app)`; only working commands are listed here.
    import importlib

    for name in COMMANDS:
        importlib.import_module(f"rgbdface.cli.{name}").register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
