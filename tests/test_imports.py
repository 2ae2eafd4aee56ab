"""The package layers, read from the source: every `import` statement, those inside functions included.

    data  <-  models, metrics  <-  pipelines  <-  training  <-  cli

`data` (media, datasets, prep-depth) imports no other rgbdface package; `metrics` does not
run models; nothing imports `cli`; and the package graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rgbdface

ROOT = Path(rgbdface.__file__).parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
FORBIDDEN = {
    "data": {"models", "metrics", "pipelines", "training", "cli"},
    "metrics": {"models", "pipelines", "training", "cli"},
    "models": {"metrics", "pipelines", "training", "cli"},
    "pipelines": {"training", "cli"},
    "training": {"cli"},
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the rgbdface modules a file imports, anywhere in it."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}  # `from rgbdface import data`
    return {m for m in out if m == "rgbdface" or m.startswith("rgbdface.")}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else None


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) → the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for module in imported_modules(path):
            dst = package_of(module)
            if src and dst and dst != src:
                edges.setdefault((src, dst), set()).add(str(path.relative_to(ROOT.parent)))
    return {k: sorted(v) for k, v in edges.items()}


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(path):  # depth first; `path` ends at the node being visited
        state[path[-1]] = 1
        for nxt in sorted(graph.get(path[-1], ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(path + [nxt])):
                return found
        state[path[-1]] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit([node])):
            return found
    return None


def test_the_reader_sees_every_package_and_import():
    assert {"data", "models", "metrics", "pipelines", "training", "cli"} <= set(PACKAGES)
    edges = package_edges()
    assert ("pipelines", "models") in edges and ("cli", "pipelines") in edges  # imports inside functions count too
    assert ("training", "data") in edges


def test_layers_are_kept():
    edges = package_edges()
    broken = [f"{a} imports {b} in {', '.join(files)}" for (a, b), files in sorted(edges.items()) if b in FORBIDDEN.get(a, ())]
    assert broken == []


def test_the_package_graph_has_no_cycle():
    assert find_cycle(package_edges()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({("data", "models"): [], ("models", "data"): []}) == ["data", "models", "data"]
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): [], ("a", "c"): [], ("b", "c"): []}) is None


# What `pip install .` brings: the declared dependencies and what they themselves require
# (imageio → pillow; mediapipe → opencv, and jax → scipy). bitsandbytes is optional and
# checked for before use (optim.optimizer=adamw8bit).
INSTALLED_BY_THE_PACKAGE = {
    "torch", "diffusers", "transformers", "accelerate", "safetensors", "einops", "numpy", "imageio", "imageio_ffmpeg",
    "trimesh", "mediapipe", "typer", "rich", "tqdm", "PIL", "cv2", "scipy", "bitsandbytes",
}


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module → the package files that import it (anywhere in the file), outside the standard library."""
    import sys

    out: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"rgbdface", ""}:
                out.setdefault(top, set()).add(str(path.relative_to(ROOT.parent)))
    return {k: sorted(v) for k, v in out.items()}


def test_the_package_imports_only_what_its_install_brings():
    """A user's `pip install .` has no test extras: `rgbdface score` once needed scikit-image for L*a*b* and SSIM."""
    imports = third_party_imports()
    assert "torch" in imports and "cv2" in imports  # the scan sees module-level and in-function imports
    extra = {m: files for m, files in imports.items() if m not in INSTALLED_BY_THE_PACKAGE}
    assert extra == {}
