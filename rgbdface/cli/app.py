"""The `rgbdface` Typer app: it only assembles the commands, each defined in its own file."""

from __future__ import annotations

import typer

from rgbdface import __version__

app = typer.Typer(
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
COMMANDS: list[str] = ["prep_depth", "train_vae", "init_model", "generate", "estimate_depth", "depth2img", "relight", "eval", "talk",
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
