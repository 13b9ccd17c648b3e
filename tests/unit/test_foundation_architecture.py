"""Architecture rules, read from the source with ``ast`` (nothing is imported):

- the sans-IO layer (``protocol/*``, ``state``, ``notices``, ``config``, ``errors``) imports no event loop,
  no socket and no HTTP/WebSocket library, and only other sans-IO modules of the package;
- ``protocol``, ``state`` and ``notices`` read no clock (time is an argument);
- nothing under ``hybrid_actors/`` calls ``float(...)`` (``metrics.py`` excepted);
- each foreign I/O library has one owner module: trio_websocket → ``transport.py``,
  websockets (the sans-IO WebSocket core of the public sockets) → ``lean_transport.py``,
  h11 → ``http_endpoint.py`` (metrics, health) and the simulator's REST server (``testing/``),
  httpx → ``rest.py`` (plus ``testing/``), prometheus_client → ``metrics.py``,
  asyncio → ``bridge/`` (trio_asyncio → ``bridge/hosts.py``).

Modules that do not exist yet are simply not scanned.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import attrs
import pytest

from foundation_helpers import PACKAGE

pytestmark = pytest.mark.unit

ROOT = PACKAGE.parent
PURE = sorted([*(PACKAGE / "protocol").glob("*.py"), PACKAGE / "state.py", PACKAGE / "notices.py",
               PACKAGE / "config.py", PACKAGE / "errors.py", PACKAGE / "backoff.py", PACKAGE / "rollout.py"])
NO_CLOCK = sorted([*(PACKAGE / "protocol").glob("*.py"), PACKAGE / "state.py", PACKAGE / "notices.py",
                   PACKAGE / "backoff.py", PACKAGE / "rollout.py"])
IO_LIBRARIES = {"trio", "trio_websocket", "httpx", "asyncio", "trio_asyncio", "socket", "anyio", "ssl", "select",
                "selectors", "websockets", "requests", "urllib3", "aiohttp"}
CLOCKS = {"time", "datetime"}
#: foreign library -> the only modules (relative to hybrid_actors/) that may import it
OWNERS = {
    "trio_websocket": ("transport.py", "testing/"),
    "websockets": ("lean_transport.py",),
    "h11": ("http_endpoint.py", "testing/"),
    "httpx": ("rest.py", "testing/"),
    "prometheus_client": ("metrics.py",),
    "asyncio": ("bridge/",),
    "trio_asyncio": ("bridge/hosts.py",),
}
FLOAT_EXEMPT = {"metrics.py"}


@attrs.frozen
class Import:
    module: str  # absolute dotted name
    line: int

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, name: str, is_package: bool) -> Iterator[Import]:
    """Every import anywhere in the module (also inside functions and TYPE_CHECKING)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
            else:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            yield Import(".".join(base), node.lineno)
            for alias in node.names:  # ``from . import x`` may name a submodule
                yield Import(".".join([*base, alias.name]), node.lineno)


def imports_of(path: pathlib.Path) -> list[Import]:
    return list(imports(path.read_text(), module_name(path), path.name == "__init__.py"))


def float_calls(source: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"]


def package_files() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: pathlib.Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


# --- the scanner itself (so the rules below cannot pass vacuously) ----------------------

def test_the_scanner_sees_every_import_form():
    source = ("import trio\nimport trio.lowlevel as ll\nfrom httpx import AsyncClient\n"
              "from . import frames\nfrom ..config import X\nfrom .. import state\n"
              "def f():\n    import asyncio\n"
              "if TYPE_CHECKING:\n    import socket\n")
    found = {i.module for i in imports(source, "hybrid_actors.protocol.session", is_package=False)}
    assert {"trio", "trio.lowlevel", "httpx", "asyncio", "socket", "hybrid_actors.protocol.frames",
            "hybrid_actors.config", "hybrid_actors.state"} <= found
    pkg = {i.module for i in imports("from .client import x", "hybrid_actors.protocol", is_package=True)}
    assert "hybrid_actors.protocol.client" in pkg


def test_the_float_scan_finds_calls_not_names():
    assert float_calls("x = float(y)\nz = [float(a) for a in b]") == [1, 2]
    assert float_calls("isinstance(v, (int, float))\ndef f(x: float) -> float: ...") == []


def test_the_modules_to_check_exist():
    names = {rel(p) for p in PURE}
    assert {"protocol/frames.py", "protocol/session.py", "protocol/rest.py", "protocol/signing.py", "state.py",
            "config.py", "errors.py", "backoff.py"} <= names


# --- the rules ----------------------------------------------------------------------

@pytest.mark.parametrize("path", PURE, ids=rel)
def test_sans_io_modules_import_no_io_library(path):
    bad = [(i.module, i.line) for i in imports_of(path) if i.top in IO_LIBRARIES]
    assert bad == [], f"{rel(path)} imports I/O: {bad}"


@pytest.mark.parametrize("path", PURE, ids=rel)
def test_sans_io_modules_import_only_sans_io_modules_of_the_package(path):
    pure = {module_name(p) for p in PURE} | {"hybrid_actors.protocol"}
    internal = {i.module for i in imports_of(path) if i.top == "hybrid_actors"}
    # ``from .frames import Position`` also yields "...frames.Position": keep only module names
    modules = {m for m in internal if (ROOT / (m.replace(".", "/") + ".py")).exists()
               or (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    assert modules <= pure, f"{rel(path)} depends on non-pure modules {sorted(modules - pure)}"


@pytest.mark.parametrize("path", NO_CLOCK, ids=rel)
def test_protocol_and_state_read_no_clock(path):
    bad = [(i.module, i.line) for i in imports_of(path) if i.top in CLOCKS]
    assert bad == [], f"{rel(path)} imports a clock: {bad} (time is an argument)"


def test_no_module_calls_float():
    offenders = {rel(p): lines for p in package_files() if p.name not in FLOAT_EXEMPT
                 and (lines := float_calls(p.read_text()))}
    assert offenders == {}, f"float(...) called in {offenders}; prices and sizes are Decimal"


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_io_library_has_one_owner(library):
    allowed = OWNERS[library]
    offenders = sorted(rel(p) for p in package_files()
                       if any(i.top == library for i in imports_of(p))
                       and not any(rel(p) == a or (a.endswith("/") and rel(p).startswith(a)) for a in allowed))
    assert offenders == [], f"only {allowed} may import {library}; also imported by {offenders}"
