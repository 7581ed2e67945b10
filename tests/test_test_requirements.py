"""`pip install -e '.[test]'` installs everything the tests import: every third-party module a test file imports
belongs to a distribution that detrkit's requirements with the test extra bring in, directly or through theirs
(CI also runs the suite in a fresh virtual environment built from the extra alone)."""
import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TESTS = Path(__file__).resolve().parent


def required_distributions(name="detrkit", extras=frozenset({"test"})) -> set[str]:
    """The closure of `name[extras]`'s requirements that apply on this machine (canonical names)."""
    seen, todo = set(), [(name, frozenset(extras))]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            lines = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement whose marker applies but that is not installed: the import check reports it
        for requirement in map(Requirement, lines):
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in seen}


def imported_modules() -> dict[str, str]:
    """{top-level module: a test file importing it} for the third-party imports of the test files."""
    local = {path.stem for path in TESTS.glob("*.py")}
    found = {}
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top not in local and top != "detrkit":
                    found.setdefault(top, path.name)
    return found


def test_the_test_extra_installs_every_module_the_tests_import():
    installed = importlib.metadata.packages_distributions()
    required = required_distributions()
    missing = {}
    for module, test_file in imported_modules().items():
        providers = {canonicalize_name(d) for d in installed.get(module, [])}
        if not providers & required:
            missing[module] = (test_file, sorted(providers) or "not installed")
    assert not missing, f"imported by tests but not installed by '.[test]': {missing}"
