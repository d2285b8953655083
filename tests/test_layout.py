"""The tree keeps its layers: isa below cores below vmm below the CLI, no import circle, no borrowed private name.

Imports are read from the source with ``ast`` (those inside functions included, since a lazy import hides a
circle rather than removing it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "popek"
LAYERS = ["popek.isa", "popek.cores", "popek.vmm", "popek.cli"]  # bottom up


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def imports(tree: ast.Module, known: set[str]) -> set[tuple[str, str]]:
    """(module imported, name taken from it or '') for every popek import in ``tree``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.name, "") for a in node.names if a.name.startswith("popek")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("popek"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add((sub, "") if sub in known else (node.module, a.name))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for target, _ in imports(tree, known):
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            edges[name] |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & known - {name}
    return edges


def layer(module: str) -> int:
    """The index in LAYERS of the layer ``module`` belongs to (-1 for the package's own __init__)."""
    return max((i for i, p in enumerate(LAYERS) if module == p or module.startswith(p + ".")), default=-1)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = [(m, t) for m, ts in graph().items() for t in ts if layer(t) > layer(m) >= 0]
    assert wrong == []


def test_there_is_no_import_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1 and not m.startswith(t + "."):  # a package's own __init__ is not a circle
                circles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_no_module_takes_another_modules_private_names() -> None:
    mods = modules()
    known = set(mods)
    borrowed = [
        (name, f"{target}.{item}")
        for name, tree in mods.items()
        for target, item in imports(tree, known)
        if item.startswith("_") and target != name
    ]
    for name, tree in mods.items():  # module._name through an imported module
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("popek"):
                aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id) in known
            ):
                borrowed.append((name, f"{aliases[node.value.id]}.{node.attr}"))
    assert borrowed == []


def test_the_layout_checks_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a tree with a circle and an upward import, the checks above say so."""
    edges = graph()
    edges["popek.vmm.monitors.trap_emulate"].add("popek.vmm.host")  # host -> monitors -> trap_emulate -> host
    edges["popek.isa.spec"].add("popek.cores.reference")
    monkeypatch.setitem(globals(), "graph", lambda: edges)
    for check in (test_there_is_no_import_circle, test_no_module_imports_a_higher_layer):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a broken tree")
