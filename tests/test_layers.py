"""The layering, read from the source with ``ast`` so that it stays true.

- The core (``allotment._core``) imports only the standard library, attrs and
  ``allotment._errors``: no faces, no diagnostics, no waiting.
- Every other module reaches the core only through ``allotment._core``'s own names.
- A private attribute (``x._name``) is read only by the module that defines it: faces use the
  pool interface and each other's public or friend functions, never each other's fields.
- Time comes only from the clock: nothing but ``_clock.py`` reads the system clock.
- Faces hold their pool as the ``Pool`` interface, so mypy keeps them to it.
- Module-level imports between allotment's modules form no cycle.
- No id comes from a range iterator (``iter(range(...))``): on free-threaded builds its
  ``__next__`` hands one number to two threads that draw at once; ``itertools.count``'s is
  atomic.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import allotment

PACKAGE = Path(allotment.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
CORE = PACKAGE / "_core"

# Private members of the standard library used on purpose, each for a reason stated where used.
STDLIB_PRIVATE = {"_getframe", "_is_owned", "_get_running_loop"}
FACES = {"_manager.py", "_lease.py", "_multi.py", "_declared.py", "_semaphore.py"}
CLOCK_READS = {"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "time", "time_ns"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _top_level_imports(path: Path) -> list[tuple[str, ast.stmt]]:
    """Imports that run when the module is imported (not in functions, not TYPE_CHECKING)."""
    found: list[tuple[str, ast.stmt]] = []

    def visit(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, ast.Import):
                found.extend((alias.name, statement) for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                module = _absolute(path, statement)
                found.append((module, statement))
                # "from . import x" and "from .pkg import sub" may name submodules.
                found.extend(
                    (f"{module}.{alias.name}", statement)
                    for alias in statement.names
                    if _is_module(f"{module}.{alias.name}")
                )
            elif isinstance(statement, ast.If):
                test = statement.test
                if not (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"):
                    visit(statement.body)
                    visit(statement.orelse)
            elif isinstance(statement, ast.Try):
                visit(statement.body)

    visit(_tree(path).body)
    return found


def _is_module(name: str) -> bool:
    return name in {_module_name(path) for path in MODULES}


def _all_imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(_absolute(path, node))
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda path: path.name)
def test_the_core_imports_only_the_standard_library_attrs_and_errors(path: Path) -> None:
    for name in _all_imports(path):
        if name.startswith("allotment"):
            assert name.startswith("allotment._core") or name == "allotment._errors", (
                f"{path.name} imports {name}"
            )
        else:
            top = name.split(".")[0]
            assert top == "attrs" or top in sys.stdlib_module_names, f"{path.name} imports {name}"


@pytest.mark.parametrize(
    "path",
    [path for path in MODULES if CORE not in path.parents],
    ids=lambda path: str(path.relative_to(PACKAGE)),
)
def test_other_modules_reach_the_core_only_through_its_package(path: Path) -> None:
    for name in _all_imports(path):
        assert not name.startswith("allotment._core."), f"{path.name} imports {name}"


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: its module-level names, and its classes' fields,
    methods and ``self._x`` assignments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    names.add(target.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_private_members_are_read_only_where_they_are_defined(path: Path) -> None:
    tree = _tree(path)
    own = _defined_private_names(tree)
    foreign = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        target = node.value
        if isinstance(target, ast.Name) and target.id in {"self", "cls"}:
            continue
        if name in own or name in STDLIB_PRIVATE:
            continue
        foreign.append(f"line {node.lineno}: .{name}")
    assert not foreign, f"{path.name} reads private members of other modules: {foreign}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_the_clock_reads_the_system_clock(path: Path) -> None:
    if path.name == "_clock.py":
        return
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (node.value.id == "time" and node.attr in CLOCK_READS), (
                f"{path.name}:{node.lineno} reads time.{node.attr}"
            )
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            imported = {alias.name for alias in node.names}
            assert not imported & CLOCK_READS, f"{path.name} imports {imported} from time"


def _range_iterators(tree: ast.AST) -> list[int]:
    """The lines that make an iterator over a range: ``iter(range(...))`` or
    ``range(...).__iter__()``."""

    def is_range(node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "range"
        )

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "iter" and node.args:
            if is_range(node.args[0]):
                found.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "__iter__" and is_range(func.value):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_id_is_drawn_from_a_range_iterator(path: Path) -> None:
    lines = _range_iterators(_tree(path))
    assert not lines, (
        f"{path.name}, line(s) {lines}: iter(range(...)) repeats numbers when free threads "
        "draw at once; use itertools.count"
    )


def test_the_range_iterator_rule_sees_one() -> None:
    planted = ast.parse(
        "new_id = iter(range(1, 1 << 62)).__next__\n"
        "serial = range(10).__iter__()\n"
        "fine = itertools.count(1).__next__\n"
        "also_fine = [n for n in range(3)], iter([1, 2])\n"
    )
    assert sorted(_range_iterators(planted)) == [1, 2]


@pytest.mark.parametrize("name", sorted(FACES))
def test_faces_hold_their_pool_as_the_interface(name: str) -> None:
    for node in ast.walk(_tree(PACKAGE / name)):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id in {"_pool", "pool"}
        ):
            assert ast.unparse(node.annotation) == "Pool", (
                f"{name}:{node.lineno}: {node.target.id} is a {ast.unparse(node.annotation)}"
            )


def test_module_level_imports_form_no_cycle() -> None:
    graph = {
        _module_name(path): {
            name for name, _ in _top_level_imports(path) if name.startswith("allotment")
        }
        for path in MODULES
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for imported in graph.get(module, set()):
            # A package imports its own submodules; that is not a cycle back into it.
            if imported != module and not module.startswith(imported + "."):
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_these_rules_read_real_code() -> None:
    # A rule that finds nothing to read could not fail: make sure the walk sees the package.
    assert {path.name for path in MODULES} >= {"_pool.py", "_manager.py", "_clock.py"}
    assert _defined_private_names(_tree(PACKAGE / "_manager.py")) >= {"_pool", "_parts"}


HTTP_CLIENTS = {"httpx": "_httpx.py", "requests": "_requests.py", "aiohttp": "_aiohttp.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_each_http_client_is_imported_only_by_its_own_adapter(path: Path) -> None:
    for name in _all_imports(path):
        client = name.split(".")[0]
        if client in HTTP_CLIENTS:
            where = f"{path.parent.name}/{path.name}"
            assert where == f"http/{HTTP_CLIENTS[client]}", f"{where} imports {name}"


def test_importing_allotment_and_its_http_policy_imports_no_http_client() -> None:
    import subprocess

    code = (
        "import sys, allotment, allotment.http; "
        f"print(sorted(set(sys.modules) & {set(HTTP_CLIENTS)!r}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_import_allotment_loads_neither_opentelemetry_nor_matplotlib() -> None:
    import subprocess

    check = (
        "import sys, allotment; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in {'opentelemetry', 'matplotlib'}]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


@pytest.mark.parametrize(
    ("library", "allowed"), [("opentelemetry", "otel.py"), ("matplotlib", "_plot.py")]
)
def test_only_one_module_imports_each_optional_library(library: str, allowed: str) -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in MODULES
        if any(name.split(".")[0] == library for name in _all_imports(path))
    }
    assert importers == {allowed}
