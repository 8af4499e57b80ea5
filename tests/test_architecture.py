"""The package's two layers, checked from the source: the library never imports the applications, and no module
imports itself through others (no cycles), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import simseg

PACKAGE = Path(simseg.__file__).parent
#: Library modules allowed to import the applications: the ``python -m simseg`` entry point and the CLI alias.
ENTRY_POINTS = {"simseg.__main__", "simseg.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The simseg module an imported name refers to (``simseg.app.cli.main`` -> ``simseg.app.cli``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """simseg module -> the simseg modules it imports anywhere in its source (top level or inside functions)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def is_app(module: str) -> bool:
    return module == "simseg.app" or module.startswith("simseg.app.")


def test_library_never_imports_the_applications():
    graph = import_graph()
    offending = sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if not is_app(mod) and mod not in ENTRY_POINTS
                       for dep in deps if is_app(dep))
    assert not offending, "library modules importing simseg.app: " + "; ".join(offending)


def test_no_import_cycles():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    library = sorted(m for m in graph if not is_app(m))
    apps = sorted(m for m in graph if is_app(m))
    print(f"\n{len(graph)} modules ({len(library)} library, {len(apps)} applications), "
          f"{sum(map(len, graph.values()))} import edges, no cycle; no library module imports simseg.app")


def test_every_command_module_is_reached_from_the_cli():
    graph = import_graph()
    commands = {m for m in graph if is_app(m) and m not in ("simseg.app", "simseg.app.cli", "simseg.app.options",
                                                               "simseg.app.report")}
    from simseg.app.cli import COMMANDS

    # the CLI names each command's module in its table and imports it when that command runs
    named = {command.module for command in COMMANDS.values()}
    reached = named | {d for m in named for d in graph.get(m, ())}
    assert commands <= reached, sorted(commands - reached)
    for command in COMMANDS.values():
        help_text, add_arguments, run = command.load()
        assert help_text and callable(add_arguments) and callable(run), command


def test_the_command_line_starts_without_torch():
    import subprocess
    import sys

    code = "import sys, simseg.app.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
