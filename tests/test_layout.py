"""The package's layout rules (ARCHITECTURE.md): who may import what, and how long a module is.

Every module of ``flowagg`` is parsed, not imported, so an import inside a function or under
``TYPE_CHECKING`` counts as well. ``from a.b import c`` counts as importing ``a.b.c``, whether ``c``
is a module or a name in one.
"""

import ast
import importlib.machinery
import re
from pathlib import Path

from flowagg.store import table

PACKAGE = Path(__file__).resolve().parent.parent / "flowagg"
MAX_LINES = 400
LEAVES = ("flowagg.store.ringbuffer", "flowagg.store.rwlock")  # and the native table, below
NATIVE = PACKAGE / "store" / "native"
# What python -m flowagg may name to word a refused start; nothing else of a concrete store.
MAIN_MAY_IMPORT = {"flowagg.store.durable.CorruptFile", "flowagg.store.durable.DataDirInUse"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The absolute names that module ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..y import z
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                origin = ".".join(parts + ([node.module] if node.module else []))
            else:
                origin = node.module
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def modules_in(package: str) -> list[str]:
    return [m for m in MODULES if within(m, package)]


def assert_none(modules, forbidden) -> None:
    """Fail naming every ``module imports name`` for which ``forbidden(module, name)``."""
    found = [
        f"{module} imports {name}"
        for module in modules
        for name in sorted(imports(module))
        if forbidden(module, name)
    ]
    assert not found, "\n".join(found)


def concrete_store(name: str) -> bool:
    return within(name, "flowagg.store") and not within(name, "flowagg.store.base")


def test_the_rules_see_every_layer():
    assert {"flowagg", "flowagg.__main__", "flowagg.web.flows", "flowagg.store.base"} <= set(
        MODULES
    )
    assert "flowagg.store.durable.store" in MODULES
    assert "flowagg.store.base.Closed" in imports("flowagg.web.errors")


def test_web_reaches_the_store_only_through_its_interface():
    assert_none(modules_in("flowagg.web"), lambda module, name: concrete_store(name))


def test_the_store_knows_nothing_of_http():
    assert_none(
        modules_in("flowagg.store"),
        lambda module, name: within(name, "flask", "werkzeug", "flowagg.web"),
    )


def test_the_interface_depends_on_no_store():
    assert_none(
        ["flowagg.store.base"],
        lambda module, name: within(name, "flowagg") and not within(name, "flowagg.schema"),
    )


def test_buffer_lock_and_table_import_nothing_of_the_project():
    assert_none(LEAVES, lambda module, name: within(name, "flowagg"))


def test_only_create_app_picks_a_concrete_store():
    def forbidden(module: str, name: str) -> bool:
        if module == "flowagg" or (module == "flowagg.__main__" and name in MAIN_MAY_IMPORT):
            return False
        return concrete_store(name)

    outside = [m for m in MODULES if not within(m, "flowagg.store")]
    assert_none(outside, forbidden)


# What the server is made of: the client and the shipper run where none of it is needed.
SERVER = ("flask", "werkzeug", "waitress", "flowagg.web", "flowagg.store", "flowagg.shutdown")


def test_the_client_and_the_shipper_import_nothing_of_the_server():
    modules = modules_in("flowagg.client") + modules_in("flowagg.ship")
    assert "flowagg.client.client" in modules and "flowagg.ship.shipper" in modules
    assert_none(modules, lambda module, name: within(name, *SERVER))


def test_the_client_knows_nothing_of_the_shipper():
    assert_none(modules_in("flowagg.client"), lambda module, name: within(name, "flowagg.ship"))


def test_the_package_imports_the_server_only_when_it_serves():
    """``import flowagg`` (which any ``flowagg.*`` import runs) names no server module at its
    top level: ``create_app`` and ``python -m flowagg`` import them when they run."""
    for name in ("flowagg", "flowagg.__main__"):
        tree = ast.parse(MODULES[name].read_text())
        top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        found = {alias.name for node in top if isinstance(node, ast.Import) for alias in node.names}
        found |= {node.module for node in top if isinstance(node, ast.ImportFrom) and node.module}
        assert not [n for n in found if within(n, *SERVER, "flowagg.metrics")], (name, found)


def test_no_module_is_longer_than_400_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_table_is_native_with_no_python_copy():
    assert table.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert "flowagg.store.table" not in MODULES


def test_the_native_sources_include_nothing_of_the_project_but_their_header():
    sources = sorted(NATIVE.glob("*.[ch]"))
    assert sources
    for path in sources:
        included = re.findall(r'^#include\s+"([^"]+)"', path.read_text(), re.M)
        assert set(included) <= {"table.h"}, (path.name, included)
