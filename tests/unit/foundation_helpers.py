"""Helpers shared by the foundation unit tests (tests/unit/test_foundation_*.py).

Vectors are read by path here instead of ``from conftest import load_vector``: with
pytest's default import mode every ``conftest.py`` is imported under the module name
``conftest``, so once another test directory grows its own conftest, a bare
``from conftest import ...`` could pick up the wrong one.
"""

from __future__ import annotations

import json
import pathlib
from decimal import Decimal
from typing import Any

import attrs

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "vectors"
PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "hybrid_actors"


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{name}.json").read_text())


def vector_names() -> list[str]:
    return sorted(p.stem for p in VECTORS.glob("*.json"))


def assert_exact(actual: Any, expected: Any, path: str = "value") -> None:
    """Equality that also pins types and Decimal spelling.

    ``Decimal("0.00") == Decimal("0")`` and ``1 == True``; a parser that went through
    float, or turned an int into a bool, would still compare equal. Here a Decimal
    must be a Decimal with the same text, an int an int (not a bool), recursively
    through attrs instances, tuples, lists and dicts.
    """
    assert type(actual) is type(expected), f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, Decimal):
        assert str(actual) == str(expected), f"{path}: {actual!r} != {expected!r}"
    elif attrs.has(type(expected)):
        for field in attrs.fields(type(expected)):
            assert_exact(getattr(actual, field.name), getattr(expected, field.name), f"{path}.{field.name}")
        assert actual == expected, path
    elif isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_exact(a, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            assert_exact(actual[key], expected[key], f"{path}[{key!r}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
