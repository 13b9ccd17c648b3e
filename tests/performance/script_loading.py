"""The smoke tests' one way to load a ``scripts/*.py`` file as a module (``scripts/`` is no
package, and each script must keep working as a script)."""

from __future__ import annotations

import importlib.util
import pathlib
import types

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str) -> types.ModuleType:
    """``scripts/<name>.py``, executed as a fresh module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
