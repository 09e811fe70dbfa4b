"""The package's layout holds: layers import downwards only, no import loops, no module over 400 lines,
and ``agentrl --help`` stays cheap (no torch)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentrl"

LAYERS = [
    {"agentrl", "agentrl.config", "agentrl.console"},  # the schema, the registry of names, the terminal
    {"agentrl.envs"},
    {"agentrl.prompting"},
    {"agentrl.algorithms"},
    {"agentrl.policy"},
    {"agentrl.data"},
    {"agentrl.training"},
    {"agentrl.commands"},
    {"agentrl.cli"},
]
"""Lowest first: a module imports from its own layer or a lower one (docs/architecture.md)."""

MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every agentrl module ``path`` imports, at the top, inside functions or under TYPE_CHECKING alike."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "agentrl"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "agentrl":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub) else base)
    return found - {here}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    for depth in range(name.count(".") + 1, 0, -1):
        prefix = ".".join(name.split(".")[:depth])
        for k, layer in enumerate(LAYERS):
            if prefix in layer:
                return k
    raise AssertionError(f"{name} is in no layer of LAYERS: add its package there")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                loops.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


def test_the_checks_see_a_loop_and_an_upward_import():
    graph = {"agentrl.policy.a": {"agentrl.policy.b"}, "agentrl.policy.b": {"agentrl.policy.a"},
             "agentrl.envs.c": {"agentrl.training.d"}, "agentrl.training.d": set()}
    assert import_loops(graph) == [["agentrl.policy.a", "agentrl.policy.b"]]
    assert upward_imports(graph) == ["agentrl.envs.c -> agentrl.training.d"]


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert len(graph) >= 60 and "agentrl.commands.fit" in graph
    assert {"agentrl.training.learner", "agentrl.data.rollout", "agentrl.policy.module"} <= graph["agentrl.commands.fit"] | {
        t for m in graph["agentrl.commands.fit"] for t in graph.get(m, ())}
    assert "agentrl.policy.tiny.build" in graph["agentrl.policy.loading"]  # a function-level import counts too


def test_no_import_loops():
    assert import_loops(import_graph()) == []


def test_every_import_goes_to_the_same_or_a_lower_layer():
    assert upward_imports(import_graph()) == []


def test_no_module_passes_the_line_limit():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) >= 60
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_every_module_says_what_it_holds():
    missing = [module_name(p) for p in PACKAGE.rglob("*.py") if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"]])
def test_help_imports_no_torch(argv):
    code = ("import sys\nfrom agentrl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"
