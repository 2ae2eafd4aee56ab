"""Tiny helpers shared by every part of the package."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class InputError(ValueError):
    """Bad user input. The message is one line that says what is wrong and what to do."""


class UsageError(InputError):
    """A command line that cannot work as given (options that conflict or are missing); commands exit 2."""


def launcher_rank() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) as a launcher (torchrun, accelerate launch, a cluster script) set them, or None.

    A usage error if only one is set, or they are not whole numbers with 0 <= RANK < WORLD_SIZE.
    """
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return None
    where = f"RANK={rank} WORLD_SIZE={world} (from the environment)"
    try:
        r, w = int(rank), int(world)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: a launcher sets both, as whole numbers with 0 <= RANK < WORLD_SIZE; "
                         "fix or unset them") from None
    if w < 1 or not 0 <= r < w:
        raise UsageError(f"{where}: need 0 <= RANK < WORLD_SIZE; fix or unset them")
    return r, w


def check_input_file(path: str | os.PathLike, kind: str = "file") -> Path:
    """`path` if it names an existing regular file, else the one-line error a command prints; cheap enough
    to run on every input before the heavy libraries are imported. A FIFO or device is refused without
    being opened: reading one could block for ever or never end."""
    import stat

    p = Path(path)
    article = "an" if kind[0] in "aeiou" else "a"
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: no such file; check the path") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read it ({e.strerror or e}); check the path") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a folder, expected {article} {kind}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{p}: not a regular file (a pipe, socket or device); pass {article} {kind}")
    return p


def exists(x: Any) -> bool:
    return x is not None


def default(x: Any, d: Any) -> Any:
    return x if x is not None else d


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file here (mkstemp gives 0600)
DIR_MODE = 0o777 & ~_read_umask()  # what mkdir() would give a new folder here (mkdtemp gives 0700)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    Readers never see a half-written file: on any exception the temporary file
    is removed and `path` is left as it was. The file gets the permissions a plain
    open() would give it (the umask's), not the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = default(suffix, path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None or str(e.filename) != str(tmp):
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from None  # name the target, never the temporary file
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (a temporary file beside it, then a rename); the folder must exist.

    The lean form of `atomic_path` for many small files: one open, one rename. The temporary
    name carries the process and thread ids, so concurrent writers never share one.
    """
    import threading

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    return path


class WriteError(InputError):
    """A file could not be written (`write_error`); `os_error` is the system's reason."""

    def __init__(self, message: str, os_error: OSError):
        super().__init__(message)
        self.os_error = os_error


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """A failed write as a one-line error naming the file meant (never a temporary path), with what to do
    (`OS_ERROR_HINTS`)."""
    why = OS_ERROR_HINTS.get(e.errno) or f"cannot write it ({e.strerror or type(e).__name__}); check the output location"
    return WriteError(f"{path}: {why}", e)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """`atomic_write_bytes` that first makes the folder: a failed write leaves `path` as it was and
    raises `write_error`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, data)


def write_together(writers: dict[Path, Any]) -> list[Path]:
    """Write several files so that they appear together or not at all.

    writers: target path → a function writing that file to the temporary path it is given.
    Every file is written beside its target first; only when all succeeded are they renamed
    onto their targets (renames do not need space). On any error every temporary file is
    removed, the targets are left as they were, and an OSError becomes `write_error`.
    """
    with contextlib.ExitStack() as stack:
        for path, write in writers.items():
            tmp = stack.enter_context(atomic_path(path))
            try:
                write(tmp)
            except WriteError as e:  # named after the temporary file: name the target
                raise write_error(path, e.os_error) from None
            except OSError as e:
                raise write_error(path, e) from None
    return list(writers)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_TEMPORARY = re.compile(r"^\.(?P<owner>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp(\.[^/]*)?$")
STALE_AFTER_S = 60.0  # a live writer touches its temporary far more often than this


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def sweep_stale_temporaries(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove what killed writers left beside these targets: hidden temporaries of `atomic_path`,
    `atomic_dir` and `atomic_write_bytes` (`.NAME.PID.XXXX.tmp[.EXT]`) whose NAME is a target's name or
    stem, whose process no longer runs on this machine and which have not changed for STALE_AFTER_S.
    Each folder is listed once. Returns what was removed.
    """
    import time

    owners: dict[str, set[str]] = {}
    for target in targets:
        folder, name = os.path.split(os.fspath(target))
        owners.setdefault(folder, set()).update({name, os.path.splitext(name)[0]})
    removed, now = [], time.time()
    for folder, names in owners.items():
        try:
            with os.scandir(folder or ".") as listing:
                entries = [e for e in listing if e.name.startswith(".") and ".tmp" in e.name]
        except OSError:
            continue  # a folder not made yet holds no temporaries
        for entry in entries:
            m = _TEMPORARY.match(entry.name)
            if not m or m["owner"] not in names or int(m["pid"]) == os.getpid() or _process_alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_S:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


# ----------------------------------------------------------------------------- CPU threads
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_threads() -> tuple[int, str]:
    """CPU threads for this process's math and where the number comes from.

    OMP_NUM_THREADS if set, else SLURM_CPUS_PER_TASK, else the CPUs this process may run on
    (its affinity) that the 1-minute load average leaves idle, at least one. On a shared
    machine OpenMP threads that wait for a core spin at every barrier: a second thread on
    a core that another process holds makes a step several times slower, while on a quiet
    machine one thread fewer costs only a little (benchmarks/results/commands.md).
    """
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), var
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        cpus = os.cpu_count() or 1
    try:
        idle = (os.cpu_count() or cpus) - os.getloadavg()[0]
    except (AttributeError, OSError):
        return cpus, "CPU affinity"
    return max(1, min(cpus, int(idle + 0.5))), f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}"


def use_threads(n: int) -> None:
    """Run this process's math (PyTorch, BLAS, OpenCV) on n CPU threads.

    Set before PyTorch is imported, the environment reaches every OpenMP pool and the
    processes this one starts; where a library is loaded already it is told directly."""
    import sys

    if n < 1:
        raise UsageError(f"--threads {n}: expected 1 or more")
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)


OS_ERROR_HINTS = {
    errno.EISDIR: "is a folder; name a file, or remove the folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "not permitted; choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "no space left on the device; free some space or choose another location",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another location",
    errno.EFBIG: "the file is too large for this device or the file size limit; free space or raise the limit",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path it concerns (never a temporary file of `atomic_path` when the
    target is known) and what to do, e.g. 'out/x.png: is a folder; name a file, or remove the folder'."""
    what = OS_ERROR_HINTS.get(e.errno) or (e.strerror or str(e) or type(e).__name__).lower()
    return f"{e.filename}: {what}" if e.filename else what
