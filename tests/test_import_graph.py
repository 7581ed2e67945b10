"""The installed package's import graph: no cycles, no private names imported across modules, and the Hub code
(modeling/, processing/) imports only from its own folder, kernels optionally.

Every module of the source roots is looked up through the installed package (importlib finds the file it would
import) and its imports are read from that file, those inside functions included: a lazy import that closes a
loop is still a loop in the design.
"""
import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("modeling", "processing", "kernels", "scripts")


def installed_modules() -> dict[str, Path]:
    """{module name: the file the installed package imports for it}."""
    modules = {}
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root / "detrkit").rglob("*.py")):
            parts = path.relative_to(ROOT / root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            spec = importlib.util.find_spec(name)
            assert spec is not None and spec.origin, f"{name} is not installed"
            modules[name] = Path(spec.origin)
    return modules


def optional_imports(tree: ast.AST) -> set[ast.AST]:
    """Import statements inside a `try` that catches ImportError: what a module does without them is its own."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional |= {n for statement in node.body for n in ast.walk(statement)
                         if isinstance(n, (ast.Import, ast.ImportFrom))}
    return optional


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], bool]]:
    """[(imported detrkit module, the names taken from it, optional)] of one module, resolved like Python does."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = optional_imports(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node in optional) for alias in node.names
                      if alias.name.startswith("detrkit.")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("detrkit"):
                continue
            for alias in node.names:  # `from package import submodule` imports the submodule
                target = f"{base}.{alias.name}"
                found.append((target, [], node in optional) if target in modules
                             else (base, [alias.name], node in optional))
    return [import_ for import_ in found if import_[0] in modules]


def graph(required_only=False) -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: names taken}}; `required_only` leaves out the optional imports."""
    modules = installed_modules()
    edges = {}
    for name, path in modules.items():
        for target, names, optional in imports_of(name, path, modules):
            if target != name and not (required_only and optional):
                edges.setdefault(name, {}).setdefault(target, []).extend(names)
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def edges():
    return graph()


def test_no_import_cycles(edges):
    assert cycles(edges) == []


def test_no_cycles_between_subpackages(edges):
    """detrkit.training, .inference, .data, ... depend on each other one way only."""
    def package(module):
        return ".".join(module.split(".")[:2])

    packages = {}
    for source, targets in edges.items():
        for target in targets:
            if package(source) != package(target):
                packages.setdefault(package(source), {})[package(target)] = []
    assert cycles(packages) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


def test_no_private_names_imported_across_modules(edges):
    private = {(source, target, name) for source, targets in edges.items() for target, names in targets.items()
               for name in names if name.startswith("_")}
    assert private == set()


def test_hub_code_imports_only_its_own_folder():
    """modeling and processing travel as remote code: their files import only their own package (anything else
    only optionally, inside try/except ImportError, which the Hub's import check skips)."""
    for source, targets in graph(required_only=True).items():
        for folder in ("detrkit.modeling", "detrkit.processing"):
            if source.startswith(folder + "."):
                foreign = [t for t in targets if not t.startswith(folder)]
                assert foreign == [], f"{source} imports {foreign}"
