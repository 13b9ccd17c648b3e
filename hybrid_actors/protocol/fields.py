"""Typed field readers for Bybit JSON: strings to Decimal/int, ``""`` to None, never float."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["FieldError", "dec", "opt_dec", "req_dec", "opt_int", "req_int", "to_int", "req_str", "opt_str"]

class FieldError(ValueError):
    """A field is missing or has the wrong type. Caught by the decoder and reported."""


#: Bybit prices and sizes live far inside 1e-40..1e40. A number beyond that is garbage, and
#: letting it through would make PnL arithmetic raise later (decimal Overflow, or an
#: entry*mark product that underflows to 0 and divides by zero) instead of here.
MAX_ABS_EXPONENT = 40


def dec(raw: Any, name: str = "value") -> Decimal | None:
    """Bybit number → Decimal. ``""`` and ``None`` mean absent. Floats are refused."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise FieldError(f"{name}={raw[:40]!r} is not a decimal number") from None
        if not value.is_finite():
            raise FieldError(f"{name}={raw[:40]!r} is not a finite number")
        return _in_range(value, name)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _in_range(Decimal(raw), name)
    raise FieldError(f"{name} must be a decimal string, got {type(raw).__name__}")


def _in_range(value: Decimal, name: str) -> Decimal:
    if not -MAX_ABS_EXPONENT <= value.adjusted() <= MAX_ABS_EXPONENT:  # also "0e-999999"
        raise FieldError(f"{name}={str(value)[:40]!r} is out of range (|exponent| > {MAX_ABS_EXPONENT})")
    return value


def opt_dec(obj: Mapping[str, Any], key: str) -> Decimal | None:
    return dec(obj.get(key), key)


def req_dec(obj: Mapping[str, Any], key: str) -> Decimal:
    if key not in obj:
        _raise_missing(key)
    value = dec(obj[key], key)
    if value is None:
        raise FieldError(f"{key} is empty")
    return value


def to_int(raw: Any, name: str = "value") -> int | None:
    """Bybit integer (a JSON number, or a digit string in some payloads) → int; ``""`` → None."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw[1:] if raw.startswith("-") else raw
        if text.isdigit() and text.isascii():
            try:
                return int(raw)
            except ValueError:  # more digits than int() accepts (sys.get_int_max_str_digits)
                raise FieldError(f"{name}={raw[:40]!r}… has too many digits") from None
    raise FieldError(f"{name}={str(raw)[:40]!r} is not an integer")


def opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    return to_int(obj.get(key), key)


def req_int(obj: Mapping[str, Any], key: str) -> int:
    if key not in obj:
        _raise_missing(key)
    value = opt_int(obj, key)
    if value is None:
        raise FieldError(f"{key} is empty")
    return value


def opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise FieldError(f"{key} must be a string, got {type(raw).__name__}")
    return raw


def req_str(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj:
        _raise_missing(key)
    value = opt_str(obj, key)
    if value is None:
        raise FieldError(f"{key} is null")
    return value


def _raise_missing(key: str) -> Any:
    raise FieldError(f"missing field {key!r}")
