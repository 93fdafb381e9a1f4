"""The floors of charrnn (docs/development.md), held by reading every import of every module: at module
level, inside functions and under TYPE_CHECKING alike (a lazy import is still a dependency).

An import points down (to a lower floor) or stays inside its own package; nothing imports sideways
between two packages of one floor; no modules import each other in a circle; only cli/ imports click,
only display/ imports rich, config.py imports neither torch nor numpy; and `charrnn --help` (every
command's too) and `import charrnn` import no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"

# Each package of charrnn/ (or module at its root) and its floor, bottom up. A new one gets a floor here.
FLOORS = {
    "errors": 0,
    "config": 1,
    "outputs": 2, "threads": 2,
    "data": 3,
    "model": 4,
    "inference": 5, "analysis": 5,
    "training": 6, "serving": 6, "export": 6,
    "display": 7,
    "api": 8,  # the public Python API (charrnn.load, Model)
    "api_train": 8,  # the public Python API: charrnn.train
    "__init__": 9,  # the package's face (`import charrnn`): its names are loaded on first use
    "cli": 10,
    "__main__": 11,
}
ONLY = {"click": {"cli"}, "rich": {"display"}}  # a third-party package and the only units that import it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The floor's key of a module of charrnn: its package below charrnn, or itself at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken) of every import in `module`, wherever it stands."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def internal_targets(target: str, names: list[str]) -> list[str]:
    """The modules of charrnn an import reaches: `from charrnn.model import checkpoint` reaches the
    module charrnn.model.checkpoint, `from charrnn.model.network import CharRNN` charrnn.model.network."""
    if target != "charrnn" and not target.startswith("charrnn."):
        return []
    reached = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
    if len(reached) < len(names) or not names:  # names that are not modules come from the target itself
        reached.append(target)
    return reached


def edges() -> list[tuple[str, int, str, list[str]]]:
    """(importer, line, imported module of charrnn, names) for every internal import."""
    found = []
    for module in MODULES:
        for line, target, names in imports(module):
            for reached in internal_targets(target, names):
                assert reached in MODULES, f"{MODULES[module]}:{line} imports {reached}, which does not exist"
                found.append((module, line, reached, names))
    return found


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def test_every_package_has_a_floor() -> None:
    missing = sorted({unit(m) for m in MODULES} - set(FLOORS))
    assert not missing, f"give these a floor in FLOORS (tests/test_layers.py): {missing}"


def test_imports_point_down() -> None:
    wrong = []
    for module, line, target, _ in edges():
        a, b = unit(module), unit(target)
        if a == b:
            continue
        if FLOORS[b] >= FLOORS[a]:
            way = "up" if FLOORS[b] > FLOORS[a] else "sideways"
            wrong.append(f"{where(module, line)} imports {target}: {way} from {a} (floor {FLOORS[a]}) "
                         f"to {b} (floor {FLOORS[b]})")
    assert not wrong, "\n".join(wrong)


def test_no_circles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, _, target, _ in edges():
        if target not in (module, "charrnn"):  # the face is every module's parent
            graph[module].add(target)
    # Tarjan's strongly connected components; a component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other: {circles}"


@pytest.mark.parametrize("library", sorted(ONLY))
def test_only_its_floor_imports(library: str) -> None:
    wrong = [f"{where(module, line)} imports {target}" for module in MODULES
             for line, target, _ in imports(module)
             if target.split(".")[0] == library and unit(module) not in ONLY[library]]
    assert not wrong, f"only {sorted(ONLY[library])} may import {library}:\n" + "\n".join(wrong)


def test_config_needs_neither_torch_nor_numpy() -> None:
    heavy = [f"{where('charrnn.config', line)} imports {target}" for line, target, _ in imports("charrnn.config")
             if target.split(".")[0] in ("torch", "numpy")]
    assert not heavy and all(t == "charrnn.errors" or not t.startswith("charrnn")
                             for _, t, _ in imports("charrnn.config")), heavy


def test_the_reader_sees_lazy_and_type_checking_imports() -> None:
    """The rules above see what they must: imports inside functions and under TYPE_CHECKING count."""
    found = {(module, target) for module, _, target, _ in edges()}
    assert ("charrnn.model.checkpoint", "charrnn.model.safetensors_read") in found  # inside load()
    assert ("charrnn.training.callbacks", "charrnn.inference.evaluate") in found  # under TYPE_CHECKING
    assert unit("charrnn.model") == "model" and unit("charrnn.model.network") == "model"
    assert unit("charrnn.errors") == "errors" and unit("charrnn") == "__init__"


HELP = """
import sys
from click.testing import CliRunner
from charrnn.cli import cli
for args in {commands!r}:
    r = CliRunner().invoke(cli, [*args, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, (args, r.output)
heavy = sorted(m for m in ("torch", "numpy") if m in sys.modules)
assert "torch" not in sys.modules, f"--help imported {{heavy}}"
"""


def test_help_and_import_charrnn_import_no_torch() -> None:
    commands = [[], ["train"], ["eval"], ["eval", "perplexity"], ["eval", "score"], ["generate"], ["complete"],
                ["info"], ["plot"], ["export"], ["serve"], ["corpus"], ["inspect"], ["inspect", "cells"]]
    subprocess.run([sys.executable, "-c", HELP.format(commands=commands)], check=True, timeout=60)
    subprocess.run([sys.executable, "-c", "import sys, charrnn; assert 'torch' not in sys.modules"],
                   check=True, timeout=60)
