"""Output planning: every path a run will write, known and checked before any work is done.

Each command that writes lists its inputs and every output it will produce in one
`OutputPlan`, then calls `check()` before it loads a model or reads an input whole:

- two outputs that are the same file (also through a symlink or a hard link),
- an output that is one of the run's inputs,
- an input or another output inside a folder that an output replaces as a whole,
- an input inside a folder that must hold only the command's own files (a dataset)

are usage errors (`UsageError`, exit 2) naming both sides; nothing has been done. Then
each output's location is checked: a file output that is an existing folder, a folder
output that is an existing file, a parent that is a file, or a folder without write
permission is an `InputError` (exit 1), also before any work. Last, the hidden temporaries that a
killed earlier run left beside the outputs are removed (`sweep_stale_temporaries`: only those of a
process that no longer runs on this machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rgbdface.utils import InputError, UsageError, sweep_stale_temporaries

FILE = "file"  # one file, written atomically
FOLDER = "folder"  # a folder replaced as a whole (frame sequences)
INTO = "into"  # a folder the command writes its files into (other files in it are left alone)


@dataclass(frozen=True)
class Planned:
    path: Path
    what: str  # how a message names it, without the path: "-o", "--normals", "the preview of a.jpg"
    kind: str = FILE
    exclusive: bool = False  # INTO only: no input may lie inside (the folder is the command's own)


class _Resolver:
    """Paths as strings with symlinks, '..' and '.' resolved (parts that do not exist yet kept as named), and
    their inode when they exist; each folder is resolved once, so that planning thousands of files stays fast."""

    def __init__(self):
        self.folders: dict[str, tuple[str, bool]] = {}  # folder as given → (resolved, exists)

    def _folder(self, folder: str) -> tuple[str, bool]:
        known = self.folders.get(folder)
        if known is None:
            known = self.folders[folder] = (os.path.realpath(os.path.abspath(folder or ".")), os.path.isdir(folder or "."))
        return known

    def real(self, path: Path) -> str:
        text = os.fspath(path)
        folder, name = os.path.split(text)
        if name in ("", ".", "..") or (self._folder(folder)[1] and os.path.islink(text)):
            return os.path.realpath(os.path.abspath(text))
        return os.path.join(self._folder(folder)[0], name)

    def inode(self, path: Path) -> tuple[int, int] | None:
        text = os.fspath(path)
        if not self._folder(os.path.dirname(text))[1]:
            return None  # its folder does not exist yet: neither does it
        try:
            st = os.stat(text)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)


def _name(what: str, path: Path) -> str:
    """'-o out.png', 'the input a.jpg', 'the preview of a.jpg (out/a_preview.png)'."""
    return f"{what} ({path})" if " of " in what else f"{what} {path}"


def _inside(child: str, folder: str) -> bool:
    return child.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class OutputPlan:
    """The inputs and outputs of one run (see the module docstring)."""

    inputs: list[tuple[Path, str]] = field(default_factory=list)
    outputs: list[Planned] = field(default_factory=list)

    def input(self, path: str | os.PathLike, what: str = "the input") -> "OutputPlan":
        """An input of the run; `what` names it in messages, before its path ("--depth", "the reference")."""
        self.inputs.append((Path(path), what))
        return self

    def file(self, path: str | os.PathLike, what: str) -> "OutputPlan":
        """A file output; `what` names it in messages, before its path ("-o", "the preview of a.jpg")."""
        self.outputs.append(Planned(Path(path), what, FILE))
        return self

    def folder(self, path: str | os.PathLike, what: str, replaced: bool = True, exclusive: bool = False) -> "OutputPlan":
        """A folder output: replaced as a whole, or written into (exclusive: it may hold no input)."""
        self.outputs.append(Planned(Path(path), what, FOLDER if replaced else INTO, exclusive))
        return self

    def check(self) -> None:
        """Refuse collisions (UsageError), then unusable output locations (InputError); see the module docstring.
        Then remove what a killed earlier run left beside these outputs (`sweep_stale_temporaries`)."""
        self.check_collisions()
        self.check_locations()
        sweep_stale_temporaries(o.path for o in self.outputs if o.kind != INTO)

    # ------------------------------------------------------------------ collisions
    def check_collisions(self) -> None:
        paths = _Resolver()
        _real, _inode = paths.real, paths.inode
        by_path: dict[str, Planned] = {}
        by_inode: dict[tuple[int, int], Planned] = {}
        for out in self.outputs:
            if out.kind == INTO:
                continue  # its files are planned one by one
            real, ino = _real(out.path), _inode(out.path)
            other = by_path.get(real) or (by_inode.get(ino) if ino else None)
            if other is not None:
                raise UsageError(f"{other.what} and {out.what} would both write {out.path}; give each output its own name")
            by_path[real] = out
            if ino:
                by_inode[ino] = out
        inputs = [(p, what, _real(p), _inode(p)) for p, what in self.inputs]
        for p, what, real, ino in inputs:
            out = by_path.get(real) or (by_inode.get(ino) if ino else None)
            if out is not None:
                raise UsageError(f"{_name(out.what, out.path)} would overwrite {_name(what, p)}; choose an output that is not an input")
        folders = [(o, _real(o.path)) for o in self.outputs if o.kind == FOLDER or (o.kind == INTO and o.exclusive)]
        for folder, real_folder in folders:
            for p, what, real, _ in inputs:
                if real == real_folder or _inside(real, real_folder):
                    how = "would replace the folder holding" if folder.kind == FOLDER else "must not hold"
                    raise UsageError(f"{_name(folder.what, folder.path)} {how} {_name(what, p)}; choose an output folder apart from the inputs")
            if folder.kind != FOLDER:
                continue
            for real, out in by_path.items():
                if out is not folder and _inside(real, real_folder):
                    raise UsageError(f"{_name(folder.what, folder.path)} would replace the folder holding {_name(out.what, out.path)}; "
                                     "give each output its own place")

    # ------------------------------------------------------------------ locations
    def check_locations(self) -> None:
        seen: set[str] = set()
        for out in self.outputs:
            path = os.fspath(out.path)
            parent = path if out.kind == INTO else os.path.dirname(path)  # where files (or the replacing folder) are made
            if out.kind == FILE:
                if parent in seen and not os.path.lexists(path):
                    continue  # a new file in a folder already checked
                if os.path.isdir(path):
                    raise InputError(f"{_name(out.what, out.path)}: is a folder; give a file name (or another path)")
            elif os.path.exists(path) and not os.path.isdir(path):
                raise InputError(f"{_name(out.what, out.path)}: exists and is not a folder; give a folder name")
            if parent in seen:
                continue
            seen.add(parent)
            existing = Path(parent or ".")
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise InputError(f"{_name(out.what, out.path)}: cannot write there ({existing} is a file, not a folder); choose another path")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise InputError(f"{_name(out.what, out.path)}: cannot write there (no permission in {existing}); choose another path")
