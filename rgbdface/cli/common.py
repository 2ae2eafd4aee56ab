"""What every command shares: error reporting, the --json report, logging to stderr, device choice, inputs and shards."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import typer
from typer.core import TyperCommand

from rgbdface.utils import InputError, UsageError

DEBUG_ENV = "RGBDFACE_DEBUG"
T = TypeVar("T")


def stderr_line(line: str) -> None:
    """One line on stderr, never wrapped (grep finds it whole); a progress bar on screen is cleared first
    and drawn again below it, so the two never share a line."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        print(line, file=sys.stderr, flush=True)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the command line: a library's warning as one line, like ours."""
    stderr_line(f"rgbdface: warning: {' '.join(str(message).split())} ({category.__name__})")


def log(msg: str, quiet: bool = False) -> None:
    """Progress and information: always stderr, never stdout."""
    if not quiet:
        stderr_line(msg)


def error_line(msg: str) -> None:
    """One error line on stderr (a bad input of a batch that goes on, or the end of a command)."""
    stderr_line(f"rgbdface: error: {msg}")


def fail(msg: str, code: int = 1) -> "typer.Exit":
    """The command as a whole fails: a one-line error on stderr, kept as the --json report's `error`;
    returns the exit to raise (1 = bad input, 2 = usage error)."""
    error_line(msg)
    rep = _REPORT.get()
    if rep is not None and rep.error is None:
        rep.error = msg
    return typer.Exit(code)


INTERRUPTED = "rgbdface: interrupted (Ctrl-C); outputs already complete are kept, none is left half-written"


def usage_error_line(e) -> None:
    """A usage error found while parsing the command line (click's), as one line on stderr:
    'rgbdface: error: MESSAGE (see `rgbdface COMMAND --help`)'. Rich help pages stay as they are."""
    if type(e).__name__ == "NoArgsIsHelpError":  # the help page was shown instead
        return
    ctx = getattr(e, "ctx", None)
    message = " ".join(e.format_message().split())
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"rgbdface: error: {message}{see}", file=sys.stderr)


def handle_errors(fn: Callable) -> Callable:
    """Turn known errors into one stderr line and a non-zero exit; RGBDFACE_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            raise
        except (typer.Exit, typer.Abort):
            raise
        except UsageError as e:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(str(e), 2) from None
        except InputError as e:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(str(e), 1) from None
        except Exception as e:  # unexpected: still one line, traceback on demand
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)", 1) from None

    return wrapper


# ----------------------------------------------------------------------------- the --json report
@dataclass
class Report:
    """What one command did; with --json it is printed on stdout as one JSON line when the command ends.

    Commands add to the running report through `report()`; errors raised through `fail` fill `error`.
    """

    command: str
    written: list[str] = field(default_factory=list)  # files and folders produced
    failed: list[dict] = field(default_factory=list)  # {"input", "error"}: inputs of a batch that failed
    skipped: list[str] = field(default_factory=list)  # inputs whose outputs existed
    extra: dict[str, Any] = field(default_factory=dict)  # command-specific keys (timings, counts, metrics)
    error: str | None = None  # the one-line reason the whole command failed
    printed: bool = True  # False: print nothing (e.g. a non-main process under a launcher)
    started: float = field(default_factory=time.perf_counter)

    def wrote(self, *paths: str | Path) -> None:
        self.written.extend(str(p) for p in paths)

    def fail_input(self, source: str | Path, error: str) -> None:
        self.failed.append({"input": str(source), "error": error})

    def skip(self, *sources: str | Path) -> None:
        self.skipped.extend(str(s) for s in sources)

    def add(self, **extra: Any) -> None:
        clash = set(extra) & set(COMMON_KEYS)
        if clash:
            raise ValueError(f"report keys {sorted(clash)} are common keys; use the Report fields")
        self.extra.update(extra)

    def to_dict(self, exit_code: int) -> dict:
        return {"command": self.command, "exit_code": exit_code, "error": self.error,
                "seconds": round(time.perf_counter() - self.started, 3), "written": self.written,
                "failed": self.failed, "skipped": self.skipped, **self.extra}

    def emit(self, exit_code: int) -> None:
        if self.printed:
            sys.stdout.write(json.dumps(self.to_dict(exit_code), default=str) + "\n")
            sys.stdout.flush()


COMMON_KEYS = ("command", "exit_code", "error", "seconds", "written", "failed", "skipped")
_REPORT: contextvars.ContextVar[Report | None] = contextvars.ContextVar("rgbdface_report", default=None)


def report() -> Report:
    """The running command's report (a detached one outside a command, so library-style calls still work)."""
    rep = _REPORT.get()
    return rep if rep is not None else Report("")


class ReportingCommand(TyperCommand):
    """A command with a --json report (register it with `app.command(NAME, cls=ReportingCommand)`; its function
    takes `as_json: JsonOpt` and adds to `report()`).

    The report is printed on stdout when the command ends with --json: after success (exit 0), after an exit
    it raised (1 = bad input or some inputs failed, 2 = usage error; `fail` fills `error`), and after a usage
    error found while parsing the command line (exit 2, nothing run). Not after an interrupt.

    Its help text and its options' are reflowed and escaped for rich markup (`rgbdface.cli.helptext`).
    """

    def __init__(self, *args, **kwargs):
        from rgbdface.cli.helptext import for_rich

        super().__init__(*args, **kwargs)
        self.help = for_rich(self.help)
        for param in self.params:
            if getattr(param, "help", None):
                param.help = for_rich(param.help)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as e:  # click's UsageError (vendored by typer): exit 2
            if wants_json and hasattr(e, "format_message"):
                Report(self.name or "", error=" ".join(e.format_message().split())).emit(getattr(e, "exit_code", 2))
            raise

    def invoke(self, ctx: typer.Context) -> Any:
        from rgbdface.utils import default_threads, use_threads

        # CPU threads before any library that reads them is imported (the `--threads` option: ThreadsOpt)
        use_threads(ctx.params.get("cpu_threads") or default_threads()[0])
        rep = Report(self.name or "")
        as_json = bool(ctx.params.get("as_json"))
        token = _REPORT.set(rep)
        try:
            with terminate_as_exit():
                result = super().invoke(ctx)
        except Terminated:
            error_line("terminated (SIGTERM); unfinished outputs were removed")
            raise
        except typer.Exit as e:
            if as_json:
                rep.emit(e.exit_code)
            raise
        finally:
            _REPORT.reset(token)
        if as_json:
            rep.emit(0)
        return result


class Terminated(SystemExit):
    """SIGTERM (`kill`, `timeout`, a scheduler) while a command runs: raised in the main thread so that the
    command unwinds as it does on Ctrl-C (temporary files and folders removed, ffmpeg stopped); exit 143."""


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` instead of killing the process outright."""

    def handler(signum, frame):
        raise Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/n' → (i, n); without it, RANK/WORLD_SIZE from a launcher, else (0, 1)."""
    if shard is None:
        from rgbdface.utils import launcher_rank

        return launcher_rank() or (0, 1)
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard {shard!r}: expected 'i/n' with whole numbers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {shard!r}: need n >= 1 and 0 <= i < n")
    return i, n


def take_shard(items: list[T], index: int, count: int) -> list[T]:
    """Every count-th item starting at index: shards are disjoint and cover all items."""
    return items[index::count]


def expand_inputs(args: Iterable[str], suffixes: set[str], stdin=None, exclude: Path | None = None) -> list[Path]:
    """Files, folders (recursive), globs, and '-' (one path per line on stdin) → sorted unique paths.

    A path that does not exist is kept, so that the batch reports it by name. A folder search
    does not descend into `exclude` (the run's output folder: its files are no inputs).
    """
    skip = Path(os.path.realpath(exclude)) if exclude is not None else None

    def searched(q: Path) -> bool:
        return q.is_file() and q.suffix.lower() in suffixes and not (skip is not None and skip in Path(os.path.realpath(q)).parents)

    out: list[Path] = []
    for a in args:
        if a == "-":
            stream = stdin if stdin is not None else sys.stdin
            out.extend(Path(line.strip()) for line in stream if line.strip())
            continue
        p = Path(a)
        if p.is_dir() and skip is not None and Path(os.path.realpath(p)) == skip:
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes))  # outputs beside inputs
        elif p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if searched(q)))
        elif any(ch in a for ch in "*?[") and not p.exists():
            out.extend(sorted(Path(q) for q in glob.glob(a, recursive=True)))
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def progress_bar(total: int, quiet: bool = False, unit: str = "img"):
    """A progress bar with rate and ETA on stderr, drawn on a terminal only (a log file gets the command's
    lines, not redrawn bars); nothing when quiet."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=True if quiet else None, dynamic_ncols=True)
