"""What every command shares: error reporting, logging to stderr, device choice, inputs and shards."""

from __future__ import annotations

import functools
import glob
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import typer

from rgbdface.utils import InputError

DEBUG_ENV = "RGBDFACE_DEBUG"
T = TypeVar("T")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def log(msg: str, quiet: bool = False) -> None:
    """Progress and information: always stderr, never stdout."""
    if not quiet:
        _stderr_console().print(msg, markup=False)


def fail(msg: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error on stderr and return the exit to raise."""
    print(f"rgbdface: error: {msg}", file=sys.stderr)
    return typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn known errors into one stderr line and a non-zero exit; RGBDFACE_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except InputError as e:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(str(e), 1) from None
        except Exception as e:  # unexpected: still one line, traceback on demand
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)", 1) from None

    return wrapper


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/n' → (i, n); without it, RANK/WORLD_SIZE from a launcher, else (0, 1)."""
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None:
            shard = f"{rank}/{world}"
        else:
            return 0, 1
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard {shard!r}: expected 'i/n' with whole numbers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {shard!r}: need n >= 1 and 0 <= i < n")
    return i, n


def take_shard(items: list[T], index: int, count: int) -> list[T]:
    """Every count-th item starting at index: shards are disjoint and cover all items."""
    return items[index::count]


def expand_inputs(args: Iterable[str], suffixes: set[str], stdin=None) -> list[Path]:
    """Files, folders (recursive), globs, and '-' (one path per line on stdin) → sorted unique paths.

    A path that does not exist is kept, so that the batch reports it by name.
    """
    out: list[Path] = []
    for a in args:
        if a == "-":
            stream = stdin if stdin is not None else sys.stdin
            out.extend(Path(line.strip()) for line in stream if line.strip())
            continue
        p = Path(a)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes))
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


def write_all(writers: dict[Path, Callable[[Path], object]]) -> None:
    """Write every output or none: each writer writes a temporary file beside its target
    (same suffix), and the files are renamed onto their targets only when all succeeded."""
    import contextlib

    from rgbdface.utils import atomic_path

    with contextlib.ExitStack() as stack:
        for path, write in writers.items():
            write(stack.enter_context(atomic_path(path)))


def progress_bar(total: int, quiet: bool = False, unit: str = "img"):
    """A progress bar with rate and ETA on stderr (nothing when quiet)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=quiet, dynamic_ncols=True)
